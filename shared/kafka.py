"""The one module that imports confluent_kafka: client factories, the consumer's edge (records out) and
admin helpers.

Everything else talks to the Protocols of `shared.protocols` and to `shared.records.InputRecord`, so the
runner can be exercised against in-memory fakes and against the real broker with the same code.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # stub lacks __all__
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from shared.errors import KafkaAuthenticationError, KafkaAuthorizationError, KafkaUnavailableError
from shared.protocols import DeliveryCallback, MessageProducer
from shared.records import Headers, InputRecord

log = logging.getLogger(__name__)

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "AclGrant",
    "Consumer",
    "DeliveryCallback",
    "KafkaError",
    "KafkaException",
    "KafkaRecordConsumer",
    "Message",
    "MessageProducer",
    "Producer",
    "TopicPartition",
    "cluster_node_count",
    "create_acls",
    "ensure_topic",
    "make_consumer",
    "make_producer",
    "make_record_consumer",
    "partition_count",
    "produce_with_backoff",
    "raise_if_unauthorized",
    "records_of",
    "topic_names",
    "upsert_scram_credentials",
    "wait_for_cluster",
]

# When librdkafka's local queue is full, serve delivery reports for this long before retrying the produce.
QUEUE_FULL_BACKOFF_S = 0.05


def produce_with_backoff(
    producer: MessageProducer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    on_delivery: DeliveryCallback | None = None,
    headers: Headers | None = None,
) -> None:
    """Produce one record; a full local queue is drained (delivery reports served), never raised."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(QUEUE_FULL_BACKOFF_S)


def _admin(client_config: Mapping[str, Any]) -> AdminClient:
    # Short-lived admin clients log an info line ("Purging unserved events") when dropped; warnings show.
    return AdminClient({"log_level": 4, **client_config})


# ------------------------------------------------------------------------------------------ security ----

# What the broker answers when the principal lacks an ACL: no retry can help, an operator must grant it.
AUTHORIZATION_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "consumer group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
}
# librdkafka's local codes for a refused TLS handshake or SASL exchange, and the broker's for bad credentials.
AUTHENTICATION_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
)
# librdkafka's own diagnosis when a connection closes during the first request: a plaintext client talking
# to a TLS listener (or the reverse). It reports a transport error, which would otherwise be retried.
PROTOCOL_MISMATCH_HINT = "incorrect security.protocol"


def raise_if_unauthorized(error: KafkaError, doing: str) -> None:
    """KafkaAuthorizationError when `error` is an authorization failure, naming what was refused."""
    kind = AUTHORIZATION_CODES.get(error.code())
    if kind is not None:
        raise KafkaAuthorizationError(
            f"not authorized: {doing} was refused ({kind} access denied: {error.str()}); grant this "
            "principal the ACL it needs (docs/security.md)"
        )


def authentication_problem(error: KafkaError) -> str | None:
    """Why the cluster will never accept this client as configured, or None for an error worth retrying."""
    if error.code() in AUTHENTICATION_CODES:
        return f"authentication failed: {error.str()}"
    if error.code() == KafkaError._TRANSPORT and PROTOCOL_MISMATCH_HINT in error.str():
        return (
            f"{error.str()}: the listener expects TLS (security.protocol SSL or SASL_SSL) or this client "
            "uses TLS against a plaintext listener"
        )
    return None


AclResource = Literal["topic", "group", "transactional_id"]
AclPattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "describe", "create"]
_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
_OPERATIONS = {
    "read": AclOperation.READ,
    "write": AclOperation.WRITE,
    "describe": AclOperation.DESCRIBE,
    "create": AclOperation.CREATE,
}


@dataclass(frozen=True)
class AclGrant:
    """One ALLOW ACL: `principal` (User:name) may `operation` the `resource` named (or prefixed) `name`."""

    principal: str
    operation: Operation
    resource: AclResource
    name: str
    pattern: AclPattern = "literal"


def create_acls(
    client_config: Mapping[str, Any], grants: Iterable[AclGrant], timeout_s: float = 30.0
) -> None:
    """Create every grant (an existing identical ACL is not an error); raise on the first refusal."""
    bindings = [
        AclBinding(
            _RESOURCES[g.resource],
            g.name,
            _PATTERNS[g.pattern],
            g.principal,
            "*",
            _OPERATIONS[g.operation],
            AclPermissionType.ALLOW,
        )
        for g in grants
    ]
    if not bindings:
        return
    admin = _admin(client_config)  # held until every future resolves: a dropped client cancels them
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)


