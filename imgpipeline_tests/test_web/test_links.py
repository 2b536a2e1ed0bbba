"""Evidence links (web/links.py): a signed link opens the one object it names until it expires, and no
forged, altered or expired one opens anything."""

from __future__ import annotations

import pytest

from imgpipeline import ConfigError
from imgpipeline.resources import AlertsResource
from imgpipeline.web.links import EvidenceLinks

KEY = b"k" * 40
LINKS = EvidenceLinks(KEY, 3600)
NOW = 1_790_000_000.0
PATH = "/alerts/42/annotated.jpg"


def query_of(link: str) -> str:
    return link.partition("?")[2]


def test_a_signed_link_opens_its_own_object_until_it_expires():
    link = LINKS.signed(PATH, NOW)
    assert link.startswith(PATH + "?expires=1790003600&sig=")
    assert LINKS.allows(PATH, query_of(link), NOW + 3599)
    assert not LINKS.allows(PATH, query_of(link), NOW + 3600)  # expired
    for other in ("/alerts/42/crop.jpg", "/alerts/43/annotated.jpg", "/alerts/42/clip.webm", "/alerts/42"):
        assert not LINKS.allows(other, query_of(link), NOW)
    assert not EvidenceLinks(b"x" * 40, 3600).allows(PATH, query_of(link), NOW)  # another key
    for path in ("/alerts/42", "/reports/2026-11-20", "/alerts/42/annotated.jpg/x", "/alerts/-1/crop.jpg"):
        with pytest.raises(ValueError, match="not an alert's evidence"):
            LINKS.signed(path, NOW)


@pytest.mark.edge
@pytest.mark.parametrize("tamper", [
    lambda q: "", lambda q: q + "&x=1", lambda q: q + "&" + q, lambda q: q.replace("expires=", "expires=0"),
    lambda q: q.replace("expires=1790003600", "expires=1790009999"), lambda q: q.replace("sig=", "sig=a"),
    lambda q: q[:-1], lambda q: q.replace("&", ";"), lambda q: q.replace("expires", "Expires"),
    lambda q: q.replace("expires=1790003600", "expires=%2B1790003600"),
    lambda q: q.replace("expires=1790003600", "expires=1790003600.5"),
    lambda q: q.replace("expires=1790003600", "expires=" + "9" * 13), lambda q: q + "&sig=",
    lambda q: q.replace("sig=", "sig=%00"), lambda q: q + "=" * 300, lambda q: "sig&expires",
    lambda q: q.replace("expires=1790003600", "expires=١٧٩٠٠٠٣٦٠٠"),
])
def test_an_altered_link_opens_nothing(tamper):
    assert not LINKS.allows(PATH, tamper(query_of(LINKS.signed(PATH, NOW))), NOW)


def test_a_link_key_too_short_is_refused_with_what_to_do(monkeypatch):
    assert AlertsResource(alerts_file="none").links() is None  # no key: links without a signature
    with pytest.raises(ConfigError, match="IMGPIPELINE_LINK_KEY is 8 characters: make it 32 or more"):
        AlertsResource(alerts_file="none", link_key="short123").links()
    monkeypatch.setenv("IMGPIPELINE_LINK_KEY", "x" * 32)
    assert AlertsResource.from_env().links() == EvidenceLinks(b"x" * 32, 7 * 86400.0)
