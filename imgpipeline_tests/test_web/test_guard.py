"""Who the viewer lets in, over HTTP to real servers: a request naming a host the viewer does not answer to
(a page that rebinds its own domain name to the viewer's address) gets a 400, a change asked by a page of
another origin (a cross-site form) a 403, and beyond loopback nothing goes without the login."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
import time
from urllib.parse import urlencode, urlsplit

import pytest

from imgpipeline.cli.serve import Running, Warehouse
from imgpipeline.resources import AlertsResource, StorageResource, TrackingResource
from imgpipeline.services.process import free_port
from imgpipeline.web.app import create_app

pytestmark = pytest.mark.edge

DAY = "2026-11-20"
PROPOSED = {"rules": "rules: []\n", "first": DAY, "last": DAY, "model": "yolov4-tiny"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PASSWORD = "correct horse battery staple"


def warehouse(folder) -> Warehouse:
    storage = StorageResource(uri=(folder / "store").as_uri())
    return Warehouse(storage, TrackingResource(zones_file="none"), AlertsResource(alerts_file="none"),
                     refresh_s=3600)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    running = Running(create_app(warehouse(tmp_path_factory.mktemp("guarded"))))
    yield running
    running.stop()


def sent(url: str, path: str = "/alerts", method: str = "GET", host: str | None = None,
         headers: dict | None = None, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request as given, `host` its Host header (None: the URL's): status, headers, body."""
    netloc = urlsplit(url).netloc
    connection = http.client.HTTPConnection(netloc, timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", netloc if host is None else host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def proposed(url: str, headers: dict[str, str], method: str = "POST") -> int:
    """A backtest of the proposed rules posted with these headers: its status."""
    return sent(url, "/backtest", method, headers={**FORM, **headers}, body=urlencode(PROPOSED).encode())[0]


def test_a_host_the_viewer_does_not_answer_to_gets_a_400(viewer):
    port = urlsplit(viewer.url).port
    trusted = [f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LocalHost", "localhost.",
               f"[::1]:{port}", "[0:0:0:0:0:0:0:1]"]
    foreign = ["evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",
               "localhost.evil.example", f"127.0.0.1:{port}@evil.example", f"evil.example@127.0.0.1:{port}",
               f"127.0.0.1:{port}:80", "127.0.0.1:http", "127.0.0.1:1234567", f"127.0.0.1:{port}/x",
               "127.0.0.1 evil.example", "::1", "[::1", f"[::1]x:{port}", "[::ffff:127.0.0.1]",
               "[fe80::1%25lo]", "127.1", "2130706433", "0x7f000001", "", "." * 3, "a" * 5000,
               f"{'a' * 300}.example"]
    assert {h: sent(viewer.url, host=h)[0] for h in trusted} == dict.fromkeys(trusted, 200)
    for host in foreign:
        code, headers, body = sent(viewer.url, host=host)
        assert code == 400, host
        assert b"does not answer to that host" in body and (not host or host.encode() not in body)
        assert "default-src 'none'" in headers["content-security-policy"]
    # Every path and method: images, reports, the backtest.
    for path, method in (("/frames/2026-11-20/cam/f1/image.jpg", "GET"), (f"/reports/{DAY}", "GET"),
                         ("/backtest", "POST"), ("/nowhere", "HEAD")):
        assert sent(viewer.url, path, method, host="evil.example")[0] == 400, path


def test_a_change_asked_from_another_origin_gets_a_403(viewer):
    own = viewer.url
    port = urlsplit(own).port
    elsewhere = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "https://evil.example"},
                 {"Origin": f"http://127.0.0.1:{port}.evil.example"}, {"Origin": f"http://localhost:{port}"},
                 {"Origin": f"http://127.0.0.1:{port + 1}"}, {"Origin": "http://[::1"},
                 {"Origin": f"file://127.0.0.1:{port}"}, {"Referer": "http://evil.example/backtest"},
                 {"Origin": "http://evil.example", "Referer": f"{own}/backtest"}]
    for headers in elsewhere:
        assert proposed(own, headers) == 403, headers
    for method in ("PUT", "DELETE", "PATCH"):
        assert proposed(own, {"Origin": "http://evil.example"}, method) == 403, method
    # From the viewer's own pages, and from curl or a script (no origin named): the backtest runs.
    for headers in ({"Origin": own}, {"Origin": own.upper()}, {"Referer": f"{own}/backtest?date={DAY}"}, {}):
        assert proposed(own, headers) == 200, headers
    code, _, body = sent(own, "/backtest", "POST", headers={**FORM, "Origin": "http://evil.example"},
                         body=urlencode(PROPOSED).encode())
    assert code == 403 and b"the viewer's own pages only" in body
    # Reading is no change: a GET naming another origin is answered.
    assert sent(own, f"/backtest?date={DAY}", headers={"Origin": "http://evil.example"})[0] == 200


