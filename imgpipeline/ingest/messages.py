"""The frame message contract (docs/contracts.md): JSON with a claim-check URI, or inline image bytes.

Messages are untrusted input: parsing says exactly what is wrong, as a BadInput reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from imgpipeline import STAND_IN_SOURCE

SCHEMA_VERSION = 1
# Inline messages carry the image as the value and these headers.
HEADER_PREFIX = "imgpipeline."
FRAME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
CONTENT_TYPE = re.compile(r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+\Z")
MAX_SIDE = 100_000  # pixels; a camera frame is far below


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
    if not isinstance(text, str) or len(text) > 64:
        raise BadInput(f"captured_at {_short(text)} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise BadInput(f"captured_at {text!r} has no time zone")
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 in a zone east of UTC
        raise BadInput(f"captured_at {text!r} is not an ISO 8601 time in UTC's range") from None


def is_inline(headers) -> bool:
    return any(isinstance(key, str) and key.startswith(HEADER_PREFIX) for key, _ in headers or ())


def parse_message(value: bytes | None, headers) -> tuple[FrameMessage, bytes | None]:
    """The frame message and, for inline messages, the image bytes; BadInput otherwise.

    Every field is checked for type and range here, so nothing later trips over a value.
    """
    if is_inline(headers):
        fields = {
            key[len(HEADER_PREFIX) :]: (raw or b"").decode("utf-8", "replace")
            for key, raw in headers
            if isinstance(key, str) and key.startswith(HEADER_PREFIX)
        }
        fields.pop("uri", None)  # inline bytes are stored by the run, never read from a claimed URI
        if not value:
            raise BadInput("inline message has an empty value")
        return _build(fields, inline=True), value
    if value is None:
        raise BadInput("message has no value")
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: bad JSON, or an integer of thousands of digits; RecursionError: deep nesting
        raise BadInput(f"malformed JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise BadInput("message is JSON but not an object")
    return _build(fields, inline=False), None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(fields: dict, name: str, *, required: bool, limit: int, pattern: re.Pattern | None = None):
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise BadInput(f"field {name!r} is missing")
        return None
    if not isinstance(value, str):
        raise BadInput(f"field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise BadInput(f"field {name!r} is {len(value)} characters long, over the limit of {limit}")
    if pattern is not None and not pattern.match(value):
        raise BadInput(f"{name} {_short(value)} does not have the form {pattern.pattern}")
    return value


def _side(fields: dict, name: str) -> int | None:
    """A width or height: a whole number of pixels (JSON number, or digits in a header)."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    digits = isinstance(value, str) and value.isdigit() and len(value) <= 6
    if digits or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise BadInput(f"{name} {_short(value)} is not a whole number of pixels from 1 to {MAX_SIDE}")
    return value


def _build(fields: dict, *, inline: bool) -> FrameMessage:
    schema = fields.get("schema")
    if schema not in (SCHEMA_VERSION, str(SCHEMA_VERSION)):
        raise BadInput(f"unknown schema version {_short(schema)} (this pipeline reads {SCHEMA_VERSION})")
    frame_id = _text(fields, "frame_id", required=True, limit=128, pattern=FRAME_ID)
    source_id = _text(fields, "source_id", required=True, limit=128, pattern=FRAME_ID)
    if source_id.startswith(STAND_IN_SOURCE):
        raise BadInput(f"source_id {source_id!r}: the prefix {STAND_IN_SOURCE!r} is reserved for records of "
                       "messages that named no source")
    captured_at = _text(fields, "captured_at", required=True, limit=64)
    parse_time(captured_at)
    uri = None if inline else _text(fields, "uri", required=True, limit=2048)
    return FrameMessage(
        frame_id=frame_id,
        source_id=source_id,
        captured_at=captured_at,
        uri=uri,
        sha256=_text(fields, "sha256", required=False, limit=64, pattern=SHA256),
        width=_side(fields, "width"),
        height=_side(fields, "height"),
        content_type=_text(fields, "content_type", required=False, limit=100, pattern=CONTENT_TYPE)
        or "image/jpeg",
    )


def stand_in_source(key: bytes | None) -> str:
    """The source id of a record of a message that named no source: `unparsed-` and the first 16 hex
    digits of the key's sha256 (`unparsed-nokey` without a key). Whatever the key holds, the id passes
    the contract, and the same message processed again gets the same one."""
    return STAND_IN_SOURCE + ("nokey" if key is None else sha256_hex(key)[:16])


def frame_key(source_id: str, captured: datetime, frame_id: str) -> str:
    """Where a frame's bytes live under the storage root (the claim check)."""
    return f"frames/{source_id}/{captured.date().isoformat()}/{frame_id}.jpg"


def annotated_key(source_id: str, captured: datetime, frame_id: str, variant: str | None = None) -> str:
    """Where a frame's annotated copy lives (boxes drawn), or a variant of it (an alert's own drawing,
    its crop)."""
    name = frame_id if variant is None else f"{frame_id}.{variant}"
    return f"annotated/{source_id}/{captured.date().isoformat()}/{name}.jpg"


def clip_key(alert_annotated_key: str) -> str:
    """Where an alert's clip lives: beside its annotated frame (`<frame>.alert-<number>.webm`), kept and
    deleted with it."""
    return alert_annotated_key.removesuffix(".jpg") + ".webm"
