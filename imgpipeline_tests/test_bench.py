"""The benchmark code paths on a few frames: every figure is written (no timing assertions)."""

import json

import pytest

from imgpipeline import bench
from imgpipeline.config import state_dir

pytestmark = pytest.mark.integration


def test_bench_sensor_and_detect_write_their_figures(services, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka.address(services.kafka.ports))
    bench.bench_sensor(messages=300)
    sensor = json.loads((state_dir() / "bench" / "sensor.json").read_text())
    assert sensor["backlog"] == 300 and len(sensor["tick_s"]) == 3 and sensor["max_tick_s"] > 0

    bench.bench_detect(frames=6)
    detect = json.loads((state_dir() / "bench" / "detect.json").read_text())
    assert set(detect) == {"frames", "bare_fps", "run_fps", "run_over_bare", "frame_size"}
    assert detect["frames"] == 6 and detect["frame_size"] == "640x272"
