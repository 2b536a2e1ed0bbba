"""The benchmark code paths on a few frames: every figure is written (no timing assertions)."""

import json

import pytest

from imgpipeline.cli.bench.detect import bench_detect, bench_detector
from imgpipeline.cli.bench.memory import bench_memory
from imgpipeline.cli.bench.pipeline import bench_pipeline
from imgpipeline.cli.bench.sensor import bench_sensor
from imgpipeline.cli.bench.summary import bench_summary
from imgpipeline.paths import state_dir


@pytest.mark.integration
def test_bench_sensor_and_detect_write_their_figures(services, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka.address(services.kafka.ports))
    bench_sensor(messages=300)
    sensor = json.loads((state_dir() / "bench" / "sensor.json").read_text())
    assert sensor["backlog"] == 300 and len(sensor["tick_s"]) == 3 and sensor["max_tick_s"] > 0

    bench_detect(frames=6)
    detect = json.loads((state_dir() / "bench" / "detect.json").read_text())
    assert set(detect) == {"frames", "bare_fps", "run_fps", "run_over_bare", "frame_size"}
    assert detect["frames"] == 6 and detect["frame_size"] == "640x272"


def test_bench_summary_agrees_with_mapreduce_and_writes_its_keys(tmp_path):
    result = bench_summary(rows=20_000, folder=tmp_path)
    assert result["same_numbers"] is True
    written = json.loads((state_dir() / "bench" / "summary.json").read_text())
    assert {"duckdb_s", "mapreduce_s", "ratio"} <= set(written)
    assert written["rows"] == 20_000


@pytest.mark.integration
def test_bench_pipeline_runs_every_path_and_writes_every_key(kafka):
    from imgpipeline.resources import DetectorResource

    bench_pipeline(frames=4, resources={"kafka": kafka, "detector": DetectorResource()},
                   timeout_s=300, repeat=2, engines=["openvino", "opencv"])
    written = json.loads((state_dir() / "bench" / "pipeline.json").read_text())
    assert {"bare_fps", "pipeline_fps", "plain_consumer_fps", "efficiency", "latency_p50_s",
            "latency_p95_s", "frames", "rate"} <= set(written)
    assert written["frames"] == 4 and written["rate"] is None
    # The daemon launched at least one detect_frames run for the measured frames.
    assert written["runs"] >= 1 and written["first_launch_s"] >= 0 and written["run_startup_s"] > 0
    assert 0 <= written["runs_forked"] <= written["runs"]
    # Two rounds, each with both legs and the bare loops around it; the figures are their medians.
    assert len(written["rounds"]) == 2 and len(written["bare_fps_each"]) == 3
    assert 0 <= written["pipeline_wins"] <= 2
    ratios = sorted(r["pipeline_fps"] / r["plain_consumer_fps"] for r in written["rounds"])
    assert written["pipeline_vs_plain"] == pytest.approx(sum(ratios) / 2, rel=0.01, abs=0.002)
    for key in ("pipeline_fps", "plain_consumer_fps", "efficiency"):
        values = sorted(r[key] for r in written["rounds"])
        assert written[key] == pytest.approx(sum(values) / 2, rel=0.01, abs=0.002)
    # Each engine's pipeline raced in every round; the speed-up is their paired ratio.
    assert written["engine"] == "openvino" and list(written["engines"]) == ["openvino", "opencv"]
    assert all(set(r["engines"]) == {"openvino", "opencv"} for r in written["rounds"])
    assert written["engines"]["opencv"]["precision"] == "f32"
    ratios = sorted(r["engines"]["openvino"]["pipeline_fps"] / r["engines"]["opencv"]["pipeline_fps"]
                    for r in written["rounds"])
    speedup = written["engines"]["opencv"]["primary_speedup"]
    assert speedup == pytest.approx(sum(ratios) / 2, rel=0.01, abs=0.002)


def test_bench_detector_compares_engines_with_the_reference():
    result = bench_detector(frames=6, variants=("opencv", "onnxruntime", "openvino:f32"))
    written = json.loads((state_dir() / "bench" / "detector.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["reference"] == "opencv" and list(written["variants"]) == ["opencv", "onnxruntime",
                                                                               "openvino:f32"]
    for row in written["variants"].values():
        assert row["fps"] > 0 and row["rss_added_mb"] > 0 and row["precision"] == "f32"
        # f32 engines find what the reference finds.
        assert row["matched"] == row["reference_boxes"] == row["boxes"] > 0


@pytest.mark.integration
def test_bench_memory_measures_a_run_per_batch_size(kafka):
    result = bench_memory(sizes=(2, 6), resources={"kafka": kafka})
    written = json.loads((state_dir() / "bench" / "memory.json").read_text())
    assert written == result and written["frames"] == [2, 6]
    # A run loads the model: its process peaks well above an idle interpreter's ~10 MB.
    assert len(written["peak_rss_mb"]) == 2 and min(written["peak_rss_mb"]) > 100
    assert "growth_mb_per_1000_frames" in written


def test_bench_tracking_tracks_the_street_video_and_writes_its_figures():
    from imgpipeline.cli.bench.tracking import bench_tracking

    result = bench_tracking(rounds=2)
    written = json.loads((state_dir() / "bench" / "tracking.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert result["frames"] == 500 and result["detections"] > 500
    assert 0 < result["unique_cars"] < result["car_detections"] / 10
    assert 0 < result["tracked_share"] < 1
    assert result["lines"] == ["west", "east"]


@pytest.mark.integration
def test_bench_mqtt_bridges_every_message_and_prints_its_figures(services, kafka, capsys):
    from imgpipeline.cli.bench.mqtt import bench_mqtt
    from imgpipeline.resources.mqtt import MqttSettings
    from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

    settings = MqttSettings(broker=services.mqtt.address(services.mqtt.ports))
    result = bench_mqtt(messages=40, size=(160, 120), resources={"kafka": kafka}, settings=settings)
    printed = capsys.readouterr().out
    for line in ("published: 40 in", "end to end (first publish to last Kafka ack): 40 in", " MB/s",
                 "bridge (its first message to its last Kafka ack): ", "landed on Kafka: 40 of 40"):
        assert line in printed, printed
    written = json.loads((state_dir() / "bench" / "mqtt.json").read_text())
    assert written == result and written["size"] == "160x120"
    assert {"end_to_end_messages_per_s", "end_to_end_mb_per_s", "publish_messages_per_s",
            "bridge_messages_per_s"} <= set(written)
    frames = [json.loads(m.value) for m in read_all(kafka, written["topic"])]
    assert len({f["frame_id"] for f in frames}) == 40 and {f["source_id"] for f in frames} == {"cam"}
    assert {(f["width"], f["height"]) for f in frames} == {(160, 120)}
