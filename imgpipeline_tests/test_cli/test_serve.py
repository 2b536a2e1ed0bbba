"""The viewer in a real browser (Debian's chromium driven by Playwright) over the demo's data: every
page, what a person would check on it, and screenshots; then hostile requests, which get nothing."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, date

import pyarrow as pa
import pytest

from imgpipeline.cli.serve import Running, Warehouse
from imgpipeline.defs.tables import ALERTS, DETECTIONS, FRAMES, TABLES, to_parquet
from imgpipeline.ingest.messages import parse_time
from imgpipeline.web import queries
from imgpipeline.web.app import create_app
from imgpipeline.web.render import report_key
from imgpipeline_tests.pipeline import wait_for
from imgpipeline_tests.test_cli.street import DAY

pytestmark = [pytest.mark.integration, pytest.mark.instance, pytest.mark.results]



@pytest.fixture(scope="module")
def street(street_data):
    resources, folder = street_data
    viewer = Running(create_app(Warehouse(resources["storage"], resources["tracking"],
                                          resources["alert_rules"], refresh_s=1)))
    yield viewer, resources, folder
    viewer.stop()


def loaded(page, selector: str) -> bool:
    """The image arrived and decoded (a broken image has no natural width); fails after 20 s."""
    page.wait_for_function("s => { const i = document.querySelector(s); "
                           "return i !== null && i.complete && i.naturalWidth > 0 }",
                           arg=selector, timeout=20_000)
    return page.eval_on_selector(selector, "img => img.naturalWidth > 0")


def test_the_day_page_charts_each_hour_per_class(street, browser, shots):
    viewer, resources, _ = street
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/?date={DAY}")
    section = page.locator('section[data-source="street-cam"]')
    classes = set(section.locator("rect.bar").evaluate_all("rs => rs.map(r => r.dataset.series)"))
    assert {"car", "person", "bicycle"} <= classes
    hours = set(section.locator("rect.bar").evaluate_all("rs => rs.map(r => r.dataset.category)"))
    assert hours == {"10", "11"}  # the video runs over 11:00
    texts = section.locator("table.classes tr").all_inner_texts()
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in texts}
    # The day's detections and distinct objects per class, as the stored daily summary counts them (the
    # figures follow the CPU's inference precision, so they are read from the table, never pinned).
    warehouse = Warehouse(resources["storage"], resources["tracking"], resources["alert_rules"])
    summary = warehouse.cursor().execute(
        "SELECT class_name, sum(objects), sum(unique_objects) FROM daily_summary WHERE day = CAST(? AS DATE) "
        "AND source_id = 'street-cam' AND objects > 0 GROUP BY 1", [DAY]).fetchall()
    assert {"car", "person", "bicycle"} <= {name for name, _, _ in summary}
    assert {name: rows[name] for name, _, _ in summary} == {
        name: [str(objects), str(unique)] for name, objects, unique in summary}
    assert section.locator(".kind").get_attribute("data-kind") == "sequence"
    # The photos are no sequence: their objects are their detections, and the page says so.
    photos = page.locator('section[data-source="photos"]')
    assert photos.locator(".kind").get_attribute("data-kind") == "photos"
    stills = dict(warehouse.cursor().execute(
        "SELECT class_name, sum(objects) FROM daily_summary WHERE day = CAST(? AS DATE) "
        "AND source_id = 'photos' AND objects > 0 GROUP BY 1", [DAY]).fetchall())
    shown = {r.split("\t")[0]: r.split("\t")[1:]
             for r in photos.locator("table.classes tr").all_inner_texts()}
    assert stills and {name: shown[name] for name in stills} == {
        name: [str(n), str(n)] for name, n in stills.items()}
    # `imgpipeline summary` says the same.
    from imgpipeline.defs.tables.views import SUMMARY_SQL

    summary = warehouse.cursor().sql(SUMMARY_SQL, params=[DAY])
    rows = [dict(zip(summary.columns, row, strict=True)) for row in summary.fetchall()]
    kinds = {(r["source_id"], r["kind"]) for r in rows}
    assert ("photos", "photos") in kinds and ("street-cam", "sequence") in kinds and len(kinds) == 2
    assert all(r["distinct_objects"] == r["objects"] for r in rows if r["kind"] == "photos")
    assert sum(r["distinct_objects"] for r in rows if r["source_id"] == "photos") == sum(stills.values())
    page.screenshot(path=str(shots / "day.png"), full_page=True)
    page.close()


def test_an_alert_opens_by_its_number_with_its_images(street, browser, shots):
    viewer, resources, _ = street
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/alerts?date={DAY}")
    numbers = page.locator("table.alerts tr[data-number]").evaluate_all("rs => rs.map(r => r.dataset.number)")
    assert numbers, "the street raised no alert"
    page.screenshot(path=str(shots / "alerts.png"), full_page=True)
    warehouse = Warehouse(resources["storage"], resources["tracking"], resources["alert_rules"])
    with_crop = [a for a in queries.alerts(warehouse.cursor(), None) if a["crop_key"]]
    assert with_crop, "no alert about one object"
    number = str(with_crop[0]["number"])
    page.fill("input[name=number]", number)
    page.click("text=Open alert")
    page.wait_for_url(f"**/alerts/{number}")
    assert page.locator("h1").inner_text().startswith(f"Alert {number}:")
    assert loaded(page, "#annotated") and loaded(page, "#crop")
    assert "kafka: delivered" in page.locator("table.alert").inner_text()
    page.screenshot(path=str(shots / "alert.png"), full_page=True)
    page.close()


def test_objects_are_named_by_their_number_of_the_day(street, browser, monkeypatch, capsys):
    """`car 3`, not 1795…: the alert list, an alert's page and its frame's page, and `imgpipeline alerts`,
    name the object by its place among its source's objects of that class confirmed that day, from the
    stored detections."""
    from imgpipeline.cli.main import main

    viewer, resources, _ = street
    con = Warehouse(resources["storage"], resources["tracking"], resources["alert_rules"]).cursor()
    about = [a for a in queries.alerts(con, None) if a["track_id"] is not None]
    assert about, "no alert about a tracked object"
    page = browser.new_page()
    for alert in about:
        ids = sorted({t for (t,) in con.execute(
            "SELECT DISTINCT track_id FROM detections WHERE source_id = ? AND class_name = ? "
            "AND track_id IS NOT NULL", [alert["source_id"], alert["class_name"]]).fetchall()
            if queries.confirmed_on(t) == queries.confirmed_on(alert["track_id"])})
        named = f"{alert['class_name']} {ids.index(alert['track_id']) + 1}"
        assert str(alert["track_id"]) not in alert["detail"]
        page.goto(f"{viewer.url}/alerts/{alert['number']}")
        shown = page.locator("table.alert").inner_text()
        assert f"{named} (track {alert['track_id']})" in shown
        page.goto(f"{viewer.url}/frames/{alert['day']}/{alert['source_id']}/{alert['frame_id']}")
        assert named in page.locator("table.detections").inner_text()
    page.goto(f"{viewer.url}/alerts?date={DAY}")
    assert f"({named})" in page.locator(f"tr[data-number='{about[-1]['number']}']").inner_text()
    page.close()
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", resources["storage"].uri)
    capsys.readouterr()
    assert main(["alerts", "show", str(about[-1]["number"])]) == 0
    assert f"object     {named} (track {about[-1]['track_id']})" in capsys.readouterr().out
    assert main(["alerts", "list", "--date", DAY]) == 0
    assert f"({named})" in capsys.readouterr().out


def clip_windows(con, raised: list[dict]) -> dict[int, list[float]]:
    """What the frames table says each alert's clip holds: the capture times of its source's frames that
    were decoded, from CLIP_BEFORE_S before it fired to CLIP_AFTER_S after."""
    from imgpipeline.defs.alerts.clips import CLIP_AFTER_S, CLIP_BEFORE_S

    return {a["number"]: [t for (t,) in con.execute(
        "SELECT epoch(captured_at) FROM frames WHERE source_id = ? "
        "AND status IN ('detected', 'skipped_dark') AND epoch(captured_at) BETWEEN ? AND ? "
        "ORDER BY captured_at",
        [a["source_id"], a["fired_at"].timestamp() - CLIP_BEFORE_S,
         a["fired_at"].timestamp() + CLIP_AFTER_S]).fetchall()] for a in raised}


def test_a_video_alert_plays_its_clip_and_a_photo_keeps_its_snapshot(street, browser, shots, monkeypatch,
                                                                    capsys):
    """Each alert about a video's frame has a clip of the seconds around it (every decoded frame of its
    source in the window, at their own times) that Chromium plays on the alert's page; an alert about a
    photo (one frame in its window) has none. `alerts show` names the clip, the daily report links it."""
    import io

    import av

    from imgpipeline.cli.main import main

    viewer, resources, folder = street
    warehouse = Warehouse(resources["storage"], resources["tracking"], resources["alert_rules"])
    con, store = warehouse.cursor(), resources["storage"].open()
    raised = queries.alerts(con, None)
    windows = clip_windows(con, raised)
    clips = {a["number"]: queries.stored_clip(store, a) for a in raised}
    assert {n for n, key in clips.items() if key} == {
        a["number"] for a in raised if a["annotated_key"] and len(windows[a["number"]]) >= 2}
    videos = sorted(n for n, key in clips.items() if key)
    assert videos, f"no alert has a clip: {[(a['number'], a['source_id']) for a in raised]}"
    for number in videos:  # each clip holds its window's frames, at their own times
        with av.open(io.BytesIO(store.get(clips[number]))) as clip:
            assert sum(1 for _ in clip.decode(video=0)) == len(windows[number])
    number, window = videos[0], windows[videos[0]]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/alerts/{number}")
    page.wait_for_function("() => document.querySelector('#clip').readyState >= 1", timeout=20_000)
    duration = page.eval_on_selector("#clip", "v => v.duration")
    assert window[-1] - window[0] <= duration <= window[-1] - window[0] + 0.5, (duration, window)
    page.eval_on_selector("#clip", "v => { v.playbackRate = 4; return v.play() }")
    page.wait_for_function("() => document.querySelector('#clip').ended", timeout=60_000)
    played = page.eval_on_selector("#clip",
                                   "v => [v.videoWidth, v.getVideoPlaybackQuality().totalVideoFrames]")
    assert played[0] > 0 and played[1] >= len(window) - 1, (played, len(window))
    page.eval_on_selector("#clip", "v => { v.currentTime = v.duration / 2 }")
    page.wait_for_function("() => !document.querySelector('#clip').seeking", timeout=20_000)
    page.screenshot(path=str(shots / "alert-clip.png"), full_page=True)
    page.close()
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", resources["storage"].uri)
    capsys.readouterr()
    assert main(["alerts", "show", str(number)]) == 0
    assert f"clip       {store.uri(clips[number])}" in capsys.readouterr().out
    report = store.get(report_key(date.fromisoformat(DAY))).decode()
    assert {str(a["day"]) for a in raised} == {DAY}
    assert report.count("/clip.webm\"") == len(videos)


def frames_with(con, class_name: str) -> list[tuple]:
    """The day's frames as the search lists them (by capture time), each with its source, capture time
    and whether the tables hold a detection of `class_name` in it."""
    having = set(con.execute("SELECT DISTINCT source_id, frame_id FROM detections WHERE dt = CAST(? AS DATE) "
                             "AND class_name = ?", [DAY, class_name]).fetchall())
    rows = con.execute("SELECT source_id, frame_id, captured_at FROM frames WHERE dt = CAST(? AS DATE)",
                       [DAY]).fetchall()
    return sorted((captured.astimezone(UTC), source, frame, (source, frame) in having)
                  for source, frame, captured in rows)


def test_the_frame_search_finds_a_known_frame_and_opens_it(street, browser, shots):
    viewer, resources, _ = street
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/frames?date={DAY}")
    page.fill("input[name=name]", "bus")
    with page.expect_navigation():
        page.click("text=Search")
    figures = page.locator("figure[data-frame]")
    assert figures.evaluate_all("fs => fs.map(f => f.dataset.frame)") == ["bus"]
    assert loaded(page, "figure[data-frame=bus] img")
    # Each filter keeps what the tables say it should: a class, a time of day (the video runs from 10:59:55
    # to 11:00:05, so 11:00 leaves out its first seconds) and a source; the first page of them.
    con = Warehouse(resources["storage"], resources["tracking"], resources["alert_rules"]).cursor()
    with_bicycles = frames_with(con, "bicycle")
    page.goto(f"{viewer.url}/frames?date={DAY}&source=street-cam&class=bicycle&start=11:00&end=11:00")
    found = figures.evaluate_all("fs => fs.map(f => f.dataset.frame)")
    assert found and found == [frame for at, source, frame, has in with_bicycles
                               if source == "street-cam" and has and at.hour == 11 and at.minute == 0
                               ][:queries.PAGE_SIZE]
    assert any(at.hour == 10 for at, source, _, has in with_bicycles if source == "street-cam" and has)
    page.goto(f"{viewer.url}/frames?date={DAY}&class=bus")
    found = figures.evaluate_all("fs => fs.map(f => f.dataset.frame)")
    assert "bus" in found and "zidane" not in found  # zidane.jpg shows two men, no bus
    assert found == [frame for _, _, frame, has in frames_with(con, "bus") if has][:queries.PAGE_SIZE]
    page.goto(f"{viewer.url}/frames?date={DAY}&source=street-cam&class=bicycle&start=10:59&end=11:00")
    page.screenshot(path=str(shots / "frames.png"), full_page=True)
    page.goto(f"{viewer.url}/frames?date={DAY}")
    page.fill("input[name=name]", "bus")
    with page.expect_navigation():
        page.click("text=Search")
    with page.expect_navigation():
        page.click("figure[data-frame=bus] a")
    assert "bus" in page.locator("table.detections").inner_text()
    assert loaded(page, "#annotated")
    page.close()


def test_the_charts_and_operations_pages(street, browser, shots):
    viewer, _, _ = street
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/charts?date={DAY}")
    titles = page.locator("svg.chart > title").evaluate_all("ts => ts.map(t => t.textContent)")
    assert [t.split(":")[0] for t in titles] == [
        "Image sizes (KB)", "Frames processed per hour of the day (UTC), by status",
        "Brightness over the day (mean 0–255) per source"]
    assert set(page.locator("polyline.line").evaluate_all("ls => ls.map(l => l.dataset.series)")) == {
        "photos", "street-cam"}
    assert page.locator("line.threshold").count() == 1  # the dark filter's level
    page.screenshot(path=str(shots / "charts.png"), full_page=True)
    page.goto(f"{viewer.url}/operations?date={DAY}")
    assert set(page.locator("polyline.line").evaluate_all("ls => ls.map(l => l.dataset.series)")) == {
        "in", "processed"}
    hours = page.locator("table.per-hour tr").all_inner_texts()[1:]
    assert [h.split()[0] for h in hours] == ["10:00", "11:00"]
    assert sum(int(h.split()[1]) for h in hours) == 252
    page.screenshot(path=str(shots / "operations.png"), full_page=True)
    page.close()


def test_the_daily_report_is_one_file_with_its_alert_images(street, browser, shots):
    viewer, resources, _ = street
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{viewer.url}/reports/{DAY}")
    assert page.locator("h1").inner_text() == f"Daily report: {DAY}"
    images = page.locator("table.alerts img")
    assert images.count() >= 1
    assert all(src.startswith("data:image/jpeg;base64,")
               for src in images.evaluate_all("is => is.map(i => i.getAttribute('src'))"))
    assert page.locator("svg.chart").count() >= 6
    page.screenshot(path=str(shots / "report.png"), full_page=True)
    page.close()
    report = resources["storage"].open().get(f"reports/daily/{DAY}.html").decode()
    assert "<script" not in report and 'src="http' not in report  # nothing to fetch: self-contained


def test_pages_work_with_javascript_off(street, browser):
    viewer, _, _ = street
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{viewer.url}/alerts?date={DAY}")
    number = page.locator("table.alerts tr[data-number]").first.get_attribute("data-number")
    page.fill("input[name=number]", number)
    page.click("text=Open alert")
    page.wait_for_url(f"**/alerts/{number}")
    page.goto(f"{viewer.url}/?date=2026-11-19")  # the day form, a plain GET
    assert "No frames on 2026-11-19" in page.content()
    context.close()


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def plant_forged_rows(store) -> None:
    """Rows of a forged hour on 2026-11-18: frame URIs outside the root, markup in names and alert text."""
    when = parse_time("2026-11-18T10:00:00Z")
    frames = [{**dict.fromkeys(FRAMES.schema.names), "frame_id": fid, "source_id": "cam", "uri": uri,
               "status": "detected", "captured_at": when, "processed_at": when, "ingested_at": when}
              for fid, uri in (("evil", "file:///etc/passwd"),
                               ("evil2", f"{store.root_uri}/frames/../../secret.txt"))]
    detections = [{**dict.fromkeys(DETECTIONS.schema.names), "frame_id": "evil", "source_id": "cam",
                   "captured_at": when, "detection_index": 0, "class_id": 0,
                   "class_name": "<script>x</script>", "confidence": 0.9, "class_rank": 1,
                   "x": 1, "y": 1, "w": 5, "h": 5}]
    alerts = [{**dict.fromkeys(ALERTS.schema.names), "number": 999_999, "fired_at": when,
               "hour_start": when, "source_id": "cam", "rule": "r", "kind": "class", "severity": "info",
               "detail": "<img src=x onerror=alert(1)>", "frame_id": "evil", "frame_ids": ["evil"]},
              {**dict.fromkeys(ALERTS.schema.names), "number": 999_998, "fired_at": when,  # evidence outside
               "hour_start": when, "source_id": "cam", "rule": "r", "kind": "class", "severity": "info",
               "detail": "forged", "frame_id": "evil", "frame_ids": ["evil"],
               "annotated_key": "../secret.jpg"}]
    for table, rows in (("frames", frames), ("detections", detections), ("alerts", alerts)):
        store.put(f"warehouse/{table}/dt=2026-11-18/hour=10/part-0.parquet",
                  to_parquet(pa.Table.from_pylist(rows, schema=TABLES[table].schema)))


def test_hostile_requests_get_nothing_outside_the_storage_root(street):
    viewer, resources, folder = street
    plant_forged_rows(resources["storage"].open())
    secret = folder / "secret.txt"
    secret.write_text("top secret")
    (folder / "secret.webm").write_text("top secret")  # where the forged alert's clip would lie
    requests = {
        "/frames/2026-11-18/cam/evil/image.jpg": 404,
        "/frames/2026-11-18/cam/evil2/thumb.jpg": 404,
        "/frames/2026-11-20/street-cam/..bus/image.jpg": 404,
        "/frames/2026-11-20/..%2F..%2F..%2Fetc/passwd/image.jpg": 404,
        "/frames/2026-11-20/street-cam/..%2Fsecret/thumb.jpg": 404,
        f"/frames/2026-11-20/street-cam/{'a' * 200}/image.jpg": 404,
        "/reports/..%2F..%2Fsecret.txt": 404,  # no route: a day holds no slash
        "/reports/2026-11-20%00": 400,
        "/alerts/open?number=1%3BDROP": 400,
        "/alerts/99999999999": 404,
        "/alerts/1/..%2F..%2Fsecret.jpg": 404,
        "/?date=2026-13-45": 400,
        "/frames?date=2026-11-20&start=25:99": 400,
        "/alerts?date=2026-11-20&source=%3Cscript%3E": 400,
        "/alerts?date=2026-11-20&source=street-cam%0A": 400,
        "/frames/2026-11-20/street-cam%0A/bus/image.jpg": 404,
        "/frames/2026-11-20/photos/bus%0A/image.jpg": 404,
        "/frames?date=2026-11-20&start=10:59%0A": 400,
    }
    for path, expected in requests.items():
        code, body = status(viewer.url + path)
        assert code == expected, (path, code)
        assert "top secret" not in body and "root:" not in body
        assert "<script>" not in body
    # What the warehouse holds is text on the pages and in the charts, never markup.
    wait_for(lambda: "&lt;script&gt;x" in status(viewer.url + "/?date=2026-11-18")[1], 30,
             "the viewer to read the planted rows (it looks for new files every second)")
    for path in ("/?date=2026-11-18", "/alerts?date=2026-11-18", "/alerts/999999",
                 "/frames/2026-11-18/cam/evil"):
        # Each page's own view of the warehouse sees the new files on its next look.
        code, body = wait_for(lambda path=path: (shown := status(viewer.url + path))[0] == 200 and shown, 30,
                              f"{path} to show the planted rows")
        assert "<script>x" not in body and "<img src=x" not in body, path
    assert "&lt;script&gt;x" in status(viewer.url + "/?date=2026-11-18")[1]
    assert "&lt;img src=x onerror=alert(1)&gt;" in status(viewer.url + "/alerts/999999")[1]
    for path in ("/alerts/999998", "/alerts/999998/clip.webm", "/alerts/999998/annotated.jpg"):
        code, body = status(viewer.url + path)
        assert code == (200 if path == "/alerts/999998" else 404) and "top secret" not in body, (path, code)
        assert 'id="clip"' not in body
    # Search text is data, never SQL or markup.
    code, body = status(viewer.url + "/frames?date=2026-11-20&name=%27%3B%20DROP%20VIEW%20frames%3B--%25_")
    assert code == 200 and "0 frames shown" in body
    assert status(viewer.url + "/frames?date=2026-11-20&name=bus")[0] == 200
