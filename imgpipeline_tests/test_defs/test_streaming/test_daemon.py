"""The real thing: `dagster dev`'s daemon runs frames_sensor, and `dagster job launch` replays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from imgpipeline.cli.main import main
from imgpipeline.cli.samples import sample
from imgpipeline.defs.records.reader import parse_records
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.ingest.sources import image_frames
from imgpipeline.resources import StorageResource
from imgpipeline.services import LocalServices
from imgpipeline.services.base import answers_http
from imgpipeline.services.process import alive, cmdline, descendants
from imgpipeline_tests.pipeline import landing_files, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.instance]


@pytest.mark.long(0.75)
def test_daemon_sensor_and_job_launch_replay(kafka, tmp_path, monkeypatch, capsys):
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("IMGPIPELINE_FRAMES_TOPIC", kafka.frames_topic)
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", storage.uri)
    monkeypatch.setenv("IMGPIPELINE_MAX_WAIT_S", "0")
    monkeypatch.setenv("IMGPIPELINE_SENSOR_INTERVAL_S", "1")
    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    local = LocalServices(tmp_path / ".imgpipeline")
    ui = local.up_ui()
    try:
        photos = tmp_path / "photos"
        photos.mkdir()
        for name in ("bus.jpg", "zidane.jpg"):
            (photos / name).write_bytes(sample(name).read_bytes())
        FrameProducer(kafka, storage, "cam1", ledger=Ledger(tmp_path / "cam1.sent")).send_all(
            image_frames(photos, "cam1"), progress=False)

        files = wait_for(lambda: landing_files(storage), 180, "the sensor's run to land the frames")
        (key, body), = files.items()
        assert key.endswith(".jsonl") and {r.frame_id for r in parse_records(body)} == {
            "bus", "zidane"}
        storage.open().delete(key)

        range_name = key.rsplit("/", 1)[1].removesuffix(".jsonl")
        partition, start, end = (int(x) for x in range_name.rsplit("-", 3)[1:])
        config = {"ops": {"detect": {"config": {
            "topic": kafka.frames_topic, "partition": partition, "start_offset": start, "end_offset": end}}}}
        launch = subprocess.run(  # it loads the code location: a minute or more on a busy machine
            [sys.executable, "-m", "dagster", "job", "launch", "-m", "imgpipeline.definitions",
             "-j", "detect_frames", "--config-json", json.dumps(config)],
            env={**os.environ, "DAGSTER_HOME": str(local.dagster.dagster_home)},
            capture_output=True, text=True, timeout=300,
        )
        assert launch.returncode == 0, launch.stderr[-2000:]
        replayed = wait_for(lambda: landing_files(storage), 180, "the launched run to land the range")
        assert list(replayed) == [key]
        assert len(replayed[key].splitlines()) == 2
        # The daemon alone in its place (as the benchmarks and fault tests run it): healthy, on the same
        # instance, with no UI left answering.
        alone = local.up_daemon()
        assert alone["healthy"] and alone["address"] is None and alone["pid"] != ui["pid"]
        assert not answers_http(ui["address"] + "/server_info")
        # As `imgpipeline services status` sees it from another process (its state file has no port).
        seen = LocalServices(tmp_path / ".imgpipeline").dagster.status()
        assert (seen["healthy"], seen["address"], seen["pid"]) == (True, None, alone["pid"])
        main(["services", "status"])  # the broker and endpoint of this home are not up: only its line
        assert f"dagster  healthy with no UI (pid {alone['pid']})" in capsys.readouterr().out
        headless_code_server_killed_then_the_whole_stack(alone["pid"], kafka, storage, photos, tmp_path)
    finally:
        local.dagster.stop()
    assert not local.dagster.running()
    assert ui["address"].startswith("http://127.0.0.1:")


def under(pid: int, marker: str) -> list[int]:
    return [child for child in descendants(pid) if marker in cmdline(child)]


def headless_code_server_killed_then_the_whole_stack(pid, kafka, storage, photos, tmp_path) -> None:
    """The daemon alone keeps one code server for its life: SIGKILLed, it is loaded again and the sensor's
    runs go on; the process that holds them SIGKILLed alone, its daemon and code server go with it."""
    (server,) = wait_for(lambda: under(pid, " api grpc "), 60, "the daemon's code server")
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: [p for p in under(pid, " api grpc ") if p != server], 180,
             "the code server loaded again")
    FrameProducer(kafka, storage, "cam2", ledger=Ledger(tmp_path / "cam2.sent")).send_all(
        image_frames(photos, "cam2"), progress=False)
    wait_for(lambda: any(r.source_id == "cam2" for body in landing_files(storage).values()
                         for r in parse_records(body)), 180, "the sensor's run to land cam2's frames")
    daemons, servers = under(pid, "dagster._daemon"), under(pid, " api grpc ")
    assert daemons and servers
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in daemons + servers), 30,
             "the daemon and its code server to go with their holder")