def test_a_browser_posts_the_viewers_own_form_but_not_another_sites(viewer, browser):
    """Chromium itself: a form on another site's page that posts to the viewer is refused; the
    viewer's backtest form, submitted from its page, runs."""
    page = browser.new_page()
    attack = (f'<form method="post" action="{viewer.url}/backtest">'
              + "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in PROPOSED.items())
              + "<button>go</button></form>")
    page.route("http://evil.example/**", lambda route: route.fulfill(content_type="text/html", body=attack))
    page.goto("http://evil.example/")
    with page.expect_response(f"{viewer.url}/backtest") as answer:
        page.click("button")
    assert answer.value.status == 403
    page.goto(f"{viewer.url}/backtest?date={DAY}")
    page.fill("textarea[name=rules]", PROPOSED["rules"])
    page.fill("input[name=first]", DAY)
    page.fill("input[name=last]", DAY)
    with page.expect_response(f"{viewer.url}/backtest") as answer:
        page.click("form.backtest button")
    assert answer.value.status == 200 and answer.value.request.method == "POST"
    page.close()


def test_nothing_is_served_to_another_sites_page_but_its_links_are_followed(viewer, browser):
    """A page elsewhere cannot make a browser load the viewer's pages as images or scripts (each would
    start the work they show, a comparison say); a link to the viewer followed from that page works."""
    own = f"/compare?date={DAY}"
    fetched_for = {"cross-site": 403, "same-site": 403, "same-origin": 200, "none": 200}
    for site, code in fetched_for.items():
        for mode in ("no-cors", "cors"):
            assert sent(viewer.url, own, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode})[0] == code
    followed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert sent(viewer.url, own, headers=followed)[0] == 200
    as_image = {"Sec-Fetch-Site": "Cross-Site", "Sec-Fetch-Mode": "no-cors"}
    code, _, body = sent(viewer.url, own, headers=as_image)
    assert code == 403 and b"not served to other sites' pages" in body

    # Chromium itself: a link on another site's page to the viewer, followed (Chromium keeps that page's
    # images from reaching a loopback address at all, so the refusal above is for other browsers).
    page = browser.new_page()
    link = f'<a href="{viewer.url}/alerts">go</a>'
    page.route("http://evil.example/**", lambda route: route.fulfill(content_type="text/html", body=link))
    page.goto("http://evil.example/")
    with page.expect_response(f"{viewer.url}/alerts") as followed:
        page.click("a")
    assert followed.value.status == 200 and page.url == f"{viewer.url}/alerts"
    page.close()


