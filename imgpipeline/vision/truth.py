"""Tracking scored against ground truth: a MOTChallenge `gt.txt`, detections made from it the way a real
detector errs (seeded), the project's tracking and counting run over them, and the result scored.

The truth is MOTChallenge's: `frame, id, left, top, width, height, flag, class, visibility` per line in
MOT16/17 (nine columns), `frame, id, left, top, width, height, flag, x, y, z` in the 2015 format (ten:
world coordinates, or -1), frames from 1. A line whose flag is 0 is not scored (MOTChallenge's
"ignore"), nor is one of a class other than 1 (pedestrian).

The detections are the truth's boxes, perturbed: each edge jittered by a share of its box's size, a share
of the detections missed at random, occlusions (an object missed for a run of frames), confidences
spread as a detector's are (some true detections too weak to start a track), and false positives with
low confidence. They go through `tracking.assign` (the hourly build's tracking, the same
tracker, settings and ids) at the sequence's frame rate, and through `counting.count` on two lines drawn
across the way the scene's objects go; the truth's own tracks go through the same counting. The scores:
MOTA, IDF1 and ID switches (motmetrics), HOTA (`trackers`' implementation of TrackEval's), and the
errors of the numbers people read: distinct objects, and crossings each way.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from imgpipeline import ConfigError
from imgpipeline.vision import counting, zones
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.tracking import TrackedFrame, TrackerSettings, assign

CLASS = "person"
TUD_FPS = 25.0  # the TUD sequences' frame rate (MOTChallenge 2015)
# Frames on the new side before a crossing counts, on the lines drawn across a scene: at 25 frames/s a
# box's jitter flickers its foot across a line; a site's zones file states the same (`min_frames`).
LINE_FRAMES = 3


@dataclass(frozen=True)
class Truth:
    name: str
    boxes: dict[int, list[tuple[int, tuple[float, float, float, float]]]]  # frame → [(id, x, y, w, h)]

    @property
    def frames(self) -> list[int]:
        return sorted(self.boxes)

    @property
    def ids(self) -> set[int]:
        return {i for rows in self.boxes.values() for i, _ in rows}

    def size(self) -> tuple[int, int]:
        """The scene's size as far as its boxes say (gt.txt names none)."""
        boxes = [b for rows in self.boxes.values() for _, b in rows]
        return (int(max(x + w for x, _, w, _ in boxes)) + 1, int(max(y + h for _, y, _, h in boxes)) + 1)


def every(truth: Truth, n: int) -> Truth:
    """Every nth frame of a sequence, numbered again from 1 (a camera sampled n times slower)."""
    if n == 1:
        return truth
    kept = range(1, max(truth.frames) + 1, n)
    return Truth(truth.name, {i: truth.boxes[f] for i, f in enumerate(kept, 1) if f in truth.boxes})


def packaged(name: str = "TUD-Campus") -> Path:
    """A MOTChallenge sequence's gt.txt as motmetrics ships it (TUD-Campus, TUD-Stadtmitte)."""
    path = Path(str(files("motmetrics") / "data" / name / "gt.txt"))
    if not path.exists():
        raise ConfigError(f"motmetrics ships no {name}/gt.txt (it has TUD-Campus and TUD-Stadtmitte)")
    return path


def read(path: Path, name: str | None = None) -> Truth:
    """A gt.txt; a line that is not one says where and what is wrong."""
    boxes: dict[int, list] = defaultdict(list)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as a MOTChallenge gt.txt ({exc})") from None
    seen: set[tuple[int, int]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.replace(" ", "").split(",")]
        except ValueError:
            values = []
        if len(values) < 6 or not all(np.isfinite(values)):
            raise ConfigError(f"{path} line {number}: not a MOTChallenge line (frame, id, left, top, width, "
                              f"height[, flag, class, visibility]): {line[:80]!r}")
        frame, ident, x, y, w, h = values[:6]
        if frame < 1 or ident < 0 or frame != int(frame) or ident != int(ident) or w <= 0 or h <= 0:
            raise ConfigError(f"{path} line {number}: frame and id must be whole (frames from 1) and the box "
                              f"of positive size: {line[:80]!r}")
        flag = values[6] if len(values) > 6 else 1
        # MOT16 on: flag, class, visibility (9 columns); MOTChallenge 2015: flag, then world x, y, z (10).
        kind = values[7] if len(values) == 9 else -1
        if flag == 0 or kind not in (-1, 1):
            continue
        if (int(frame), int(ident)) in seen:
            raise ConfigError(f"{path} line {number}: id {int(ident)} twice in frame {int(frame)}")
        seen.add((int(frame), int(ident)))
        boxes[int(frame)].append((int(ident), (x, y, w, h)))
    if not boxes:
        raise ConfigError(f"{path}: no box to score (an empty file, or every line ignored)")
    return Truth(name or Path(path).parent.name or Path(path).stem, dict(boxes))


