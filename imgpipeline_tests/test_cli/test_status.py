"""`imgpipeline status` and the check `sources_fresh` on a healthy setup, then with a silent source, a
failed run and the broker down: real frames through real runs, the command run as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from imgpipeline.defs.streaming.detect_frames import detect_frames, detect_run_config
from imgpipeline.defs.streaming.health import check_sources, sources_fresh
from imgpipeline.ingest.producer import FrameProducer, Ledger
from imgpipeline.lib.instance import open_instance
from imgpipeline.paths import HOME_ENV, state_dir
from imgpipeline.resources import DetectorResource, StorageResource
from imgpipeline.services.dagster_dev import dagster_home
from imgpipeline_tests.pipeline import drain, run_resources, video_backlog

pytestmark = [pytest.mark.integration, pytest.mark.instance]
# Between cam-b's last frame and cam-a's next ones: what tells a silent source from a live one. Each
# verdict's threshold lies GAP_S / 2 from either source, far more than a `status` command takes to start.
GAP_S = 20


def status(env: dict, *args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "imgpipeline.cli", "status", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert not done.stderr.strip() or "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stdout


def send(kafka, storage, folder, source: str, count: int) -> None:
    ledger = Ledger(folder / f"{source}.sent")
    producer = FrameProducer(kafka, storage, source, ledger=ledger)
    producer.send_all(video_backlog(count, source), progress=False)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.long(0.6)
def test_status_healthy_then_silent_source_failed_run_and_broker_down(kafka, tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    env = {**os.environ, HOME_ENV: str(tmp_path / "home"), "IMGPIPELINE_STORAGE_URI": storage.uri,
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic}
    send(kafka, storage, tmp_path, "cam-a", 20)
    send(kafka, storage, tmp_path, "cam-b", 12)
    b_sent = time.time()  # cam-b's last frame reached the broker before this
    with open_instance(dagster_home(state_dir())) as instance:
        drain(kafka, storage, instance)

        code, out = status(env, "--json")
        report = json.loads(out)
        assert code == 0 and report["problems"] == []
        assert report["broker"]["reachable"] and report["storage"]["reachable"]
        frames = report["broker"]["topics"][kafka.frames_topic]
        assert frames["messages"] == 32 and sum(frames["lag"].values()) == 0
        assert set(report["sources"]) == {"cam-a", "cam-b"}
        a = report["sources"]["cam-a"]
        assert a["processed_per_min"] == round(20 / 15, 2) and a["in_per_min"] == round(20 / 15, 2)
        assert a["last_frame"] and not a["silent"] and a["shed_share"] == a["error_share"] == 0
        assert {r["job"] for r in report["runs"]["last"]} == {"detect_frames"}
        assert report["runs"]["failed_24h"] == 0
        code, text = status(env)
        assert code == 0 and text.rstrip().endswith("healthy") and "cam-b" in text

        # A run fails; cam-b falls silent while cam-a goes on.
        failed = detect_frames.execute_in_process(
            run_config=detect_run_config(kafka.frames_topic, 0, 5, 5), instance=instance,
            resources=run_resources(kafka=kafka, storage=storage, detector=DetectorResource.from_env()),
            raise_on_error=False)
        assert not failed.success
        while time.time() - b_sent < GAP_S:
            time.sleep(0.2)  # scenario: cam-b stays silent for GAP_S
        a_sent = time.time()  # cam-a's new frames reach the broker after this
        send(kafka, storage, tmp_path, "cam-a", 5)
        drain(kafka, storage, instance)

        def silent_after() -> str:
            """Silent means longer than this without a frame, set before each verdict: cam-a is GAP_S / 2
            inside it and cam-b GAP_S / 2 beyond it, however long the runs took (a verdict takes less)."""
            return f"{(time.time() - a_sent + GAP_S / 2) / 60:.4f}"

        code, out = status({**env, "IMGPIPELINE_SOURCE_SILENT_MIN": silent_after()}, "--json")
        report = json.loads(out)
        assert code == 1
        assert report["sources"]["cam-b"]["silent"] and not report["sources"]["cam-a"]["silent"]
        assert any(p.startswith("source cam-b silent for") for p in report["problems"])
        assert not any("cam-a" in p for p in report["problems"])
        assert report["runs"]["failed_24h"] == 1 and any("1 runs failed" in p for p in report["problems"])
        code, text = status({**env, "IMGPIPELINE_SOURCE_SILENT_MIN": silent_after()})
        assert code == 1 and "SILENT" in text and "2 problems:" in text

        # The same verdict as a Dagster asset check, kept in the instance's history.
        monkeypatch.setenv("IMGPIPELINE_SOURCE_SILENT_MIN", silent_after())
        job = dg.Definitions(asset_checks=[sources_fresh], jobs=[check_sources],
                             resources=run_resources(storage=storage)).resolve_job_def("check_sources")
        result = job.execute_in_process(instance=instance)
        (evaluation,) = result.get_asset_check_evaluations()
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
        assert set(evaluation.metadata["silent_minutes"].value) == {"cam-b"}
        check_key = dg.AssetCheckKey(dg.AssetKey("kafka_frames"), "sources_fresh")
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=5)
        assert len(history) == 1

    # The broker down: said at once, and the rest is still reported.
    code, out = status({**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}, "--json")
    report = json.loads(out)
    assert code == 1 and not report["broker"]["reachable"]
    assert report["problems"][0].startswith("broker: cannot reach Kafka")
    assert report["storage"]["reachable"] and set(report["sources"]) == {"cam-a", "cam-b"}
