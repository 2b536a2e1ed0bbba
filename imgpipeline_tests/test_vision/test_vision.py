from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from imgpipeline.cli.fetch import sample
from imgpipeline.resources import DetectorResource
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg, measure_quality


@pytest.fixture(scope="module")
def detector():
    return DetectorResource().load()


def test_bus_photo_has_people_and_a_bus(detector):
    found = detector.detect(decode_image(sample("bus.jpg").read_bytes()))
    names = [d.class_name for d in found]
    assert names.count("person") >= 3
    assert "bus" in names
    height, width = decode_image(sample("bus.jpg").read_bytes()).shape[:2]
    for d in found:
        x, y, w, h = d.box
        assert 0 < w <= width and 0 < h <= height and 0.25 <= d.confidence <= 1


def test_class_filter_keeps_only_asked_classes():
    only_bus = DetectorResource(classes=["bus"]).load()
    found = only_bus.detect(decode_image(sample("bus.jpg").read_bytes()))
    assert [d.class_name for d in found] == ["bus"]
    with pytest.raises(ValueError, match="unknown class names"):
        DetectorResource(classes=["unicorn"]).load()


def test_detector_pool_in_threads_finds_what_one_detector_finds(detector):
    images = [decode_image(sample(name).read_bytes()) for name in ("bus.jpg", "zidane.jpg")] * 3
    pool = DetectorResource(workers=2).load_pool()
    assert pool.size == 2 and pool.name == detector.name
    with ThreadPoolExecutor(max_workers=3) as threads:
        in_parallel = list(threads.map(pool.detect, images))
    # One OpenCV thread per net may round the last digit differently from the shared net.
    def rounded(found):
        return [(d.class_name, round(d.confidence, 2), d.box) for d in found]
    assert [rounded(f) for f in in_parallel] == [rounded(detector.detect(i)) for i in images]


def test_sharpness_is_the_variance_of_the_laplacian():
    photo = decode_image(sample("zidane.jpg").read_bytes())
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    assert measure_quality(photo).sharpness == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).var(), abs=1e-3)


def test_quality_metrics_tell_dark_flat_and_blurred_frames():
    photo = decode_image(sample("zidane.jpg").read_bytes())
    normal = measure_quality(photo)
    dark = measure_quality((photo * 0.1).astype(np.uint8))
    blurred = measure_quality(cv2.GaussianBlur(photo, (15, 15), 5))
    flat = measure_quality(np.full((50, 50, 3), 128, np.uint8))
    assert dark.brightness < normal.brightness / 5
    assert blurred.sharpness < normal.sharpness / 4
    assert flat.contrast == 0 and flat.sharpness == 0 and flat.brightness == 128


def test_decode_refuses_garbage_and_round_trips_jpeg():
    with pytest.raises(UndecodableImage):
        decode_image(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UndecodableImage, match="empty"):
        decode_image(b"")
    image = np.zeros((20, 30, 3), np.uint8)
    assert decode_image(encode_jpeg(image)).shape == (20, 30, 3)
