import pytest
from kafka import TopicPartition

from imgpipeline import ConfigError
from imgpipeline.resources import KafkaResource
from imgpipeline.services.kafka_broker import KafkaBroker
from imgpipeline.services.process import free_port

pytestmark = pytest.mark.integration


def test_produce_and_consume_on_the_real_broker(kafka):
    producer = kafka.producer()
    for i in range(20):
        producer.send(kafka.frames_topic, key=f"cam{i % 2}".encode(), value=f"frame-{i}".encode())
    producer.flush()
    producer.close()

    consumer = kafka.consumer()
    partitions = [TopicPartition(kafka.frames_topic, p) for p in (0, 1)]
    ends = consumer.end_offsets(partitions)
    assert sum(ends.values()) == 20
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, 0)
    seen = []
    while len(seen) < 20:
        batch = consumer.poll(timeout_ms=5000)
        assert batch, "broker returned nothing within 5 s"
        seen += [record.value.decode() for records in batch.values() for record in records]
    consumer.close()
    assert sorted(seen) == sorted(f"frame-{i}" for i in range(20))


def test_topics_exist_with_a_compacted_dead_letter_topic(kafka):
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = kafka.admin()
    try:
        topics = set(admin.list_topics())
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.dlq_topic)])
    finally:
        admin.close()
    assert {kafka.frames_topic, kafka.dlq_topic} <= topics
    # Letters are keyed by origin: a retried run's second letter for a message replaces the first.
    assert configs["topic"][kafka.dlq_topic]["cleanup.policy"]["value"] == "compact"


def test_unreachable_broker_names_the_fix():
    resource = KafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}", connect_timeout_s=1)
    with pytest.raises(ConfigError, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+.*imgpipeline services up"):
        resource.check()


def test_the_frames_topic_is_grown_to_its_partitions_never_shrunk(kafka, monkeypatch):
    """`kafka` made the topic with 2 partitions: asking for 4 grows it, and says so; asking for 2 again
    leaves 4; 0 is refused at load."""
    def partitions() -> int:
        consumer = kafka.consumer()
        try:
            return len(consumer.partitions_for_topic(kafka.frames_topic))
        finally:
            consumer.close()

    assert partitions() == 2
    said = []
    kafka.model_copy(update={"frames_partitions": 4}).ensure_topics(log=said.append)
    assert partitions() == 4
    assert said == [f"topic {kafka.frames_topic}: 2 → 4 partitions; sources' new frames may go to another "
                    "partition from now on"]
    said.clear()
    kafka.model_copy(update={"frames_partitions": 2}).ensure_topics(log=said.append)
    assert partitions() == 4 and said == []
    monkeypatch.setenv("IMGPIPELINE_FRAMES_PARTITIONS", "0")
    with pytest.raises(ConfigError, match=r"IMGPIPELINE_FRAMES_PARTITIONS='0': .*greater than or equal to 1"):
        KafkaResource.from_env()


class ThreeReplicasBroker(KafkaBroker):
    """One broker of a cluster whose topics default to three replicas, as a site's would: it alone cannot
    hold them, so it refuses to create a topic with the cluster's default."""

    def server_properties(self, ports: dict[str, int]) -> str:
        return super().server_properties(ports) + "default.replication.factor=3\n"

    def ready(self, ports: dict[str, int]) -> bool:
        """Ready when an admin client lists its topics (it makes none)."""
        try:
            admin = KafkaResource(bootstrap_servers=self.address(ports), connect_timeout_s=2).admin()
        except ConfigError:
            return False
        try:
            return isinstance(admin.list_topics(), list)
        finally:
            admin.close()


def test_topics_are_made_with_the_clusters_replication_or_refused_with_the_commands_to_make_them(
        kafka, tmp_path):
    """The topics take the cluster's `default.replication.factor` (1 on the local broker, Kafka's own); a
    cluster that cannot give it gets no topic of a factor it did not ask for: the error names each topic's
    command."""
    admin = kafka.admin()
    try:
        topics = admin.describe_topics([kafka.frames_topic, kafka.alerts_topic, kafka.dlq_topic])
    finally:
        admin.close()
    assert {len(p["replica_nodes"]) for t in topics for p in t["partitions"]} == {1}  # Kafka's own default

    three = ThreeReplicasBroker(tmp_path / "three")
    three.start()
    try:
        resource = KafkaResource(bootstrap_servers=three.env(three.ports)["KAFKA_BOOTSTRAP_SERVERS"],
                                 frames_topic="frames", connect_timeout_s=5)
        with pytest.raises(ConfigError) as refused:
            resource.ensure_topics(partitions=2)
        said = str(refused.value)
        assert "The target replication factor of 3 cannot be reached" in said
        for name in ("frames", resource.alerts_topic, *resource.dead_letter_topics):
            assert f"--create --topic {name} --partitions " in said
        assert "--config message.timestamp.type=LogAppendTime" in said
        assert 'REPLICAS=3\n' in said and said.count('--replication-factor "$REPLICAS"') == 4
        assert "--command-config" not in said  # a PLAINTEXT broker: Kafka's tools need no client file
        admin = resource.admin()
        try:
            assert not {"frames", resource.alerts_topic} & set(admin.list_topics())
        finally:
            admin.close()
    finally:
        three.stop()