def test_a_viewer_with_a_login_lets_in_only_who_gives_it(tmp_path, browser):
    """A login set applies on loopback too; a browser logs in with HTTP basic auth and then posts the
    backtest form as before. The demo's launcher sees such a viewer as up (it answers 401)."""
    from imgpipeline.services.viewer import ViewerService
    from imgpipeline.web.guard import Access

    access = Access.listening_on("127.0.0.1", (), ("ann", PASSWORD))
    running = Running(create_app(warehouse(tmp_path), access))
    login = {"Authorization": basic("ann", PASSWORD)}
    try:
        for wrong in (basic("ann", "wrong"), basic("bob", PASSWORD), basic("ann", PASSWORD + "x"),
                      f"Bearer {PASSWORD}", "Basic !!!", "Basic", basic("ann:" + PASSWORD, ""), None):
            code, headers, _ = sent(running.url, headers={"Authorization": wrong} if wrong else {})
            assert code == 401, wrong
            assert headers["www-authenticate"].startswith('Basic realm="imgpipeline viewer"')
        assert sent(running.url, headers=login)[0] == 200
        # The Host is checked before the login, the origin after it.
        assert sent(running.url, host="evil.example", headers=login)[0] == 400
        assert proposed(running.url, {**login, "Origin": "http://evil.example"}) == 403
        assert ViewerService(tmp_path, tmp_path).ready({"port": urlsplit(running.url).port})
        from playwright.sync_api import Error

        outsider = browser.new_context()  # no login to give: the page does not open
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            outsider.new_page().goto(f"{running.url}/alerts")
        outsider.close()
        context = browser.new_context(http_credentials={"username": "ann", "password": PASSWORD})
        page = context.new_page()
        assert page.goto(f"{running.url}/backtest?date={DAY}").status == 200
        page.fill("textarea[name=rules]", PROPOSED["rules"])
        page.fill("input[name=first]", DAY)
        page.fill("input[name=last]", DAY)
        with page.expect_response(f"{running.url}/backtest") as answer:
            page.click("form.backtest button")
        assert answer.value.status == 200
        context.close()
    finally:
        running.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def serve(tmp_path, port: int, **env: str) -> subprocess.Popen:
    """`imgpipeline serve --host 0.0.0.0` in a process of its own, with only these viewer settings."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("IMGPIPELINE_VIEWER_", "IMGPIPELINE_TRUSTED_"))}
    environment.update({"IMGPIPELINE_STORAGE_URI": (tmp_path / "store").as_uri(), **env})
    return subprocess.Popen([sys.executable, "-m", "imgpipeline.cli", "serve", "--host", "0.0.0.0",
                             "--port", str(port)], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stopped(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.terminate()
    return process.communicate(timeout=60)


def test_serve_beyond_loopback_refuses_to_start_without_a_login(tmp_path):
    process = serve(tmp_path, free_port())
    try:
        code = process.wait(timeout=120)
    finally:
        out, err = stopped(process)
    assert code == 2, (out, err)
    assert ("--host 0.0.0.0 lets other machines reach the viewer, so it needs a login: set "
            "IMGPIPELINE_VIEWER_PASSWORD in the environment") in err
    assert "viewer:" not in out  # it never said it was listening


def test_serve_on_loopback_with_a_name_other_machines_reach_refuses_to_start_without_a_login(tmp_path):
    """Behind a proxy the viewer listens on loopback, but the names it answers to are how other machines
    reach it: without a password it does not start."""
    environment = {**os.environ, "IMGPIPELINE_STORAGE_URI": (tmp_path / "store").as_uri(),
                   "IMGPIPELINE_TRUSTED_HOSTS": "localhost, viewer.example"}
    environment.pop("IMGPIPELINE_VIEWER_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "imgpipeline.cli", "serve", "--host", "127.0.0.1", "--port",
                           str(free_port())], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert ("IMGPIPELINE_TRUSTED_HOSTS names viewer.example: other machines reach the viewer by it (through "
            "a proxy), so it needs a login: set IMGPIPELINE_VIEWER_PASSWORD") in done.stderr


def test_serve_beyond_loopback_with_a_login(tmp_path):
    """On every address: any IP address and the configured names as Host, with the login only; the
    password is never printed."""
    port = free_port()
    process = serve(tmp_path, port, IMGPIPELINE_VIEWER_PASSWORD=PASSWORD,
                    IMGPIPELINE_TRUSTED_HOSTS="viewer.example, [2001:db8::7]")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not answers(url):
            assert process.poll() is None and time.monotonic() < deadline, stopped(process)
            time.sleep(0.1)
        login = {"Authorization": basic("viewer", PASSWORD)}
        assert sent(url)[0] == 401
        assert sent(url, headers={"Authorization": basic("viewer", "guess")})[0] == 401
        for host in (f"127.0.0.1:{port}", "10.20.30.40", "[2001:db8::1]:8765", "localhost", "viewer.example",
                     "VIEWER.example:443", "[2001:db8::7]"):
            assert sent(url, host=host, headers=login)[0] == 200, host
        for host in ("evil.example", "viewer.example.evil.example", "10.20.30.40.nip.io"):
            assert sent(url, host=host, headers=login)[0] == 400, host
    finally:
        out, err = stopped(process)
    assert PASSWORD not in out + err


def answers(url: str) -> bool:
    try:
        return sent(url)[0] > 0
    except OSError:
        return False


def test_settings_that_name_no_host_are_refused(monkeypatch):
    from imgpipeline import ConfigError
    from imgpipeline.resources.settings import env_name
    from imgpipeline.resources.viewer import ViewerAccess

    for value in ("http://viewer.example", "viewer.example:8765", "viewer.example/x", "a b"):
        monkeypatch.setenv(env_name(ViewerAccess, "hosts"), value)
        with pytest.raises(ConfigError, match="is not a host name or address"):
            ViewerAccess.from_env()
    monkeypatch.setenv(env_name(ViewerAccess, "hosts"), " Viewer.Example ,10.0.0.7,[::7]")
    assert ViewerAccess.from_env().host_names() == ["viewer.example", "10.0.0.7", "::7"]
    assert ViewerAccess.from_env().login() is None
    monkeypatch.setenv(env_name(ViewerAccess, "password"), PASSWORD)
    assert ViewerAccess.from_env().login() == ("viewer", PASSWORD)
    assert PASSWORD not in repr(ViewerAccess.from_env())


def test_the_names_a_server_answers_to_follow_its_address():
    from imgpipeline.web.guard import Access, is_loopback

    every = Access.listening_on("0.0.0.0", ["viewer.example"])
    assert all(every.trusts(h) for h in ("10.0.0.5:8765", "[2001:db8::1]", "localhost", "viewer.example"))
    assert not any(every.trusts(h) for h in ("evil.example", "10.0.0.5.evil.example", "viewer.example.evil"))
    one = Access.listening_on("192.168.1.5")
    assert one.trusts("192.168.1.5:8765") and not one.trusts("10.0.0.5") and not one.trusts("localhost")
    six = Access.listening_on("::1")
    assert all(six.trusts(h) for h in ("[::1]:80", "localhost", "127.0.0.1"))
    assert Access.listening_on("::").trusts("[fe80::1]") and Access.listening_on("::").trusts("localhost")
    assert [is_loopback(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "0.0.0.0", "::",
                                     "192.168.1.5", "viewer.example")] == [True] * 5 + [False] * 4
    assert PASSWORD not in repr(Access.listening_on("127.0.0.1", (), ("ann", PASSWORD)))
