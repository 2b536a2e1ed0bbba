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
    assert {"duckdb_s", "duckdb_first_s", "mapreduce_s", "ratio", "class_hours_made_s",
            "from_detections_s", "from_detections_ratio"} <= set(written)
    assert written["rows"] == 20_000
    assert written["days_summed_from_class_hours"] == 2  # the asset's way: both days from class_hours


def test_a_bench_under_the_recorded_engine_says_its_figures_are_not_detections(monkeypatch, capsys):
    from imgpipeline.cli.main import main
    from imgpipeline_tests.conftest import DETECTOR_ENGINE

    said = "IMGPIPELINE_DETECTOR_ENGINE=recorded: frames seen before get the detections kept for them"
    for engine, warned in (("recorded", True), ("openvino", False)):
        monkeypatch.setenv(DETECTOR_ENGINE, engine)
        assert main(["bench", "summary", "--rows", "1000"]) == 0
        assert (said in capsys.readouterr().err) is warned


@pytest.mark.integration
@pytest.mark.long(0.8)
def test_bench_pipeline_runs_every_path_and_writes_every_key(kafka):
    from imgpipeline.resources import DetectorResource

    bench_pipeline(frames=4, resources={"kafka": kafka, "detector": DetectorResource()},
                   timeout_s=300, repeat=1, engines=["openvino", "opencv"])
    written = json.loads((state_dir() / "bench" / "pipeline.json").read_text())
    assert {"bare_fps", "pipeline_fps", "plain_consumer_fps", "efficiency", "latency_p50_s",
            "latency_p95_s", "frames", "rate"} <= set(written)
    assert written["frames"] == 4 and written["rate"] is None
    # The daemon launched at least one detect_frames run for the measured frames.
    assert written["runs"] >= 1 and written["first_launch_s"] >= 0 and written["run_startup_s"] > 0
    assert 0 <= written["runs_forked"] <= written["runs"]
    # One round with both engines' legs and the plain consumer, the bare loops before and after it.
    assert len(written["rounds"]) == 1 and len(written["bare_fps_each"]) == 2
    (round_,) = written["rounds"]
    assert round_["pipeline_fps"] == round_["engines"]["openvino"]["pipeline_fps"]
    assert written["pipeline_fps"] == pytest.approx(round_["pipeline_fps"], abs=0.01)
    assert written["pipeline_vs_plain"] == pytest.approx(
        round_["pipeline_fps"] / round_["plain_consumer_fps"], rel=0.01, abs=0.002)
    assert written["engine"] == "openvino" and list(written["engines"]) == ["openvino", "opencv"]
    assert set(round_["engines"]) == {"openvino", "opencv"}
    assert written["engines"]["opencv"]["precision"] == "f32"
    speedup = written["engines"]["opencv"]["primary_speedup"]
    assert speedup == pytest.approx(round_["engines"]["openvino"]["pipeline_fps"]
                                    / round_["engines"]["opencv"]["pipeline_fps"], rel=0.01, abs=0.002)


def test_bench_pipeline_on_the_fast_lane_times_the_follower_the_sensor_keeps(kafka):
    from imgpipeline.resources import DetectorResource

    result = bench_pipeline(frames=4, resources={"kafka": kafka, "detector": DetectorResource()},
                            timeout_s=300, engines=["openvino"], lane="fast")
    assert json.loads((state_dir() / "bench" / "pipeline.json").read_text()) == json.loads(json.dumps(result))
    # The frames went through the follow_frames run(s) the sensor kept going since the warm-up frame.
    assert result["lane"] == "fast" and result["runs"] >= 1 and result["first_launch_s"] is None
    assert result["run_startup_s"] > 0 and result["rounds"][0]["runs"] == result["runs"]
    assert result["pipeline_fps"] > 0 and result["efficiency"] > 0 and result["latency_p95_s"] >= 0


