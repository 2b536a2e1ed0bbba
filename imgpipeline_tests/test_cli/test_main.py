"""The command line as a person runs it: settings shown without secrets, `dev` from the venv's script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from imgpipeline.cli.main import main
from imgpipeline.services.process import free_port


def test_settings_show_values_but_never_a_secret(monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("IMGPIPELINE_MAX_BATCH", "250")
    assert main(["settings"]) == 0
    shown = capsys.readouterr().out
    assert "hunter2-secret" not in shown
    lines = {line.split()[0]: line for line in shown.splitlines()}
    assert "(set, secret)" in lines["KAFKA_SASL_PASSWORD"]
    assert " 250 " in lines["IMGPIPELINE_MAX_BATCH"] and "default `500`" in lines["IMGPIPELINE_MAX_BATCH"]


def test_a_bad_setting_stops_a_command_with_its_fix(monkeypatch, capsys):
    monkeypatch.setenv("IMGPIPELINE_SENSOR_WATCH_S", "9")
    assert main(["settings"]) == 2
    assert "IMGPIPELINE_SENSOR_WATCH_S=9 is too long" in capsys.readouterr().err


PERSON_RULE = "rules:\n  - {name: person-seen, kind: class, classes: [person], cooldown_s: 0}\n"


@pytest.mark.integration
@pytest.mark.long(0.6)
def test_dev_with_no_setting_changed_raises_frame_alerts_live_from_produced_images(tmp_path, services, kafka):
    """`.venv/bin/imgpipeline dev`, as the README calls the tool with no activated venv and no setting of
    the lane, and `imgpipeline produce images` from three new cameras: each camera's frame-rule alert is on
    Kafka raised by the fast lane's follow_frames run as its frame landed (its log says so), and no
    detect_frames run was launched; a viewer's live wall, watched from before the frames were sent, shows
    each camera's frame as it landed. The seconds from send to alert and to the wall are printed (`bench
    latency` measures the first)."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.cli.serve import Running, Warehouse
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.resources import AlertsResource, TrackingResource
    from imgpipeline.services.dagster_dev import dagster_home
    from imgpipeline.services.s3_endpoint import LOCAL_KEY_ID, LOCAL_SECRET
    from imgpipeline.web.app import create_app
    from imgpipeline_tests.conftest import s3_storage_resource
    from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
    from imgpipeline_tests.test_web.test_live import Stream

    script = Path(sys.executable).parent / "imgpipeline"
    storage = s3_storage_resource(services)
    (tmp_path / "alerts.yaml").write_text(PERSON_RULE)
    env = {**{k: v for k, v in os.environ.items() if k != "IMGPIPELINE_FAST_LANE"},
           "PATH": "/usr/bin:/bin", "IMGPIPELINE_HOME": str(tmp_path),
           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic, "IMGPIPELINE_STORAGE_URI": storage.uri,
           "AWS_ENDPOINT_URL": storage.endpoint_url, "AWS_ACCESS_KEY_ID": LOCAL_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET}
    port = free_port()
    process = subprocess.Popen([str(script), "dev", "--port", str(port)], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    viewer = Running(create_app(Warehouse(storage, TrackingResource(),
                                          AlertsResource(alerts_file=str(tmp_path / "alerts.yaml")))))
    try:
        answered(port, process)
        wall = Stream(viewer.url, timeout_s=60)  # a browser on /live: its events, as frames land
        cameras = {"cam-a": "bus.jpg", "cam-b": "zidane.jpg", "cam-c": "bus.jpg"}
        for camera, photo in cameras.items():
            (tmp_path / camera).mkdir()
            (tmp_path / camera / photo).write_bytes(sample(photo).read_bytes())
            subprocess.run([str(script), "produce", "images", str(tmp_path / camera), "--source", camera],
                           env=env, cwd=tmp_path, check=True, capture_output=True)
        # Sent: when the broker appended the camera's frame.
        produced = read_all(kafka, kafka.frames_topic)
        sent = {r.key.decode(): r.timestamp / 1000 for r in produced}
        assert set(sent) == set(cameras)
        shown = {}

        def on_the_wall(changed: list[dict]) -> bool:
            shown.update({c["source_id"]: (c["frame_id"], time.time()) for c in changed})
            return set(shown) >= set(cameras)

        wall.cameras(on_the_wall)
        wall.close()
        assert {s: f for s, (f, _) in shown.items()} == {
            r.key.decode(): json.loads(r.value)["frame_id"] for r in produced}
        deadline, alerts = time.monotonic() + 180, {}
        while time.monotonic() < deadline and set(alerts) != set(sent):
            for record in read_all(kafka, kafka.alerts_topic):
                message = json.loads(record.value)
                alerts.setdefault(message["source_id"], (message, record.timestamp / 1000))
            time.sleep(0.2)
        assert set(alerts) == set(sent), f"alerts of {sorted(alerts)} only, of {sorted(sent)} sent"
        with open_instance(dagster_home(tmp_path / ".imgpipeline")) as instance:
            jobs = {run.job_name for run in instance.get_runs()}
            told = [e.message for run in instance.get_runs(dg.RunsFilter(job_name="follow_frames"))
                    for e in instance.all_logs(run.run_id) if e.message.startswith("live alerts: ")]
        assert "follow_frames" in jobs and "detect_frames" not in jobs, jobs
        # Each raised by the fast lane's run as its frame landed (which says so in its log), not later by
        # the hourly alerts.
        for message, _ in alerts.values():
            said = f"{message['number']} {message['rule']} ({message['source_id']})"
            assert any(said in line for line in told), (said, told)
        assert {m["rule"] for m, _ in alerts.values()} == {"person-seen"}
        print("send → alert", {camera: round(at - sent[camera], 2) for camera, (_, at) in alerts.items()},
              "send → wall", {camera: round(at - sent[camera], 2) for camera, (_, at) in shown.items()})
    finally:
        viewer.stop()
        stop(process)


def answered(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
                assert answer.status == 200
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer (exit code {process.poll()}): "
                f"{process.stderr.read().decode()[-2000:] if process.poll() is not None else ''}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
