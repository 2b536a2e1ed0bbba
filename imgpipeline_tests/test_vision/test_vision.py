from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from imgpipeline.cli.samples import sample
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


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG of one grey level: a few hundred KB that decode to width × height × 3 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_pixel_bomb_is_refused_from_its_header():
    bomb = png_declaring(8000, 6000)  # 48 MP in ~50 KB
    assert len(bomb) < 200_000
    with pytest.raises(UndecodableImage, match="declares 8000x6000 pixels, over the limit of 40,000,000"):
        decode_image(bomb, max_pixels=40_000_000)
    assert decode_image(png_declaring(64, 48), max_pixels=40_000_000).shape == (48, 64, 3)


def test_odd_but_real_images_still_decode():
    for image, ext in ((np.zeros((9, 7, 4), np.uint8), ".png"), (np.zeros((9, 7, 3), np.uint16), ".png"),
                       (np.zeros((9, 7, 3), np.uint8), ".webp"), (np.zeros((1, 1, 3), np.uint8), ".png")):
        data = cv2.imencode(ext, image)[1].tobytes()
        assert decode_image(data, max_pixels=40_000_000).shape[:2] == image.shape[:2]


def test_a_header_opencv_would_choke_on_is_refused():
    # A JPEG start-of-frame declaring 60000×60000: refused from the header, never handed to OpenCV.
    header = (b"\xff\xd8\xff\xc0\x00\x11\x08" + (60000).to_bytes(2, "big") * 2
              + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9")
    with pytest.raises(UndecodableImage):
        decode_image(header, max_pixels=40_000_000)
