"""Secrets out of what is said: URLs as they may be shown, and error text with a URL's secrets taken out.

A camera's or a database's URL carries its login (`rtsp://user:password@cam/stream`); a webhook's
carries a token in its path (`https://hooks.example.com/services/T0/B0/XXXX`) or its query. Whatever
the project says about such a URL (reasons, ledger entries, dead-letter headers, log lines, pages,
config errors) goes through here first. Error text from a client library repeats a URL in pieces
(`... with url: /services/T0/B0/XXXX`), so every piece that can hold a secret is taken out, not only
the whole URL.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

HIDDEN = "***"
# Any URL's login in free text: scheme://user:password@ or scheme://token@.
_LOGIN = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]+@")


def shown_url(url: str, *, path: bool = True) -> str:
    """The URL as it may be said: no user, password or query, and no path unless `path` (a stream's
    path names it; a webhook's path is its token)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return HIDDEN  # not even a URL one can take apart: say nothing of it
    if not parts.scheme or not host:
        return _LOGIN.sub(rf"\1{HIDDEN}@", url) if path else HIDDEN
    login = f"{HIDDEN}@" if parts.username is not None or parts.password is not None else ""
    netloc = f"{login}[{host}]" if ":" in host else f"{login}{host}"  # an IPv6 address keeps its brackets
    netloc += f":{port}" if port else ""
    shown_path = parts.path if path else ("/" + HIDDEN if parts.path.strip("/") else "")
    return f"{parts.scheme}://{netloc}{shown_path}" + (f"?{HIDDEN}" if parts.query else "")


def redact(text: str, *urls: str | None, paths: bool = True) -> str:
    """`text` with each URL's secrets taken out: the URL itself (shown as `shown_url` shows it), its
    password, user, query, fragment and (unless `paths`) its path, in plain and percent-decoded form;
    then any other URL's login."""
    for url in (u for u in urls if u):
        text = text.replace(url, shown_url(url, path=paths))
        try:
            parts = urlsplit(url)
            pieces = [parts.password, parts.username, parts.query, parts.fragment]
            if not paths:  # the path, and each of its segments, as a token may stand alone in the text
                pieces += [parts.path, *(s for s in parts.path.split("/") if len(s) > 3)]
        except ValueError:
            pieces = []
        for piece in sorted({p for p in pieces if p and len(p) > 1 and p != "/"}, key=len, reverse=True):
            # As written, percent-decoded, and as Python's repr escapes it (error text quotes with repr).
            for form in {piece, unquote(piece), repr(piece)[1:-1], repr(unquote(piece))[1:-1]}:
                text = text.replace(form, HIDDEN)
    return _LOGIN.sub(rf"\1{HIDDEN}@", text)
