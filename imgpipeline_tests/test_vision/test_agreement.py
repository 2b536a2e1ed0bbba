"""Agreement with the reference, box by box: the same class at an IoU of at least 0.9 (the same box) or
0.5 (the same object, its box moved), the recall of each class, and the confident boxes lost."""

from __future__ import annotations

from imgpipeline.vision.agreement import compare
from imgpipeline.vision.detection import Detection


def box(name: str, confidence: float, x: int, y: int = 0, w: int = 100, h: int = 100) -> Detection:
    return Detection(class_id={"person": 0, "car": 2, "dog": 16}[name], class_name=name,
                     confidence=confidence, box=(x, y, w, h))


REFERENCE = [
    [box("person", 0.9, 0), box("car", 0.6, 300), box("dog", 0.3, 600)],
    [box("person", 0.8, 0), box("person", 0.27, 200)],
]
OTHER = [
    # the person 5 px over (IoU 0.90), the car 30 px over (IoU 0.54), the dog gone
    [box("person", 0.88, 5), box("car", 0.55, 330)],
    # the first person the same, the second seen as a dog, an extra car
    [box("person", 0.8, 0), box("dog", 0.3, 200), box("car", 0.26, 900)],
]


def test_boxes_match_by_class_and_overlap_at_either_threshold():
    tight, loose = compare(REFERENCE, OTHER), compare(REFERENCE, OTHER, at_iou=0.5)
    assert (tight.reference, tight.other) == (loose.reference, loose.other) == (5, 5)
    assert (tight.matched, loose.matched) == (2, 3)
    assert tight.identical == 1  # the same box and confidence: the second frame's person
    assert sorted(tight.unmatched_reference) == [0.27, 0.3, 0.6]
    assert sorted(loose.unmatched_reference) == [0.27, 0.3]
    summary = loose.summary()
    assert summary["recall_per_class"] == {"car": 1.0, "dog": 0.0, "person": round(2 / 3, 4)}
    assert summary["confident_missed"] == 0 and tight.summary()["confident_missed"] == 1  # the car
    assert summary["max_confidence_diff"] == 0.05 and summary["mean_confidence_diff"] == round(0.07 / 3, 4)
    assert summary["unmatched_scores"] == [0.26, 0.3]


def test_a_box_matches_once_and_the_more_confident_reference_box_chooses_first():
    reference = [[box("car", 0.4, 10), box("car", 0.9, 0)]]
    other = [[box("car", 0.85, 5)]]
    result = compare(reference, other, at_iou=0.5)
    assert result.matched == 1 and result.unmatched_reference == [0.4]
    assert len(result.confidence_diffs) == 1 and abs(result.confidence_diffs[0] - 0.05) < 1e-9
