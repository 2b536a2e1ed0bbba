"""History as a laboratory on the demo's data: the street video re-detected with yolov3-tiny, compared
with the live yolov4-tiny results, and the demo's rules backtested, which must agree with the alerts the
hourly asset raised, without taking a number or sending anything."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from imgpipeline.cli.main import main
from imgpipeline.defs.alerts.ledger import ROOT
from imgpipeline.defs.laboratory.assets import redetections_asset
from imgpipeline.defs.laboratory.history import SAMPLES, iou
from imgpipeline.defs.laboratory.redetect import part_key
from imgpipeline.defs.tables import ALERTS, DETECTIONS, REDETECTIONS
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.resources import DetectorResource
from imgpipeline.vision import models
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.test_cli.street import DAY

pytestmark = [pytest.mark.integration, pytest.mark.results]

HOURS = ["2026-11-20-10:00", "2026-11-20-11:00"]


@pytest.fixture(scope="module")
def street(street_data):
    """The demo's data, its hours re-detected with yolov3-tiny."""
    from imgpipeline.cli.fetch import fetch_yolov3

    fetch_yolov3(log=print)
    resources, _ = street_data
    storage = resources["storage"]
    asset = redetections_asset(models.get("yolov3-tiny"))
    with fresh_instance() as instance:
        for hour in HOURS:
            assert dg.materialize([asset], instance=instance, partition_key=hour, resources={
                "storage": storage, "tracking": resources["tracking"],
                "detector": DetectorResource.from_env()}).success
    return resources


