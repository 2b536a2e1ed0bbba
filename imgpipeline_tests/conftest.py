"""Session fixtures: the real local Kafka broker and S3 endpoint, started with the same
launchers as `imgpipeline services`, on their own ports and folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline.services.mosquitto import Mosquitto, mosquitto_path
from imgpipeline.services.s3_endpoint import BUCKET, LOCAL_KEY_ID, LOCAL_SECRET, REGION, S3Endpoint

# Settings of the shell or a running `services up` that must not reach the tests.
_ISOLATED = ("KAFKA_BOOTSTRAP_SERVERS", "IMGPIPELINE_STORAGE_URI", "AWS_ENDPOINT_URL",
             "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "IMGPIPELINE_FRAMES_TOPIC",
             "IMGPIPELINE_INSTANCE", "IMGPIPELINE_POSTGRES_URL")
_saved: dict[str, str | None] = {}
# Where the workers of a run spread over pytest-xdist workers share their broker and S3 endpoint.
SHARED_ENV = "IMGPIPELINE_TEST_SHARED_SERVICES"
# Set by .ci/run, which installs every tool the tests need: there a missing one fails its tests.
CI_ENV = "IMGPIPELINE_CI"
# The detector engine the tests run on (`recorded`, set below); a test of inference itself sets `openvino`.
DETECTOR_ENGINE = "IMGPIPELINE_DETECTOR_ENGINE"
FAST_LANE = "IMGPIPELINE_FAST_LANE"


def product_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane as a person gets it, the fast lane by default: the tests' own setting (batch) removed."""
    monkeypatch.delenv(FAST_LANE, raising=False)


