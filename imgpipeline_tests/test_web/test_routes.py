"""Each page group of the viewer over a warehouse in a temporary folder, served by uvicorn on a loopback
port: what hostile input gets (status codes, the security headers) and that nothing outside the storage
root is read, even where the warehouse itself names it."""

from __future__ import annotations

import http.client
from datetime import UTC, date, datetime
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pytest

from imgpipeline.cli.serve import Running, Warehouse
from imgpipeline.defs.tables import TABLES, to_parquet
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.vision.quality import decode_image, encode_jpeg
from imgpipeline.web.app import create_app
from imgpipeline.web.render import report_key

pytestmark = pytest.mark.edge

DAY = date(2026, 11, 20)
WHEN = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
MAX_BYTES = 20_000  # the storage's bound on a frame: the "big" frame's image is over it


def noise(height: int, width: int, seed: int) -> bytes:
    return encode_jpeg(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def put_table(store, table: str, rows: list[dict]) -> None:
    rows = [{**dict.fromkeys(TABLES[table].schema.names), **row} for row in rows]
    store.put(f"warehouse/{table}/dt={DAY}/hour=10/part-0.parquet",
              to_parquet(pa.Table.from_pylist(rows, schema=TABLES[table].schema)))


def plant(store, secret_uri: str) -> None:
    """Frames whose images lie in the root, outside it, behind `..` and over the size bound; alerts
    whose image keys are stored, absent and a path out of the root; a daily report."""
    for name, image in (("f1", noise(48, 64, 1)), ("f2", noise(48, 64, 2)), ("big", noise(400, 400, 3))):
        store.put(f"frames/cam/{name}.jpg", image)
    store.put("annotated/7.jpg", noise(48, 64, 4))
    uris = {"f1": store.uri("frames/cam/f1.jpg"), "f2": store.uri("frames/cam/f2.jpg"),
            "big": store.uri("frames/cam/big.jpg"), "outside": secret_uri,
            "dotdot": f"{store.root_uri}/frames/../../secret.jpg"}
    put_table(store, "frames", [
        {"frame_id": fid, "source_id": "cam", "uri": uri, "status": "detected", "captured_at": WHEN,
         "processed_at": WHEN, "ingested_at": WHEN} for fid, uri in uris.items()])
    put_table(store, "detections", [
        {"frame_id": "f1", "source_id": "cam", "captured_at": WHEN, "detection_index": 0, "class_id": 2,
         "class_name": "car", "confidence": 0.9, "class_rank": 1, "x": 4, "y": 4, "w": 20, "h": 20}])
    put_table(store, "alerts", [
        {"number": number, "fired_at": WHEN, "hour_start": WHEN, "source_id": "cam", "rule": "r",
         "kind": "class", "severity": "info", "detail": "d", "frame_id": "f1", "frame_ids": ["f1"],
         "annotated_key": annotated, "crop_key": crop}
        for number, annotated, crop in ((7, "annotated/7.jpg", "../secret.jpg"),
                                        (8, "annotated/8.jpg", None))])
    store.put(report_key(DAY), b"<h1>Daily report: 2026-11-20</h1>")


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer")
    secret = folder / "secret.jpg"  # a readable image beside the root: served, it would be a 200
    secret.write_bytes(noise(48, 64, 99))
    storage = StorageResource(uri=(folder / "store").as_uri(), max_frame_bytes=MAX_BYTES)
    plant(storage.open(), secret.as_uri())
    warehouse = Warehouse(storage, TrackingResource(zones_file="none"), AlertsResource(alerts_file="none"),
                          refresh_s=3600)
    running = Running(create_app(warehouse))
    yield running, storage.open(), secret.read_bytes()
    running.stop()


def get(viewer, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET as sent (no redirect followed): status, headers, body."""
    running, _, secret = viewer
    connection = http.client.HTTPConnection(urlsplit(running.url).netloc, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert secret not in body
    return response.status, dict(response.getheaders()), body


def statuses(viewer, paths: list[str]) -> dict[str, int]:
    found = {}
    for path in paths:
        code, headers, _ = get(viewer, path)
        assert "default-src 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        found[path] = code
    return found


def test_the_day_pages_take_a_day_and_refuse_what_is_no_day(viewer):
    pages = ("/", "/charts", "/operations")
    assert statuses(viewer, [f"{p}?date={DAY}" for p in pages] + list(pages)) == dict.fromkeys(
        [f"{p}?date={DAY}" for p in pages] + list(pages), 200)
    hostile = [f"{p}?date={d}" for p in pages for d in ("2026-13-45", "tomorrow", "2026-11-20%00")]
    assert statuses(viewer, hostile) == dict.fromkeys(hostile, 400)
    code, _, body = get(viewer, "/charts?date=2026-02-30")
    assert code == 400 and b"is not a day (YYYY-MM-DD)" in body


def test_an_alert_number_must_be_a_number(viewer):
    code, headers, _ = get(viewer, "/alerts/open?number=%20%237%20")
    assert (code, headers["location"]) == (303, "/alerts/7")
    for number in ("1%3BDROP", "", "-3", "7.0", "1234567890123"):
        code, _, body = get(viewer, f"/alerts/open?number={number}")
        assert code == 400 and b"An alert number is a whole number" in body, number
    assert statuses(viewer, ["/alerts/seven", "/alerts/7x", "/alerts/-7"]) == {
        "/alerts/seven": 404, "/alerts/7x": 404, "/alerts/-7": 404}
    code, _, body = get(viewer, "/alerts/12345")
    assert code == 404 and b"There is no alert 12345." in body
    assert statuses(viewer, [f"/alerts?date={DAY}", "/alerts/7", f"/alerts?date={DAY}&source=cam"]) == {
        f"/alerts?date={DAY}": 200, "/alerts/7": 200, f"/alerts?date={DAY}&source=cam": 200}
    hostile = [f"/alerts?date={DAY}&source={s}" for s in ("..%2Fx", "%3Cscript%3E", "cam%0A")]
    assert statuses(viewer, hostile) == dict.fromkeys(hostile, 400)


def test_an_alert_image_is_read_only_under_the_root(viewer):
    _, store, _ = viewer
    code, headers, body = get(viewer, "/alerts/7/annotated.jpg")
    assert (code, headers["content-type"]) == (200, "image/jpeg")
    assert body == store.get("annotated/7.jpg")
    # Alert 7's crop key is `../secret.jpg`; alert 8 has no crop and its annotated image is not stored.
    paths = ["/alerts/7/crop.jpg", "/alerts/8/crop.jpg", "/alerts/8/annotated.jpg", "/alerts/7/thumb.jpg",
             "/alerts/7/..%2F..%2Fsecret.jpg", "/alerts/9/annotated.jpg"]
    assert statuses(viewer, paths) == dict.fromkeys(paths, 404)
    assert b"invalid key" in get(viewer, "/alerts/7/crop.jpg")[2]
    # The alert's page shows it, with the crop's key refused rather than made a URI.
    code, _, body = get(viewer, "/alerts/7")
    assert code == 200 and b"refused: invalid key &#39;../secret.jpg&#39;" in body


def test_a_frame_is_named_by_ids_of_the_contract_and_read_only_under_the_root(viewer):
    code, headers, body = get(viewer, f"/frames/{DAY}/cam/f1/image.jpg")
    assert (code, headers["content-type"]) == (200, "image/jpeg")
    assert decode_image(body).shape == (48, 64, 3)
    assert get(viewer, f"/frames/{DAY}/cam/f1")[0] == 200
    assert get(viewer, f"/frames/{DAY}/cam/f1/annotated.jpg")[0] == 200
    assert get(viewer, "/frames/2026-11-21/cam/f1/image.jpg")[0] == 200  # found on the day before
    refused = [f"/frames/{DAY}/cam/{frame}/{kind}.jpg" for frame in ("outside", "dotdot", "big")
               for kind in ("image", "annotated", "thumb")]
    hostile = [f"/frames/{DAY}/cam/..f1/image.jpg", f"/frames/{DAY}/cam/f1..%2F..%2Fsecret/image.jpg",
               f"/frames/{DAY}/..%2F..%2Fsecret/f1/image.jpg", f"/frames/{DAY}/cam%0A/f1/image.jpg",
               f"/frames/{DAY}/cam/{'a' * 200}/image.jpg", f"/frames/{DAY}/cam/f1/secret.jpg",
               f"/frames/{DAY}/cam/f9", "/frames/2026-11-22/cam/f1/image.jpg"]
    assert statuses(viewer, refused + hostile) == dict.fromkeys(refused + hostile, 404)
    assert b"outside the storage root" in get(viewer, f"/frames/{DAY}/cam/outside/image.jpg")[2]
    assert b"not a normalized path" in get(viewer, f"/frames/{DAY}/cam/dotdot/image.jpg")[2]
    assert str(MAX_BYTES).encode() in get(viewer, f"/frames/{DAY}/cam/big/image.jpg")[2]


def test_the_frame_search_refuses_what_is_no_time_or_day(viewer):
    fine = [f"/frames?date={DAY}&start=10:00&end=10:59&name=%27%3B--%25_", f"/frames?date={DAY}&page=x"]
    assert statuses(viewer, fine) == dict.fromkeys(fine, 200)
    hostile = [f"/frames?date={DAY}&start=25:99", f"/frames?date={DAY}&end=10:59%0A",
               f"/frames?date={DAY}&start=1000", "/frames?date=2026-11-31", "/frames/2026-11-31/cam/f1",
               "/frames/yesterday/cam/f1/image.jpg"]
    assert statuses(viewer, hostile) == dict.fromkeys(hostile, 400)


def test_thumbnails_are_kept_once_drawn(viewer):
    _, store, _ = viewer
    code, _, thumb = get(viewer, f"/frames/{DAY}/cam/f2/thumb.jpg")
    assert code == 200 and decode_image(thumb).shape[1] <= 240
    store.delete("frames/cam/f2.jpg")
    assert get(viewer, f"/frames/{DAY}/cam/f2/image.jpg")[0] == 404  # the image is gone …
    code, _, again = get(viewer, f"/frames/{DAY}/cam/f2/thumb.jpg")
    assert (code, again) == (200, thumb)  # … its thumbnail is kept


def test_a_report_is_named_by_its_day(viewer):
    code, headers, body = get(viewer, f"/reports/{DAY}")
    assert (code, body) == (200, b"<h1>Daily report: 2026-11-20</h1>")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    code, _, body = get(viewer, "/reports/2026-11-21")
    assert code == 404 and b"No daily report for 2026-11-21 yet" in body
    assert statuses(viewer, ["/reports/2026-11-20%00", "/reports/20261120x", "/reports/..%2F..%2Fsecret.jpg",
                             "/reports/..", "/nowhere"]) == {
        "/reports/2026-11-20%00": 400, "/reports/20261120x": 400, "/reports/..%2F..%2Fsecret.jpg": 404,
        "/reports/..": 400, "/nowhere": 404}


def test_a_days_pages_never_read_another_days_files(tmp_path):
    """The views behind a day's pages hold that day's files only: a broken file of the next day leaves
    every page of this day (and an alert found by number) as it was; the day list still names both days,
    from a listing of folders; only the broken day's own pages fail."""
    storage = StorageResource(uri=(tmp_path / "store").as_uri(), max_frame_bytes=MAX_BYTES)
    store = storage.open()
    plant(store, (tmp_path / "absent.jpg").as_uri())
    for table in ("frames", "detections"):
        store.put(f"warehouse/{table}/dt=2026-11-21/hour=10/part-0.parquet", b"no parquet at all")
    warehouse = Warehouse(storage, TrackingResource(zones_file="none"), AlertsResource(alerts_file="none"))
    assert warehouse.days() == [date(2026, 11, 21), DAY]
    running = Running(create_app(warehouse))
    try:
        viewer = (running, store, b"never served")
        fine = [f"/?date={DAY}", f"/charts?date={DAY}", f"/operations?date={DAY}", f"/frames?date={DAY}",
                f"/frames/{DAY}/cam/f1", f"/frames/{DAY}/cam/f1/annotated.jpg", f"/alerts?date={DAY}",
                "/alerts/7"]
        assert statuses(viewer, fine) == dict.fromkeys(fine, 200)
        assert b"2026-11-21" in get(viewer, f"/?date={DAY}")[2]  # the day list names it
        # The newest day, the page without a date, and that day's pages read its broken files.
        for path in ("/", "/?date=2026-11-21", "/frames?date=2026-11-21"):
            assert get(viewer, path)[0] == 500, path
    finally:
        running.stop()
