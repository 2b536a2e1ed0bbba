"""Frame sources: a folder of images (once or watched) and a video file or RTSP stream."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import cv2

from imgpipeline.ingest.producer import Frame
from imgpipeline.redaction import shown_url
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
                 max_size: tuple[int, int] | None = None, live: LiveStream | None = None,
                 log: Callable[[str], None] | None = None) -> Iterator[Frame | Exception]:
    """Frames of a video file or a live stream, sampled at `fps` (every frame when None).

    A URL (rtsp://, http://, udp://, …) is a live stream: see `live_frames`. A file's frames are
    captured at start (default: now) + the video's own timestamp of the frame, and their ids are
    `<source>-<frame number in the video>`, so a re-run gives the same ids.
    """
    if is_live(source):
        if start is not None:
            raise ValueError("a start time applies to video files; a live stream's frames are "
                             "stamped with the time they are read")
        return live_frames(source, source_id, fps=fps, max_frames=max_frames, max_size=max_size,
                           live=live or LiveStream(), log=log or _to_stderr)
    return file_frames(source, source_id, fps=fps, max_frames=max_frames, start=start,
                       max_size=max_size)


def file_frames(source: str, source_id: str, *, fps: float | None, max_frames: int | None,
                start: datetime | None, max_size: tuple[int, int] | None) -> Iterator[Frame]:
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise ValueError(f"cannot open video {shown_url(source)!r}")
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


# http(s) is left out: a video file served over HTTP ends, and is read like a file.
LIVE_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "rtp", "srt"}

# OpenCV's FFmpeg backend reads its demuxer options from this variable when it opens a capture.
CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def is_live(source: str) -> bool:
    """True for a stream URL (rtsp://, udp://, …); False for a file path or an http(s) URL."""
    return urlsplit(source).scheme.lower() in LIVE_SCHEMES


class StreamLost(ConnectionError):
    """A live stream could not be (re)opened within the configured attempts or outage time."""


@dataclass(frozen=True)
class LiveStream:
    """How a live stream is opened, how a dead one is noticed, and how it is reopened.

    After a drop the stream is reopened after 1 s, then 2 s, 4 s, … up to `max_delay_s`; after
    `attempts` failed opens in a row, or an outage longer than `give_up_after_s`, reading ends with
    StreamLost. `rtsp_transport` applies when OPENCV_FFMPEG_CAPTURE_OPTIONS is not set (that
    variable, when set, is passed to FFmpeg as it is).
    """

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    attempts: int = 20
    give_up_after_s: float | None = 600.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    rtsp_transport: str = "tcp"

    def delay_s(self, attempt: int) -> float:
        """The wait before open attempt `attempt` (1, 2, …) after a drop."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_stream(url: str, live: LiveStream):
    """A capture of the URL through FFmpeg with open and read timeouts; closed when it failed."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(live.open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(live.read_timeout_s * 1000)]
    own_options = CAPTURE_OPTIONS not in os.environ and url.lower().startswith("rtsp")
    if own_options:
        os.environ[CAPTURE_OPTIONS] = f"rtsp_transport;{live.rtsp_transport}"
    try:
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    finally:
        if own_options:
            os.environ.pop(CAPTURE_OPTIONS, None)
    if not capture.isOpened():
        capture.release()
        return None
    return capture


def live_frames(url: str, source_id: str, *, fps: float | None = None,
                max_frames: int | None = None, max_size: tuple[int, int] | None = None,
                live: LiveStream = LiveStream(),
                log: Callable[[str], None] = _to_stderr) -> Iterator[Frame]:
    """Frames of a live stream until `max_frames`, reopening it whenever it drops.

    Frame ids are `<source>-<UTC start of this run>-<number>`, numbered 1, 2, … across reconnects,
    so they never collide across drops or producer restarts; captured_at is the wall-clock time
    the frame was read (a stream's own timestamps restart after a reconnect). `fps` samples by
    wall clock.
    """
    run_id = f"{source_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    outage = _Outage(shown_url(url), live, log)
    due = _Sampling(fps)
    sent = 0
    while max_frames is None or sent < max_frames:
        opening = time.monotonic()
        capture = open_stream(url, live)
        read = 0
        if capture is not None:
            try:
                for image in _images(capture, outage):
                    read += 1
                    if not due():
                        continue
                    sent += 1
                    yield _live_frame(f"{run_id}-{sent:06d}", image, max_size)
                    if max_frames is not None and sent >= max_frames:
                        return
            finally:
                capture.release()
        what = outage.dropped(read) if read else outage.failed_to_open(opening, capture is not None)
        outage.wait(what)


def _images(capture, outage: _Outage) -> Iterator:
    """The images of an open capture until a read fails; the first one ends an outage."""
    while True:
        ok, image = capture.read()
        if not ok:
            return
        outage.over()
        yield image


def _live_frame(frame_id: str, image, max_size: tuple[int, int] | None) -> Frame:
    """A frame read from a live stream, captured now."""
    captured = datetime.now(UTC)
    image = fit(image, max_size)
    height, width = image.shape[:2]
    return Frame(frame_id, encode_jpeg(image), captured, width, height)


class _Sampling:
    """`fps` by wall clock: called as each image is read, True when that image is due."""

    def __init__(self, fps: float | None):
        self.step_s = 1.0 / fps if fps else 0.0
        self.next_at = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = max(self.next_at + self.step_s, now)
        return True


class _Outage:
    """A live stream's time without frames: since when, the failed opens in a row, the waits."""

    def __init__(self, shown: str, live: LiveStream, log: Callable[[str], None]):
        self.shown, self.live, self.log = shown, live, log
        self.since: float | None = None  # when the stream was lost, or first failed to open
        self.was_dropped = False
        self.failed = self.waits = 0

    def over(self) -> None:
        """A frame was read: an outage going on ends (and says how long it lasted)."""
        if self.since is not None:
            verb = "reconnected to" if self.was_dropped else "opened"
            self.log(f"{verb} {self.shown} after {time.monotonic() - self.since:.1f} s")
            self.since = None

    def dropped(self, read: int) -> str:
        """It ran, then dropped: a new outage begins."""
        self.failed = self.waits = 0
        self.since, self.was_dropped = time.monotonic(), True
        return f"stream {self.shown} dropped after {read} frames"

    def failed_to_open(self, opening: float, opened: bool) -> str:
        """It did not open, or opened and gave no frame; StreamLost once that is too many or too long."""
        self.failed += 1
        self.since = opening if self.since is None else self.since
        outage_s = time.monotonic() - self.since
        if self.failed >= self.live.attempts or (self.live.give_up_after_s is not None
                                                 and outage_s >= self.live.give_up_after_s):
            raise StreamLost(f"cannot open stream {self.shown}: {self.failed} attempts in a row failed "
                             f"over {outage_s:.1f} s; giving up")
        return f"stream {self.shown} gave no frames" if opened else f"cannot open stream {self.shown}"

    def wait(self, what: str) -> None:
        """Say what happened, then wait before the next open (1 s, 2 s, 4 s, … after a drop)."""
        self.waits += 1
        delay = self.live.delay_s(self.waits)
        self.log(f"{what}; reconnecting in {delay:g} s (attempt {self.failed + 1})")
        time.sleep(delay)


def video_frame_count(source: str, fps: float | None, max_frames: int | None) -> int | None:
    if is_live(source):
        return max_frames
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
