"""`imgpipeline metrics`: what `imgpipeline status` knows, as Prometheus gauges on `/metrics`.

Each scrape gathers the status afresh (about a second: the broker's offsets, the last runs, the
landing files of the window), so a scrape interval of 15 s or more suits it. Figures over a window
(frames in and done per minute, the shares of dark, failed and shed frames) are over the last
`--minutes`, as `status` gives them; the Grafana dashboard in `deploy/grafana/` draws them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from wsgiref.simple_server import WSGIRequestHandler, make_server

from imgpipeline import ConfigError

# The share of a source's frames in the window by status, as the `status` label says it.
SHARES = {"dark": "dark_share", "error": "error_share", "shed": "shed_share"}


class StatusCollector:
    """A Prometheus collector that gathers the status at each scrape."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from imgpipeline.cli.status import gather

        started = time.perf_counter()
        try:
            found = families(gather(datetime.now(UTC), self.minutes), self.minutes)
        except Exception:  # the scrape still answers, saying it could not gather (its page stays 200)
            found = []
        yield from found
        yield GaugeMetricFamily("imgpipeline_scrape_failed", "1 when the status could not be gathered "
                                "(`imgpipeline status` says why).", value=float(not found))
        yield GaugeMetricFamily("imgpipeline_scrape_seconds", "How long this scrape took to gather the "
                                "status.", value=time.perf_counter() - started)


def families(report, minutes: float) -> list:
    """The status report as metric families (names prefixed `imgpipeline_`)."""
    from prometheus_client.core import GaugeMetricFamily

    def gauge(name: str, text: str, labels: list[str] | None = None, value: float | None = None):
        return GaugeMetricFamily(f"imgpipeline_{name}", text, labels=labels, value=value)

    sections = report.sections
    broker, storage, runs = sections["broker"], sections["storage"], sections["runs"]
    up = gauge("up", "1 when the part answers: broker, storage, instance (the Dagster instance's runs).",
               ["part"])
    up.add_metric(["broker"], float(broker["reachable"]))
    up.add_metric(["storage"], float(storage["reachable"]))
    if runs.get("instance") is not None:
        up.add_metric(["instance"], float(runs["reachable"]))
    found = [up, gauge("problems", "What `imgpipeline status` says needs a look: 0 when healthy.",
                       value=len(report.problems))]
    messages = gauge("topic_messages", "Messages kept on each topic.", ["topic"])
    lag = gauge("frames_lag", "Frames on the frames topic not yet processed, by partition.", ["partition"])
    for topic, figures in (broker.get("topics") or {}).items():
        if figures:
            messages.add_metric([topic], figures["messages"])
            for partition, behind in figures.get("lag", {}).items():
                lag.add_metric([str(partition)], behind)
    found += [messages, lag]
    if runs.get("reachable"):
        found.append(gauge("runs_failed_24h", "Runs that failed in the last 24 hours.",
                           value=runs["failed_24h"]))
        took = gauge("last_run_seconds", "How long the latest finished run of each Dagster job among the "
                     "last runs took.", ["dagster_job"])
        for job in dict.fromkeys(run["job"] for run in runs["last"]):
            seconds = next((r["seconds"] for r in runs["last"]
                            if r["job"] == job and r["seconds"] is not None), None)
            if seconds is not None:
                took.add_metric([job], seconds)
        found.append(took)
    if (alerts := sections.get("alerts")) is not None:
        raised = gauge("alerts_24h", "Alerts raised in the last 24 hours, by rule (the alerts tables).",
                       ["rule"])
        for rule, count in alerts["last_24h"].items():
            raised.add_metric([rule], count)
        found.append(raised)
    return found + _source_families(sections.get("sources") or {}, minutes, gauge)


def _source_families(sources: dict, minutes: float, gauge) -> list:
    window = f"over the last {minutes:g} minutes"
    came = gauge("source_frames_in_per_minute", f"Frames that came in per minute, {window}.", ["source"])
    done = gauge("source_frames_done_per_minute", f"Frames processed per minute, {window}.", ["source"])
    share = gauge("source_share", f"The share of a source's frames {window} that were dark, failed or shed.",
                  ["source", "status"])
    out = gauge("source_out_of_range", f"Frames {window} captured outside the partitions' range.", ["source"])
    silent = gauge("source_silent", "1 when the source has sent nothing for longer than its silence limit.",
                   ["source"])
    last = gauge("source_last_frame_timestamp_seconds", "When the source's latest frame reached the broker.",
                 ["source"])
    wait = gauge("source_wait_seconds", "From reaching the broker to processed, of the frames processed "
                 f"{window}: the median and the 95th percentile.", ["source", "quantile"])
    for name, s in sources.items():
        came.add_metric([name], s["in_per_min"])
        done.add_metric([name], s["processed_per_min"])
        for status, key in SHARES.items():
            share.add_metric([name, status], s[key])
        out.add_metric([name], s["out_of_range"])
        silent.add_metric([name], float(s["silent"]))
        if s["last_frame"]:
            last.add_metric([name], datetime.fromisoformat(str(s["last_frame"])).timestamp())
        for quantile, key in (("0.5", "wait_p50_s"), ("0.95", "wait_p95_s")):
            if s[key] is not None:
                wait.add_metric([name, quantile], s[key])
    return [came, done, share, out, silent, last, wait]


def serve_metrics(host: str, port: int, minutes: float, more_names=()):
    """The endpoint in a thread: (the server, its thread); `server.shutdown()` stops it. It answers only
    requests naming its listening address or `more_names` (web/guard.py: a page that rebinds its own domain
    name to this address gets a 400)."""
    import socket
    import threading

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from imgpipeline.web.guard import Access

    registry = CollectorRegistry()
    registry.register(StatusCollector(minutes))
    app = host_checked(make_wsgi_app(registry), Access.listening_on(host, more_names))
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host, port, app, server_class, handler_class=QuietHandler)
    except (OSError, OverflowError) as error:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {error}; pick another --host or "
                          "--port") from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def host_checked(app, access):
    """The WSGI app, answering 400 to a request whose Host header names another host."""

    def checked(environ, start_response):
        if access.trusts(environ.get("HTTP_HOST", "")):
            return app(environ, start_response)
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"This server does not answer to that host name.\n"]
    return checked


class QuietHandler(WSGIRequestHandler):
    """The request handler, minus a log line per request: a scrape every 15 s is no news."""

    def log_message(self, format, *args):
        pass


def metrics(args) -> int:
    """`imgpipeline metrics`: serve until stopped."""
    from imgpipeline.cli.status import gather
    from imgpipeline.resources.viewer import ViewerAccess

    gather(datetime.now(UTC), args.minutes)  # a bad setting fails here, not at the first scrape
    names = ViewerAccess.from_env().host_names()
    server, thread = serve_metrics(args.host, args.port, args.minutes, names)
    print(f"metrics: http://{args.host}:{args.port}/metrics  (Ctrl-C stops it)", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
        server.server_close()
    return 0
