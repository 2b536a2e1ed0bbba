"""The fork server the run launcher forks runs from: started as a module by the argv the launcher uses.
Its runs are launched, niced, terminated and restarted on changed code in test_launcher.py."""

from __future__ import annotations

import os
import subprocess
import sys

from imgpipeline.lib.fork_server import INSTANCE_REF_ENV, server_argv


def test_the_server_started_without_an_instance_says_how_to_start_it():
    """The argv the launcher starts the server with runs this module's server, which refuses to start
    without the instance ref it is given by environment and names itself in the usage."""
    argv = server_argv(["imgpipeline.definitions"])
    environment = {name: value for name, value in os.environ.items() if name != INSTANCE_REF_ENV}
    result = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
    assert argv[1:3] == ["-m", "imgpipeline.lib.fork_server"]
    assert result.returncode == 1
    assert f"{INSTANCE_REF_ENV}=<instance ref> python -m imgpipeline.lib.fork_server MODULE" in result.stderr


WARMED_RUN = """
import os, sys, tempfile
import dagster as dg
from imgpipeline.lib.dagster_door import serialize_value
from imgpipeline.lib.fork_server import warm_up

with tempfile.TemporaryDirectory() as home:
    with dg.DagsterInstance.local_temp(home) as instance:
        warm_up(serialize_value(instance.get_ref()), ["imgpipeline.definitions"])
before = set(sys.modules)

# What an hour's tracking, counting and tables do first (their runs import lazily).
from imgpipeline.defs.tables import DETECTIONS, from_parquet, to_parquet
from imgpipeline.resources import TrackingResource
from imgpipeline.vision.counting import Counter, from_tracker
from imgpipeline.vision.detection import Detection
from imgpipeline.vision.tracking import SourceTracker, TrackedFrame, frame_rate

tracking = TrackingResource()
tracker = SourceTracker(tracking.settings(), frame_rate([0.0, 0.2]))
counter = Counter(tracking.zones(), "street-cam")
for n in range(5):
    box = (100 + 10 * n, 100, 40, 80)
    person = Detection(class_name="person", confidence=0.9, box=box, class_id=0, index=0)
    frame = TrackedFrame(f"f{n}", n * 0.2, [person])
    ids = {(frame.frame_id, index): track for index, (_, track) in tracker.step(frame).items()}
    for counted in from_tracker([frame], ids, 640, 272):
        counter.step(counted)
from_parquet(to_parquet(DETECTIONS.empty()), columns=["frame_id"])
print(" ".join(sorted(set(sys.modules) - before)), flush=True)
os._exit(0)  # as a forked run ends (fork_server._run_child): the preloaded runtimes' threads are not joined
"""


def test_a_run_forked_from_the_warmed_server_imports_nothing_to_track_count_or_read_a_table():
    """The server's warm-up imports what the hourly runs' tracking, counting and tables (written and
    read as Parquet) import on first use (each resource's `preload`): a run forked from it spends none
    of its time importing them (supervision with SciPy and pandas: ~1 s a run on 2 cores)."""
    result = subprocess.run([sys.executable, "-c", WARMED_RUN], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {name for name in result.stdout.split() if name.split(".")[0] != "imgpipeline"}
    assert imported == set(), f"imported by the run after the warm-up: {sorted(imported)}"
