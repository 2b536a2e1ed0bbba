"""Frame sources: a folder of images (once or watched) and a video file or RTSP stream."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2

from imgpipeline.ingest.producer import Frame
from imgpipeline.vision.quality import UndecodableImage, decode_image, encode_jpeg

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`1280x720` → (1280, 720): the box a frame is shrunk to fit (never enlarged)."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise ValueError(f"--max-size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
    return int(match.group(1)), int(match.group(2))


def fit(image, max_size: tuple[int, int] | None):
    if not max_size:
        return image
    height, width = image.shape[:2]
    scale = min(max_size[0] / width, max_size[1] / height, 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "frame"
    return cleaned[:128]


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def image_frame(path: Path, frame_id: str, max_size: tuple[int, int] | None) -> Frame:
    """A frame from an image file; captured at the file's modification time (UTC)."""
    data = path.read_bytes()
    image = decode_image(data)
    resized = fit(image, max_size)
    if resized is not image or path.suffix.lower() not in (".jpg", ".jpeg"):
        data = encode_jpeg(resized)
    height, width = resized.shape[:2]
    captured = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return Frame(frame_id, data, captured, width, height)


def image_frames(folder: Path, source_id: str, *, sequential: bool = False,
                 max_size: tuple[int, int] | None = None) -> Iterator[Frame | Exception]:
    """Frames of every image below a folder, in name order; a bad file yields its error."""
    for index, path in enumerate(image_files(folder), start=1):
        frame_id = f"{source_id}-{index:06d}" if sequential else safe_id(path.stem)
        try:
            yield image_frame(path, frame_id, max_size)
        except (OSError, UndecodableImage) as exc:
            yield ValueError(f"{path}: {exc}")


def watch_frames(folder: Path, *, interval_s: float = 1.0, max_size=None,
                 stop: Callable[[], bool] = lambda: False) -> Iterator[Frame | Exception]:
    """New image files as they appear; a file is read once its size stops changing.

    The producer's ledger skips what was sent before a restart.
    """
    seen: set[Path] = set()
    sizes: dict[Path, int] = {}
    while not stop():
        for path in image_files(folder):
            if path in seen:
                continue
            size = path.stat().st_size
            if sizes.get(path) != size:
                sizes[path] = size  # still being written, or new: look again next round
                continue
            seen.add(path)
            try:
                yield image_frame(path, safe_id(path.stem), max_size)
            except (OSError, UndecodableImage) as exc:
                yield ValueError(f"{path}: {exc}")
        time.sleep(interval_s)


def video_frames(source: str, source_id: str, *, fps: float | None = None,
                 max_frames: int | None = None, start: datetime | None = None,
                 max_size: tuple[int, int] | None = None) -> Iterator[Frame | Exception]:
    """Frames of a video file or stream, sampled at `fps` (every frame when None).

    captured_at = start (default: now) + the stream's own timestamp of the frame.
    Frame ids are `<source>-<frame number in the stream>`, so a re-run gives the same ids.
    """
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise ValueError(f"cannot open video {source!r}")
    start = start or datetime.now(UTC)
    stream_fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    step_ms = 1000.0 / fps if fps else 0.0
    next_ms = 0.0
    sent = index = 0
    try:
        while max_frames is None or sent < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            if not position_ms and index:
                position_ms = index * 1000.0 / stream_fps
            index += 1
            if position_ms + 1e-6 < next_ms:
                continue
            next_ms = position_ms + step_ms
            image = fit(image, max_size)
            height, width = image.shape[:2]
            captured = start + timedelta(milliseconds=position_ms)
            yield Frame(f"{source_id}-{index:06d}", encode_jpeg(image), captured, width, height)
            sent += 1
    finally:
        capture.release()


def video_frame_count(source: str, fps: float | None, max_frames: int | None) -> int | None:
    capture = cv2.VideoCapture(source)
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        stream_fps = capture.get(cv2.CAP_PROP_FPS) or 0
    finally:
        capture.release()
    if total <= 0:
        return max_frames
    if fps and stream_fps:
        total = int(total * min(1.0, fps / stream_fps))
    return min(total, max_frames) if max_frames else total
