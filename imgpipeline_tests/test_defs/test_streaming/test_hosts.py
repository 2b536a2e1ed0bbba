"""Past one machine, on one: three hosts as network namespaces, each with its own address. Host a runs the
webserver and the daemon; hosts b and c each run a code server of the code location, whose runs (their
followers) execute there. The instance is on PostgreSQL, the storage on the S3 endpoint and the frames on
Kafka, all reached over the services' address on the hosts' link; nothing is shared through a local
path. Host b is killed (every process in it) and cut off mid-range: host c's follower takes its
partition over, every frame lands once and every live alert is sent once; run monitoring fails host b's
follower once its code server stays silent, and leaves host c's running."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import uuid

import dagster as dg
import pytest

from imgpipeline.defs.streaming.follow import follow_frames
from imgpipeline.defs.streaming.run_queries import location_of
from imgpipeline.lib.dagster_door import DAEMON_MODULE
from imgpipeline.lib.instance import InstanceSettings, instance_env
from imgpipeline.lib.launcher import SERVER_SILENT_S
from imgpipeline.resources import KafkaResource, StorageResource
from imgpipeline.services import LocalServices
from imgpipeline.services.base import answers_http
from imgpipeline.services.dagster_dev import dagster_home
from imgpipeline.services.s3_endpoint import BUCKET, LOCAL_KEY_ID, LOCAL_SECRET
from imgpipeline_tests.conftest import require_tool
from imgpipeline_tests.hosts import hosts
from imgpipeline_tests.pipeline import claims_of, landing_records, stream_cameras, wait_for
from imgpipeline_tests.test_defs.test_streaming.test_detect_frames import read_all
from imgpipeline_tests.test_defs.test_streaming.test_follow import LIT, SOURCES, assert_each_offset_once

pytestmark = [pytest.mark.integration, pytest.mark.long(3)]
CODE_PORT = 4000
UI_PORT = 3000


def site_env(local: LocalServices, kafka: KafkaResource, storage: StorageResource, home) -> dict[str, str]:
    """The settings every host is given: the services at their address on the link, the fast lane with
    one follower per code location."""
    import os

    (home / "alerts.yaml").write_text(LIT)
    env = {**os.environ, **local.kafka.env(local.kafka.ports), **local.s3.env(local.s3.ports),
           **local.postgres.env(local.postgres.ports),
           "IMGPIPELINE_STORAGE_URI": storage.uri, "IMGPIPELINE_FRAMES_TOPIC": kafka.frames_topic,
           "IMGPIPELINE_ALERTS_TOPIC": kafka.alerts_topic,
           "IMGPIPELINE_ALERTS_FILE": str(home / "alerts.yaml"),
           "IMGPIPELINE_FAST_LANE": "1", "IMGPIPELINE_FOLLOWERS": "1", "PYTHONUNBUFFERED": "1"}
    return env


def host_home(env: dict[str, str], folder, monkeypatch) -> dict[str, str]:
    """A host's own project home and DAGSTER_HOME (its dagster.yaml on the site's PostgreSQL, run logs in
    S3): the environment of its processes."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        dagster = dagster_home(folder / ".imgpipeline")
        extra = instance_env(InstanceSettings.from_env(), StorageResource.from_env())
    return {**env, **extra, "DAGSTER_HOME": str(dagster), "IMGPIPELINE_HOME": str(folder)}


def test_a_host_killed_and_cut_off_mid_range_hands_its_partitions_to_another(tmp_path, monkeypatch):
    import os

    require_tool(None if shutil.which("ip") else "the `ip` command (Debian's iproute2) makes the hosts")
    require_tool(None if os.geteuid() == 0 else "the hosts (network namespaces) are made as root")
    with hosts(["a", "b", "c"]) as (address, site):
        local = LocalServices(tmp_path / "services" / ".imgpipeline", host=address)
        try:
            for service in (local.kafka, local.s3, local.postgres):
                service.start()
            tag = uuid.uuid4().hex[:8]
            kafka = KafkaResource(bootstrap_servers=local.kafka.address(local.kafka.ports),
                                  frames_topic=f"frames-{tag}", alerts_topic=f"alerts-{tag}")
            kafka.ensure_topics(partitions=2)
            storage = StorageResource(uri=f"s3://{BUCKET}/hosts-{tag}", endpoint_url=local.s3.address(
                local.s3.ports), access_key_id=LOCAL_KEY_ID, secret_access_key=LOCAL_SECRET)
            run_site(site, kafka, storage, site_env(local, kafka, storage, tmp_path), tmp_path, monkeypatch)
        finally:
            for service in (local.postgres, local.s3, local.kafka):
                service.stop()


WORKSPACE = """load_from:
  - grpc_server: {{host: "{b}", port: {port}, location_name: host-b}}
  - grpc_server: {{host: "{c}", port: {port}, location_name: host-c}}
"""


