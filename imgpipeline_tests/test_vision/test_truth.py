"""Tracking scored against ground truth (vision/truth.py): the default tracker's figures on the packaged
MOTChallenge sequences stay above the floors docs/tracking.md states, and any gt.txt is read the same way
or refused with the line that is wrong."""

from __future__ import annotations

import json
import statistics

import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.main import main
from imgpipeline.vision import truth
from imgpipeline.vision.tracking import TrackerSettings

# The default tracker's floors (SORT at 25 frames/s), means of three seeds (docs/tracking.md).
FLOORS = {"idf1": 0.75, "mota": 0.70, "hota": 0.58}
MAX_DISTINCT_ERROR = 0.30  # |counted objects - true objects| / true objects
MAX_CROSSING_ERROR = 0.30


@pytest.mark.parametrize("sequence", ["TUD-Campus", "TUD-Stadtmitte"])
def test_the_default_tracker_scores_above_its_floors_on_ground_truth(sequence):
    sequence_truth = truth.read(truth.packaged(sequence))
    runs = [truth.score(sequence_truth, perturbation=truth.Perturbation(seed=seed)) for seed in range(3)]
    means = {key: statistics.mean(r[key] for r in runs)
             for key in (*FLOORS, "distinct_error", "crossing_error")}
    assert all(means[key] >= floor for key, floor in FLOORS.items()), means
    assert abs(means["distinct_error"]) <= MAX_DISTINCT_ERROR, means
    assert means["crossing_error"] <= MAX_CROSSING_ERROR, means
    assert runs[0]["objects"] == len(sequence_truth.ids) and runs[0]["true_crossings"] > 0


def test_the_scores_tell_a_good_tracking_from_a_bad_one():
    """The same truth tracked with settings that confirm nothing for long, and with perfect detections."""
    campus = truth.read(truth.packaged())
    clean = truth.Perturbation(jitter=0, miss_rate=0, occlusion_rate=0, false_positives=0,
                               confidence=(0.9, 0.95))
    perfect = truth.score(campus, perturbation=clean)
    assert perfect["mota"] > 0.9 and perfect["idf1"] > 0.9 and perfect["distinct_error"] == 0
    broken = truth.score(campus, settings=TrackerSettings(minimum_frames=40))
    assert broken["mota"] < 0.5 and broken["idf1"] < 0.6 and broken["distinct_error"] < -0.3


def gt(tmp_path, text: str):
    path = tmp_path / "gt.txt"
    path.write_text(text)
    return path


def test_a_mot17_file_is_read_with_its_ignored_lines_left_out(tmp_path):
    lines = [f"{f},1,{10 + f},20,30,60,1,1,1.0" for f in range(1, 6)]
    lines += ["3,2,100,20,30,60,0,1,1.0",  # flag 0: ignored
              "3,3,200,20,30,60,1,7,1.0",  # a static person (class 7): not scored
              "4,4,300,20,30,60,1,1,0.5"]
    sequence = truth.read(gt(tmp_path, "\n".join(lines) + "\n\n"), "mine")
    assert sequence.name == "mine" and sequence.ids == {1, 4} and sequence.frames == [1, 2, 3, 4, 5]
    halved = truth.every(sequence, 2)
    assert halved.frames == [1, 2, 3] and halved.boxes[2] == sequence.boxes[3]


@pytest.mark.parametrize(("text", "said"), [
    ("", "no box to score"),
    ("1,1,10,20,30,60,0,1,1\n", "no box to score"),
    ("1,1,10,20\n", "line 1: not a MOTChallenge line"),
    ("1,1,10,20,30,60\nframe,id,x,y,w,h\n", "line 2: not a MOTChallenge line"),
    ("1,1,10,20,nan,60\n", "line 1: not a MOTChallenge line"),
    ("1,1,10,20,-30,60\n", "line 1: frame and id must be whole"),
    ("0,1,10,20,30,60\n", "line 1: frame and id must be whole"),
    ("1.5,1,10,20,30,60\n", "line 1: frame and id must be whole"),
    ("1,1,10,20,30,60\n1,1,15,20,30,60\n", "line 2: id 1 twice in frame 1"),
])
def test_a_gt_file_that_is_not_one_is_refused_with_the_line_at_fault(tmp_path, text, said):
    with pytest.raises(ConfigError, match=said):
        truth.read(gt(tmp_path, text))


def test_a_binary_or_missing_gt_file_is_refused(tmp_path):
    (tmp_path / "gt.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="cannot read it"):
        truth.read(tmp_path / "gt.txt")
    with pytest.raises(ConfigError, match="cannot read it"):
        truth.read(tmp_path / "missing.txt")


def test_bench_tracking_truth_scores_every_tracker_on_a_given_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    path = tmp_path / "campus" / "gt.txt"
    path.parent.mkdir()
    path.write_text(truth.packaged().read_text())
    assert main(["bench", "tracking", "--truth", str(path), "--seeds", "1", "--json"]) in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert [r["tracker"] for r in result["rows"]] == ["bytetrack", "ocsort", "botsort", "sort"]
    assert all(r["sequence"] == "campus" and r["objects"] == 8 for r in result["rows"])
    assert result["default"] == "sort"
    assert main(["bench", "tracking", "--truth", str(path), "--every", "5", "--seeds", "1", "--json"]) in (
        0, None)
    slower = json.loads(capsys.readouterr().out)
    assert slower["fps"] == 5
    assert slower["rows"][0]["frames"] == 15


def test_an_unknown_tracker_fails_at_load_saying_what_to_write(monkeypatch):
    from imgpipeline.resources import TrackingResource

    monkeypatch.setenv("IMGPIPELINE_TRACKER", "deepsort")
    with pytest.raises(ConfigError, match="IMGPIPELINE_TRACKER='deepsort' is not known; use one of "):
        TrackingResource.from_env()
    monkeypatch.setenv("IMGPIPELINE_TRACKER", " SORT ")
    assert TrackingResource.from_env().settings().kind == "sort"
