"""Processing guarantees: how a batch's outputs and its input offsets become durable together.

    at_least_once   produce; every commit interval: flush → verify every delivery report → commit offsets
                    (consumer group). A crash replays what was processed since the last commit: duplicates,
                    never loss.
    exactly_once    produce inside a transaction, add the input offsets to the same transaction
                    (send_offsets_to_transaction with the consumer's group metadata, KIP-447), commit it.
                    Outputs, dead letters and offsets become visible to read_committed readers together
                    or not at all. A restarted instance reuses its transactional.id and fences its zombie.

Both commit every `max_messages` inputs or `max_interval_s` seconds, whichever comes first. The runner calls
`begin()` before producing a batch and `complete(ranges, ledger, records, on_commit)` after; both strategies
raise DeliveryError (retry after restart) or KafkaException (fatal) and never commit past an undelivered
record. A batch's `on_commit` runs once its outputs are durable, so what metrics count as produced is what a
reader can see: under exactly-once an aborted, replayed transaction is counted once, when it commits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from shared.errors import DeliveryError
from shared.kafka import KafkaError, KafkaException, Message, TopicPartition, raise_if_unauthorized
from shared.protocols import MessageProducer, RecordConsumer, TransactionalProducer
from shared.records import OffsetRange

log = logging.getLogger(__name__)

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]

# Retries of a transaction commit that failed with a retriable error (e.g. a coordinator moving) before
# the batch is treated as failed and rewound.
COMMIT_RETRIES = 5
# Commit errors meaning the group moved this instance's partitions away during the batch.
LOST_OWNERSHIP = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
    }
)
# Offset-commit errors of a coordinator that is loading, moving or briefly unreachable (a broker restart):
# the group still owns the partitions, so their offsets are simply committed at the next interval.
COMMIT_LATER = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
    }
)
# Exit code when a transactional call overran its deadline (sysexits EX_SOFTWARE): restart the instance.
EXIT_TRANSACTION_STUCK = 70
# Grace beyond a transactional call's own timeout before the watchdog gives up on it.
WATCHDOG_GRACE_S = 5.0


def exit_stuck(what: str, seconds: float) -> None:
    """End the process at once: the open transaction is aborted by the restarted instance's
    init_transactions (same transactional.id) or by the broker's transaction timeout, so nothing is lost
    or duplicated, whereas waiting would stall every partition this instance owns."""
    sys.stderr.write(
        f"ridestream: error: {what} did not return within {seconds:.0f}s (a stale transaction coordinator, "
        "librdkafka #5456/#5511); exiting so that a restart fences and aborts the open transaction\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_TRANSACTION_STUCK)


class Watchdog:
    """Ends the process (`on_overrun`) when a guarded call overruns its deadline: librdkafka can block in
    send_offsets_to_transaction past its timeout when the group coordinator's broker was replaced
    (confluentinc/librdkafka#5456, #5511, open).

    One daemon thread for the committer's life, armed and disarmed around each call: a `threading.Timer` per
    call started a thread twice per transaction (every 50 ms), and `Thread.start` waits until the new thread
    runs, on cores the broker and the service keep busy. Guards one call at a time (the committer's)."""

    def __init__(
        self,
        on_overrun: Callable[[str, float], None] = exit_stuck,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_overrun = on_overrun
        self.clock = clock
        self._changed = threading.Condition()
        self._armed: tuple[str, float, float] | None = None  # (what, seconds, deadline)
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, what: str, seconds: float) -> Iterator[None]:
        with self._changed:
            self._armed = (what, seconds, self.clock() + seconds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ridestream-watchdog", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._armed = None
                self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                if self._armed is None:
                    self._changed.wait()
                    continue
                what, seconds, deadline = self._armed
                left = deadline - self.clock()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._armed = None
                self.on_overrun(what, seconds)


class DeliveryLedger:
    """Collects the delivery reports of the records produced since the last commit; any error blocks it."""

    def __init__(self) -> None:
        self.pending = 0
        self.errors: list[str] = []

    def expect(self) -> None:
        self.pending += 1

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        self.pending -= 1
        if error is not None:
            self.errors.append(str(error))

    def first_problem(self) -> str | None:
        if self.errors:
            return f"{len(self.errors)} output records not delivered ({self.errors[0]})"
        if self.pending:
            return f"{self.pending} output records unacknowledged (flush timed out)"
        return None


# How often processed input is made durable, by default: after this many records or this long, whichever
# comes first. Longer amortises the flush and commit round trips; shorter bounds what a crash replays (at
# least once) or how long outputs stay invisible to read_committed readers (exactly once): an output waits
# up to the interval for its transaction, plus the commit's round trips, so the interval is most of
# exactly-once's p99 (at 5,000 events/s, 0.1 s measured 147-151 ms against a 150 ms bound, 0.05 s 74-82 ms),
# and draining a backlog at 100k+ events/s commits every ~5,000 inputs either way (no drain throughput lost:
# docs/performance.md).
COMMIT_MAX_MESSAGES = 5000
COMMIT_INTERVAL_S = 0.05


class Pending:
    """What was processed since the last commit: per partition the first offset consumed and the next one to
    consume, the delivery ledgers of the outputs, what to run once they are durable, how many inputs, and
    since when."""

    def __init__(self, max_messages: int, max_interval_s: float, clock: Callable[[], float]) -> None:
        self.max_messages = max_messages
        self.max_interval_s = max_interval_s
        self.clock = clock
        self.since: float | None = None
        self.first: dict[tuple[str, int], int] = {}
        self.next: dict[tuple[str, int], int] = {}
        self.messages = 0
        self.ledgers: list[DeliveryLedger] = []
        self.on_commit: list[Callable[[], None]] = []

    def open(self) -> None:
        if self.since is None:
            self.since = self.clock()

    def add(
        self,
        ranges: Sequence[OffsetRange],
        ledger: DeliveryLedger,
        records: int,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.open()
        for span in ranges:
            key = (span.topic, span.partition)
            self.first[key] = min(self.first.get(key, span.first), span.first)
            self.next[key] = max(self.next.get(key, span.next), span.next)
        self.ledgers.append(ledger)
        self.messages += records
        if on_commit is not None:
            self.on_commit.append(on_commit)

    def full(self) -> bool:
        return self.messages >= self.max_messages

    def expired(self) -> bool:
        return self.since is not None and self.clock() - self.since >= self.max_interval_s

    def first_problem(self) -> str | None:
        return next((p for p in (ledger.first_problem() for ledger in self.ledgers) if p), None)

    def positions(self) -> list[TopicPartition]:
        """The offsets to commit: per partition, the next one to consume."""
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in self.next.items()]

    def rewind_points(self) -> list[TopicPartition]:
        """Per partition, the first offset consumed since the last commit: where a replay must start."""
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in self.first.items()]

    def keep(self, positions: Sequence[TopicPartition], assigned: Sequence[TopicPartition]) -> None:
        """Carry `positions` of the partitions still `assigned` into the next commit."""
        owned = {(tp.topic, tp.partition) for tp in assigned}
        kept = [
            OffsetRange(tp.topic, tp.partition, tp.offset, tp.offset)
            for tp in positions
            if (tp.topic, tp.partition) in owned
        ]
        if kept:
            self.add(kept, DeliveryLedger(), 0)

    def committed(self) -> None:
        """The outputs are durable: run what waited for that, then start afresh."""
        callbacks = list(self.on_commit)
        self.clear()
        for callback in callbacks:
            callback()

    def clear(self) -> None:
        self.since = None
        self.first.clear()
        self.next.clear()
        self.messages = 0
        self.ledgers.clear()
        self.on_commit.clear()


class IntervalCommitter:
    """What both guarantees share: processed batches gather in `pending`, and the subclass's `commit()` makes
    them durable when due (`max_messages` inputs or `max_interval_s` seconds), between batches once the
    interval has run out, before partitions are revoked, and on a clean stop."""

    guarantee: ProcessingGuarantee

    def __init__(
        self,
        consumer: RecordConsumer,
        producer: MessageProducer,
        service: str,
        flush_timeout_s: float,
        max_messages: int = COMMIT_MAX_MESSAGES,
        max_interval_s: float = COMMIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.service = service
        self.flush_timeout_s = flush_timeout_s
        self.pending = Pending(max_messages, max_interval_s, clock)
        # Set once the run failed: nothing more may be committed (see abandon()).
        self.abandoned = False
        # Commits and aborted transactions so far: what an aborted one held is gone (the runner writes
        # its switch records again), what a commit made durable stays.
        self.commits = 0
        self.aborts = 0

    def begin(self) -> None:
        """Called before a batch is produced; nothing to open unless the guarantee needs it."""

    def complete(
        self,
        ranges: Sequence[OffsetRange],
        ledger: DeliveryLedger,
        records: int,
        on_commit: Callable[[], None] | None = None,
    ) -> bool:
        """Remember the batch; commit when due. True when this call committed. `on_commit` runs once the
        batch's outputs are durable (never for a batch whose transaction aborts)."""
        self.pending.add(ranges, ledger, records, on_commit)
        if self.pending.full() or self.pending.expired():
            return self.commit()
        return False

    def commit(self) -> bool:
        raise NotImplementedError

    def abandon(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Between batches: a quiet input still gets what it processed committed on time (and, under
        exactly-once, its finished predictions made visible to read_committed readers)."""
        if self.pending.expired():
            self.commit()

    def on_revoke(self, _partitions: Sequence[TopicPartition]) -> None:
        """Partitions are leaving: commit what was processed so their next owner starts right after it
        (KIP-447 lets an exactly-once owner read them as soon as the transaction commits)."""
        self.commit()

    def close(self) -> None:
        """A clean stop (SIGTERM finishes the work it has done): commit everything processed."""
        self.commit()


class AtLeastOnce(IntervalCommitter):
    """Commit the consumer group's offsets once every output produced before them is acknowledged.

    Batches are not flushed one by one: outputs stream out while the next batches are scored, and every
    `max_messages` inputs or `max_interval_s` seconds the producer is flushed, every delivery report checked
    and the offsets committed (the Kafka Streams commit.interval model). A crash replays at most that much;
    a per-batch flush and commit made the loop wait on two round trips per 1,000 events.
    """

    guarantee: ProcessingGuarantee = "at_least_once"

    def commit(self) -> bool:
        """Flush → verify every delivery report → commit the offsets, in that order. Returns False when the
        offsets were not committed: the group had moved the partitions away (their new owner replays from
        the last commit: duplicates), or the coordinator was not ready (those still owned go next time)."""
        if self.abandoned:
            return False
        if self.pending.since is None:
            return True
        self.producer.flush(self.flush_timeout_s)
        problem = self.pending.first_problem()
        if problem is not None:
            raise DeliveryError(f"{self.service}: {problem}; offsets not committed")
        positions = self.pending.positions()
        try:
            if positions:  # (a batch of records held back for a blue/green cut-over commits none)
                self.consumer.commit(positions)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() in LOST_OWNERSHIP:
                # The group moved on while these records were processed: their outputs are delivered, and a
                # partition's new owner consumes them again from the last commit (duplicates, never loss).
                log.warning("%s: offsets not committed, the group rebalanced (%s)", self.service, error)
            elif error.code() in COMMIT_LATER or error.retriable():
                # (once a broker restart ended a service here: COORDINATOR_LOAD_IN_PROGRESS, results/faults)
                log.warning("%s: offsets not committed yet, retried next interval (%s)", self.service, error)
            else:
                raise
            # Either way the partitions this instance still owns keep their positions for the next commit.
            self.pending.committed()  # the outputs are delivered, so they count
            self.commits += 1
            self.pending.keep(positions, self.consumer.assignment())
            return False
        self.pending.committed()
        self.commits += 1
        return True

    def abandon(self) -> None:
        """The run failed (an undelivered output, a fatal error, a bug): commit nothing more, not even from
        the revoke that leaving the group triggers; what was processed since the last commit is consumed again
        after the restart. No flush either: after a delivery failure it would only wait out its timeout."""
        self.abandoned = True
        self.pending.clear()


class ExactlyOnce(IntervalCommitter):
    """Outputs and input offsets in one Kafka transaction, committed every `max_messages` records or
    `max_interval_s` seconds, whichever comes first (longer transactions amortise the commit round trips;
    shorter ones keep read_committed latency low)."""

    guarantee: ProcessingGuarantee = "exactly_once"

    def __init__(
        self,
        consumer: RecordConsumer,
        producer: TransactionalProducer,
        service: str,
        flush_timeout_s: float,
        max_messages: int = COMMIT_MAX_MESSAGES,
        max_interval_s: float = COMMIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        call_timeout_s: float = 15.0,
    ) -> None:
        # pending.since is when the open transaction began; None means no transaction is open.
        super().__init__(consumer, producer, service, flush_timeout_s, max_messages, max_interval_s, clock)
        self.producer: TransactionalProducer = producer
        self.call_timeout_s = call_timeout_s
        self.watchdog = Watchdog()
        # Fences any earlier instance with the same transactional.id and aborts its open transaction.
        try:
            self.producer.init_transactions(flush_timeout_s)
        except KafkaException as exc:
            if exc.args:  # a principal without an ACL for its transactional id: say so, do not retry
                raise_if_unauthorized(exc.args[0], f"{service}: starting transactions (init_transactions)")
            raise

    def begin(self) -> None:
        if self.pending.since is None:
            self.producer.begin_transaction()
            self.pending.open()

    def commit(self) -> bool:
        """flush → verify delivery → send_offsets_to_transaction → commit_transaction.

        The flush comes first because delivery callbacks run only while the client is polled. An undelivered
        record aborts the transaction and raises DeliveryError (nothing of it is visible, the offsets stay
        where they were). An abortable broker error aborts and rewinds every partition the transaction read
        to the first offset it consumed, so the batches are processed again in a new transaction; a fatal
        one (fenced: a newer instance has
        our transactional.id) propagates and ends the process. True when the transaction committed.
        """
        if self.abandoned:
            return False
        if self.pending.since is None:
            return True
        self.producer.flush(self.flush_timeout_s)
        problem = self.pending.first_problem()
        if problem is not None:
            self.abort_and_rewind()
            raise DeliveryError(f"{self.service}: {problem}; transaction aborted")
        positions = self.pending.positions()
        try:
            with self.watchdog.guard("send_offsets_to_transaction", self.call_timeout_s + WATCHDOG_GRACE_S):
                if positions:
                    self.producer.send_offsets_to_transaction(
                        positions, self.consumer.consumer_group_metadata(), self.call_timeout_s
                    )
            self.commit_with_retries()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or not error.txn_requires_abort():
                raise
            log.warning("%s: transaction aborted (%s); rewinding to its first offsets", self.service, error)
            self.abort_and_rewind()
            return False
        self.pending.committed()
        self.commits += 1
        return True

    def commit_with_retries(self) -> None:
        for attempt in range(COMMIT_RETRIES):
            try:
                with self.watchdog.guard("commit_transaction", self.call_timeout_s + WATCHDOG_GRACE_S):
                    self.producer.commit_transaction(self.call_timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or attempt == COMMIT_RETRIES - 1:
                    raise
                log.info("%s: retrying transaction commit (%s)", self.service, error)

    def abort_and_rewind(self) -> None:
        """Abort the open transaction and seek every partition it consumed back to the first offset it
        consumed there. Aborting does not move the consumer's fetch position, and a partition without a
        committed offset (a new group, a new partition) has no other point to return to: without this seek
        the aborted inputs would be skipped (librdkafka examples/transactions.c, rewind_consumer)."""
        rewind = self.pending.rewind_points()
        self.producer.abort_transaction(self.flush_timeout_s)
        self.aborts += 1
        self.pending.clear()
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for tp in rewind:
            # A partition revoked meanwhile is its new owner's: it resumes from the last commit.
            if (tp.topic, tp.partition) in owned:
                self.consumer.seek(tp)

    def abandon(self) -> None:
        """The run failed: abort the open transaction rather than commit it, since it may hold part of a batch
        whose offsets it does not hold (committing would publish outputs that the restart scores again)."""
        self.abandoned = True
        if self.pending.since is None:
            return
        try:
            self.producer.abort_transaction(self.flush_timeout_s)
        except KafkaException as exc:  # the broker's transaction timeout, or our restart's fencing, aborts it
            log.warning("%s: could not abort the open transaction (%s)", self.service, exc)
        self.pending.clear()