def upsert_scram_credentials(
    client_config: Mapping[str, Any],
    passwords: Mapping[str, str],
    mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512",
    iterations: int = 8192,
) -> None:
    """Create or replace the SCRAM credential of each user (the controller stores only salted hashes)."""
    info = ScramCredentialInfo(
        ScramMechanism.SCRAM_SHA_512 if mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256,
        iterations,
    )
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password.encode()) for user, password in passwords.items()
    ]
    if not upserts:
        return
    admin = _admin(client_config)  # held until every future resolves: a dropped client cancels them
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30.0)


def cluster_node_count(client_config: Mapping[str, Any], timeout_s: float) -> int:
    """Number of brokers the cluster reports, via a metadata (admin) request."""
    metadata = _admin(client_config).list_topics(timeout=timeout_s)
    return len(metadata.brokers)


def topic_names(client_config: Mapping[str, Any], timeout_s: float = 10.0) -> list[str]:
    """The topics the client's principal may see (metadata lists only those it may describe)."""
    return list(_admin(client_config).list_topics(timeout=timeout_s).topics)


def partition_count(client_config: Mapping[str, str], topic: str, timeout_s: float = 10.0) -> int:
    """Partitions of `topic` (0 when it does not exist)."""
    metadata = _admin(client_config).list_topics(topic, timeout=timeout_s).topics.get(topic)
    return 0 if metadata is None or metadata.error is not None else len(metadata.partitions)


def wait_for_cluster(client_config: Mapping[str, str], timeout_s: float, expected_nodes: int = 1) -> None:
    """Block until an admin request sees `expected_nodes` brokers, or raise KafkaUnavailableError.

    Readiness is an answered request, never a fixed sleep: a broker's port accepts connections before it
    can serve metadata. A cluster that refuses this client (bad credentials, a TLS mismatch) can never
    become ready for it: KafkaAuthenticationError at once rather than at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    refused: list[str] = []

    def on_error(error: KafkaError) -> None:
        problem = authentication_problem(error)
        if problem is not None:
            refused.append(problem)

    servers = str(client_config.get("bootstrap.servers"))
    probed = False
    # One client throughout, asked in short slices: its error callback reports a refusal within a second,
    # while a request simply waits out its timeout.
    admin = _admin({**client_config, "error_cb": on_error})
    while time.monotonic() < deadline:
        remaining = max(0.5, min(1.0, deadline - time.monotonic()))
        try:
            seen = len(admin.list_topics(timeout=remaining).brokers)
            if seen >= expected_nodes:
                return
            last_error = f"{seen} of {expected_nodes} brokers registered"
        except KafkaException as exc:
            last_error = str(exc.args[0]) if exc.args else str(exc)
            if not refused and not probed and _speaks_tls_unasked(client_config):
                refused.append(
                    "the listener expects TLS: set security.protocol to SSL or SASL_SSL (and the CA to trust)"
                )
            probed = True  # once: a plaintext listener that is still starting logs each probe as garbage
        admin.poll(0)  # serves the error callback
        if refused:
            raise KafkaAuthenticationError(f"Kafka at {servers} refused this client: {refused[0]}")
        time.sleep(0.2)  # back-off between retries of a failed request, not a readiness guess
    raise KafkaUnavailableError(f"Kafka at {servers} did not answer within {timeout_s:.0f}s ({last_error})")


def _speaks_tls_unasked(client_config: Mapping[str, str]) -> bool:
    """A plaintext client whose first bootstrap server completes a TLS handshake: it talks to a TLS listener.

    librdkafka only sees the broker close the connection (an INFO log line, no error), which it retries
    forever; asking the port once in TLS turns that into a clear, immediate answer.
    """
    protocol = str(client_config.get("security.protocol", "PLAINTEXT")).upper()
    if protocol.endswith("SSL"):
        return False
    first = str(client_config.get("bootstrap.servers", "")).split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        return False
    context = ssl.create_default_context()
    # Only "is this TLS?": the certificate is not trusted or checked, and nothing is sent after the hello.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as raw:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return True
    except (OSError, ssl.SSLError):
        return False


def ensure_topic(
    client_config: Mapping[str, str],
    topic: str,
    partitions: int,
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create `topic` when missing. Returns True when this call created it.

    replication_factor -1 takes the cluster's default.replication.factor, so the same code creates RF 1 topics
    on a laptop broker and RF 3 (with its min.insync.replicas) on a production cluster.
    """
    admin = _admin(client_config)
    if topic in admin.list_topics(timeout=timeout_s).topics:
        return False
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=dict(config or {}),
            )
        ],
        operation_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False  # another process won the race; the topic is there, which is all we need
        if exc.args:
            # Metadata lists only the topics a principal may describe: a topic it has no ACL for looks
            # missing, and creating it is refused.
            raise_if_unauthorized(exc.args[0], f"using topic {topic!r} (describe, or create when missing)")
        raise
    return True


