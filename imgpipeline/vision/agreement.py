"""How far one engine's detections agree with the reference's on the same frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from imgpipeline.vision.detection import Detection

MATCH_IOU = 0.9  # the same box, a pixel or two apart
LOOSE_IOU = 0.5  # the same object, its box moved
CONFIDENT = 0.5  # a reference box this sure must be found by any precision worth running


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    inter_h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Agreement:
    at_iou: float = MATCH_IOU
    reference: int = 0  # the reference's boxes
    other: int = 0
    matched: int = 0  # same class, IoU ≥ at_iou
    identical: int = 0  # matched with the same box and confidence within 0.001
    confidence_diffs: list[float] = field(default_factory=list)
    unmatched_reference: list[float] = field(default_factory=list)  # their confidences
    unmatched_other: list[float] = field(default_factory=list)
    per_class: dict[str, list[int]] = field(default_factory=dict)  # class → [matched, reference boxes]

    @property
    def matched_share(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def confident_missed(self) -> int:
        """Reference boxes of at least CONFIDENT confidence left unmatched."""
        return sum(c >= CONFIDENT for c in self.unmatched_reference)

    def summary(self) -> dict:
        diffs = sorted(self.confidence_diffs)
        p95 = diffs[min(len(diffs) - 1, int(0.95 * len(diffs)))] if diffs else 0.0
        return {
            "iou": self.at_iou,
            "reference_boxes": self.reference, "boxes": self.other, "matched": self.matched,
            "matched_share": round(self.matched_share, 4), "identical": self.identical,
            "confident_missed": self.confident_missed,
            "mean_confidence_diff": round(sum(diffs) / len(diffs), 4) if diffs else 0.0,
            "p95_confidence_diff": round(p95, 4),
            "max_confidence_diff": round(max(diffs, default=0.0), 4),
            "recall_per_class": {name: round(found / total, 4)
                                 for name, (found, total) in sorted(self.per_class.items())},
            "unmatched_reference_scores": sorted(round(c, 3) for c in self.unmatched_reference),
            "unmatched_scores": sorted(round(c, 3) for c in self.unmatched_other),
        }


def compare(reference: Sequence[Sequence[Detection]], other: Sequence[Sequence[Detection]],
            at_iou: float = MATCH_IOU) -> Agreement:
    """Frame by frame, each reference box (most confident first) takes the best unmatched box of
    the same class at IoU ≥ `at_iou`."""
    result = Agreement(at_iou=at_iou)
    for expected, found in zip(reference, other, strict=True):
        result.reference += len(expected)
        result.other += len(found)
        free = list(found)
        for want in sorted(expected, key=lambda d: -d.confidence):
            tally = result.per_class.setdefault(want.class_name, [0, 0])
            tally[1] += 1
            scored = [(iou(want.box, d.box), i) for i, d in enumerate(free) if d.class_id == want.class_id]
            best = max(scored, default=(0.0, -1))
            if best[0] < at_iou:
                result.unmatched_reference.append(want.confidence)
                continue
            got = free.pop(best[1])
            diff = abs(got.confidence - want.confidence)
            result.matched += 1
            tally[0] += 1
            result.confidence_diffs.append(diff)
            result.identical += got.box == want.box and diff <= 0.001
        result.unmatched_other += [d.confidence for d in free]
    return result
