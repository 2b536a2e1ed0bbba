"""The frame message contract (docs/contracts.md): JSON with a claim-check URI, or inline image bytes.

Messages are untrusted input: parsing says exactly what is wrong, as a BadInput reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

SCHEMA_VERSION = 1
# Inline messages carry the image as the value and these headers.
HEADER_PREFIX = "imgpipeline."
FRAME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BadInput(Exception):
    """A message or frame that cannot be processed; str(exc) is the reason."""


@dataclass(frozen=True)
class FrameMessage:
    frame_id: str
    source_id: str
    captured_at: str
    uri: str | None
    sha256: str | None
    width: int | None
    height: int | None
    content_type: str = "image/jpeg"
    schema: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        body = {"schema": self.schema, **{k: v for k, v in asdict(self).items() if k != "schema"}}
        return json.dumps(body, separators=(",", ":")).encode()

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Headers of an inline message (the value is the image itself)."""
        fields = {k: v for k, v in asdict(self).items() if k != "uri" and v is not None}
        return [(HEADER_PREFIX + k, str(v).encode()) for k, v in fields.items()]

    @property
    def captured(self) -> datetime:
        return parse_time(self.captured_at)


def sha256_hex(data: bytes) -> str:
    """The content hash of a frame: the message's `sha256` field and stored objects' checksum."""
    return hashlib.sha256(data).hexdigest()


def iso_utc(moment: datetime) -> str:
    """`2026-11-21T10:00:00.123Z`: the one timestamp form of messages and records."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadInput(f"captured_at {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise BadInput(f"captured_at {text!r} has no time zone")
    return moment.astimezone(UTC)


def is_inline(headers) -> bool:
    return any(key.startswith(HEADER_PREFIX) for key, _ in headers or ())


def parse_message(value: bytes | None, headers) -> tuple[FrameMessage, bytes | None]:
    """The frame message and, for inline messages, the image bytes; BadInput otherwise."""
    if is_inline(headers):
        fields = {
            key[len(HEADER_PREFIX) :]: raw.decode("utf-8", "replace")
            for key, raw in headers
            if key.startswith(HEADER_PREFIX)
        }
        fields["uri"] = None
        if not value:
            raise BadInput("inline message has an empty value")
        return _build(fields), value
    if value is None:
        raise BadInput("message has no value")
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"malformed JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise BadInput("message is JSON but not an object")
    if not fields.get("uri"):
        raise BadInput("message has no uri")
    return _build(fields), None


def _build(fields: dict) -> FrameMessage:
    schema = fields.get("schema")
    if str(schema) != str(SCHEMA_VERSION):
        raise BadInput(f"unknown schema version {schema!r} (this pipeline reads {SCHEMA_VERSION})")
    for name in ("frame_id", "source_id", "captured_at"):
        if not fields.get(name) or not isinstance(fields[name], str):
            raise BadInput(f"field {name!r} is missing or not a string")
    for name in ("frame_id", "source_id"):
        if not FRAME_ID.match(fields[name]):
            raise BadInput(f"{name} {fields[name]!r} has characters outside [A-Za-z0-9._-]")
    parse_time(fields["captured_at"])
    try:
        width = int(fields["width"]) if fields.get("width") is not None else None
        height = int(fields["height"]) if fields.get("height") is not None else None
    except (TypeError, ValueError):
        raise BadInput("width and height must be integers") from None
    return FrameMessage(
        frame_id=fields["frame_id"],
        source_id=fields["source_id"],
        captured_at=fields["captured_at"],
        uri=fields.get("uri"),
        sha256=fields.get("sha256") or None,
        width=width,
        height=height,
        content_type=fields.get("content_type") or "image/jpeg",
    )


def frame_key(source_id: str, captured: datetime, frame_id: str) -> str:
    """Where a frame's bytes live under the storage root (the claim check)."""
    return f"frames/{source_id}/{captured.date().isoformat()}/{frame_id}.jpg"