@dataclass(frozen=True)
class Perturbation:
    """How the detections made from the truth err, seeded: stated with every figure."""

    seed: int = 0
    jitter: float = 0.05  # σ of each box edge, as a share of the box's width or height
    miss_rate: float = 0.10  # detections missed at random
    occlusion_rate: float = 0.01  # per object and frame, the chance an occlusion begins …
    occlusion_frames: int = 8  # … during which it is not detected
    false_positives: float = 0.3  # per frame, on average (confidence 0.2-0.45: they seldom start a track)
    # A true detection's confidence: a real detector scores hard cases (small, partly hidden) low, and a
    # third of these fall below the 0.5 a track needs to start; only a tracker that associates weak
    # detections keeps those objects.
    confidence: tuple[float, float] = (0.25, 0.95)


def detections(truth: Truth, fps: float, p: Perturbation) -> list[TrackedFrame]:
    """The truth's boxes as a detector would give them, one frame per truth frame (empty ones too)."""
    rng = random.Random(p.seed)
    width, height = truth.size()
    hidden: dict[int, int] = {}  # id → frames of occlusion left
    found = []
    for frame in range(1, max(truth.frames) + 1):
        observations = []
        for ident, (x, y, w, h) in sorted(truth.boxes.get(frame, [])):
            if hidden.get(ident, 0) > 0:
                hidden[ident] -= 1
                continue
            if rng.random() < p.occlusion_rate:
                hidden[ident] = p.occlusion_frames - 1
                continue
            if rng.random() < p.miss_rate:
                continue
            left, right = x + rng.gauss(0, p.jitter * w), x + w + rng.gauss(0, p.jitter * w)
            top, bottom = y + rng.gauss(0, p.jitter * h), y + h + rng.gauss(0, p.jitter * h)
            box = (round(left), round(top), max(1, round(right - left)), max(1, round(bottom - top)))
            observations.append((box, rng.uniform(*p.confidence)))
        for _ in range(_poisson(rng, p.false_positives)):
            w, h = rng.uniform(20, 80), rng.uniform(50, 200)
            box = (round(rng.uniform(0, width - w)), round(rng.uniform(0, height - h)), round(w), round(h))
            observations.append((box, rng.uniform(0.2, 0.45)))
        found.append(TrackedFrame(f"{truth.name}-{frame:06d}", frame / fps, [
            Detection(index=i, class_name=CLASS, confidence=confidence, box=box)
            for i, (box, confidence) in enumerate(observations)]))
    return found


def _poisson(rng: random.Random, mean: float) -> int:
    n, limit, product = 0, np.exp(-mean), rng.random()
    while product > limit:
        n += 1
        product *= rng.random()
    return n


def lines(truth: Truth) -> zones.Zones:
    """Two lines across the way the scene's objects go (perpendicular to their main direction of travel),
    a third and two thirds of the way through where they stand (bottom centres)."""
    feet: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for frame in truth.frames:
        for ident, (x, y, w, h) in truth.boxes[frame]:
            feet[ident].append((x + w / 2, y + h))
    dx = sum(abs(f[-1][0] - f[0][0]) for f in feet.values())
    dy = sum(abs(f[-1][1] - f[0][1]) for f in feet.values())
    axis = 0 if dx >= dy else 1
    width, height = truth.size()
    specs = []
    for name, q in (("first", 100 / 3), ("second", 200 / 3)):
        at = float(np.percentile([p[axis] for f in feet.values() for p in f], q))
        start, end = ([at, 0], [at, height]) if axis == 0 else ([0, at], [width, at])
        specs.append(f"{{name: {name}, start: [{start[0]:.1f}, {start[1]:.1f}], end: [{end[0]:.1f}, "
                     f"{end[1]:.1f}], min_frames: {LINE_FRAMES}}}")
    spec = f"sources: {{{truth.name}: {{lines: [{', '.join(specs)}]}}}}"
    return zones.parse(spec.encode(), "lines across the scene")