def pytest_configure(config):
    """Before any test module is imported: a home of the tests' own, so the checkout's `.imgpipeline/`
    and `.env` stay out; put back as it was when the session ends. Processes the tests start stop on
    SIGTERM and SIGINT as they would from a terminal, even when the shell that started the tests ignored
    those signals (its children would inherit that)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if spread_over_workers(config) and not hasattr(config, "workerinput"):
        # The run's controller: a folder its workers share services in (they inherit the variable).
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="imgpipeline-test-shared-")
    home = tempfile.mkdtemp(prefix="imgpipeline-test-home-")
    for name in ("IMGPIPELINE_HOME", *_ISOLATED):
        _saved[name] = os.environ.pop(name, None)
    os.environ["IMGPIPELINE_HOME"] = home
    # The sample frames are detected again and again: each frame's detections are OpenVINO's, kept per
    # machine and given again (the `recorded` engine). Inference itself is proven by the engine tests, the
    # demo's test (a newcomer's settings) and the fault tests, which run `openvino`.
    _saved.setdefault(DETECTOR_ENGINE, os.environ.get(DETECTOR_ENGINE))
    os.environ[DETECTOR_ENGINE] = "recorded"
    # The lane: the tests of a detect_frames run per batch (the sensor evaluated in the test's process and
    # its ranges run there, the launcher, the warehouse from those runs) set the fast lane off here; the
    # tests of the pipeline as a person runs it (the demo, `imgpipeline dev`, the street video through the
    # daemon, the fault suite, the chaos benchmark) run the product's default, the fast lane (`product_lane`).
    _saved.setdefault(FAST_LANE, os.environ.get(FAST_LANE))
    os.environ[FAST_LANE] = "0"
    if hasattr(config, "workerinput") or not spread_over_workers(config):
        # The code location's definitions read their settings when first imported: imported here, under
        # the tests' clean settings, they are the same whichever test of the process comes first.
        import imgpipeline.definitions  # noqa: F401
        from imgpipeline.lib.dagster_door import read_migrations_once

        read_migrations_once()  # the tests open hundreds of instances, as the CLI and the runs do


def pytest_unconfigure(config):
    shared = os.environ.get(SHARED_ENV)
    if shared and not hasattr(config, "workerinput"):  # every worker is done: the shared services go
        from imgpipeline.services import Postgres

        down_at_once(LocalServices(Path(shared) / "state"))
        server = Postgres(Path(shared) / "postgres")
        server.stop()
        shutil.rmtree(server.data, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
        os.environ.pop(SHARED_ENV, None)
    shutil.rmtree(os.environ.get("IMGPIPELINE_HOME", ""), ignore_errors=True)
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cpu_seconds() -> float:
    """CPU time of this process and of the processes it started and waited for (a daemon stopped, a run's
    worker ended); the session's broker, S3 endpoint and PostgreSQL are the session's, no test's."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _cpu_of(item, phase: str):
    before = cpu_seconds()
    yield
    item.user_properties.append((f"cpu_s_{phase}", cpu_seconds() - before))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _cpu_of(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _cpu_of(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _cpu_of(item, "teardown")


_cpu_by_test: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Each test's CPU seconds, once its teardown is reported (its report holds every phase's)."""
    if report.when == "teardown":
        _cpu_by_test[report.nodeid] = sum(v for k, v in report.user_properties if k.startswith("cpu_s_"))


def pytest_terminal_summary(terminalreporter):
    """Beside the slowest tests, those that used the most CPU: on two cores the suite's time is its CPU's."""
    if not _cpu_by_test:
        return
    terminalreporter.write_sep("=", "most CPU: the test's process and those it waited for")
    for nodeid, seconds in sorted(_cpu_by_test.items(), key=lambda kv: -kv[1])[:10]:
        terminalreporter.write_line(f"{seconds:8.2f}s cpu  {nodeid}")
    terminalreporter.write_line(f"{sum(_cpu_by_test.values()):8.0f}s cpu  in all {len(_cpu_by_test)} tests")


def pytest_collection_modifyitems(config, items):
    """The files whose tests are marked `long` first, the most minutes first, then the rest by their
    number of tests (as pytest-xdist orders them): `.ci/run` takes them in this order
    (`--no-loadscope-reorder`), so that no long test is left for last while the other worker idles.
    Which tests run on PostgreSQL (`on_postgres_by_mark`), and the module fixtures (with their parameter)
    such a test uses: a `dagster dev` they share runs on it too (`module_database`)."""
    from imgpipeline_tests.instances import on_postgres_by_mark

    minutes, count = Counter(), Counter()
    for item in items:
        path = item.nodeid.split("::")[0]
        count[path] += 1
        minutes[path] += sum(mark.args[0] for mark in item.iter_markers("long"))
        item.stash[ON_POSTGRES] = on_postgres_by_mark(item)
        if item.stash[ON_POSTGRES]:  # the file's fixtures of this test, with its parameters, go there too
            params = item.callspec.params if hasattr(item, "callspec") else {}
            config.stash.setdefault(SHARED_ON_POSTGRES, set()).update(
                (path, name, repr(params.get(name))) for name in item.fixturenames)
    items.sort(key=lambda item: (-minutes[item.nodeid.split("::")[0]], -count[item.nodeid.split("::")[0]]))


ON_POSTGRES = pytest.StashKey[bool]()
SHARED_ON_POSTGRES = pytest.StashKey[set]()
SHARING = pytest.StashKey[set]()


@pytest.fixture(scope="session")
def instance_server(tmp_path_factory):
    """The PostgreSQL server of the tests that run on it (the launcher of `imgpipeline services up
    --instance postgres`), started by the first: None where it is not installed and the tests are not
    told to need it (their instances are on SQLite files then)."""
    from imgpipeline.services import Postgres
    from imgpipeline.services.postgres import postgres_bin
    from imgpipeline_tests.instances import SERVER, TEMPLATE, make_template, session_instance_kind

    if postgres_bin("initdb") is None:
        wanted = session_instance_kind() == "postgres" or os.environ.get(CI_ENV)
        require_tool("postgresql is not installed: apt-get install postgresql" if wanted else None)
        yield None
        return
    shared = os.environ.get(SHARED_ENV)
    server = Postgres(Path(shared) / "postgres" if shared else tmp_path_factory.mktemp("postgres"))
    with worker_lock("postgres"):  # the workers of a run share one server and its template
        server.start()
        ports = server.ports
        made = server.workdir / "template-made"
        if not made.exists():
            server.sql(ports, f"CREATE DATABASE {TEMPLATE}")
            make_template(server.url(ports, TEMPLATE))
            made.touch()
    SERVER.append(server)
    yield server
    SERVER.clear()
    if not shared:  # else the run stops it once every worker is done
        server.stop()
        shutil.rmtree(server.data, ignore_errors=True)


@contextmanager
def postgres_database(patch: pytest.MonkeyPatch, server) -> Iterator[str | None]:
    """The instance on a database of its own on `server` while in this block (its kind and URL in the
    environment); nothing changed with no server."""
    if server is None:
        yield None
        return
    from imgpipeline.lib.instance import InstanceSettings, url_env
    from imgpipeline.resources.settings import env_name
    from imgpipeline_tests.instances import drop_database, new_database

    url = new_database()
    patch.setenv(env_name(InstanceSettings, "kind"), "postgres")
    patch.setenv(url_env(), url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(autouse=True)
def instance_database(request, monkeypatch):
    """A test that runs on PostgreSQL (`ON_POSTGRES`) has a database of its own, a copy of the template's
    tables, unless it uses its module's (`module_database`); the others keep their instances in SQLite
    files (`fresh_instance` says how)."""
    from imgpipeline_tests.instances import PROVES_STORAGE, proves_storage

    PROVES_STORAGE[0] = proves_storage(request.node)
    shared = request.node.nodeid.split("::")[0] in request.config.stash.get(SHARING, set())
    if not request.node.stash.get(ON_POSTGRES, False) or shared:
        yield None
        return
    with postgres_database(monkeypatch, request.getfixturevalue("instance_server")) as url:
        yield url


@contextmanager
def module_database(request) -> Iterator[str | None]:
    """For a module fixture its tests share (a `dagster dev`, whose instance this is), with its parameter:
    one database on PostgreSQL when a test that uses it runs there, else nothing changed (SQLite)."""
    path = request.node.nodeid.split("::")[0]
    key = (path, request.fixturename, repr(getattr(request, "param", None)))
    if key not in request.config.stash.get(SHARED_ON_POSTGRES, set()):
        yield None
        return
    server = request.getfixturevalue("instance_server")
    sharing = request.config.stash.setdefault(SHARING, set())
    with pytest.MonkeyPatch.context() as patch, postgres_database(patch, server) as url:
        sharing.add(path)
        try:
            yield url
        finally:
            sharing.discard(path)


@contextmanager
def worker_lock(name: str) -> Iterator[None]:
    """Held by one worker of a run at a time (a no-op for a run without workers)."""
    import fcntl

    shared = os.environ.get(SHARED_ENV)
    if not shared:
        yield
        return
    with open(Path(shared) / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def spread_over_workers(config) -> bool:
    """Whether this run spreads its tests over pytest-xdist workers."""
    return config.pluginmanager.hasplugin("xdist") and bool(config.getoption("numprocesses", None))


def down_at_once(local: LocalServices) -> None:
    """Services whose data goes with the tests, SIGKILLed: a broker with the suite's thousands of
    partitions can take its whole 30 s of grace to stop politely."""
    from imgpipeline_tests.pipeline import stop_at_once

    for service in local.all:
        stop_at_once(service)


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Kafka, S3 and Mosquitto for the session. Workers of one run share the broker and the S3 endpoint
    (every test has topics and a prefix of its own; the first worker that needs them starts them, the run
    stops them when all are done) and each has a Mosquitto of its own (bridges subscribe to shared topic
    filters). Tests that kill, freeze or reconfigure a service use `own_services`."""
    shared = os.environ.get(SHARED_ENV)
    if not shared:
        local = LocalServices(tmp_path_factory.mktemp("state"))
        local.up(log=lambda _msg: None)
        yield local
        down_at_once(local)
        return
    with worker_lock("services"):
        local = LocalServices(Path(shared) / "state")
        local.kafka.start()
        local.s3.start()
    local.mqtt = Mosquitto(tmp_path_factory.mktemp("mqtt"))
    if mosquitto_path() is not None:
        local.mqtt.start()
    yield local
    local.mqtt.stop()


@pytest.fixture(scope="module")
def own_services(tmp_path_factory):
    """Kafka, S3 and Mosquitto of a module's own, for tests that kill, freeze or reconfigure them while
    other tests go on with the session's."""
    local = LocalServices(tmp_path_factory.mktemp("own-state"))
    local.up(log=lambda _msg: None)
    yield local
    down_at_once(local)


def fresh_topics(services) -> KafkaResource:
    """The services' broker with fresh frames and alerts topics (and their DLQs)."""
    resource = KafkaResource(
        bootstrap_servers=services.kafka.address(services.kafka.ports),
        frames_topic=f"frames-{uuid.uuid4().hex[:8]}",
        alerts_topic=f"alerts-{uuid.uuid4().hex[:8]}",
    )
    resource.ensure_topics(partitions=2)
    return resource


@pytest.fixture
def kafka(services) -> KafkaResource:
    """The session broker with fresh frames and alerts topics (and their DLQs) for this test."""
    return fresh_topics(services)


def s3_storage_resource(services, prefix: str | None = None) -> StorageResource:
    return StorageResource(
        uri=f"s3://{BUCKET}/{prefix or uuid.uuid4().hex[:8]}",
        endpoint_url=services.s3.address(services.s3.ports),
        access_key_id=LOCAL_KEY_ID,
        secret_access_key=LOCAL_SECRET,
    )


ON_S3 = pytest.param("s3", marks=pytest.mark.covered(
    "the same test on a local folder: where frames are stored plays no part in the instance"))
# For a test of what reads a backend by itself, not through the Storage interface (DuckDB's views and
# queries over S3, its own reader): the `storage` fixture on the S3 endpoint too.
ON_EVERY_BACKEND = pytest.mark.parametrize("storage", ["local", ON_S3], indirect=True)


@pytest.fixture(params=["local"])
def storage(request, tmp_path) -> StorageResource:
    """The project's storage resource: a local folder. The domain's code reaches a backend only through
    the Storage interface, which the contract test holds to one behaviour on every backend
    (test_resources/test_storage_contract.py); a test of a reader of its own runs on the S3 endpoint too
    (ON_EVERY_BACKEND)."""
    if request.param == "local":
        return StorageResource(uri=(tmp_path / "store").as_uri())
    return s3_storage_resource(request.getfixturevalue("services"))


@contextmanager
def s3_user(denied: list[str]) -> Iterator[StorageResource]:
    """Storage as a user of its own, allowed everything but reading the `denied` keys (patterns relative
    to a fresh root), on an S3 endpoint of its own: meanwhile that endpoint checks every request's
    signature and permissions as AWS does (moto's IAM emulation), which refuses any other login."""
    with tempfile.TemporaryDirectory(prefix="imgpipeline-test-s3-") as folder:
        endpoint = S3Endpoint(Path(folder))
        endpoint.start()
        try:
            with _s3_user(endpoint.address(endpoint.ports), denied) as storage:
                yield storage
        finally:
            endpoint.stop()


@contextmanager
def _s3_user(endpoint: str, denied: list[str]) -> Iterator[StorageResource]:
    import boto3

    prefix, user = uuid.uuid4().hex[:8], uuid.uuid4().hex
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=LOCAL_KEY_ID,
                       aws_secret_access_key=LOCAL_SECRET)
    iam.create_user(UserName=user)
    login = iam.create_access_key(UserName=user)["AccessKey"]
    statements = [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
    if denied:
        statements.append({"Effect": "Deny", "Action": "s3:GetObject",
                           "Resource": [f"arn:aws:s3:::{BUCKET}/{prefix}/{key}" for key in denied]})
    iam.put_user_policy(UserName=user, PolicyName="reader", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": statements}))
    checks_after(endpoint, "0")
    try:
        yield StorageResource(uri=f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint,
                              access_key_id=login["AccessKeyId"], secret_access_key=login["SecretAccessKey"])
    finally:
        checks_after(endpoint, "inf")


def checks_after(endpoint: str, requests: str) -> None:
    """moto's switch: the endpoint checks signatures and permissions after this many more requests."""
    from urllib.request import Request, urlopen

    switch = Request(f"{endpoint}/moto-api/reset-auth", data=requests.encode(),
                     headers={"Content-Type": "text/plain"})
    with urlopen(switch, timeout=10) as answer:
        assert answer.status == 200


def require_tool(missing: str | None) -> None:
    """Skip a test whose tool (a Debian package .ci/run installs) is `missing`, the message saying how to
    install it; in CI fail it instead, where a skip would leave the run green with the test never run."""
    if missing is None:
        return
    if os.environ.get(CI_ENV):
        pytest.fail(f"{missing} ({CI_ENV} is set: .ci/run installs it, and could not)", pytrace=False)
    pytest.skip(missing)


@dataclass
class S3Relay:
    """Where a relay listens, and the event set when it holds a request."""

    url: str
    held: threading.Event


@contextmanager
def s3_relay(endpoint: str, drop_headers: frozenset[str] = frozenset(), hold=None) -> Iterator[S3Relay]:
    """A real HTTP proxy in front of an S3 endpoint: each request goes through less the headers named
    in `drop_headers` (lowercase); one for which `hold(method, path)` is true is never sent on nor
    answered (its client waits, as on a stalled network) until the relay closes."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlparse

    target, held, closing = urlparse(endpoint), threading.Event(), threading.Event()
    dropped = drop_headers | {"expect"}  # the relay answers no `100 Continue`

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if hold is not None and hold(self.command, self.path):
                held.set()
                closing.wait()
                self.close_connection = True
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield S3Relay(f"http://127.0.0.1:{server.server_address[1]}", held)
    finally:
        closing.set()
        server.shutdown()
        server.server_close()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, one per module."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: $SCREENSHOTS_DIR when set (docs/viewer.md's pictures are test_serve's
    alert-clip.png and test_live's live.png), else a temporary folder."""
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def street_data(services, tmp_path_factory) -> tuple[dict, Path]:
    """The demo's data, made once per worker for the modules that read it (none writes to its day): the
    resources used and their folder."""
    from imgpipeline_tests.test_cli.street import street_in

    folder = tmp_path_factory.mktemp("street")
    return street_in(services, folder), folder
