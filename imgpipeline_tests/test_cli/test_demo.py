"""The README's first command, `imgpipeline demo`, as a new user runs it: the venv's script in an empty
project folder with no setting of ours, then its printed figures read back from the warehouse it built."""

import os
import re
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).parent / "imgpipeline"
KEPT = {"IMGPIPELINE_CACHE_DIR", "IMGPIPELINE_MODELS_DIR"}  # the machine's downloads, not a setting of a run


def newcomer_env(home: Path) -> dict:
    """The shell of someone who just cloned: none of the suite's settings, the project folder as home."""
    ours = re.compile(r"^(IMGPIPELINE|AWS|KAFKA|DAGSTER)_")
    env = {k: v for k, v in os.environ.items() if not ours.match(k) or k in KEPT}
    return {**env, "IMGPIPELINE_HOME": str(home)}


def query(env: dict, sql: str) -> list[dict]:
    answer = subprocess.run([str(SCRIPT), "query", "--csv", sql], env=env, cwd=env["IMGPIPELINE_HOME"],
                            capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-2000:]
    header, *rows = answer.stdout.strip().splitlines()
    return [dict(zip(header.split(","), row.split(","), strict=True)) for row in rows]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`imgpipeline demo` run once: its output and the environment it ran in, its services still up."""
    home = tmp_path_factory.mktemp("newcomer")
    env = newcomer_env(home)
    try:
        ran = subprocess.run([str(SCRIPT), "demo"], env=env, cwd=home, capture_output=True, text=True,
                             timeout=1200)
        yield ran, env
    finally:
        subprocess.run([str(SCRIPT), "services", "down"], env=env, cwd=home, capture_output=True, timeout=300)


@pytest.mark.long(3)
def test_the_demo_lands_every_frame_it_sent_and_builds_every_table(demo_run):
    ran, env = demo_run
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-3000:])
    out = ran.stdout
    sent = int(re.search(r"street-cam \(bikes\.mp4\): sent (\d+), already present 0, failed 0", out)[1])
    assert "photos (bus.jpg, zidane.jpg): sent 2, already present 0, failed 0" in out
    assert "frames_sensor keeps a follow_frames run detecting frames as they come (the fast lane)" in out
    found = int(re.search(r"found in (\d+) frames", out)[1])
    assert found == sent + 2
    frames = query(env, "SELECT source_id, count(*) AS n FROM frames GROUP BY 1 ORDER BY 1")
    by_source = {row["source_id"]: int(row["n"]) for row in frames}
    assert by_source["street-cam"] == sent and sum(by_source.values()) == found
    checks = re.findall(r"checks passed (\d+)/(\d+)", out)
    assert len(checks) == 5 and all(passed == total for passed, total in checks), checks


@pytest.mark.long(0.2)
def test_the_demo_prints_what_its_tables_hold(demo_run):
    ran, env = demo_run
    assert ran.returncode == 0, ran.stderr[-3000:]
    printed = {name: (int(unique), int(frames)) for name, unique, frames in re.findall(
        r"^  (car|person|bicycle) +(\d+) distinct objects? in (\d+) detections", ran.stdout, re.M)}
    assert printed, ran.stdout[-3000:]
    rows = query(env, "SELECT class_name, count(DISTINCT track_id) AS unique_objects, count(*) AS detections "
                      "FROM detections WHERE source_id = 'street-cam' GROUP BY 1")
    tables = {row["class_name"]: (int(row["unique_objects"]), int(row["detections"])) for row in rows}
    assert printed == {name: tables[name] for name in printed}

    raised = int(re.search(r"^(\d+) alerts? raised", ran.stdout, re.M)[1])
    assert raised == int(query(env, "SELECT count(*) AS n FROM alerts")[0]["n"]) > 0


@pytest.mark.long(0.1)
def test_the_viewer_the_demo_names_shows_its_day(demo_run):
    ran, _ = demo_run
    assert ran.returncode == 0, ran.stderr[-3000:]
    address = re.search(r"^Viewer: (http://\S+)", ran.stdout, re.M)[1]
    with urllib.request.urlopen(address, timeout=30) as answer:
        page = answer.read().decode()
    assert answer.status == 200 and "street-cam" in page


def last_time(log: Path, pattern: str) -> datetime:
    """The time of the last line of `log` that starts with a timestamp `pattern` (strptime) finds."""
    said = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    stamps = re.findall(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", said, re.M)
    return datetime.strptime(stamps[-1], pattern)


def test_services_down_stops_the_demos_dagster_before_the_broker_it_reads(demo_run):
    """The demo leaves `dagster dev` up; `services down` stops it before the broker, so no sensor of it is
    left waiting on a broker that is gone (30 s of a Kafka call before it could end)."""
    _, env = demo_run
    down = subprocess.run([str(SCRIPT), "services", "down"], env=env, cwd=env["IMGPIPELINE_HOME"],
                          capture_output=True, text=True, timeout=300)
    assert down.returncode == 0 and "STILL RUNNING" not in down.stdout, down.stdout + down.stderr
    services = Path(env["IMGPIPELINE_HOME"]) / ".imgpipeline" / "services"
    dagster_done = last_time(services / "dagster" / "dagster.log", "%Y-%m-%d %H:%M:%S")
    kafka_log = (services / "kafka" / "kafka.log").read_text()
    stopping = re.findall(r"^\[(\S+ \S+),\d+\] .*Transition from STARTED to SHUTTING_DOWN", kafka_log, re.M)
    assert stopping, kafka_log[-2000:]
    assert datetime.strptime(stopping[-1], "%Y-%m-%d %H:%M:%S") >= dagster_done