def make_producer(client_config: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Producer:
    """A producer with ridestream's delivery guarantees on top of the connection config."""
    config: dict[str, Any] = {
        **client_config,
        # Idempotence gives acks=all and per-partition ordering without duplicates on retry.
        "enable.idempotence": True,
        "acks": "all",
        # A few ms of linger lets librdkafka build real batches: the main lever for throughput.
        "linger.ms": 5,
        "compression.type": "lz4",
        "socket.nagle.disable": True,
    }
    config.update(overrides or {})
    return Producer(config)


def make_consumer(
    client_config: Mapping[str, str], group_id: str, overrides: Mapping[str, Any] | None = None
) -> Consumer:
    """A consumer that never auto-commits: the runner commits only what it has delivered."""
    config: dict[str, Any] = {
        **client_config,
        "group.id": group_id,
        "enable.auto.commit": False,
        # A new group starts at the beginning so no ride is skipped because a service started late.
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # librdkafka prefetches up to 100k messages / 64 MB per consumer by default, which was a third of a
        # service's RSS (312 MB peak draining a backlog); 2 MB (~6k ride events, six batches ahead) gave
        # 266 MB at the same throughput.
        "queued.max.messages.kbytes": 2048,
        # ...but a full prefetch queue then parks the partition's fetcher for fetch.queue.backoff.ms, 1 s by
        # default: the consumer drained its 2 MB and waited. 10 ms re-checks the queue as fast as it drains
        # (the benchmark's passthrough drained 43k events/s with the default:
        # `git show 940d8e6:results/bench.json`).
        "fetch.queue.backoff.ms": 10,
        "socket.nagle.disable": True,
    }
    config.update(overrides or {})
    return Consumer(config)


def records_of(messages: Sequence[Message]) -> list[InputRecord]:
    """The engine-neutral records of a consume() call. A fatal client error ends the run (KafkaException);
    an authorization failure ends it too (KafkaAuthorizationError: no retry can help); any other error record
    (a partition EOF, a transient broker error) is logged and retried by librdkafka."""
    records: list[InputRecord] = []
    for message in messages:
        error = message.error()
        if error is not None:
            raise_if_unauthorized(error, f"consuming {message.topic() or 'the subscribed topics'}")
            if error.fatal():
                raise KafkaException(error)
            log.warning("consumer error (will retry): %s", error)
            continue
        headers = message.headers()
        fields = (
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            message.key(),
            message.value(),
            list(headers.items()) if isinstance(headers, dict) else headers,
            message.timestamp()[1],
        )
        # tuple.__new__: InputRecord(...) goes through the NamedTuple's generated Python __new__, twice
        # the cost per consumed record (~0.2 µs, ~2% of a busy loop).
        records.append(_new_tuple(InputRecord, fields))
    return records


_new_tuple = tuple.__new__


class KafkaRecordConsumer:
    """A confluent_kafka.Consumer whose `consume` hands out InputRecords (shared.protocols.RecordConsumer)."""

    def __init__(self, client: Consumer) -> None:
        self.client = client

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[InputRecord]:
        return records_of(self.client.consume(num_messages, timeout))

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[..., None],
        on_revoke: Callable[..., None],
        on_lost: Callable[..., None] | None = None,
    ) -> None:
        if on_lost is None:
            self.client.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
        else:
            self.client.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    def commit(self, offsets: list[TopicPartition]) -> None:
        self.client.commit(offsets=offsets, asynchronous=False)

    def assignment(self) -> list[TopicPartition]:
        return list(self.client.assignment())

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return list(self.client.position(partitions))

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int] | None:
        marks: tuple[int, int] | None = self.client.get_watermark_offsets(partition, timeout, cached)
        return marks

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return list(self.client.committed(partitions, timeout))

    def seek(self, partition: TopicPartition) -> None:
        self.client.seek(partition)

    def consumer_group_metadata(self) -> Any:
        return self.client.consumer_group_metadata()

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self.client.list_topics(topic, timeout)

    def close(self) -> None:
        self.client.close()


def make_record_consumer(
    client_config: Mapping[str, str], group_id: str, overrides: Mapping[str, Any] | None = None
) -> KafkaRecordConsumer:
    """make_consumer's client behind the runtime's RecordConsumer seam."""
    return KafkaRecordConsumer(make_consumer(client_config, group_id, overrides))
