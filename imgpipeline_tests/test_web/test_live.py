"""The live wall (`/live`, web/routes/live.py over defs/alerts/now.py): each camera's latest landed frame
with its boxes and the live lane's track ids, pushed to the browsers watching as frames land, and what a
hostile or stalled client gets."""

from __future__ import annotations

import http.client
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest

from imgpipeline.cli.serve import Running, Warehouse
from imgpipeline.defs.alerts.live import LiveAlerts
from imgpipeline.defs.alerts.now import CamerasNow
from imgpipeline.defs.records.keys import landing_key
from imgpipeline.defs.records.listeners import LandedRange
from imgpipeline.defs.tables.views import connect
from imgpipeline.defs.warehouse.assets import hourly_tables
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.web.app import create_app
from imgpipeline.web.routes.live import MAX_WATCHERS
from imgpipeline_tests.instances import fresh_instance
from imgpipeline_tests.test_defs.test_alerts.scene import ZONES, records
from imgpipeline_tests.test_defs.test_tracking.test_tracking import land, materialize

# A track rule on the camera's line for a class it never sees: the live lane tracks the camera, nothing fires.
TRACKED = "rules: [{name: dog-through-door, kind: line_cross, line: door, classes: [dog]}]\n"


@pytest.fixture
def scene(tmp_path):
    """A camera's frames of the last half minute with their images in storage (not landed yet), and the
    resources of a run that tracks it live."""
    (tmp_path / "zones.yaml").write_text(ZONES)
    (tmp_path / "alerts.yaml").write_text(TRACKED)
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    resources = {"storage": storage, "tracking": TrackingResource(zones_file=str(tmp_path / "zones.yaml")),
                 "alert_rules": AlertsResource(alerts_file=str(tmp_path / "alerts.yaml"))}
    start = (datetime.now(UTC) - timedelta(seconds=40)).replace(microsecond=0)
    return storage, resources, records(storage.open(), start=start, ranges=None)


def land_live(storage, resources, found, start: int, end: int, kafka=None) -> None:
    """Offsets start..end-1 landed as the fast lane lands a range, then told to the live alerts (which tell
    `kafka` what they raise)."""
    store = storage.open()
    land(store, found[start:end], f"frames-0-{start}-{end}")
    for offset, record in enumerate(found[start:end], start):
        record.offset = offset
    with dg.build_op_context(resources={k: resources[k] for k in ("tracking", "alert_rules")}) as context:
        LiveAlerts()(LandedRange(context, kafka, store, kafka.frames_topic if kafka else "frames", 0, start,
                                 end, 0, lambda: iter(found[start:end]), 1 << 20))


def viewer(storage, resources) -> Running:
    return Running(create_app(Warehouse(storage, resources["tracking"], resources["alert_rules"])))


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        con.request("GET", path, headers=headers or {})
        answer = con.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        con.close()


