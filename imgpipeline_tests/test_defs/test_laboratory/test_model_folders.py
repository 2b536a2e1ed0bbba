"""The model folders the code location finds when it loads: a folder it cannot read, or whose name
Dagster would make another model's op name, is left out with why in the UI; the rest load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from imgpipeline.cli.models import add
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.vision import models
from imgpipeline_tests.onnx_models import colour_detector, names_file
from imgpipeline_tests.test_defs.test_definitions import validate

# What a code server serves the UI: every job, sensor and schedule resolved, and each asset's description
# as the UI shows it.
SERVED = """
import json
from dagster._core.remote_representation.external_data import RepositorySnap
from imgpipeline.definitions import defs
repository = defs.get_repository_def()
snap = RepositorySnap.from_def(repository)
print(json.dumps({
    "jobs": sorted(job.name for job in repository.get_all_jobs()),
    "sensors": sorted(sensor.name for sensor in repository.sensor_defs),
    "schedules": sorted(schedule.name for schedule in repository.schedule_defs),
    "assets": {node.asset_key.to_user_string(): node.description or "" for node in snap.asset_nodes},
}))
"""


def served(models_dir) -> dict:
    env = {**os.environ, "IMGPIPELINE_MODELS_DIR": str(models_dir)}
    result = subprocess.run([sys.executable, "-c", SERVED], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_folders_that_cannot_load_are_left_out_with_why_in_the_ui_and_the_rest_load(tmp_path, monkeypatch,
                                                                                     capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("IMGPIPELINE_MODELS_DIR", str(folder))
    for name in ("coco.names", "SHA256SUMS"):  # the live model's class names, which the alert rules read
        shutil.copy(PACKAGE_DIR.parent / "models" / name, folder / name)
    add("my-model", colour_detector(tmp_path / "best.onnx"), names_file(tmp_path / "names.txt"), log=print)
    # Folders an older `models add` or a hand made: two names Dagster turns into another model's op
    # name, and a manifest edited wrong.
    for name in ("my_model", "yolov4_tiny", "broken"):
        shutil.copytree(folder / "my-model", folder / name)
    manifest = folder / "broken" / models.MANIFEST
    manifest.write_text(manifest.read_text().replace("layout: yolov8", "layout: yolov11"))
    # A model being added, not proven yet: no model, nor a folder left out.
    shutil.copytree(folder / "my-model", folder / ".mine.x1y2z3")
    assert models.known() == [*models.BUILTIN, "broken", "my-model", "my_model", "yolov4_tiny"]

    loaded = validate({"IMGPIPELINE_MODELS_DIR": str(folder)})  # as `dagster dev` loads the location
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "model folder my_model is not loaded" in loaded.stdout + loaded.stderr  # its log

    ui = served(folder)
    assert {"detect_frames"} <= set(ui["jobs"])
    assert {"frames_sensor"} <= set(ui["sensors"])
    assert {"daily_summary_schedule"} <= set(ui["schedules"])
    for name in ("yolov4-tiny", "yolov3-tiny", "my-model"):
        assert f"redetections/{name}" in ui["assets"]
    for name in ("my_model", "yolov4_tiny", "broken"):
        assert f"redetections/{name}" not in ui["assets"]
    assert not [key for key in ui["assets"] if ".mine" in key]
    why = {name: ui["assets"][f"models/{name}"] for name in ("my_model", "yolov4_tiny", "broken")}
    assert why["my_model"].startswith("Not loaded: its assets' ops would be named as those of the model "
                                      "my-model (redetections__my_model)")
    assert why["yolov4_tiny"].startswith("Not loaded: its assets' ops would be named as those of the model "
                                         "yolov4-tiny (redetections__yolov4_tiny)")
    assert why["broken"].startswith("Not loaded: ") and "layout" in why["broken"]

    # The command line says the same: `models list` names the folders left out and why, and a backfill
    # of a model the code location leaves out is refused before it is submitted.
    from imgpipeline.cli.main import main

    capsys.readouterr()
    assert main(["models", "list"]) == 0
    shown = capsys.readouterr().out
    assert ("my_model: not loaded by the code location: its assets' ops would be named as those of the model "
            "my-model") in shown
    assert "yolov4_tiny: not loaded by the code location" in shown and "  my-model: yolov8" in shown
    assert main(["redetect", "--model", "my_model", "--from", "2026-11-20-10:00", "--to",
                 "2026-11-20-10:00"]) == 2
    assert "my_model has no redetections asset: its assets' ops would be named" in capsys.readouterr().err
