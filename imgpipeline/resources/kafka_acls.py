"""What the pipeline does on Kafka, and which of it a cluster that enforces ACLs does not let this client do,
as the broker says it: `imgpipeline check` names each missing operation with the `kafka-acls.sh` line that
grants it (docs/operations.md, "Permissions")."""

from __future__ import annotations

import time

from imgpipeline import ConfigError
from imgpipeline.resources.kafka import CONSUMER_GROUP, KafkaResource, followers_group
from imgpipeline.resources.settings import env_name

Missing = tuple[str, str, str, str]  # (kind, name, operation, who needs it)


def check(kafka: KafkaResource) -> None:
    """Raise ConfigError unless the cluster answers and grants this client every operation the pipeline
    does, each missing one named."""
    admin = kafka.admin()
    try:
        admin.list_topics()
        found = missing(kafka, admin)
    finally:
        admin.close()
    if found:
        raise refusal(kafka, found)


def permissions(kafka: KafkaResource) -> dict[tuple[str, str], dict[str, str]]:
    """What the pipeline does on Kafka, by (kind, name): each operation and who needs it."""
    retention = "the retention job sets how long dead letters stay"
    return {
        ("topic", kafka.frames_topic): {"READ": "frames_sensor and the detection runs read frames",
                                        "WRITE": "producers and the MQTT bridge send frames"},
        ("topic", kafka.dlq_topic): {"WRITE": "runs and the MQTT bridge dead-letter the frames they "
                                              "cannot take",
                                     "ALTER_CONFIGS": retention},
        ("topic", kafka.alerts_topic): {"WRITE": "alerts are published"},
        ("topic", f"{kafka.alerts_topic}.dlq"): {"WRITE": "alerts no webhook took are dead-lettered",
                                                "ALTER_CONFIGS": retention},
        ("group", CONSUMER_GROUP): {"READ": "runs commit the offsets they landed"},
        ("group", followers_group(kafka.frames_topic)): {
            "READ": "the fast lane's follow_frames runs share the frames topic's partitions as its members"},
    }


def missing(kafka: KafkaResource, admin) -> list[Missing]:
    """Each operation of `permissions` the cluster does not grant this client, as the broker says it (the
    operations it authorizes, KIP-430; a broker that says nothing of them, before Kafka 2.3, is taken at
    its word); ALTER on the frames topic while it has fewer partitions than asked; CREATE, asked of the
    cluster without making anything (CreateTopics validate-only), for a topic still to be made. Of a topic
    the client may not describe (READ or WRITE would let it) the broker says nothing: all its operations
    are named. A group with no offsets yet shows only that it is described: its READ is proven at its
    first commit."""
    from kafka import errors

    wanted = permissions(kafka)
    granted: dict[tuple[str, str], set[str]] = {}
    absent = []
    for topic in admin.describe_topics([name for kind, name in wanted if kind == "topic"]):
        code, operations = topic.get("error_code", 0), topic.get("authorized_operations")
        if code == errors.UnknownTopicOrPartitionError.errno:
            absent.append(topic["name"])
        elif code == 0 and topic["name"] == kafka.frames_topic and (
                0 < len(topic.get("partitions") or []) < kafka.frames_partitions):
            setting = env_name(KafkaResource, "frames_partitions")
            wanted["topic", kafka.frames_topic]["ALTER"] = f"it has fewer partitions than {setting}: added"
        known = code in (0, errors.UnknownTopicOrPartitionError.errno)
        asked = set(wanted["topic", topic["name"]])
        granted["topic", topic["name"]] = (asked if known and operations is None
                                           else set(operations or ()) if known else set())
    for kind, name in wanted:
        if kind == "group":
            granted[kind, name] = group_operations(admin, name, wanted[kind, name])
    found = [(kind, name, op, why) for (kind, name), ops in wanted.items() for op, why in ops.items()
             if op not in granted[kind, name]]
    return found + create_refused(kafka, admin, absent)


def create_refused(kafka: KafkaResource, admin, absent: list[str]) -> list[Missing]:
    """CREATE on each topic still to be made that the cluster would refuse this client (asked validate-only:
    nothing is made)."""
    from kafka import errors

    if not absent:
        return []
    specs = kafka.topic_specs(kafka.frames_partitions)
    try:
        answers = admin.create_topics({name: specs[name] for name in absent}, validate_only=True,
                                      raise_errors=False)["topics"]
    except errors.KafkaError:  # a broker that cannot be asked (before 2.4): ensure_topics says what to do
        return []
    return [("topic", answer["name"], "CREATE", "it is still to be made (or make it yourself: "
             "docs/operations.md)") for answer in answers
            if answer["error_code"] in (errors.TopicAuthorizationFailedError.errno,
                                        errors.ClusterAuthorizationFailedError.errno)]


def group_operations(admin, group_id: str, wanted: dict[str, str], attempts: int = 10) -> set[str]:
    """The operations granted on a consumer group; all that is wanted where the group, without offsets
    yet, was only found (DESCRIBE), or its coordinator still moving after the last attempt."""
    from kafka import errors

    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            (group,) = admin.describe_groups([group_id], include_authorized_operations=True).values()
        except errors.GroupAuthorizationFailedError:
            return set()
        except errors.KafkaError as error:
            if not error.retriable or last:  # the offsets topic still being made: asked again
                raise
            time.sleep(0.5)
            continue
        said = str(group.get("error") or "")
        if any(name in said for name in ("CoordinatorLoadInProgress", "NotCoordinator")) and not last:
            time.sleep(0.5)  # the coordinator moving or loading: asked again
            continue
        operations = group.get("authorized_operations")
        return set(wanted) if operations is None else set(operations)
    raise ValueError(f"attempts={attempts}: ask at least once")


def principal(kafka: KafkaResource) -> str:
    """Who this client is to the cluster's ACLs, as far as its settings say."""
    return f"User:{kafka.sasl_username}" if kafka.security_protocol.startswith("SASL_") else (
        "this client (its certificate's principal, or User:ANONYMOUS over PLAINTEXT)")


def refusal(kafka: KafkaResource, found: list[Missing]) -> ConfigError:
    """The error naming each missing operation, who needs it, and the command that grants it."""
    return ConfigError(
        f"Kafka at {kafka.bootstrap_servers} does not let {principal(kafka)} do what the pipeline does "
        "(docs/operations.md, \"Permissions\"):\n" + "\n".join(
            f"  {operation} on {kind} {name}: {why}" for kind, name, operation, why in found)
        + "\nGrant them, e.g.:\n" + "\n".join(grant_command(kafka, *m[:3]) for m in found))


def grant_command(kafka: KafkaResource, kind: str, name: str, operation: str) -> str:
    who = principal(kafka) if kafka.security_protocol.startswith("SASL_") else "User:<principal>"
    resource = {"topic": f"--topic {name}", "group": f"--group {name}", "cluster": "--cluster"}[kind]
    return (f"  kafka-acls.sh --bootstrap-server {kafka.bootstrap_servers}{kafka.tool_options()} --add "
            f"--allow-principal {who} --operation {operation.title().replace('_', '')} {resource}")
