"""A day's question reads that day: views over given days list and read only their `dt=` folders, so a
day's summary, counts, report or query costs what that day holds, however many months are stored."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from imgpipeline.defs.tables import FRAMES
from imgpipeline.defs.tables.views import connect, known_days
from imgpipeline_tests.conftest import ON_EVERY_BACKEND
from imgpipeline_tests.test_defs.test_warehouse.test_keys_are_never_sql import DAY, write_hour

OTHER_HOUR = datetime(2026, 11, 22, 10, tzinfo=UTC)


@pytest.mark.integration
@ON_EVERY_BACKEND
def test_views_of_a_day_never_read_another_days_files(storage, capsys, monkeypatch):
    from imgpipeline.cli.main import main

    write_hour(storage)
    # The next day holds a file of the layout that is no Parquet: anything that reads it fails.
    storage.open().put(FRAMES.hour_key(OTHER_HOUR), b"not parquet at all")
    with pytest.raises(duckdb.Error):
        connect(storage).sql("SELECT count(*) FROM frames").fetchall()

    # The days with frames, from one listing of the frames table's folders (the S3 endpoint's delimiter).
    assert known_days(storage) == [OTHER_HOUR.date(), DAY]
    con = connect(storage, days=[DAY])
    assert con.sql("SELECT count(*) FROM frames").fetchone() == (3,)
    assert con.sql("SELECT DISTINCT dt FROM frames").fetchall() == [(DAY,)]
    assert con.sql("SELECT count(*) FROM detections").fetchone() == (3,)
    assert con.sql("SELECT count(*) FROM daily_summary").fetchone() == (0,)  # none made: an empty view
    empty = connect(storage, days=[DAY.replace(day=1)])
    assert empty.sql("SELECT count(*) FROM frames").fetchone() == (0,)

    # The commands a person runs, over the same storage.
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", storage.uri)
    if storage.endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", storage.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", storage.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", storage.secret_access_key)
    capsys.readouterr()
    assert main(["query", "--day", DAY.isoformat(), "--csv", "SELECT count(*) AS n FROM frames"]) == 0
    assert capsys.readouterr().out.split() == ["n", "3"]
    assert main(["summary", "--date", DAY.isoformat()]) == 1  # no daily_summary yet: said, not a crash
    assert "no daily_summary rows for 2026-11-21" in capsys.readouterr().out
    assert main(["counts", "--date", DAY.isoformat()]) == 1  # no tracks yet: said, not a crash
    assert "no tracked objects on 2026-11-21" in capsys.readouterr().out
    assert main(["query", "--day", "21/11/2026", "SELECT 1"]) == 2
    assert "'21/11/2026' is not a day: give YYYY-MM-DD (UTC)" in capsys.readouterr().err