def score(truth: Truth, fps: float = TUD_FPS, settings: TrackerSettings | None = None,
          perturbation: Perturbation | None = None) -> dict:
    """Track the perturbed detections and score the tracks and their counts against the truth."""
    import motmetrics as mm
    from trackers.eval import compute_hota_metrics

    settings, perturbation = settings or TrackerSettings(), perturbation or Perturbation()
    frames = detections(truth, fps, perturbation)
    started = time.perf_counter()
    ids = assign([], frames, settings)
    track_s = time.perf_counter() - started

    accumulator = mm.MOTAccumulator(auto_id=True)
    gt_ids, hyp_ids, similarity = [], [], []
    gt_index: dict[int, int] = {}
    hyp_index: dict[int, int] = {}
    for n, frame in enumerate(frames, 1):
        gt = truth.boxes.get(n, [])
        hyp = [(ids[frame.frame_id, o.index], o.box) for o in frame.observations
               if (frame.frame_id, o.index) in ids]
        overlap = iou([b for _, b in gt], [b for _, b in hyp])
        # A pair counts as a match at IoU 0.5 or more (MOTChallenge's threshold): its distance is 1 - IoU.
        accumulator.update([i for i, _ in gt], [i for i, _ in hyp],
                           np.where(overlap >= 0.5, 1 - overlap, np.nan))
        gt_ids.append(np.array([gt_index.setdefault(i, len(gt_index)) for i, _ in gt], dtype=int))
        hyp_ids.append(np.array([hyp_index.setdefault(i, len(hyp_index)) for i, _ in hyp], dtype=int))
        similarity.append(overlap)
    summary = mm.metrics.create().compute(accumulator, metrics=["mota", "idf1", "num_switches"], name="s")
    hota = compute_hota_metrics(gt_ids, hyp_ids, similarity)

    geometry = lines(truth)
    width, height = truth.size()
    ours = counting.count(counting.from_tracker(frames, ids, width, height), geometry, truth.name,
                          -np.inf, np.inf)
    real = counting.count(_truth_frames(truth, fps, width, height), geometry, truth.name, -np.inf, np.inf)
    crossings = {}
    for line in ("first", "second"):
        for way in ("in", "out"):
            crossings[f"{line}_{way}"] = (sum(c.line == line and c.way == way for c in ours.crossings),
                                          sum(c.line == line and c.way == way for c in real.crossings))
    counted = sum(o for o, _ in crossings.values())
    true_crossings = sum(t for _, t in crossings.values())
    wrong = sum(abs(o - t) for o, t in crossings.values())
    distinct = len(set(ids.values()))
    return {
        "sequence": truth.name, "tracker": settings.kind, "frames": len(frames), "fps": fps,
        "objects": len(truth.ids), "mota": round(float(summary["mota"].iloc[0]), 4),
        "idf1": round(float(summary["idf1"].iloc[0]), 4), "hota": round(float(hota["HOTA"]), 4),
        "id_switches": int(summary["num_switches"].iloc[0]),
        "distinct": distinct, "distinct_error": round((distinct - len(truth.ids)) / len(truth.ids), 4),
        "crossings": counted, "true_crossings": true_crossings,
        "crossing_error": round(wrong / true_crossings, 4) if true_crossings else None,
        "crossings_each_way": {k: {"counted": o, "true": t} for k, (o, t) in crossings.items()},
        "detections_per_s": round(sum(len(f.observations) for f in frames) / track_s, 1),
        "perturbation": asdict(perturbation),
    }


def iou(a: list, b: list) -> np.ndarray:
    """IoU of every pair of (x, y, w, h) boxes: len(a) × len(b). (motmetrics' own needs NumPy 1.)"""
    a, b = (np.array(boxes, dtype=float).reshape(-1, 4) for boxes in (a, b))
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _truth_frames(truth: Truth, fps: float, width: int, height: int) -> list[counting.CountedFrame]:
    return [counting.CountedFrame(f"{truth.name}-{n:06d}", n / fps, width, height, [
        Detection(track_id=ident, class_name=CLASS, confidence=1.0, box=tuple(round(v) for v in box))
        for ident, box in sorted(truth.boxes.get(n, []))]) for n in range(1, max(truth.frames) + 1)]
