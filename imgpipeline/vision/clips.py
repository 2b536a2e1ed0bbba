"""Clips: pictures at their capture times encoded as VP9 in WebM, which Chromium and Firefox play without
a plugin (the viewer serves a clip whole, without byte ranges). A picture shows from its capture time to
the next one's, so a clip keeps its frames' own rate, however uneven."""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction

import cv2
import numpy as np

MEDIA_TYPE = "video/webm"
MAX_SIDE = 960  # larger frames are scaled down: a clip is evidence to look at, not the frames themselves
MS = Fraction(1, 1000)
# Real-time speed and constant quality: 250 frames of 640×272 in about half a second on one core, ~0.5 MB.
OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": "34", "b:v": "0", "row-mt": "1"}


def clip_size(width: int, height: int) -> tuple[int, int]:
    """The clip's size for frames of this size: no side longer than MAX_SIDE, each even (VP9's 4:2:0)."""
    scale = min(1.0, MAX_SIDE / width, MAX_SIDE / height)
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


def encode_webm(pictures: Iterable[tuple[float, np.ndarray]]) -> tuple[bytes, int]:
    """The pictures (capture time in seconds, BGR image), in time order, as a WebM clip; and how many
    frames it holds. Each is encoded as it comes (a long clip is never held decoded); a picture of another
    size than the first is scaled to the clip's. Fails with ValueError when there is no picture, or the
    encoder refuses them."""
    import av

    try:
        return _encode(av, pictures)
    except av.error.FFmpegError as exc:
        raise ValueError(f"the clip could not be encoded: {exc}") from None


def _encode(av, pictures: Iterable[tuple[float, np.ndarray]]) -> tuple[bytes, int]:
    out, count, first, last_pts, stream = io.BytesIO(), 0, None, -1, None
    with av.open(out, "w", format="webm") as container:
        for seconds, image in pictures:
            if stream is None:
                first = seconds
                stream = container.add_stream("libvpx-vp9", rate=25, options=OPTIONS)
                stream.width, stream.height = clip_size(image.shape[1], image.shape[0])
                stream.pix_fmt, stream.time_base = "yuv420p", MS
            if image.shape[1] != stream.width or image.shape[0] != stream.height:
                image = cv2.resize(image, (stream.width, stream.height), interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            last_pts = max(round((seconds - first) * 1000), last_pts + 1)  # strictly later, to the ms
            frame.pts, frame.time_base = last_pts, MS
            container.mux(stream.encode(frame))
            count += 1
        if stream is None:
            raise ValueError("a clip needs at least one picture")
        container.mux(stream.encode())
    return out.getvalue(), count
