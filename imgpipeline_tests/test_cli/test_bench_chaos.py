"""`bench chaos` in its short form: every kind of fault dealt once in a seeded order while four cameras
(three producers and the MQTT bridge) send through `dagster dev` with the fast lane on; then nothing lost
or doubled, every offset accounted for, every alert of the tables on Kafka once and at its webhook once."""

import json
import os

import pytest

from imgpipeline.paths import state_dir

pytestmark = [pytest.mark.integration, pytest.mark.long(7)]


def test_a_short_chaos_loses_and_doubles_nothing(tmp_path, monkeypatch):
    from imgpipeline.cli.bench.chaos import bench_chaos
    from imgpipeline.cli.bench.chaos_faults import FAULTS
    from imgpipeline.cli.main import build_parser

    args = build_parser().parse_args(["bench", "chaos"])
    assert (args.what, args.minutes, args.every) == ("chaos", 30.0, 120.0)
    # Faults 3 s apart, each a few seconds long (a stop or a full disk 8 s), for a minute or until every
    # kind came once (the ten kinds take longer than the minute).
    # The hours' tables, tracks and alerts made 5 s after their frames at most, not 30 s: the reckoning
    # waits for the last of them (the wait is the same code at any pace).
    monkeypatch.setenv("IMGPIPELINE_AUTOMATION_INTERVAL_S", "5")
    result = bench_chaos(minutes=1, every_s=3, seed=7, settle_s=900, folder=tmp_path)
    assert json.loads((state_dir() / "bench" / "chaos.json").read_text()) == json.loads(json.dumps(result))

    # Every kind of fault was dealt (one that found nothing to strike, no run in flight, came again).
    kinds = set(FAULTS) - ({"fill disk"} if os.geteuid() else set())  # a tmpfs is mounted as root only
    dealt = {f["fault"] for f in result["faults"] if not f["what"].startswith("not dealt")}
    assert dealt == kinds, result["faults"]
    assert result["settled"], result
    assert result["cameras_crashed"] == {}
    # Every frame each camera sent is one row, none errored, none detected twice (from two messages),
    # and no row is of a frame not sent.
    frames = result["frames"]
    assert all(n > 0 for n in result["per_camera"].values()), result["per_camera"]
    assert frames["rows"] == frames["sent"] == sum(result["per_camera"].values())
    assert (frames["lost"], frames["doubled"], frames["extra"], frames["detected_twice"]) == (0, 0, 0, 0)
    assert "error" not in frames["statuses"], frames
    # Every offset has its landing record (or is a repeat of a frame landed from another) and its range.
    offsets = result["offsets"]
    assert offsets["end"] >= frames["sent"]
    assert (offsets["without_record"], offsets["holes"]) == (0, 0), offsets
    assert result["hours"]["mismatched"] == 0, result["hours"]
    # Every alert of the tables once there, on Kafka once and posted to its webhook once. (A live alert the
    # hourly run decided otherwise, its tracks made another way across a restart, is on Kafka and not in
    # the tables: docs/alerts.md. The benchmark counts those; they are not asserted.)
    alerts = result["alerts"]
    assert alerts["tables"] > 0
    # A number on Kafka or at the webhook twice is the same alert sent again under its number and
    # idempotency key (a kill between a send and its record, or the hourly run's send racing the live
    # lane's: docs/alerts.md); no number says two alerts.
    left = ("tables", "kafka_extra", "webhook_extra", "kafka_doubled", "webhook_doubled")
    assert {k: v for k, v in alerts.items() if k not in left} == {
        "tables_doubled": 0, "kafka_missing": 0, "kafka_conflicting": 0, "webhook_missing": 0,
        "webhook_conflicting": 0}
    # The viewer answered after its last restart.
    assert result["viewer_back"]
