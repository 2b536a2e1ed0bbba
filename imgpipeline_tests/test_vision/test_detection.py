"""The one detection type: what the detector finds, the landing record holds, tracking and counting take,
alert rules look at and drawing draws (vision/detection.py)."""

import dataclasses
import json
from datetime import UTC, datetime

import numpy as np

from imgpipeline.vision import counting, drawing
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.rules.base import subject
from imgpipeline.vision.tracking import TrackedFrame, TrackerSettings, assign
from imgpipeline_tests.scenes import frames_of, moving

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_a_detection_lands_as_the_landing_record_has_always_held_it():
    found = Detection(class_id=0, class_name="person", confidence=0.93, box=(1, 2, 30, 40), index=2,
                      track_id=7)
    # The same keys in the same order, the box a list: where it is in its frame and its track are not landed.
    assert json.dumps(found.as_record()) == (
        '{"class_id": 0, "class_name": "person", "confidence": 0.93, "box": [1, 2, 30, 40]}')


def test_one_detection_goes_through_tracking_counting_rules_and_drawing_as_it_is():
    frames = [TrackedFrame(fid, when.timestamp(), [
        Detection(class_name=c, confidence=conf, box=box, index=i) for i, (c, conf, box) in enumerate(seen)])
        for fid, when, seen in frames_of([moving("person", 100, 540, 0, 6)], START, 8, 5.0)]
    ids = assign([], frames, TrackerSettings())
    tracked = counting.from_tracker(frames, ids, 640, 480)
    confirmed = [d for f in tracked for d in f.tracked]
    assert confirmed and {d.track_id for d in confirmed} == set(ids.values())
    # Counting gives each detection its track, nothing else of it changes.
    first = next(d for f in frames for d in f.observations if (f.frame_id, d.index) in ids)
    assert confirmed[0] == dataclasses.replace(first, track_id=confirmed[0].track_id)
    assert subject(confirmed[0]) == (confirmed[0].track_id, first.index, "person")
    canvas = np.zeros((480, 640, 3), np.uint8)
    assert drawing.draw_detections(canvas, confirmed[:1]).any()  # no class id: drawn in its name's colour
