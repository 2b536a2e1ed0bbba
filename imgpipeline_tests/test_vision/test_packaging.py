"""What the environment must hold after `pip install -e .`: one OpenCV, 4.x (OpenCV 5 has no
Darknet importer), beside the tracking libraries that require the GUI build by name."""

from importlib.metadata import distributions

import numpy as np

from imgpipeline.environment import models_dir
from imgpipeline.vision.model_files import CFG, verify_weights


def test_one_opencv_4_that_reads_the_darknet_model():
    import cv2

    installed = sorted({d.metadata["Name"].lower() for d in distributions()
                        if d.metadata["Name"].lower().startswith("opencv")})
    assert installed == ["opencv-python"]
    assert cv2.__version__.split(".")[0] == "4"
    net = cv2.dnn.readNetFromDarknet(str(models_dir() / CFG), str(verify_weights()))
    assert net.getUnconnectedOutLayersNames() == ("yolo_30", "yolo_37")


def test_bytetrack_gives_an_id_only_to_a_confirmed_track():
    import supervision as sv
    from trackers import ByteTrackTracker

    tracker = ByteTrackTracker(frame_rate=5, minimum_consecutive_frames=3)
    ids = []
    for step in range(6):  # one box walking right, seen at 5 frames/s
        box = np.array([[10 + 4 * step, 20, 60 + 4 * step, 90]], np.float32)
        found = tracker.update(sv.Detections(xyxy=box, confidence=np.array([0.9]), class_id=np.array([0])))
        ids.append(int(found.tracker_id[0]))
    # -1 until the track has lasted minimum_consecutive_frames, then one id that stays.
    assert ids[:2] == [-1, -1]
    assert len(set(ids[2:])) == 1 and ids[2] >= 0
