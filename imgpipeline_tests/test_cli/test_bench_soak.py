"""`bench soak` on a small history: what it writes is what the real code reads, retention and the purge
remove what is past its keeping time and nothing else, and the live frames it times land once each."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from imgpipeline.paths import state_dir

pytestmark = [pytest.mark.integration, pytest.mark.results]


def test_bench_soak_times_both_points_over_a_history_it_keeps_to_its_settings(kafka, tmp_path, monkeypatch,
                                                                              capsys):
    import dagster as dg

    from imgpipeline.cli.bench.soak import COSTS, bench_soak
    from imgpipeline.cli.main import build_parser
    from imgpipeline.defs.records.keys import LANDING
    from imgpipeline.defs.records.ledger import ARCHIVE
    from imgpipeline.defs.records.reader import all_records
    from imgpipeline.defs.tables import DAILY_SUMMARY, FRAMES
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.resources import StorageResource

    args = build_parser().parse_args(["bench", "soak", "--days", "4", "--hour-runs", "10"])
    assert (args.what, args.days, args.hour_runs, args.fps, args.partitions) == ("soak", 4, 10, 1000.0, 12)
    for name in ("LANDING", "FRAMES", "ANNOTATED", "REPORTS"):
        monkeypatch.setenv(f"IMGPIPELINE_{name}_KEEP_DAYS", "2")
    monkeypatch.setenv("IMGPIPELINE_RUNS_KEEP_DAYS", "1")
    monkeypatch.setenv("IMGPIPELINE_FAILED_RUNS_KEEP_DAYS", "1")
    shape = {"days": 4, "partitions": 3, "sources": 9, "hour_frames": 18, "hour_runs": 6}
    result = bench_soak(**shape, live_frames=30, repeat=1, resources={"kafka": kafka}, folder=tmp_path,
                        hour_base=100, warm_up=False)
    printed = capsys.readouterr().out
    assert json.loads((state_dir() / "bench" / "soak.json").read_text()) == json.loads(json.dumps(result))

    # Every cost timed at both points, printed with its ratio.
    for point in ("first", "last"):
        costs = result[point]["costs"]
        assert result[point]["hour_frames"] >= 100  # the live frames' hour held its base before them
        assert set(costs) == set(COSTS) and all(v > 0 for v in costs.values())
    for name, label in COSTS.items():
        first, last = result["first"]["costs"][name], result["last"]["costs"][name]
        assert result["ratios"][name] == round(last / first, 2)
        assert label in printed

    today = date.fromisoformat(result["today"])  # the bench's today, whatever the clock says since
    kept = {str(today - timedelta(days=back)) for back in range(0, 3)}  # today, and 2 days back
    gone = {str(today - timedelta(days=back)) for back in (3, 4)}
    store = StorageResource(uri=(tmp_path / "store").as_uri()).open()
    # Retention removed the days past two and left the others: landing, the range ledger's archive, frames,
    # annotated copies, reports.
    for top in (LANDING, ARCHIVE):
        landing_days = {key.split("dt=")[1][:10] for key in store.list(f"{top}/")}
        assert landing_days and landing_days <= kept and not landing_days & gone, top
    for folder in ("frames/", "annotated/"):
        days = {key.split("/")[2] for key in store.list(folder) if not key.startswith(f"{folder}bench-soak/")}
        assert days == kept - {str(today)}, folder
    assert all(result["retention_removed"][kind] > 0 for kind in ("landing", "ranges_archive", "frames"))
    # A deleted day keeps its rows: each history hour's sampled frames are rows, on the removed days too.
    for day in sorted(gone | kept - {str(today)}):
        hours = [datetime.fromisoformat(f"{day}T{h:02d}:00+00:00") for h in range(24)]
        rows = sum(FRAMES.read(store, FRAMES.hour_key(hour)).num_rows for hour in hours)
        assert rows == 24 * shape["hour_frames"], day
    yesterday = today - timedelta(days=1)
    summary = DAILY_SUMMARY.read(store, DAILY_SUMMARY.day_key(yesterday))
    per_source = dict(zip(summary.column("source_id").to_pylist(), summary.column("frames").to_pylist(),
                          strict=True))
    assert sum(per_source.values()) == 24 * shape["hour_frames"]

    # The purge left no finished detect_frames run older than a day when it ran, and removed the history's
    # older ones.
    with open_instance(Path(tmp_path / "home" / ".imgpipeline" / "dagster")) as instance:
        cutoff = datetime.fromtimestamp(result["purged_at"], UTC) - timedelta(days=1)
        old = instance.get_runs_count(dg.RunsFilter(job_name="detect_frames", updated_before=cutoff))
        left = instance.get_runs_count(dg.RunsFilter(job_name="detect_frames"))
    assert old == 0 and result["runs_purged"] >= 24 * shape["hour_runs"]
    assert left + result["runs_purged"] == result["written"]["detect_runs"] + result["last"]["runs"]
    assert left == result["last"]["detect_runs"]

    # The live frames the runs took landed once each.
    live = [r for r in all_records(store) if r.frame_id.startswith("live-")]
    assert len(live) == len({r.identity for r in live}) == result["last"]["live_frames"]