class Stream:
    """One browser's `/live/events`, read line by line (or not read at all)."""

    def __init__(self, url: str, query: str = "", timeout_s: float = 10):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        self.sock.sendall(f"GET /live/events{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def cameras(self, until) -> list[dict]:
        """The cameras of the events read until `until(cameras)` holds (chunked lines: size, line; a
        `gone` event's data is passed over)."""
        kind = None
        for line in self.file:
            if line.startswith(b"event: "):
                kind = line[7:].strip()
            elif line.startswith(b"data: "):
                if kind is None and until(found := json.loads(line[6:])):
                    return found
                kind = None
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_the_wall_shows_each_cameras_latest_frame_with_the_ids_the_hourly_tracker_gives(scene):
    storage, resources, found = scene
    half = len(found) // 2
    land_live(storage, resources, found, 0, half)
    now = CamerasNow(storage.open())
    [camera] = now.look().values()
    assert (camera.frame_id, camera.labelled) == (found[half - 1].frame_id, True)
    # The frames may span two hours (the half minute before now crossing one): the hourly tracker gives
    # the ids of a track that began in the first hour when both are built.
    first, hour = (t.strftime("%Y-%m-%d-%H:00") for t in (found[0].event_hour, camera.captured_at))
    with fresh_instance() as instance:
        materialize([hourly_tables], first, hour, {**resources}, instance)
    stored = connect(storage).sql(
        "SELECT detection_index, class_name, track_id FROM detections WHERE frame_id = ? "
        "ORDER BY detection_index", params=[camera.frame_id]).fetchall()
    assert [(c, t) for c, _, _, t in camera.objects] == [(c, t) for _, c, t in stored]
    assert any(t is not None for *_, t in camera.objects)

    # An older frame landed late, a frame that failed, frames whose detections are no numbers, a file of
    # garbage, one nested past any parser's depth and a damaged saved watch: the wall stays as it was,
    # and a good frame after them still shows (without ids: its watch is damaged).
    store = storage.open()
    hour = camera.captured_at.replace(minute=0, second=0, microsecond=0)
    late = found[0]
    late.frame_id = "cam-late"
    land(store, [late], "frames-0-900-901")
    failed = found[half]
    failed.status, failed.error = "error", "undecodable"
    land(store, [failed], "frames-0-901-902")
    store.put(landing_key(hour, "frames-0-902-903"), b"\x00 not a landing record\n")
    store.put(landing_key(hour, "frames-0-903-904"), b"[" * 200_000 + b"\n")
    for n, value in ((1, float("nan")), (2, float("inf"))):
        odd = found[half + n]
        odd.detections = [{**odd.detections[0], "confidence": value}]
        land(store, [odd], f"frames-0-{904 + n}-{905 + n}")
    odd = found[half + 3]
    odd.detections = [{**odd.detections[0], "box": [1e300, 0, 1, 1]}]
    land(store, [odd], "frames-0-907-908")
    assert now.look() == {"cam": camera}
    assert now.landing.damaged == {landing_key(hour, f"frames-0-{n}-{n + 1}") for n in (902, 903)}
    store.put("alerts/live/frames/0.json", b'{"tracks": {"sources": {"cam": {"tail": [["x", [[1]]]]}}}')
    land(store, [found[half + 4]], "frames-0-908-909")
    shown = now.look()["cam"]
    assert (shown.frame_id, shown.labelled) == (found[half + 4].frame_id, False)


def test_a_camera_that_leaves_the_wall_leaves_the_browsers_too():
    """A camera whose latest frame is older than the hour before leaves the wall, and every stream is
    told (`event: gone`); one that comes back is shown again."""
    import asyncio

    from imgpipeline.web.routes.live import Wall

    class Shown:
        """The warehouse's side of the wall, as a test sets it (web/access.py's `cameras_now`)."""

        def __init__(self):
            self.cameras = {"yard": {"source_id": "yard", "frame_id": "y1", "labelled": False}}

        def cameras_now(self) -> dict:
            return dict(self.cameras)

    async def scenario() -> list[bytes]:
        shown = Shown()
        wall = Wall(shown)
        await wall.fresh()
        stream = wall.watch(None)
        said = [await anext(stream), await anext(stream)]
        shown.cameras = {}
        wall.looked = -1.0
        await wall.fresh()
        said.append(await anext(stream))
        shown.cameras = {"yard": {"source_id": "yard", "frame_id": "y2", "labelled": False}}
        wall.looked = -1.0
        await wall.fresh()
        said.append(await anext(stream))
        await stream.aclose()
        return said

    first, cameras, gone, back = asyncio.run(scenario())
    assert first.startswith(b"retry:") and b'"frame_id": "y1"' in cameras
    assert gone == b'event: gone\ndata: ["yard"]\n\n'
    assert b'"frame_id": "y2"' in back and not back.startswith(b"event:")


def test_a_frame_landed_appears_on_the_open_wall(scene, browser, shots):
    storage, resources, found = scene
    land_live(storage, resources, found, 0, 10)
    running = viewer(storage, resources)
    page = browser.new_page(viewport={"width": 1100, "height": 640})
    try:
        page.goto(f"{running.url}/live")
        figure = page.locator("#camera-cam")
        assert figure.get_attribute("data-frame") == found[9].frame_id
        image = "document.querySelector('#camera-cam img')"
        assert until(lambda: page.evaluate(f"{image}.naturalWidth")) == 640
        landed = time.monotonic()
        land_live(storage, resources, found, 10, len(found))
        # Polled from here: the page's CSP allows no script but its own (wait_for_function evaluates in it).
        assert until(lambda: figure.get_attribute("data-frame") == found[-1].frame_id
                     and page.evaluate(f"{image}.complete && {image}.src.includes('{found[-1].frame_id}')"))
        print(f"the frame landed was shown after {time.monotonic() - landed:.2f} s")
        assert page.evaluate(f"{image}.naturalWidth") == 640
        # Drawn with the ids the live lane gave (its watch saved after the range landed).
        assert until(lambda: page.evaluate(f"{image}.complete && {image}.src.endsWith('labelled=1')"))
        page.screenshot(path=str(shots / "live.png"))
        summary = page.locator("#camera-cam .summary").inner_text()
        assert summary == ", ".join(f"{n} {c}" for c, n in sorted(count(found[-1]).items()))

        page.goto(f"{running.url}/live?camera=cam")
        assert page.locator("h1").inner_text() == "cam, live"
        assert page.locator("#wall figure").count() == 1
        assert "No alerts." in page.locator("main").inner_text()
    finally:
        page.close()
        running.stop()


def until(look, within_s: float = 10.0):
    """What `look()` gives once it is true, looked at every 50 ms for `within_s`; the last look else."""
    deadline = time.monotonic() + within_s
    while not (seen := look()) and time.monotonic() < deadline:
        time.sleep(0.05)  # scenario: the browser gets the wall's events on its own time
    return seen


def count(record) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in record.detections:
        counts[d["class_name"]] = counts.get(d["class_name"], 0) + 1
    return counts


def test_a_second_camera_joins_the_wall_and_a_restarted_viewer_shows_the_same(scene):
    storage, resources, found = scene
    land_live(storage, resources, found, 0, 10)
    running = viewer(storage, resources)
    try:
        first = Stream(running.url)
        assert [c["frame_id"] for c in first.cameras(bool)] == [found[9].frame_id]
        first.close()
        # The ids the live lane gave reach the browsers (the first event may come before its watch).
        stream = Stream(running.url)
        [cam] = stream.cameras(lambda cs: cs[0]["labelled"])
        assert any(o["track_id"] is not None for o in cam["objects"])
        other = found[10]
        other.source_id, other.frame_id = "yard", "yard-0001"
        land(storage.open(), [other], "frames-1-0-1")
        [joined] = stream.cameras(bool)
        assert (joined["source_id"], joined["frame_id"], "uri" in joined) == ("yard", "yard-0001", False)
        stream.close()
    finally:
        running.stop()
    again = viewer(storage, resources)
    try:
        frames = {c["source_id"]: c["frame_id"] for c in Stream(again.url).cameras(bool)}
        assert frames == {"cam": found[9].frame_id, "yard": "yard-0001"}
    finally:
        again.stop()


def test_hostile_requests_and_a_stalled_browser(scene):
    storage, resources, found = scene
    outside = found[3]
    outside.source_id, outside.uri = "escape", "file:///etc/passwd"
    land(storage.open(), [outside], "frames-1-0-1")
    land_live(storage, resources, found, 0, 3)
    running = viewer(storage, resources)
    try:
        for path, status in (("/live?camera=%3Cscript%3E", 400), ("/live/events?camera=..%2Fx", 400),
                             ("/live/nobody.jpg", 404), ("/live/..%2F..%2Fetc%2Fpasswd.jpg", 404),
                             ("/live/escape.jpg", 404), ("/live?camera=" + "x" * 300, 400)):
            assert get(running.url, path)[0] == status, path
        code, headers, body = get(running.url, "/live")
        assert code == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert b'http-equiv="refresh"' in body  # without script the page reloads itself
        # Browsers opening the wall at once: as many as it takes, the others told it is busy.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(MAX_WATCHERS + 4) as pool:
            opened = list(pool.map(lambda _: Stream(running.url), range(MAX_WATCHERS + 4)))
        assert sorted(o.status for o in opened) == [200] * MAX_WATCHERS + [503] * 4
        for refused in (o for o in opened if o.status == 503):
            refused.close()
        # A browser that stopped reading (SIGSTOP) holds up no other, and every slot is freed when one goes.
        stalled, *watchers = [o for o in opened if o.status == 200]
        for watcher in watchers:
            watcher.cameras(bool)
        land_live(storage, resources, found, 3, 6)
        for watcher in watchers:
            assert watcher.cameras(lambda c: c[0]["frame_id"] == found[5].frame_id)
            watcher.close()
        stalled.close()
        deadline = time.monotonic() + 10
        while (late := Stream(running.url)).status == 503 and time.monotonic() < deadline:
            late.close()
            time.sleep(0.2)  # scenario: the server finds the closed streams as it next writes to them
        assert late.status == 200
        late.close()
    finally:
        running.stop()


@pytest.mark.integration
def test_the_enlarged_camera_lists_the_alerts_raised_live_before_their_hour_is_built(scene, kafka):
    """A camera's alerts raised live are on its enlarged wall at once, from what the ledger says Kafka was
    told; once the hour's alerts are built, each is listed once, from the table. A record of what Kafka was
    told that is damaged or hostile is passed over or shown as text."""
    from imgpipeline.defs.alerts.assets import alerts
    from imgpipeline.defs.alerts.ledger import Ledger
    from imgpipeline.vision.alert_rules import TOPIC_RECORD
    from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all

    storage, resources, found = scene
    rules = Path(resources["alert_rules"].alerts_file)
    rules.write_text("rules:\n  - {name: person-seen, kind: class, classes: [person]}\n"
                     "  - {name: car-seen, kind: class, classes: [car]}\n")
    land_live(storage, resources, found, 0, len(found), kafka)
    told = sorted(json.loads(m.value)["number"] for m in read_all(kafka, kafka.alerts_topic))
    assert len(told) >= 2
    ledger = Ledger(storage.open())
    # One record damaged (its time no time), one hostile (its rule markup): the page goes on without the
    # first and shows the second as text.
    damaged, hostile = told[0], told[1]
    for number, change in ((damaged, {"fired_at": 5}), (hostile, {"rule": "<script>alert(1)</script>"})):
        record = ledger.sent(number, TOPIC_RECORD)
        ledger.record_sent(number, TOPIC_RECORD, "delivered", alert={**record["alert"], **change})
    running = viewer(storage, resources)
    try:
        code, _, body = get(running.url, "/live?camera=cam")
        page = body.decode()
        assert code == 200 and "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
        listed = [n for n in told if f'data-number="{n}"' in page]
        assert listed == [n for n in told if n != damaged][-8:] and "(live)" in page
        # Nested past any parser's depth: passed over the same.
        kept = ledger.sent(damaged, TOPIC_RECORD)
        storage.open().put(f"alerts/ledger/sent/{damaged:010d}/{TOPIC_RECORD}.json", b"[" * 200_000)
        code, _, body = get(running.url, "/live?camera=cam")
        assert code == 200 and [n for n in told if f'data-number="{n}"' in body.decode()] == listed
        ledger.record_sent(damaged, TOPIC_RECORD, "delivered", alert=kept["alert"])  # for the hour's run
        code, _, body = get(running.url, f"/alerts/{hostile}")
        assert "raised live" in body.decode() and "not in the alerts table" in body.decode()

        hours = sorted({r.event_hour.strftime("%Y-%m-%d-%H:00") for r in found})
        with fresh_instance() as instance:
            materialize([hourly_tables, alerts], hours[0], hours[-1], {**resources, "kafka": kafka}, instance)
        in_table = {row[0] for row in connect(storage).sql("SELECT number FROM alerts").fetchall()}
        assert in_table == set(told)
    finally:
        running.stop()
    running = viewer(storage, resources)  # its views over the hour built (a viewer refreshes its own in 10 s)
    try:
        page = get(running.url, "/live?camera=cam")[2].decode()
    finally:
        running.stop()
    shown = [n for n in told if f'data-number="{n}"' in page]
    assert shown == told[-8:] and all(page.count(f'data-number="{n}"') == 1 for n in shown)
    assert "(live)" not in page


def test_a_browser_whose_socket_stays_full_is_let_go_and_its_slot_freed(scene, monkeypatch):
    """A browser that takes no more bytes (its receive window shut, the server's buffers full with a wall of
    300 cameras of 250 objects each, ~7 MB) holds its slot only until a send has waited SEND_WITHIN_S:
    then the server closes its stream and the slot is given to the next browser. Here one slot, a
    heartbeat a second and 2 s to send, so that it shows in seconds."""
    import dataclasses

    from imgpipeline.web.routes import live

    for name, value in (("MAX_WATCHERS", 1), ("HEARTBEAT_S", 1.0), ("SEND_WITHIN_S", 2.0)):
        monkeypatch.setattr(live, name, value)
    storage, resources, found = scene
    crowded = [dataclasses.replace(found[0], source_id=f"cam{n:03d}", frame_id=f"cam{n:03d}-000001",
                                   detections=found[0].detections[:1] * 250, object_count=250)
               for n in range(300)]
    land(storage.open(), crowded, "frames-0-0-300")
    running = viewer(storage, resources)
    parts = urlsplit(running.url)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that shuts at once
    try:
        stalled.connect((parts.hostname, parts.port))
        stalled.sendall(f"GET /live/events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        deadline, refused = time.monotonic() + 60, 0
        while (late := Stream(running.url)).status == 503 and time.monotonic() < deadline:
            refused += 1
            late.close()
            time.sleep(0.2)  # scenario: asked again until the stalled browser's slot is free
        assert late.status == 200 and refused > 0, "the stalled browser's slot was never freed"
        late.close()
        # Its stream was closed by the server: what it had buffered, then the end.
        stalled.settimeout(10)  # a stream still open would time out here
        while stalled.recv(1 << 20):
            continue
    finally:
        stalled.close()
        running.stop()
