"""Who the viewer lets in, before any page is drawn: a request must name a host the viewer answers to, log
in when a login is set, and come from the viewer's own pages when it changes something.

A page elsewhere can reach the viewer two ways: DNS rebinding (its own domain name made to point at the
viewer: the Host header still names that domain, so an untrusted Host gets a 400) and a cross-site form
(the browser names the page's origin in the Origin header, so an unsafe request from another origin gets
a 403). A request naming no origin at all is no browser's (browsers name the origin of every POST, and
the viewer's pages keep their Referer same-origin): curl and scripts send none and go on. A page elsewhere
can also make a browser fetch a page of the viewer as an image or a script (`<img src=…/compare>`: a
heavy comparison, once per tag): a request the browser marks as fetched for another site's page
(`Sec-Fetch-Site` cross-site or same-site, not a navigation) gets a 403 too; following a link is fine.
A wrong login is answered after a pause, so that guessing the password goes slowly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import re
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from imgpipeline.web.links import EvidenceLinks
from imgpipeline.web.responses import HEADERS

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EVERY_ADDRESS = frozenset({"", "0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# host[:port], the host a name, an IPv4 address or a bracketed IPv6 address (no zone, no user info)
HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]{2,45})\]|(?P<name>[a-z0-9.-]{1,254}))(?::[0-9]{1,5})?")
LOGIN_CHALLENGE = 'Basic realm="imgpipeline viewer", charset="UTF-8"'
WRONG_LOGIN_PAUSE_S = 1.0


def host_name(header: str) -> str | None:
    """The host a Host header names, lower case, without port, brackets or a trailing dot; None when the
    header is no `host[:port]`."""
    found = HOST_HEADER.fullmatch(header.lower())
    if found is None:
        return None
    if found["v6"]:
        try:
            return str(ipaddress.IPv6Address(found["v6"]))
        except ValueError:
            return None
    return found["name"].removesuffix(".") or None


def address_of(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(listen: str) -> bool:
    """Whether an address to listen on (`--host`) is reachable from this machine only."""
    address = address_of(listen)
    return listen.lower() == "localhost" or (address is not None and address.is_loopback)


@dataclasses.dataclass(frozen=True)
class Access:
    """The host names requests may name (with `any_address`, every IP address too), and the login every
    request must give (None: none)."""

    names: frozenset[str]
    any_address: bool = False
    login: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    links: EvidenceLinks | None = dataclasses.field(default=None, repr=False)  # signed evidence links

    @classmethod
    def listening_on(cls, listen: str, more_names=(), login: tuple[str, str] | None = None,
                     links: EvidenceLinks | None = None) -> Access:
        """The access of a server listening on `listen`: its own address (on loopback the loopback names),
        on every address (0.0.0.0, ::) any IP address and localhost, since a rebinding page always names
        a domain; plus `more_names`."""
        own = listen.strip("[]").lower()
        every = own in EVERY_ADDRESS
        address = address_of(own)
        names = {*more_names, "localhost" if every else str(address) if address else own}
        if is_loopback(own):
            names |= LOOPBACK_NAMES
        return cls(frozenset(names), every, login, links)

    def trusts(self, host_header: str) -> bool:
        """Whether a Host header names this server."""
        name = host_name(host_header)
        if name is None:
            return False
        return name in self.names or (self.any_address and address_of(name) is not None)

    def refusal(self, method: str, headers: Headers, path: str = "",
                query: str = "") -> PlainTextResponse | None:
        """The answer to a request that may not go on: 400 for a Host not trusted, 401 without the login,
        403 for a change asked by a page of another origin; None lets it through. A GET of an alert's
        evidence with a signed, unexpired link needs no login and may be shown in another site's page (a
        chat, a webmail). Nothing the request sent is echoed."""
        hosts = headers.getlist("host")
        if len(hosts) != 1 or not self.trusts(hosts[0]):
            return refused(400, "This server does not answer to that host name.")
        if method in ("GET", "HEAD") and self.links and self.links.allows(path, query, time.time()):
            return None
        if self.login is not None and not logged_in(headers.get("authorization", ""), *self.login):
            return refused(401, "Log in to see the viewer.", {"WWW-Authenticate": LOGIN_CHALLENGE})
        if method not in SAFE_METHODS and from_elsewhere(headers, hosts[0]):
            return refused(403, "Changes are taken from the viewer's own pages only.")
        if for_another_site(headers):
            return refused(403, "The viewer's pages and images are not served to other sites' pages.")
        return None


def refused(status: int, text: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(text + "\n", status_code=status, headers={**HEADERS, **(headers or {})})


def logged_in(authorization: str, user: str, password: str) -> bool:
    """Whether an Authorization header gives the login (HTTP basic auth), compared in constant time."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    # Digests of equal length: the comparison tells nothing of the login's length either.
    expected = f"{user}:{password}".encode()
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


def for_another_site(headers: Headers) -> bool:
    """Whether the browser fetches this for a page of another site (an image, a script, a frame, a
    fetch), as its `Sec-Fetch-*` headers say; a navigation (a link followed) is not."""
    site = headers.get("sec-fetch-site", "").strip().lower()
    mode = headers.get("sec-fetch-mode", "").strip().lower()
    return site in ("cross-site", "same-site") and mode != "navigate"


def from_elsewhere(headers: Headers, host: str) -> bool:
    """Whether a request names an origin (its Origin header, else its Referer) other than the host it
    was sent to; `Origin: null` (a sandboxed or privacy-masked page) is another origin."""
    named = headers.get("origin", headers.get("referer"))
    if named is None:
        return False
    try:
        parts = urlsplit(named.strip())
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return True
    return parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower()


class Guard:
    """ASGI middleware: each HTTP request passes `access.refusal` before the app sees it."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            answer = self.access.refusal(scope["method"], headers, scope.get("path", ""),
                                         scope.get("query_string", b"").decode("latin-1"))
            if answer is not None:
                if answer.status_code == 401 and "authorization" in headers:
                    await asyncio.sleep(WRONG_LOGIN_PAUSE_S)  # a wrong login: guesses go slowly
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)