@pytest.fixture
def env(street, monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", street["storage"].uri)
    monkeypatch.setenv("IMGPIPELINE_ZONES_FILE", street["tracking"].zones_file)
    monkeypatch.setenv("IMGPIPELINE_ALERTS_FILE", street["alert_rules"].alerts_file)
    return street["storage"].open()


def stored(store, table, part: str | None = None) -> pa.Table:
    from datetime import datetime

    hours = [datetime.strptime(h, "%Y-%m-%d-%H:%M") for h in HOURS]
    keys = [part_key(h, part) if part else table.hour_key(h) for h in hours]
    return pa.concat_tables([table.read(store, k).replace_schema_metadata(None)
                             for k in keys if store.exists(k)])


def refused(capsys, argv: list[str], said: str) -> None:
    """The command ends with code 2 and says what is wrong, nothing printed as a result."""
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert said in err and not out, (argv, err)


def printed_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_counts_each_models_objects_and_the_boxes_one_missed_as_the_tables_hold_them(env, capsys):
    found = printed_json(capsys, ["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny",
                                  "--date", DAY, "--json"])
    assert found["models"] == ["yolov4-tiny", "yolov3-tiny"] and found["lacking"] == [[], []]
    tables = [stored(env, DETECTIONS), stored(env, REDETECTIONS, "yolov3-tiny")]
    for side, table in enumerate(tables):
        rows = table.select(["captured_at", "class_name", "source_id", "track_id"]).to_pylist()
        objects = Counter((r["captured_at"].strftime("%Y-%m-%dT%H"), r["class_name"]) for r in rows)
        assert {(h["hour"][:13], h["class_name"]): h["objects"][side] for h in found["hours"]
                if h["objects"][side]} == dict(objects)
        tracks = {(r["captured_at"].strftime("%Y-%m-%dT%H"), r["class_name"], r["source_id"], r["track_id"])
                  for r in rows if r["track_id"] is not None}
        assert {(h["hour"][:13], h["class_name"]): h["distinct"][side] for h in found["hours"]
                if h["distinct"][side]} == dict(Counter(t[:2] for t in tracks))
        # Every box of a model is matched or counted as found by it alone.
        per_class = Counter(r["class_name"] for r in rows)
        assert {c["class_name"]: c["matched"] + c["only"][side] for c in found["classes"]
                if c["matched"] + c["only"][side]} == dict(per_class)
    cars = next(c for c in found["classes"] if c["class_name"] == "car")
    assert cars["matched"] > 0
    # Each class keeps the first few boxes each model found alone, as many as it found up to the limit.
    sides = [(c, side) for c in found["classes"] for side in (0, 1)]
    assert {(c["class_name"], side): len(c["samples"][side]) for c, side in sides} == {
        (c["class_name"], side): min(SAMPLES, c["only"][side]) for c, side in sides}
    assert any(cars["samples"]), "the models agreed on every car: no missed box to check"
    for side, samples in enumerate(cars["samples"]):
        for sample in samples:  # a car that model found, and none the other found is left for it
            own = [r for r in tables[side].to_pylist()
                   if r["frame_id"] == sample["frame_id"] and r["class_name"] == "car"]
            other = [r for r in tables[1 - side].to_pylist()
                     if r["frame_id"] == sample["frame_id"] and r["class_name"] == "car"]
            assert tuple(sample["box"]) in {(r["x"], r["y"], r["w"], r["h"]) for r in own}
            close = [r for r in other if iou(tuple(sample["box"]), (r["x"], r["y"], r["w"], r["h"])) >= 0.5]
            assert len(close) < len(own)  # each close box of the other model went to another of its own

    # The table a person reads says the same.
    assert main(["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny", "--date", DAY]) == 0
    text = capsys.readouterr().out
    assert f"car{cars['matched']:>21}{cars['only'][0]:>8}{cars['only'][1]:>8}" in text


def test_a_backtest_of_the_demos_rules_finds_the_alerts_the_hourly_asset_raised_and_raises_none(
        env, street, capsys):
    ledger_before = sorted(env.list(f"{ROOT}/"))
    alerts = stored(env, ALERTS).to_pylist()
    assert alerts
    found = printed_json(capsys, ["alerts", "backtest", street["alert_rules"].alerts_file, "--from", DAY,
                                  "--to", DAY, "--json"])
    assert found["model"] == "yolov4-tiny" and found["lacking"] == []
    # every rule on every day of the range, those that raised none too
    assert {(c["rule"], c["day"]): c["alerts"] for c in found["counts"]} == {
        (rule, DAY): Counter(a["rule"] for a in alerts)[rule] for rule in found["rules"]}
    raised = {(a["rule"], a["frame_id"]) for a in alerts}
    assert {(e["rule"], e["frame_id"]) for e in found["evidence"]} <= raised
    assert sorted(env.list(f"{ROOT}/")) == ledger_before  # no number taken or claimed, nothing sent

    # The same rules over yolov3-tiny's detections: each rule's alerts, from that model's rows.
    other = printed_json(capsys, ["alerts", "backtest", street["alert_rules"].alerts_file, "--from",
                                  "2026-11-20-10:00", "--to", "2026-11-20-11:00", "--model", "yolov3-tiny",
                                  "--json"])
    assert other["model"] == "yolov3-tiny" and other["rules"] == found["rules"]
    compared = printed_json(capsys, ["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny",
                                     "--date", DAY, "--json"])
    assert {c["rule"]: c["alerts"] for c in other["counts"]} == {
        a["rule"]: a["alerts"][1] for a in compared["alerts"]}
    assert {c["rule"]: c["alerts"] for c in found["counts"]} == {
        a["rule"]: a["alerts"][0] for a in compared["alerts"]}
    text_argv = ["alerts", "backtest", street["alert_rules"].alerts_file, "--from", DAY, "--to", DAY]
    assert main(text_argv) == 0
    text = capsys.readouterr().out
    assert "no alert numbered, nobody notified" in text
    for count in found["counts"]:
        shown = f"   {DAY}: {count['alerts']}" if count["alerts"] else "   \n"
        assert f"{count['rule']:<24}{count['alerts']:>7}{shown}" in text


def test_backtest_and_compare_refuse_what_they_cannot_read(env, tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: nowhere, kind: zone_enter, zone: moon}\n")
    refused(capsys, ["alerts", "backtest", str(rules), "--from", DAY, "--to", DAY],
            "zone 'moon' is not drawn")
    rules.write_text("rules:\n  - {name: unicorns, kind: class, classes: [unicorn]}\n")
    refused(capsys, ["alerts", "backtest", str(rules), "--from", DAY, "--to", DAY], "no class 'unicorn'")
    for argv, said in [
        (["alerts", "backtest", str(tmp_path / "absent.yaml"), "--from", DAY, "--to", DAY], "cannot read"),
        (["alerts", "backtest", str(PACKAGE_DIR.parent / "alerts.yaml"), "--from", DAY, "--to", "2026-11-19"],
         "is before"),
        (["alerts", "backtest", str(PACKAGE_DIR.parent / "alerts.yaml"), "--from", "yesterday", "--to", DAY],
         "is not an hour"),
        (["alerts", "backtest", str(PACKAGE_DIR.parent / "alerts.yaml"), "--from", "2020-01-01", "--to", DAY],
         "more than 92 days"),
        (["compare", "--model", "yolov4-tiny", "--date", DAY], "give two models"),
        (["compare", "--model", "yolov4-tiny", "--model", "nothing", "--date", DAY], "no model named"),
        (["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny", "--date", "20/11"], "is not a day"),
    ]:
        refused(capsys, argv, said)
    # A day without frames: nothing to compare, nothing lacking.
    empty = printed_json(capsys, ["compare", "--model", "yolov3-tiny", "--model", "yolov4-tiny",
                                  "--date", "2026-11-21", "--json"])
    assert empty["hours"] == empty["classes"] == empty["compared"] == [] and empty["lacking"] == [[], []]


def test_an_hour_one_model_lacks_is_named_and_left_out_of_the_comparison(env, capsys, tmp_path):
    """The 11:00 re-detections moved away: that hour is lacking for yolov3-tiny, named with the command
    that fills it, and neither model's detections of it are compared."""
    from datetime import datetime

    key = part_key(datetime(2026, 11, 20, 11, tzinfo=UTC), "yolov3-tiny")
    kept = env.folder / key
    moved = tmp_path / "moved.parquet"
    kept.rename(moved)
    try:
        found = printed_json(capsys, ["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny",
                                      "--date", DAY, "--json"])
        assert found["lacking"] == [[], ["2026-11-20T11:00:00+00:00"]]
        assert found["compared"] == ["2026-11-20T10:00:00+00:00"]
        assert {h["hour"][11:13] for h in found["hours"]} == {"10"}
        assert main(["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny", "--date", DAY]) == 0
        assert ("1 hour with frames but no detections of yolov3-tiny, left out: imgpipeline redetect --model "
                "yolov3-tiny --from 2026-11-20-11:00 --to 2026-11-20-11:00") in capsys.readouterr().out
    finally:
        moved.rename(kept)


def redetect(storage, street, hour: str) -> dict:
    """yolov3-tiny's re-detection of the hour in `storage`, as a backfill's run makes it: its metadata."""
    with fresh_instance() as instance:
        resources = {"storage": storage, "tracking": street["tracking"],
                     "detector": DetectorResource.from_env()}
        result = dg.materialize([redetections_asset(models.get("yolov3-tiny"))], instance=instance,
                                partition_key=hour, resources=resources)
        assert result.success
        [made] = result.get_asset_materialization_events()
        return {k: v.value for k, v in made.materialization.metadata.items()}


def test_an_hour_redetected_partially_or_before_its_landing_was_whole_is_named_and_not_compared(
        street, capsys, tmp_path, monkeypatch):
    """A copy of the demo's store: 11:00 re-detected while a frame's bytes could not be read is partial,
    10:00 re-detected while its landing held half its records is stale; both are named with the command
    that makes them whole and compared with nothing, and making them again makes them whole."""
    import shutil

    from imgpipeline.defs.records.reader import read_records
    from imgpipeline.resources import StorageResource

    original = street["storage"].open()
    shutil.copytree(original.folder, tmp_path / "store")
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    store = storage.open()
    for key in store.list("landing/"):  # the records name their frames in the copy
        path = store.folder / key
        path.write_bytes(path.read_bytes().replace(original.root_uri.encode(), store.root_uri.encode()))
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", storage.uri)
    monkeypatch.setenv("IMGPIPELINE_ZONES_FILE", street["tracking"].zones_file)
    monkeypatch.setenv("IMGPIPELINE_ALERTS_FILE", street["alert_rules"].alerts_file)
    argv = ["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny", "--date", DAY]

    # 11:00: one detected frame's bytes gone while it is re-detected.
    record = next(r for k in store.list("landing/metadata/dt=2026-11-20/hour=11/")
                  for r in read_records(store, k) if r.status == "detected")
    frame = store.folder / store.key_for(record.uri)
    frame.rename(tmp_path / "away.jpg")
    assert redetect(storage, street, "2026-11-20-11:00")["frames_missing"] == 1
    # 10:00: re-detected while its landing held the first half of its records.
    hour_10 = store.list("landing/metadata/dt=2026-11-20/hour=10/")
    files = {k: (store.folder / k).read_bytes() for k in hour_10}
    for key, data in files.items():
        lines = data.splitlines(keepends=True)
        (store.folder / key).write_bytes(b"".join(lines[:len(lines) // 2]))
    assert redetect(storage, street, "2026-11-20-10:00")["frames_missing"] == 0
    for key, data in files.items():
        (store.folder / key).write_bytes(data)

    found = printed_json(capsys, [*argv, "--json"])
    assert found["partial"] == [[], ["2026-11-20T11:00:00+00:00"]]
    assert found["stale"] == [[], ["2026-11-20T10:00:00+00:00"]]
    assert found["compared"] == [] and found["hours"] == [] and found["lacking"] == [[], []]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("1 hour re-detected with yolov3-tiny with frames it could not read, left out: "
            "imgpipeline redetect --model yolov3-tiny --from 2026-11-20-11:00 --to 2026-11-20-11:00") in out
    assert ("1 hour re-detected with yolov3-tiny before more of their frames were detected, left out: "
            "imgpipeline redetect --model yolov3-tiny --from 2026-11-20-10:00 --to 2026-11-20-10:00") in out

    # The frame back, both hours made again (a partial hour is not kept as made): both whole, compared.
    (tmp_path / "away.jpg").rename(frame)
    for hour in HOURS:
        made = redetect(storage, street, hour)
        assert not made["kept_as_it_was"] and made["frames_missing"] == 0
        assert made["frames_detected_again"] > 0
    found = printed_json(capsys, [*argv, "--json"])
    assert found["partial"] == found["stale"] == [[], []]
    assert found["compared"] == ["2026-11-20T10:00:00+00:00", "2026-11-20T11:00:00+00:00"]


@pytest.fixture(scope="module")
def viewer(street):
    from imgpipeline.cli.serve import Running, Warehouse
    from imgpipeline.web.app import create_app

    running = Running(create_app(Warehouse(street["storage"], street["tracking"], street["alert_rules"])))
    yield running
    running.stop()


def test_the_compare_page_shows_the_days_figures_and_draws_the_boxes_one_model_missed(
        env, viewer, browser, capsys):
    found = printed_json(capsys, ["compare", "--model", "yolov4-tiny", "--model", "yolov3-tiny",
                                  "--date", DAY, "--json"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/compare?date={DAY}&a=yolov4-tiny&b=yolov3-tiny")
    shown = {r.get_attribute("data-class"): r.locator("td.n").all_inner_texts()
             for r in page.locator("table.classes tr[data-class]").all()}
    assert shown == {c["class_name"]: [str(c["matched"]), str(c["only"][0]), str(c["only"][1])]
                     for c in found["classes"]}
    hours = page.locator("table.hours tr[data-class]").count()
    assert hours == len(found["hours"])
    alerts = {r.get_attribute("data-rule"): r.locator("td.n").all_inner_texts()
              for r in page.locator("table.alerts tr[data-rule]").all()}
    assert alerts == {a["rule"]: [str(n) for n in a["alerts"]] for a in found["alerts"]}
    # Each box one model found alone is drawn on its frame's thumbnail.
    missed = page.locator("figure.missed img")
    assert missed.count() == sum(len(s) for c in found["classes"] for s in c["samples"])
    all_drawn(page, "figure.missed img")
    page.close()

    # A model the registry does not have, and a box outside any frame, are refused.
    for path, status in [(f"/compare?date={DAY}&a=yolov4-tiny&b=nothing", 400),
                         (f"/compare?date={DAY}&a=yolov4-tiny&b=yolov4-tiny", 400),
                         (f"/compare/{DAY}/street-cam/street-cam-000001/box.jpg?x=1&y=1&w=0&h=5", 400),
                         (f"/compare/{DAY}/street-cam/street-cam-000001/box.jpg?x=a&y=1&w=1&h=5", 400),
                         (f"/compare/{DAY}/street-cam/..%2F..%2Fetc/box.jpg?x=1&y=1&w=1&h=5", 404)]:
        assert fetched(viewer.url + path) == status, path


def test_comparisons_and_backtests_beyond_those_under_way_are_told_to_come_back(env, viewer):
    """With every slot for heavy work taken (as by requests under way), a comparison and a backtest are
    answered 503 with when to try again, and nothing else is held up; once a slot is free they run."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from imgpipeline.web.routes import laboratory

    form = urllib.parse.urlencode({"rules": (PACKAGE_DIR.parent / "alerts.yaml").read_text(),
                                   "model": "yolov4-tiny", "first": DAY, "last": DAY}).encode()
    heavy = [f"{viewer.url}/compare?date={DAY}&a=yolov4-tiny&b=yolov3-tiny", f"{viewer.url}/backtest"]
    taken = 0
    while laboratory.HEAVY.acquire(blocking=False):
        taken += 1
    try:
        assert taken == 2
        for url in heavy:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, data=form if url.endswith("backtest") else None)
            assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "15", url
        assert fetched(f"{viewer.url}/backtest") == 200  # the form itself is no heavy work
    finally:
        for _ in range(taken):
            laboratory.HEAVY.release()
    for url in heavy:
        with urllib.request.urlopen(url, data=form if url.endswith("backtest") else None) as answered:
            assert answered.status == 200 and b"yolov4-tiny" in answered.read()


def all_drawn(page, selector: str) -> None:
    """Every image of the selector, each scrolled into view (they load lazily), arrived and decoded."""
    images = page.locator(selector)
    for n in range(images.count()):
        images.nth(n).scroll_into_view_if_needed()
        images.nth(n).evaluate("i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r })")
        assert images.nth(n).evaluate("i => i.naturalWidth") > 0, images.nth(n).get_attribute("src")


def fetched(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_backtest_page_runs_a_proposed_rules_file_and_refuses_a_bad_one(env, viewer, browser, street):
    alerts = stored(env, ALERTS).to_pylist()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/backtest?date={DAY}")
    # The demo's own rules, proposed again: the page finds the alerts the hourly asset raised.
    page.fill("textarea[name=rules]", Path(street["alert_rules"].alerts_file).read_text())
    page.fill("input[name=first]", DAY)
    page.fill("input[name=last]", DAY)
    page.click("form.backtest button")
    page.wait_for_selector("table.counts")
    shown = {r.get_attribute("data-rule"): int(r.locator("td.n").inner_text())
             for r in page.locator("table.counts tr[data-rule]").all()}
    raised = Counter(a["rule"] for a in alerts)
    assert raised and shown == {rule: raised[rule] for rule in shown}  # every rule, none left out
    assert set(raised) < set(shown)  # the rules that raised nothing are shown with 0
    assert page.locator("figure.evidence").count() >= 1
    all_drawn(page, "figure.evidence img")
    # A rule naming a zone nobody drew: the page says so, and the form keeps what was written.
    page.goto(f"{viewer.url}/backtest?date={DAY}")
    page.fill("textarea[name=rules]", "rules:\n  - {name: nowhere, kind: zone_enter, zone: moon}\n")
    page.click("form.backtest button")
    assert "zone 'moon' is not drawn" in page.content()
    page.close()
    # Hostile rules (aliases, deep nesting, bytes that are no text, too much), days and models: a 400 each.
    good = {"rules": "rules: []\n", "first": DAY, "last": DAY, "model": "yolov4-tiny"}
    for change in ({"rules": "a: &x [1]\nb: *x\n"}, {"rules": "rules: [" * 50}, {"rules": "\0\udcff"},
                   {"rules": "# " + "x" * 200_000}, {"first": "2026-11-21"}, {"last": "2027-01-01"},
                   {"first": "../"}, {"model": "nothing"}):
        assert posted(viewer.url + "/backtest", {**good, **change}) == 400, change
    assert posted(viewer.url + "/backtest", good) == 200


def posted(url: str, fields: dict) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    body = urllib.parse.urlencode(fields, errors="surrogateescape").encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body)) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
