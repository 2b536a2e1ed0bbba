"""Evidence links: an alert's snapshot, crop and clip, opened from a notification without the viewer's login.

A notification carries `/alerts/<number>/annotated.jpg?expires=<unix time>&sig=<signature>`: the
signature is an HMAC-SHA256 of the path and the expiry under the link key (a secret setting of the alerts,
from the environment only: resources/alerts.py), which the code location that sends and the viewer that
serves both hold. The viewer
serves that one object to whoever holds the link until it expires; any other path, a changed expiry or a
signature of another path gets the login as ever. Nothing else of the viewer opens with a link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

# The objects a link may open: an alert's annotated frame, its crop and its clip.
EVIDENCE_PATH = re.compile(r"/alerts/[0-9]{1,12}/(?:annotated\.jpg|crop\.jpg|clip\.webm)")
MIN_KEY_CHARS = 32
MAX_QUERY_CHARS = 200


@dataclass(frozen=True)
class EvidenceLinks:
    """Signs evidence paths for `ttl_s` seconds, and checks a request's path and query against them."""

    key: bytes = field(repr=False)
    ttl_s: float

    def signed(self, path: str, now: float) -> str:
        """The path with its expiry and signature, valid `ttl_s` seconds from `now`."""
        if not EVIDENCE_PATH.fullmatch(path):
            raise ValueError(f"{path!r} is not an alert's evidence")
        expires = int(now + self.ttl_s)
        return f"{path}?expires={expires}&sig={self.signature(path, expires)}"

    def signature(self, path: str, expires: int) -> str:
        digest = hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def allows(self, path: str, query: str, now: float) -> bool:
        """Whether a GET of `path` with `query` holds an unexpired link signed for that very path: the query
        exactly `expires` and `sig`, once each."""
        if not EVIDENCE_PATH.fullmatch(path) or len(query) > MAX_QUERY_CHARS:
            return False
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=2)
        except ValueError:
            return False
        given = dict(pairs)
        if len(pairs) != 2 or set(given) != {"expires", "sig"} or not re.fullmatch(r"[1-9][0-9]{0,11}",
                                                                                    given["expires"]):
            return False
        expires = int(given["expires"])
        return now < expires and hmac.compare_digest(given["sig"].encode(),
                                                     self.signature(path, expires).encode())
