"""`imgpipeline services`, `check` and `dev`: the local services, a check of every configured part,
and `dagster dev` for this project."""

from __future__ import annotations

import os

from imgpipeline.environment import services_env_file, write_services_env
from imgpipeline.paths import state_dir


def local_services(secure_kafka: bool = False, host: str | None = None):
    from imgpipeline.services import LocalServices

    return LocalServices(state_dir(), secure_kafka=secure_kafka, host=host)


def services(args) -> int:
    host = (getattr(args, "host", None) or "127.0.0.1") if args.action == "up" else None
    if host in ("0.0.0.0", "::", ""):
        print(f"services up --host {host}: give the address the other hosts reach this one at (the broker "
              "advertises it to its clients), not a wildcard")
        return 2
    local = local_services(secure_kafka=getattr(args, "kafka", "plaintext") == "sasl_ssl", host=host)
    if args.action == "up":
        for status in local.up(instance=getattr(args, "instance", "sqlite")):
            print(
                f"  {status['name']:<6} ready at {status['address']} "
                f"(pid {status['pid']}, {status.get('start_s', 0):.1f} s)"
            )
        env_file = write_services_env(local.env_file_text(storage=args.storage))
        print(f"settings written to {env_file}; the imgpipeline command and definitions read it")
        from imgpipeline.resources import KafkaResource

        KafkaResource.from_env().ensure_topics(log=print)  # the frames topic grown to its setting
        return 0
    if args.action == "down":
        for name, gone in local.down().items():
            print(f"  {name:<8} {'stopped' if gone else 'STILL RUNNING'}")
        services_env_file().unlink(missing_ok=True)
        return 0
    healthy = True
    for status in local.status():
        state = "healthy" if status["healthy"] else ("unhealthy" if status["running"] else "stopped")
        healthy &= status["healthy"]
        # The Dagster daemon alone (the benchmarks') has no address: no UI to browse.
        at = (f"at {status['address']}" if status["address"]
              else "with no UI" if status["name"] == "dagster" else "with no address")
        where = f" {at} (pid {status['pid']})" if status["running"] else ""
        print(f"  {status['name']:<8} {state}{where}  log: {status['log']}")
    return 0 if healthy else 1


def run_checks(*, log=print) -> None:
    """Check every setting, then every configured part (broker and storage, with the permissions the
    pipeline uses there; the model file the detector engine runs; the zones file); raise ConfigError on the
    first bad one, or on both the broker's and the storage's when each has something to fix."""
    from imgpipeline import ConfigError
    from imgpipeline.cli.settings import check_settings
    from imgpipeline.resources import (
        DetectorResource,
        KafkaResource,
        StorageResource,
        TrackingResource,
        kafka_acls,
    )

    check_settings()

    kafka, storage = KafkaResource.from_env(), StorageResource.from_env()
    found = []
    parts = (("kafka", lambda: kafka_acls.check(kafka),
              f"{kafka.bootstrap_servers} (the topics and the consumer group allow what the pipeline does)"),
             ("storage", lambda: storage.open().check(),
              f"{storage.uri} (put-if-absent honoured: a stored frame is never replaced)"))
    for name, part, said in parts:
        try:
            part()
            log(f"  {name:<8} ok: {said}")
        except ConfigError as error:
            found.append(str(error))
    if found:
        raise ConfigError("\n".join(found))
    detector = DetectorResource.from_env()
    path, digest = detector.model_file()
    precision = detector.load().identity.precision
    log(f"  detector ok: {detector.engine} at {precision} ({detector.why_precision()}) runs {path} "
        f"(sha256 {digest[:12]}…)")
    zones = TrackingResource.from_env().zones()
    counted = {source: len(spec.lines) + len(spec.zones) for source, spec in zones.spec.sources.items()}
    log(f"  zones    ok: {zones.path or 'none'}"
        + (f" ({', '.join(f'{s}: {n} lines and zones' for s, n in counted.items())})" if counted else ""))


def check(args) -> int:
    run_checks()
    return 0


def dev(args) -> int:
    """`dagster dev` with DAGSTER_HOME under `.imgpipeline/`; settings are checked before it starts."""
    from imgpipeline.cli.settings import check_settings
    from imgpipeline.paths import project_home
    from imgpipeline.services.dagster_dev import dagster_dev_argv, dagster_env, dagster_home

    check_settings()
    env = {**os.environ, **dagster_env(dagster_home(state_dir()), project_home())}
    argv = dagster_dev_argv(args.host, args.port)
    os.execve(argv[0], argv, env)
    return 0
