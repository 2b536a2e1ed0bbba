"""Dead letters: the DLQ record of a message a run (or the MQTT bridge) could not take, with the reason.

One letter per message, keyed so that a retried run's second letter replaces the first in the compacted
DLQ and letters of two messages are never merged; bounded as sent whatever the message holds
(docs/contracts.md).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from itertools import accumulate

from imgpipeline.defs.streaming.processing import Incoming
from imgpipeline.ingest.messages import iso_utc, sha256_hex

# A dead letter as sent (its key, its value and Kafka's framing of the record) stays under the
# message limit the DLQ topics are created with (Kafka's default, kafka.MESSAGE_BYTES) and the
# producer's request limit (1,048,576 bytes by default).
MAX_DEAD_LETTER_BYTES = 1_000_000
RECORD_FRAMING = 128  # Kafka's bytes around one record's key and value in a batch of its own
# Parts of the original message longer than this once JSON-escaped (\u0000 is six bytes for one) are
# replaced by their size and sha256: the key, each header's name and value. The reason is cut instead.
MAX_PART_BYTES = 1024
MAX_REASON_BYTES = 8192
# Headers listed in a letter; of the rest, only their number. So a letter without the original value
# stays under ~220 KB, and whether the value's base64 fits decides the rest.
MAX_HEADERS = 100


def origin(incoming: Incoming) -> str:
    """The key of a message's dead letter: one message, one key. A retried run's second letter for a
    message replaces the first in the compacted DLQ, and letters of two messages are never merged.

    Read from Kafka: `<topic>-<partition>-<offset>`, with `-g<generation>` once the topic's offsets
    were reset (a re-created topic gives the same offsets again). Built from an explicit URI:
    `uris-<sha256 of the URI>`, whichever run and position in its list the URI had.
    """
    if incoming.uri is not None:
        return f"uris-{sha256_hex(incoming.uri.encode('utf-8', 'surrogatepass'))}"
    suffix = f"-g{incoming.generation}" if incoming.generation else ""
    return f"{incoming.topic}-{incoming.partition}-{incoming.offset}{suffix}"


def dead_letter(incoming: Incoming, reason: str, run_id: str) -> tuple[bytes, bytes]:
    """The DLQ record (key, value) of a message: where it came from, why it failed, and its key,
    headers and value when they fit (else each one's size and sha256). Measured as sent, JSON escaping
    included, the record stays under MAX_DEAD_LETTER_BYTES whatever the message holds."""
    key = origin(incoming).encode()
    value = incoming.value or b""
    headers = list(incoming.headers or [])
    letter = {
        "reason": clipped(reason, MAX_REASON_BYTES),
        "topic": incoming.topic,
        "partition": incoming.partition,
        "offset": incoming.offset,
        "key": bounded(incoming.key),
        "headers": [[bounded(name), bounded(raw)] for name, raw in headers[:MAX_HEADERS]],
        "headers_omitted": max(0, len(headers) - MAX_HEADERS),
        "run_id": run_id,
        "failed_at": iso_utc(datetime.now(UTC)),
        "value_bytes": len(value),
        "value_sha256": sha256_hex(value),
        "value_base64": None,
    }
    encoded = json.dumps(letter).encode()
    # The base64 text (no escaping) in quotes takes the place of `null`.
    with_value = len(key) + len(encoded) - len("null") + 4 * ((len(value) + 2) // 3) + 2 + RECORD_FRAMING
    if with_value <= MAX_DEAD_LETTER_BYTES:
        letter["value_base64"] = base64.b64encode(value).decode()
        encoded = json.dumps(letter).encode()
    return key, encoded


def bounded(raw: bytes | str | None) -> str | dict | None:
    """A part of the original message as text (base64 when it is not UTF-8), or `{"bytes", "sha256"}`
    of it when its JSON text would take more than MAX_PART_BYTES."""
    if raw is None:
        return None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) <= MAX_PART_BYTES:  # escaping can only lengthen it: measure the short ones
        text = text_of(data)
        if len(json.dumps(text)) <= MAX_PART_BYTES:
            return text
    return {"bytes": len(data), "sha256": sha256_hex(data)}


def text_of(raw: bytes) -> str:
    """Bytes from outside as text: UTF-8 as it is, anything else as base64."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def clipped(text: str, limit: int) -> str:
    """`text`, cut so that its JSON text takes at most `limit` bytes; a cut one ends in `…`."""
    if len(json.dumps(text)) <= limit:
        return text
    room = limit - len(json.dumps("…"))
    sizes = accumulate(len(json.dumps(char)) - 2 for char in text)
    end = next(index for index, size in enumerate(sizes) if size > room)
    return text[:end] + "…"