def start_site(site, env: dict[str, str], folder, monkeypatch) -> dict[str, dict[str, str]]:
    """Code servers on hosts b and c, the daemon and the webserver on host a (its workspace names the code
    servers by their addresses); each host with a home of its own. The environments by host."""
    envs = {name: host_home(env, folder / name, monkeypatch) for name in site}
    for name in ("b", "c"):
        site[name].start([sys.executable, "-m", "dagster", "api", "grpc", "-m", "imgpipeline.definitions",
                          "-h", "0.0.0.0", "-p", str(CODE_PORT), "--location-name", f"host-{name}"],
                         envs[name], folder / f"{name}.log")
    workspace = folder / "a" / "workspace.yaml"
    workspace.write_text(WORKSPACE.format(b=site["b"].address, c=site["c"].address, port=CODE_PORT))
    site["a"].start([sys.executable, "-m", DAEMON_MODULE, "run", "-w", str(workspace)], envs["a"],
                    folder / "a-daemon.log")
    site["a"].start([sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "0.0.0.0",
                     "-p", str(UI_PORT)], envs["a"], folder / "a-webserver.log")
    return envs


def run_site(site, kafka: KafkaResource, storage: StorageResource, env: dict[str, str], folder,
             monkeypatch) -> None:
    envs = start_site(site, env, folder, monkeypatch)
    for name, value in envs["a"].items():  # this process reads the instance as host a does
        monkeypatch.setenv(name, value)
    store = storage.open()
    sent: list[str] = []

    def stream(rounds: int) -> None:  # two cameras on each partition
        stream_cameras(kafka, storage, folder, SOURCES, rounds, 4, sent)

    def logs(why: str) -> str:
        tails = {path.name: path.read_text(errors="replace")[-1500:] for path in folder.glob("*.log")}
        return f"{why}; " + "; ".join(f"{name}: {tail}" for name, tail in tails.items())

    with dg.DagsterInstance.from_config(envs["a"]["DAGSTER_HOME"]) as instance:
        def followers() -> dict[str, dg.DagsterRun]:
            runs = instance.get_runs(dg.RunsFilter(job_name=follow_frames.name,
                                                   statuses=[dg.DagsterRunStatus.STARTED]))
            return {location_of(run): run for run in runs}

        def following(run: dg.DagsterRun) -> bool:
            return any("following" in (e.message or "") for e in instance.all_logs(run.run_id))

        # The webserver on host a answers over the link, from the services' side of it.
        wait_for(lambda: answers_http(f"http://{site['a'].address}:{UI_PORT}/server_info"), 120,
                 "the webserver on host a", explain=lambda: logs("not answering"))
        stream(2)
        runs = wait_for(lambda: (found := followers()).keys() >= {"host-b", "host-c"} and all(
            following(run) for run in found.values()) and found, 240, "a follower on each of hosts b and c",
                        explain=lambda: logs(f"followers: {list(followers())}"))
        victim = runs["host-b"].run_id
        more = threading.Thread(target=stream, args=(10,))
        more.start()
        wait_for(lambda: claims_of(store, victim), 180, "host b's follower to claim a range", every_s=0.05)
        seen = {name: host.commands() for name, host in site.items()}
        cut_at = time.time()
        site["b"].cut()
        killed = site["b"].kill()
        more.join()
        wait_for(lambda: {r.frame_id for r in landing_records(storage)} >= set(sent), 300,
                 "every frame to land",
                 explain=lambda: logs(f"{len(landing_records(storage))} of {len(sent)}"))
        assert killed >= 2, seen  # the code server and its follower's run
        assert_each_offset_once(kafka, storage, sent)
        # Host c's follower took host b's partition over (its logs say so since the cut). Run monitoring
        # failed host b's follower once its code server stayed silent, and left host c's running.
        survivor = runs["host-c"]
        said = [e.message for e in instance.all_logs(survivor.run_id) if e.timestamp > cut_at]
        assert any("following" in m and "partition 0" in m and "partition 1" in m for m in said), said
        wait_for(lambda: instance.get_run_by_id(victim).status == dg.DagsterRunStatus.FAILURE,
                 SERVER_SILENT_S + 60, "run monitoring to fail host b's follower")
        failed = [e.message for e in instance.all_logs(victim) if "has not answered" in (e.message or "")]
        assert failed and site["b"].address in failed[0], failed
        assert instance.get_run_by_id(survivor.run_id).status == dg.DagsterRunStatus.STARTED
    # Each camera's one episode raised once, from its first frame, whichever host held its partition then.
    alerts = [json.loads(r.value) for r in read_all(kafka, kafka.alerts_topic)]
    first = {source: next(f for f in sent if f.startswith(f"{source}-")) for source in SOURCES}
    assert sorted((m["rule"], m["source_id"], m["frame_id"]) for m in alerts) == sorted(
        ("lit", source, frame) for source, frame in first.items())
    assert len({m["number"] for m in alerts}) == len(SOURCES)
