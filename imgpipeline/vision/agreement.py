"""How far one engine's detections agree with the reference's on the same frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from imgpipeline.vision.detector import Detection

MATCH_IOU = 0.9


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
    reference: int = 0  # the reference's boxes
    other: int = 0
    matched: int = 0  # same class, IoU ≥ MATCH_IOU
    identical: int = 0  # matched with the same box and confidence within 0.001
    confidence_diffs: list[float] = field(default_factory=list)
    unmatched_reference: list[float] = field(default_factory=list)  # their confidences
    unmatched_other: list[float] = field(default_factory=list)

    @property
    def matched_share(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    def summary(self) -> dict:
        diffs = self.confidence_diffs
        return {
            "reference_boxes": self.reference, "boxes": self.other, "matched": self.matched,
            "matched_share": round(self.matched_share, 4), "identical": self.identical,
            "max_confidence_diff": round(max(diffs, default=0.0), 4),
            "unmatched_reference_scores": sorted(round(c, 3) for c in self.unmatched_reference),
            "unmatched_scores": sorted(round(c, 3) for c in self.unmatched_other),
        }


def compare(reference: Sequence[Sequence[Detection]], other: Sequence[Sequence[Detection]]) -> Agreement:
    """Frame by frame, each reference box (most confident first) takes the best unmatched box of
    the same class at IoU ≥ 0.9."""
    result = Agreement()
    for expected, found in zip(reference, other, strict=True):
        result.reference += len(expected)
        result.other += len(found)
        free = list(found)
        for want in sorted(expected, key=lambda d: -d.confidence):
            scored = [(iou(want.box, d.box), i) for i, d in enumerate(free) if d.class_id == want.class_id]
            best = max(scored, default=(0.0, -1))
            if best[0] < MATCH_IOU:
                result.unmatched_reference.append(want.confidence)
                continue
            got = free.pop(best[1])
            diff = abs(got.confidence - want.confidence)
            result.matched += 1
            result.confidence_diffs.append(diff)
            result.identical += got.box == want.box and diff <= 0.001
        result.unmatched_other += [d.confidence for d in free]
    return result