def test_bench_pipeline_rounds_combine_into_medians_and_paired_ratios():
    """What `--repeat N` reports from its rounds: medians over rounds, each engine's speed-up paired
    within a round (the machine's drift between rounds cancels out), the pipeline's wins counted."""
    from statistics import median

    from imgpipeline.cli.bench.pipeline import combine_rounds

    def round_(fast: float, slow: float, plain: float, bare: float) -> dict:
        engines = {"openvino": {"pipeline_fps": fast, "bare_fps": bare, "efficiency": fast / bare},
                   "opencv": {"pipeline_fps": slow, "bare_fps": bare / 2, "efficiency": 2 * slow / bare}}
        return {"engines": engines, "pipeline_fps": fast, "plain_consumer_fps": plain, "bare_fps": bare,
                "efficiency": fast / bare, "plain_latencies": [0.1, 0.2], "runs": 1, "first_launch_s": 1.0,
                "run_startup_s": 0.5, "runs_forked": 1}

    # A slow machine in the second round: every figure halves, the ratios within each round hold.
    rounds = [round_(50, 25, 45, 52), round_(24, 12, 25, 26), round_(40, 16, 38, 41)]
    latencies = {"openvino": [[1.0, 2.0]] * 3, "opencv": [[2.0, 3.0]] * 3}
    result = combine_rounds(rounds, latencies, [{"openvino": 51.0, "opencv": 25.0}] * 4, 4, None,
                            {"openvino": "bf16", "opencv": "f32"})
    assert result["pipeline_fps"] == median([50, 24, 40])
    assert result["plain_consumer_fps"] == median([45, 25, 38])
    assert result["pipeline_wins"] == 2
    assert result["pipeline_vs_plain"] == pytest.approx(median([50 / 45, 24 / 25, 40 / 38]), abs=0.001)
    # Paired: 2, 2 and 2.5 within the rounds; the medians of each engine's figures would say 40 / 16.
    assert result["engines"]["opencv"]["primary_speedup"] == 2.0
    assert result["engines"]["openvino"]["primary_speedup"] == 1.0
    assert result["engines"]["opencv"]["precision"] == "f32" and len(result["rounds"]) == 3


def test_a_chaos_wait_that_gives_up_says_what_is_in_flight_and_why_runs_failed():
    import dagster as dg

    from imgpipeline.cli.bench.chaos_reckoning import in_flight

    @dg.op
    def store_away():
        raise OSError("the S3 endpoint did not answer")

    @dg.job
    def hour():
        store_away()

    with dg.instance_for_test() as instance:
        assert in_flight(instance, []) == ["nothing in flight"]
        hour.execute_in_process(instance=instance, raise_on_error=False)
        instance.add_run(dg.DagsterRun(job_name="alerts_of_the_hour", status=dg.DagsterRunStatus.STARTED,
                                       run_id="5eed0000-0000-0000-0000-000000000000"))
        said = in_flight(instance, [])
    assert said[0].startswith("run 5eed0000 alerts_of_the_hour STARTED")
    assert said[1].startswith("failed run ") and said[1].endswith("OSError: the S3 endpoint did not answer")
    assert len(said) == 2


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
        loose = row["loose"]
        assert loose["iou"] == 0.5 and loose["matched"] == loose["reference_boxes"] == row["reference_boxes"]
        assert loose["confident_missed"] == 0 and set(loose["recall_per_class"].values()) == {1.0}


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


