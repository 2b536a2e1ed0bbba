"""`imgpipeline bench tracking`: tracking and counting against detection, on the street video."""

from __future__ import annotations

import time

from imgpipeline.cli.bench.common import write_result


def bench_tracking(rounds: int) -> dict:
    """Detect the street video's 250 frames once, then track and count those detections `rounds`
    times: detections/s for each, beside detection's frames/s. The video is repeated end to end
    (one source, later capture times), so tracks start and end as in a longer stream."""
    import cv2

    from imgpipeline.cli.samples import sample
    from imgpipeline.resources import DetectorResource, TrackingResource
    from imgpipeline.vision import counting
    from imgpipeline.vision.tracking import Observation, TrackedFrame, assign

    capture = cv2.VideoCapture(str(sample("bikes.mp4")))
    images = []
    while (read := capture.read())[0]:
        images.append(read[1])
    capture.release()
    detector = DetectorResource.from_env().load()
    detector.detect(images[0])  # the first inference is slow on every engine
    started = time.perf_counter()
    found = [detector.detect(image) for image in images]
    detect_s = time.perf_counter() - started
    height, width = images[0].shape[:2]

    frames = []
    for r in range(rounds):
        for n, detections in enumerate(found):
            seconds = 1.8e9 + (r * len(found) + n) / 25.0
            frames.append(
                TrackedFrame(
                    f"street-{r}-{n:04d}",
                    seconds,
                    [Observation(i, d.class_name, d.confidence, d.box) for i, d in enumerate(detections)],
                )
            )
    tracking = TrackingResource.from_env()
    started = time.perf_counter()
    ids = assign([], frames, tracking.settings())
    track_s = time.perf_counter() - started
    tracked = counting.from_tracker(frames, ids, width, height)
    zones = tracking.zones()
    started = time.perf_counter()
    counts = counting.count(tracked, zones, "street-cam", 0, 4e9)
    count_s = time.perf_counter() - started

    detections = sum(len(f.observations) for f in frames)
    cars = sum(1 for f in frames for o in f.observations if o.class_name == "car")
    result = {
        "engine": detector.identity.engine,
        "precision": detector.identity.precision,
        "detect_fps": len(images) / detect_s,
        "detect_detections_per_s": sum(map(len, found)) / detect_s,
        "frames": len(frames),
        "detections": detections,
        "tracking_detections_per_s": detections / track_s,
        "tracking_frames_per_s": len(frames) / track_s,
        "counting_detections_per_s": detections / count_s,
        "lines": [line.name for line in zones.of("street-cam").lines],
        "car_detections": cars,
        "unique_cars": len(counts.objects.get("car", ())),
        "tracked_share": len(ids) / detections,
    }
    print(
        f"detection ({result['engine']} {result['precision']}): {result['detect_fps']:.1f} frames/s, "
        f"{result['detect_detections_per_s']:.0f} detections/s"
    )
    print(
        f"tracking (ByteTrack per class): {result['tracking_detections_per_s']:.0f} detections/s "
        f"({result['tracking_frames_per_s']:.0f} frames/s) over {detections} detections "
        f"in {len(frames)} frames"
    )
    print(
        f"counting (lines {', '.join(result['lines']) or 'none'} and zones): "
        f"{result['counting_detections_per_s']:.0f} detections/s"
    )
    print(
        f"cars: {cars} detections, {result['unique_cars']} distinct objects; "
        f"{result['tracked_share']:.0%} of all detections belong to a confirmed track"
    )
    write_result("tracking", result)
    return result
