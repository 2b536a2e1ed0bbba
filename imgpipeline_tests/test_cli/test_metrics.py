"""`imgpipeline metrics`: the status as Prometheus gauges, scraped over HTTP before and after real runs
detect real frames, and the Grafana dashboard that draws them."""

from __future__ import annotations

import argparse
import json
import re
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from imgpipeline import ConfigError
from imgpipeline.cli.metrics import metrics, serve_metrics
from imgpipeline.defs.tables import ALERTS
from imgpipeline.ingest.messages import parse_time
from imgpipeline.lib.instance import open_instance
from imgpipeline.paths import HOME_ENV, state_dir
from imgpipeline.resources import StorageResource
from imgpipeline.services.dagster_dev import dagster_home
from imgpipeline.services.process import free_port
from imgpipeline_tests.pipeline import drain, landing_records
from imgpipeline_tests.test_cli.test_status import send

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "imgpipeline.json"


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Each metric's samples by their labels, as a Prometheus server parses the page."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
            for family in text_string_to_metric_families(text)}


@pytest.mark.integration
def test_the_endpoint_says_what_status_knows_before_and_after_runs(kafka, tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    storage = StorageResource(uri=(tmp_path / "store").as_uri())
    for name, value in {"IMGPIPELINE_STORAGE_URI": storage.uri,
                        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
                        "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic}.items():
        monkeypatch.setenv(name, value)
    send(kafka, storage, tmp_path, "cam-a", 6)
    send(kafka, storage, tmp_path, "cam-b", 4)
    # Alerts of two rules in the last 24 hours, and one of a day before them.
    now = datetime.now(UTC)
    fired = [(now - timedelta(minutes=1), "dog-seen"), (now - timedelta(hours=3), "dog-seen"),
             (now - timedelta(hours=5), "crowd"), (now - timedelta(hours=30), "crowd")]
    for at, rule in fired:
        hour = at.replace(minute=0, second=0, microsecond=0)
        rows = ALERTS.stored_hour(storage.open(), hour).to_pylist()
        rows.append({**dict.fromkeys(ALERTS.schema.names), "number": len(rows) + 1, "fired_at": at,
                     "hour_start": hour, "source_id": "cam-a", "rule": rule})
        ALERTS.write(storage.open(), ALERTS.hour_key(hour), pa.Table.from_pylist(rows, schema=ALERTS.schema))
    port = free_port()
    server, _ = serve_metrics("127.0.0.1", port, minutes=5)
    try:
        before = scrape(port)
        assert before["imgpipeline_up"][(("part", "broker"),)] == 1
        assert before["imgpipeline_up"][(("part", "storage"),)] == 1
        assert sum(before["imgpipeline_frames_lag"].values()) == 10
        assert before["imgpipeline_topic_messages"][(("topic", kafka.frames_topic),)] == 10
        assert "imgpipeline_source_frames_done_per_minute" not in before or not any(
            before["imgpipeline_source_frames_done_per_minute"].values())

        with open_instance(dagster_home(state_dir())) as instance:
            drain(kafka, storage, instance)
        after = scrape(port)
    finally:
        server.shutdown()
    assert sum(after["imgpipeline_frames_lag"].values()) == 0
    assert after["imgpipeline_problems"][()] == 0 and after["imgpipeline_runs_failed_24h"][()] == 0
    assert after["imgpipeline_up"][(("part", "instance"),)] == 1
    done = after["imgpipeline_source_frames_done_per_minute"]
    assert done == {(("source", "cam-a"),): round(6 / 5, 2), (("source", "cam-b"),): round(4 / 5, 2)}
    assert after["imgpipeline_source_frames_in_per_minute"] == done
    assert after["imgpipeline_source_share"][(("source", "cam-a"), ("status", "error"))] == 0
    assert after["imgpipeline_source_silent"] == {(("source", "cam-a"),): 0, (("source", "cam-b"),): 0}
    assert after["imgpipeline_last_run_seconds"][(("dagster_job", "detect_frames"),)] > 0
    assert all(stamp > 1.7e9 for stamp in after["imgpipeline_source_last_frame_timestamp_seconds"].values())
    assert after["imgpipeline_alerts_24h"] == {(("rule", "crowd"),): 1, (("rule", "dog-seen"),): 2}
    # The waits are those of the landing records: reaching the broker → processed; their quantiles are
    # numpy's nearest-rank ones, worked out apart from the product's own.
    waits = {}
    for record in landing_records(storage):
        waits.setdefault(record.source_id, []).append(
            (parse_time(record.processed_at) - parse_time(record.ingested_at)).total_seconds())
    assert after["imgpipeline_source_wait_seconds"] == {
        (("quantile", q), ("source", source)): pytest.approx(
            float(np.quantile(values, float(q), method="nearest")), abs=0.006)
        for source, values in waits.items() for q in ("0.5", "0.95")}
    assert all(value > 0 for value in after["imgpipeline_source_wait_seconds"].values())
    # Every series the dashboard draws is one the endpoint serves.
    drawn = {name for target in targets(json.loads(DASHBOARD.read_text()))
             for name in re.findall(r"imgpipeline_\w+", target["expr"])}
    assert drawn and drawn <= set(after), drawn - set(after)


def targets(dashboard: dict) -> list[dict]:
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_loads_with_a_prometheus_source_to_choose_and_a_query_on_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8 and dashboard["uid"] == "imgpipeline"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert all(target["expr"].strip() and target["refId"] for target in panel["targets"])


def test_a_window_that_is_not_one_or_a_port_taken_fails_before_the_endpoint_starts():
    import socket

    with pytest.raises(ConfigError, match="--minutes 0: the window must be longer than 0 minutes"):
        metrics(argparse.Namespace(host="127.0.0.1", port=free_port(), minutes=0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{port}: .*pick another"):
            serve_metrics("127.0.0.1", port, minutes=5)


def test_a_scrape_with_the_broker_down_answers_and_says_so(tmp_path, monkeypatch):
    from imgpipeline_tests.test_cli.test_status import closed_port

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", (tmp_path / "store").as_uri())
    port = free_port()
    server, _ = serve_metrics("127.0.0.1", port, minutes=5)
    try:
        page = scrape(port)
    finally:
        server.shutdown()
    assert page["imgpipeline_up"][(("part", "broker"),)] == 0
    assert page["imgpipeline_up"][(("part", "storage"),)] == 1
    assert page["imgpipeline_problems"][()] >= 1 and page["imgpipeline_scrape_failed"][()] == 0
    assert not page.get("imgpipeline_frames_lag")


def test_the_endpoint_answers_only_to_the_host_it_listens_on(tmp_path, monkeypatch):
    """A page that rebinds its own domain name to the endpoint's address names that domain as Host: a 400,
    with nothing gathered; the listening address (on loopback, the loopback names) is answered."""
    import http.client

    from imgpipeline_tests.test_cli.test_status import closed_port

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("IMGPIPELINE_STORAGE_URI", (tmp_path / "store").as_uri())
    port = free_port()
    server, _ = serve_metrics("127.0.0.1", port, 5)

    def answer(host: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.putrequest("GET", "/metrics", skip_host=True)
            connection.putheader("Host", host)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    try:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",
                     f"127.0.0.1:{port}@evil.example", "[::1", "a" * 5000, "localhost.evil.example"):
            code, body = answer(host)
            assert code == 400 and b"imgpipeline_" not in body, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            code, body = answer(host)
            assert code == 200 and b"imgpipeline_up" in body, host
    finally:
        server.shutdown()