@pytest.mark.integration
@pytest.mark.long(0.7)
def test_bench_scale_lands_every_frame_once_and_its_figures_reconcile(kafka, tmp_path, capsys):
    from pathlib import Path

    import dagster as dg

    from imgpipeline.cli.bench.scale import bench_scale
    from imgpipeline.cli.bench.scale_figures import NOTICE
    from imgpipeline.cli.bench.scale_input import WARM_UP, source_names
    from imgpipeline.cli.main import build_parser
    from imgpipeline.defs.records.reader import all_records
    from imgpipeline.defs.tables import from_parquet
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.resources import StorageResource

    args = build_parser().parse_args(["bench", "scale", "--sources", "20", "--max-batch", "50"])
    assert (args.what, args.sources, args.partitions, args.fps, args.seconds, args.max_batch) == (
        "scale", 20, 12, 1.0, 120.0, 50)

    result = bench_scale(sources=20, partitions=4, fps=5, seconds=10, resources={"kafka": kafka},
                         folder=tmp_path, drain_timeout_s=300)
    printed = capsys.readouterr().out
    # Said loudly, before and after the figures.
    assert printed.count(NOTICE) >= 3 and "sent" in printed and "landed" in printed
    written = json.loads((state_dir() / "bench" / "scale.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["engine"] == "noop" and written["notice"] == NOTICE

    # Every frame sent became exactly one landing record, detected by nothing.
    store = StorageResource(uri=written["store"]).open()
    records = [r for r in all_records(store) if r.source_id != WARM_UP]
    sent = 20 * 5 * 10
    assert written["frames_sent"] == sent == len(records)
    assert len({(r.source_id, r.frame_id) for r in records}) == sent
    assert written["records"] == written["distinct_frames"] == sent
    assert written["statuses"] == {"detected": sent}
    assert {r.engine for r in records} == {"noop"} and {r.object_count for r in records} == {0}
    assert {r.source_id for r in records} == set(source_names(20))
    # Keyed by source: a source stays on one partition, and the sources spread over the partitions.
    partition_of = {}
    for r in records:
        assert partition_of.setdefault(r.source_id, r.partition) == r.partition
    assert len(set(partition_of.values())) > 1
    assert written["drained"] and written["lag_remaining"] == 0

    # The runs counted are the instance's detect_frames runs (the warm-up's apart).
    with open_instance(Path(written["dagster_home"])) as instance:
        in_instance = instance.get_runs(dg.RunsFilter(job_name="detect_frames"))
    assert written["runs"] == len(in_instance) - written["warm_up_runs"] >= 1
    assert written["warm_up_runs"] >= 1
    assert {r.run_id for r in records} <= {run.run_id for run in in_instance}
    # Ranges, runs, files and frames reconcile.
    assert written["ranges"] <= written["runs"]
    assert written["frames_per_run"] == pytest.approx(sent / written["runs"], abs=0.05)
    assert written["ranges"] <= written["landing_files"] <= written["ranges"] * written["warehouse"]["hours"]
    assert written["landing_bytes"] > 0 and written["ticks"] >= 1
    assert 0 <= written["run_start_fraction_p50"] <= 1 and 0 <= written["run_start_fraction_mean"] <= 1

    # The warehouse of the hours covered was built: three files an hour, one a day, every frame a row.
    warehouse = written["warehouse"]
    assert warehouse["hourly_files"] == 3 * warehouse["hours"]
    assert warehouse["daily_files"] == warehouse["days"]
    frame_rows = [row for key in store.list("warehouse/frames/") if key.endswith(".parquet")
                  for row in from_parquet(store.get(key)).to_pylist() if row["source_id"] != WARM_UP]
    assert len(frame_rows) == sent
    # The fullest hour was made whole without its partitions' last ranges, then extended by them: all
    # of its frames are rows (above), and the extension is what added them.
    extension = warehouse["extension"]
    assert extension["extended"] and 1 <= extension["files"] <= 4 and extension["new_frames"] > 0
    assert extension["new_frames"] < extension["stored_frames"] <= len(frame_rows) + 1  # warm-up

    # Per hour from the measured span; a day is 24 hours and a month 30 days of it.
    span = written["input_span_s"]
    per_hour, per_day, per_month = written["per_hour"], written["per_day"], written["per_month"]
    assert per_hour["runs"] == pytest.approx(written["runs"] * 3600 / span, rel=0.01)
    assert per_hour["landing_files"] == pytest.approx(written["landing_files"] * 3600 / span, rel=0.01)
    assert per_hour["landing_bytes"] == pytest.approx(written["landing_bytes"] * 3600 / span, rel=0.01)
    assert set(per_hour) == set(per_day) == set(per_month) >= {
        "runs", "landing_files", "landing_bytes", "parquet_files", "warehouse_build_s"}
    for key, value in per_hour.items():
        assert per_day[key] == pytest.approx(value * 24, rel=1e-6, abs=1e-3)
        assert per_month[key] == pytest.approx(value * 24 * 30, rel=1e-6, abs=1e-3)
    # What bends first is the earliest of the limits compared (at once, or so far into each hour; the
    # more loaded first among equals), and it is said.
    bends = written["bends"]
    assert written["bends_first"] == bends[0]
    order = [(b["bends_after_s"] is None, b["bends_after_s"] or 0, -b["ratio"]) for b in bends]
    assert order == sorted(order)
    assert {"sensor tick", "run start-up", "keeping up (lag)", "duplicate screening",
            "current hour builds"} <= {b["what"] for b in written["bends"]}
    assert f"{written['bends_first']['what']} " in printed and "What moves it:" in printed


@pytest.mark.integration
@pytest.mark.long(0.5)
def test_bench_scale_on_the_fast_lane_lands_every_frame_once_through_the_followers(kafka, tmp_path, capsys):
    """`bench scale --lane fast`: the cameras' frames go through the follow_frames runs (no detect_frames
    run but the warm-up's, none at all here), each lands once, and the latency it prints is the landing
    records' own (send → detected while the input lasted) and the followers' observations."""
    import time
    from pathlib import Path

    import dagster as dg

    from imgpipeline.cli.bench.scale import bench_scale
    from imgpipeline.cli.bench.scale_input import WARM_UP
    from imgpipeline.cli.bench.scale_measure import follower_observations
    from imgpipeline.cli.main import build_parser
    from imgpipeline.defs.records.reader import all_records
    from imgpipeline.ingest.messages import parse_time
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.lib.stats import percentile
    from imgpipeline.resources import StorageResource

    assert build_parser().parse_args(["bench", "scale", "--lane", "fast"]).lane == "fast"
    result = bench_scale(sources=8, partitions=4, fps=5, seconds=6, resources={"kafka": kafka},
                         folder=tmp_path, drain_timeout_s=120, lane="fast")
    printed = capsys.readouterr().out
    assert result["lane"] == "fast" and result["runs"] == 0
    store = StorageResource(uri=result["store"]).open()
    records = [r for r in all_records(store) if r.source_id != WARM_UP]
    with open_instance(Path(result["dagster_home"])) as instance:
        followers = {run.run_id for run in instance.get_runs(dg.RunsFilter(job_name="follow_frames"))}
    assert followers and {r.run_id for r in records} <= followers
    assert result["frames_sent"] == len(records) == len({r.frame_id for r in records}) == 8 * 5 * 6
    assert result["drained"] and result["followers"] >= 1
    waits = [(parse_time(r.processed_at) - parse_time(r.ingested_at)).total_seconds() for r in records]
    assert result["wait_p95_s"] == round(percentile(waits, 0.95), 2)
    assert result["input_wait_p95_s"] is not None and result["input_wait_p50_s"] <= result["input_wait_p95_s"]
    # The followers observed their latency (at the latest, each run's last observation); how many of
    # those windows fell while the 6 s of input lasted depends on the machine's speed.
    with open_instance(Path(result["dagster_home"])) as instance:
        observed = follower_observations(instance, 0.0, time.time())
    assert observed and result["landed_windows"] <= len(observed)
    if result["landed_windows"]:
        assert 0 < result["landed_p95_window_median_s"] <= result["landed_p95_window_max_s"]
    assert "fast lane" in printed and "landed latency" in {b["what"] for b in result["bends"]}

@pytest.mark.integration
@pytest.mark.long(2.5)
def test_bench_latency_times_the_alerts_the_tables_hold(kafka, monkeypatch):
    """The street video from two cameras at once through the real daemon's fast lane and the whole hourly
    chain: every frame lands, the chain settles, and each alert the alerts tables hold reached the Kafka
    topic (per kind of rule)."""
    from imgpipeline.cli.bench.latency import bench_latency

    # The chain's sensors look more often than by default: it settles sooner.
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "5")
    monkeypatch.setenv("IMGPIPELINE_SENSOR_INTERVAL_S", "1")

    # 160 frames a camera: past the one where the demo's street has four cars in a frame.
    bench_latency(seconds=8, rate=20, backlog=10, settle_s=400, resources={"kafka": kafka}, rounds=2,
                  cameras=2)
    written = json.loads((state_dir() / "bench" / "latency.json").read_text())
    assert written["settled"] is True and written["landed"]["count"] == written["frames"] == 2 * 160
    # The live wall showed frames of both cameras as they landed (a camera's latest at each look).
    wall = written["on_the_wall"]
    assert 2 <= wall["count"] <= written["frames"] and 0 < wall["p50_s"] <= wall["p95_s"] <= wall["max_s"]
    assert written["cameras"] == 2
    assert written["alerts_stored"]["all"] >= 1
    assert written["alerts_received"] == written["alerts_stored"]["all"]
    for kind in ("frame_rule", "track_rule"):
        assert written[kind]["count"] == written["alerts_stored"][kind]
        if written[kind]["count"]:
            assert 0 < written[kind]["p50_s"] <= written[kind]["p95_s"] <= written[kind]["max_s"]
    assert written["backlog"] == 10 and len(written["rounds"]) == 2
    assert written["efficiency"] in [r["efficiency"] for r in written["rounds"]]
    assert all(r["efficiency"] > 0 and r["backlog_fps"] > 0 for r in written["rounds"])
    # Each backlog formed behind the fast lane's run alone, the daemon ticking on.
    assert {r["stopped"] for r in written["rounds"]} == {"stream"}
    assert written["lane"] == "fast"  # the default: a follow_frames run detected the frames
