"""Hostile frame messages: each is refused with a reason (BadInput), never a crash."""

from __future__ import annotations

import json

import pytest

from imgpipeline.ingest.messages import FRAME_ID, BadInput, FrameMessage, parse_message, stand_in_source

WHEN = "2026-11-21T10:00:00.000Z"
GOOD = {"schema": 1, "frame_id": "f1", "source_id": "cam1", "captured_at": WHEN,
        "uri": "file:///data/frames/cam1/2026-11-21/f1.jpg"}


def raw(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


@pytest.mark.parametrize("value, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "malformed JSON: RecursionError"),
    (b'{"schema": 1, "width": ' + b"9" * 5000 + b"}", "malformed JSON"),
    (raw(width=10**20), "not a whole number of pixels"),
    (raw().replace(b'"schema": 1', b'"schema": 1, "width": 1e400'), "not a whole number of pixels"),
    (raw(width=2**40), "not a whole number of pixels"),
    (raw(height=-5), "not a whole number of pixels"),
    (raw(width=True), "not a whole number of pixels"),
    (raw(captured_at="0001-01-01T00:00:00+01:00"), "not an ISO 8601 time"),
    (raw(captured_at="2026-11-21T10:00:00"), "has no time zone"),
    (raw(captured_at=["2026"]), "must be a string"),
    (raw(uri=[1]), "field 'uri' must be a string"),
    (raw(uri=None), "field 'uri' is missing"),
    (raw(uri="file:///x/" + "a" * 5000), "over the limit of 2048"),
    (raw(content_type=5), "field 'content_type' must be a string"),
    (raw(content_type="image/jpeg; rm -rf /"), "does not have the form"),
    (raw(sha256="not-a-digest"), "does not have the form"),
    (raw(frame_id="../../etc/passwd"), "does not have the form"),
    (raw(source_id="x" * 200), "over the limit of 128"),
    # `$` would let a trailing newline through: identity checks match the whole text.
    (raw(frame_id="cam1-000042\n"), "does not have the form"),
    (raw(source_id="cam1\n"), "does not have the form"),
    # The stand-in source of records of messages that named none: no camera may claim it.
    (raw(source_id="unparsed-nokey"), "reserved"),
    (raw(content_type="image/jpeg\n"), "does not have the form"),
    (raw(schema={"nested": [1, 2]}), "unknown schema version"),
    (b'"just a string"', "not an object"),
    (b"\xff\xfe", "malformed JSON"),
    (None, "no value"),
])
def test_hostile_json_messages_are_refused_with_a_reason(value, reason):
    with pytest.raises(BadInput, match=reason):
        parse_message(value, [])


def test_a_message_that_names_no_source_is_recorded_under_a_stand_in_of_its_key():
    keys = [None, b"", b"\xff\xfe\x00\x81", b"k" * 1_000_000, b"camera #1 / lobby", b"cam1"]
    stand_ins = [stand_in_source(key) for key in keys]
    assert all(FRAME_ID.match(s) and s.startswith("unparsed-") for s in stand_ins), stand_ins
    assert len(set(stand_ins)) == len(keys)  # keys apart, stand-ins apart
    assert stand_ins == [stand_in_source(key) for key in keys]  # the same key, the same stand-in
    for stand_in in stand_ins:  # no camera's own id
        with pytest.raises(BadInput, match="reserved"):
            parse_message(raw(source_id=stand_in), [])


def test_hostile_inline_headers_are_refused_with_a_reason():
    headers = FrameMessage("f1", "cam1", WHEN, None, None, 640, 480).to_headers()
    assert parse_message(b"jpeg", headers)[0].width == 640
    no_value = [(k, None if k.endswith("frame_id") else v) for k, v in headers]
    with pytest.raises(BadInput, match="field 'frame_id' is missing"):
        parse_message(b"jpeg", no_value)
    huge = [(k, b"9" * 5000 if k.endswith("width") else v) for k, v in headers]
    with pytest.raises(BadInput, match="not a whole number of pixels"):
        parse_message(b"jpeg", huge)
    # An inline message never claims a URI: the run stores its bytes itself.
    claimed = [*headers, ("imgpipeline.uri", b"file:///etc/passwd")]
    assert parse_message(b"jpeg", claimed)[0].uri is None
    with pytest.raises(BadInput, match="empty value"):
        parse_message(b"", headers)


def test_good_messages_still_parse():
    message, inline = parse_message(raw(width=640, height=480.0, sha256="a" * 64), [])
    assert (message.width, message.height, message.sha256, inline) == (640, 480, "a" * 64, None)


def test_a_broker_timestamp_out_of_any_calendar_reads_as_now():
    from datetime import UTC, datetime, timedelta

    from imgpipeline.defs.streaming.processing import broker_time

    assert broker_time(1_700_000_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    for hostile in (2**62, -(2**62), None):
        assert abs(broker_time(hostile) - datetime.now(UTC)) < timedelta(seconds=5)
