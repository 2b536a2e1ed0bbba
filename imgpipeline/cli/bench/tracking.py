"""`imgpipeline bench tracking`: tracking and counting against detection, on the street video; with
`--truth`, every tracker scored on MOTChallenge ground truth (vision/truth.py)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, replace

from imgpipeline.cli.bench.common import write_result


def bench_tracking(rounds: int) -> dict:
    """Detect the street video's 250 frames once, then track and count those detections `rounds`
    times: detections/s for each, beside detection's frames/s. The video is repeated end to end
    (one source, later capture times), so tracks start and end as in a longer stream."""
    import cv2

    from imgpipeline.cli.samples import sample
    from imgpipeline.resources import DetectorResource, TrackingResource
    from imgpipeline.vision import counting
    from imgpipeline.vision.tracking import TrackedFrame, assign

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
                    [replace(d, index=i) for i, d in enumerate(detections)],
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
        "tracker": tracking.settings().kind,
    }
    print(
        f"detection ({result['engine']} {result['precision']}): {result['detect_fps']:.1f} frames/s, "
        f"{result['detect_detections_per_s']:.0f} detections/s"
    )
    print(
        f"tracking ({result['tracker']} per class): {result['tracking_detections_per_s']:.0f} detections/s "
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


def bench_truth(paths: list[str], fps: float, every: int, seeds: int, as_json: bool = False) -> dict:
    """Every tracker on each sequence's truth, over `seeds` perturbations: the means per tracker and
    sequence, beside the tracker in use (the tracking resource's)."""
    import json
    import statistics

    from imgpipeline import ConfigError
    from imgpipeline.resources import TrackingResource
    from imgpipeline.vision import truth
    from imgpipeline.vision.tracking import TRACKERS

    if fps <= 0 or every < 1 or seeds < 1:
        raise ConfigError("--fps must be over 0, --every and --seeds at least 1")
    sequences = [truth.read(truth.packaged(n)) for n in ("TUD-Campus", "TUD-Stadtmitte")] if not paths \
        else [truth.read(p) for p in paths]
    sequences = [truth.every(s, every) for s in sequences]
    rate = fps / every
    base = TrackingResource.from_env().settings()
    rows = []
    for sequence in sequences:
        for kind in TRACKERS:
            runs = [truth.score(sequence, rate, replace(base, kind=kind), truth.Perturbation(seed=seed))
                    for seed in range(seeds)]
            row = {"sequence": sequence.name, "tracker": kind, "frames": runs[0]["frames"],
                   "objects": runs[0]["objects"], "seeds": seeds}
            for key in ("mota", "idf1", "hota", "id_switches", "distinct_error", "crossing_error",
                        "detections_per_s"):
                values = [r[key] for r in runs if r[key] is not None]
                row[key] = round(statistics.mean(values), 4) if values else None
            rows.append(row)
    result = {"fps": rate, "every": every, "default": base.kind, "perturbation": asdict(truth.Perturbation()),
              "rows": rows}
    if as_json:
        print(json.dumps(result, indent=2))
        with contextlib.redirect_stdout(sys.stderr):  # standard output stays the JSON alone
            write_result("tracking_truth", result)
    else:
        print_truth(result)
        write_result("tracking_truth", result)
    return result


def print_truth(result: dict) -> None:
    p = result["perturbation"]
    print(f"at {result['fps']:g} frames/s; detections from the truth with jitter {p['jitter']:.0%} of a "
          f"box's size, {p['miss_rate']:.0%} missed, occlusions of {p['occlusion_frames']} frames "
          f"({p['occlusion_rate']:.0%} per object and frame), {p['false_positives']:g} false positives a "
          f"frame; means of {result['rows'][0]['seeds']} seeds")
    print(f"{'sequence':<16} {'tracker':<10} {'MOTA':>6} {'IDF1':>6} {'HOTA':>6} {'IDsw':>5} "
          f"{'distinct':>9} {'crossings':>10} {'det/s':>8}")
    for r in result["rows"]:
        mark = " *" if r["tracker"] == result["default"] else ""
        crossing = "-" if r["crossing_error"] is None else f"{r['crossing_error']:+.0%}".replace("+", "")
        print(f"{r['sequence']:<16} {r['tracker']:<10} {r['mota']:>6.3f} {r['idf1']:>6.3f} {r['hota']:>6.3f} "
              f"{r['id_switches']:>5.1f} {r['distinct_error']:>+9.1%} {crossing:>10} "
              f"{r['detections_per_s']:>8.0f}{mark}")
    print(f"* the tracker in use ({result['default']}); distinct: counted objects against the truth's; "
          "crossings: counted crossings each way that differ from the truth's, against its crossings")
