"""The brain's Kafka consumer: anomaly envelopes in, incidents admitted, offsets committed after.

`AnomalyConsumer` reads the anomalies topic in a consumer group and hands every envelope to the
coordinator's ``admit``. Delivery is at least once: an offset is committed only after ``admit``
returned for it (the incident is durably recorded) or, for a message that is not an envelope, after
the dead-letter topic confirmed its copy. Anything read but not finished is read again by whoever
owns the partition next; ``admit`` drops the duplicates by event id (counted).

Ordering and concurrency: one asyncio worker per assigned partition takes its messages in offset order
and awaits ``admit`` for one message at a time, so one container's anomalies (one key, one partition)
are admitted in the order the edge saw them; partitions run concurrently. A message that cannot be
decoded is handed to a background dead-letter task and its partition moves on; the committed offset
of a partition is the lowest offset not yet finished (an admit in flight, a dead-letter copy not yet
confirmed, or a message still queued), so a commit never passes an unfinished message.

Failures: ``admit`` raising (the database is down) is retried with exponential backoff for as long as it
takes, logged and counted, never skipped; a dead-letter copy that cannot be delivered is retried
likewise. Neither blocks the loop that polls Kafka: a partition whose backlog reaches
``max_buffered_per_partition`` is paused (and resumed at half), so the group membership stays alive
while one partition waits on its database.

Rebalancing: on revocation the consumer stops taking new work for those partitions, waits up to
``drain_timeout_ms`` for their in-flight admits and dead-letter copies, commits what finished, and only
then gives the partitions up. What did not finish in time is abandoned uncommitted (the next owner
reads it again). Lost partitions (session expired) are dropped without a commit: the group has moved on.

Threading: confluent-kafka's calls block, so ``consume`` (and the rebalance callbacks librdkafka serves
from inside it), commits and lag queries run in worker threads through `asyncio.to_thread`, one at a
time, from `run`'s loop; the callbacks hop back onto the event loop for the partition state, which is
only ever touched there. The dead-letter producer has its own poller thread.

Lag: ``aerie_consumer_lag{topic,partition}`` is the high watermark minus the group's committed offset
(the low watermark when nothing is committed), refreshed every ``lag_interval_ms`` for the partitions this
consumer owns. The high watermark is the one the broker returned in its last fetch response
(librdkafka's cached value), not a ListOffsets query: Tansu answers ListOffsets with a wrong high
watermark (0..1 on a partition holding dozens of records) while its fetch responses are right. A
watermark below the committed offset (a broker that is wrong) is exported as 0, not as negative lag.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import confluent_kafka
import msgspec
from confluent_kafka import TopicPartition

from aerie.brain.metrics import BrainMetrics
from aerie.proto.envelope import (
    HEADER_TRACEPARENT,
    Anomaly,
    EnvelopeError,
    TraceContext,
    decode_anomaly,
)
from aerie.proto.logs import quiet_logger, trace_scope

__all__ = [
    "DLQ_DETAIL",
    "DLQ_OFFSET",
    "DLQ_PARTITION",
    "DLQ_REASON",
    "DLQ_TOPIC",
    "MISSING_VALUE",
    "Admit",
    "AnomalyConsumer",
    "ConsumerConfig",
    "ConsumerConfigError",
    "ConsumerFailed",
    "ConsumerStats",
    "message_trace",
]

_log = logging.getLogger("aerie.brain.consumer")
# librdkafka repeats each connection failure many times a second while a broker is away.
_LIBRDKAFKA_LOG = quiet_logger("aerie.brain.consumer.librdkafka")

#: Headers added to a dead-lettered message (its own headers are kept before them).
DLQ_REASON: Final = "aerie-dlq-reason"
DLQ_DETAIL: Final = "aerie-dlq-detail"
DLQ_TOPIC: Final = "aerie-dlq-topic"
DLQ_PARTITION: Final = "aerie-dlq-partition"
DLQ_OFFSET: Final = "aerie-dlq-offset"

#: Reason for a message with no value (a tombstone); the other reasons are `EnvelopeError.reason`.
MISSING_VALUE: Final = "missing_value"

_DETAIL_LIMIT: Final = 1000


class ConsumerConfigError(ValueError):
    """Settings the consumer cannot run with."""


class ConsumerFailed(RuntimeError):
    """The consumer cannot go on (librdkafka fatal error, or a bug in a partition worker)."""


class Admit(Protocol):
    """The coordinator's admission call: returns once the incident is durably recorded.

    True: a new incident; False: the event id was admitted before (a duplicate). Raising means nothing
    was recorded and the same message will be offered again.
    """

    async def __call__(self, anomaly: Anomaly, *, trace: TraceContext, received_at_ns: int) -> bool: ...


# Properties the consumer owns: changing them would break the commit-after-admit guarantee, the
# idempotent dead-letter producer, or the callbacks this module relies on.
_RESERVED: Final = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "transactional.id",
        "on_delivery",
        "on_commit",
        "error_cb",
        "stats_cb",
        "logger",
    }
)


class ConsumerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where and how the brain consumes. Every field but ``bootstrap_servers`` has a working default.

    ``librdkafka`` passes further properties (TLS, SASL, client.rack, ...) to both the consumer and the
    dead-letter producer; ``dlq_librdkafka`` to the producer only. Properties this module owns
    (``_RESERVED``) are refused.
    """

    bootstrap_servers: str
    topic: str = "aerie.anomalies"
    dlq_topic: str = "aerie.anomalies.dlq"
    group_id: str = "aerie-brain"
    client_id: str = "aerie-brain"
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    poll_timeout_ms: int = 100
    """How long one ``consume`` call may wait for messages: bounds how quickly `stop` is noticed."""
    batch_size: int = 500
    max_buffered_per_partition: int = 1_000
    """Messages read and not yet finished, per partition, before the partition is paused."""
    commit_interval_ms: int = 500
    lag_interval_ms: int = 5_000
    retry_backoff_ms: int = 100
    retry_backoff_max_ms: int = 10_000
    drain_timeout_ms: int = 30_000
    """How long a revocation or `stop` waits for in-flight admits and dead-letter copies."""
    dlq_message_timeout_ms: int = 30_000
    """How long the producer tries one dead-letter copy before it is produced again."""
    librdkafka: dict[str, str] = msgspec.field(default_factory=dict)
    dlq_librdkafka: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConsumerConfigError("bootstrap_servers is empty")
        if not self.topic or not self.dlq_topic or not self.group_id:
            raise ConsumerConfigError("topic, dlq_topic and group_id must not be empty")
        if self.topic == self.dlq_topic:
            raise ConsumerConfigError(f"the dead-letter topic must differ from the topic ({self.topic!r})")
        for name in (
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "poll_timeout_ms",
            "batch_size",
            "max_buffered_per_partition",
            "commit_interval_ms",
            "lag_interval_ms",
            "retry_backoff_ms",
            "retry_backoff_max_ms",
            "drain_timeout_ms",
            "dlq_message_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ConsumerConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConsumerConfigError("heartbeat_interval_ms must be below session_timeout_ms")
        reserved = sorted((set(self.librdkafka) | set(self.dlq_librdkafka)) & _RESERVED)
        if reserved:
            raise ConsumerConfigError(f"librdkafka properties set by aerie itself: {', '.join(reserved)}")

    def __repr__(self) -> str:
        # The passthrough may carry sasl.password or ssl.key.password: show names only.
        return (
            f"ConsumerConfig(bootstrap_servers={self.bootstrap_servers!r}, topic={self.topic!r}, "
            f"dlq_topic={self.dlq_topic!r}, group_id={self.group_id!r}, "
            f"librdkafka=<{', '.join(sorted(self.librdkafka))}>, "
            f"dlq_librdkafka=<{', '.join(sorted(self.dlq_librdkafka))}>)"
        )

    def consumer_settings(self) -> dict[str, Any]:
        """The consumer's librdkafka properties (without callbacks)."""
        return {
            **self.librdkafka,
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "max.poll.interval.ms": self.max_poll_interval_ms,
        }

    def producer_settings(self) -> dict[str, Any]:
        """The dead-letter producer's librdkafka properties (without callbacks)."""
        return {
            **self.librdkafka,
            **self.dlq_librdkafka,
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": f"{self.client_id}-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": self.dlq_message_timeout_ms,
        }


class ConsumerStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of what the consumer did (`AnomalyConsumer.stats`)."""

    consumed: int
    """Messages read from the topic (a message read again after a rebalance counts again)."""
    admitted: int
    duplicates: int
    dead_lettered: dict[str, int]
    """Copies confirmed by the dead-letter topic, by reason."""
    admit_failures: int
    """``admit`` calls that raised (each was retried)."""
    dlq_failures: int
    """Dead-letter copies that failed (each was produced again)."""
    commits: int
    commit_failures: int
    consume_errors: int
    trace_fallbacks: dict[str, int]
    """Messages whose ``traceparent`` header was missing or bad: by where the trace came from instead
    (``envelope``, ``new``)."""
    revocations: int
    abandoned: int
    """Unfinished messages given up, uncommitted, when a drain ran out of time (read again later)."""
    assigned: list[int]
    paused: list[int]
    committed: dict[int, int]
    """The last offset this consumer committed, by partition (the next offset to read)."""
    buffered: int
    """Messages read and not finished: queued, admits in flight, dead-letter copies in flight."""


class _Partition:
    """One assigned partition's work: queued messages, offsets in flight, and the commit point."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.queue: collections.deque[tuple[confluent_kafka.Message, int]] = collections.deque()
        self.in_flight: set[int] = set()
        self.next_offset: int | None = None
        self.committed: int | None = None
        self.wakeup = asyncio.Event()
        self.closing = False
        self.paused = False
        self.worker: asyncio.Task[None] | None = None
        self.dlq_tasks: set[asyncio.Task[None]] = set()

    def commit_point(self) -> int | None:
        """The lowest offset not finished (everything below it is), or None when nothing was read."""
        unfinished = list(self.in_flight)
        if self.queue:
            unfinished.append(_offset(self.queue[0][0]))
        return min(unfinished) if unfinished else self.next_offset

    @property
    def backlog(self) -> int:
        return len(self.queue) + len(self.in_flight)


_T = TypeVar("_T")

#: Kafka message headers as confluent-kafka types them.
Headers = Mapping[str, bytes | str | None] | Sequence[tuple[str, bytes | str | None]]


def message_trace(headers: Headers | None, anomaly: Anomaly) -> tuple[TraceContext, str]:
    """The trace a message belongs to, and where it came from (``header``, ``envelope``, ``new``).

    The ``traceparent`` header wins (the last one, if repeated); the envelope's own field is the
    fallback; when neither parses, a new trace starts so the incident is still traceable from here on.
    The context is returned as received: its span is the edge's, the parent of the brain's spans.
    """
    header = None
    for name, value in _header_list(headers):
        if name == HEADER_TRACEPARENT and value is not None:
            header = value
    if header is not None:
        try:
            return TraceContext.parse(header), "header"
        except EnvelopeError:
            pass
    try:
        return anomaly.trace, "envelope"
    except EnvelopeError:
        return TraceContext.new(), "new"


class AnomalyConsumer:
    """Consumes anomaly envelopes and admits them, committing only what was admitted.

    See the module docstring for the guarantees. `run` until `stop`; `stats` at any time.
    """

    def __init__(self, config: ConsumerConfig, admit: Admit, *, metrics: BrainMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else BrainMetrics()
        self._admit = admit
        self._topic = config.topic
        self._partitions: dict[int, _Partition] = {}
        self._committed: dict[int, int] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._dead_lettered: collections.Counter[str] = collections.Counter()
        self._fallbacks: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._started = False
        self._finished = asyncio.Event()
        self._failure: BaseException | None = None
        self._polling: asyncio.Future[list[confluent_kafka.Message]] | None = None
        self._producer_stop = threading.Event()
        self._producer_thread: threading.Thread | None = None
        try:
            self._consumer = confluent_kafka.Consumer(
                {**config.consumer_settings(), "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
            )
            self._producer = confluent_kafka.Producer(
                {**config.producer_settings(), "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
            )
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConsumerConfigError(f"librdkafka refused the settings: {_describe(exc)}") from None

    # --- public ---------------------------------------------------------------------------------------

    @property
    def stats(self) -> ConsumerStats:
        c = self._counts
        return ConsumerStats(
            consumed=c["consumed"],
            admitted=c["admitted"],
            duplicates=c["duplicates"],
            dead_lettered=dict(self._dead_lettered),
            admit_failures=c["admit_failures"],
            dlq_failures=c["dlq_failures"],
            commits=c["commits"],
            commit_failures=c["commit_failures"],
            consume_errors=c["consume_errors"],
            trace_fallbacks=dict(self._fallbacks),
            revocations=c["revocations"],
            abandoned=c["abandoned"],
            assigned=sorted(self._partitions),
            paused=sorted(p for p, s in self._partitions.items() if s.paused),
            committed=dict(self._committed),
            buffered=sum(s.backlog for s in self._partitions.values()),
        )

    def _fetch(self, n: int, timeout: float) -> list[confluent_kafka.Message]:
        """Up to ``n`` messages: wait (up to ``timeout``) only for the first, then take what is there.

        ``consume(n, timeout)`` alone waits the whole timeout unless ``n`` messages arrive, which
        would add up to ``timeout`` to every anomaly's latency when traffic is light."""
        first: list[confluent_kafka.Message] = self._consumer.consume(1, timeout)
        if not first or n == 1:
            return first
        rest: list[confluent_kafka.Message] = self._consumer.consume(n - 1, 0)
        return first + rest

    async def run(self) -> None:
        """Consume until `stop` is called; then finish in-flight work, commit, and close.

        Raises `ConsumerFailed` when the consumer cannot go on (it has shut down cleanly first).
        """
        if self._started:
            raise RuntimeError("AnomalyConsumer.run can be called only once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._producer_thread = threading.Thread(
            target=self._serve_producer, name="aerie-brain-dlq-poller", daemon=True
        )
        self._producer_thread.start()
        try:
            if not self._stopping:
                self._consumer.subscribe(
                    [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
                )
                await self._consume_loop()
        finally:
            await self._shutdown()
        if self._failure is not None:
            raise ConsumerFailed(str(self._failure)) from self._failure

    async def stop(self) -> None:
        """Stop polling, finish in-flight admits (up to ``drain_timeout_ms``), commit, and close.

        Returns once `run` has shut down; safe to call more than once, and before `run`.
        """
        self._stopping = True
        if not self._started:
            self._started = True
            await asyncio.to_thread(self._close_clients)
            self._finished.set()
            return
        await self._finished.wait()

    # --- the poll loop (event loop side) --------------------------------------------------------------

    async def _consume_loop(self) -> None:
        cfg = self.config
        timeout = cfg.poll_timeout_ms / 1000
        next_commit = time.monotonic() + cfg.commit_interval_ms / 1000
        next_lag = time.monotonic() + min(cfg.lag_interval_ms, 1_000) / 1000
        while not self._stopping:
            self._flow_control()
            # Shielded: a cancelled run() must not close the consumer under a consume() still running
            # in its thread; `_shutdown` waits for it (what it returns is dropped, uncommitted).
            self._polling = asyncio.ensure_future(asyncio.to_thread(self._fetch, cfg.batch_size, timeout))
            messages = await asyncio.shield(self._polling)
            received_at_ns = time.time_ns()
            for message in messages:
                self._dispatch(message, received_at_ns)
            now = time.monotonic()
            if now >= next_commit:
                await self._commit(list(self._partitions.values()))
                next_commit = now + cfg.commit_interval_ms / 1000
            if now >= next_lag:
                await self._refresh_lag()
                next_lag = now + cfg.lag_interval_ms / 1000

    def _dispatch(self, message: confluent_kafka.Message, received_at_ns: int) -> None:
        error = message.error()
        if error is not None:
            self._counts["consume_errors"] += 1
            self.metrics.consumer_errors.labels(kind="consume").inc()
            if error.fatal():
                self._fail(ConsumerFailed(f"fatal consumer error: {error.name()}: {error.str()}"))
            else:
                _log.warning("consume error", extra={"error": f"{error.name()}: {error.str()}"})
            return
        state = self._partitions.get(message.partition() or 0)
        if state is None or state.closing:
            # A partition given up meanwhile: its next owner reads this message again (not committed).
            _log.debug("message from a partition no longer owned", extra={"partition": message.partition()})
            return
        self._counts["consumed"] += 1
        self.metrics.consumed.inc()
        state.queue.append((message, received_at_ns))
        state.next_offset = _offset(message) + 1
        state.wakeup.set()

    def _flow_control(self) -> None:
        cap = self.config.max_buffered_per_partition
        for state in self._partitions.values():
            if not state.paused and state.backlog >= cap:
                self._consumer.pause([TopicPartition(self._topic, state.partition)])
                state.paused = True
                _log.info("partition paused", extra={"partition": state.partition, "backlog": state.backlog})
            elif state.paused and state.backlog <= cap // 2:
                self._consumer.resume([TopicPartition(self._topic, state.partition)])
                state.paused = False

    # --- per-partition work ---------------------------------------------------------------------------

    async def _work(self, state: _Partition) -> None:
        while True:
            while not state.queue:
                if state.closing:
                    return
                state.wakeup.clear()
                await state.wakeup.wait()
            if state.closing:
                return
            message, received_at_ns = state.queue.popleft()
            offset = _offset(message)
            state.in_flight.add(offset)
            await self._handle(state, message, offset, received_at_ns)

    async def _handle(
        self, state: _Partition, message: confluent_kafka.Message, offset: int, received_at_ns: int
    ) -> None:
        value = message.value()
        if value is None:
            self._dead_letter(state, message, offset, MISSING_VALUE, "the message has no value")
            return
        try:
            anomaly = decode_anomaly(value)
        except EnvelopeError as exc:
            self._dead_letter(state, message, offset, exc.reason, exc.detail)
            return
        trace, source = message_trace(message.headers(), anomaly)
        if source != "header":
            self._fallbacks[source] += 1
            level = logging.WARNING if source == "new" else logging.INFO
            _log.log(
                level,
                "traceparent header missing or bad; trace taken from the %s",
                "envelope" if source == "envelope" else "a new trace (the envelope's is bad too)",
                extra={"trace_id": trace.trace_id, "event_id": anomaly.event_id, "offset": offset},
            )
        attempt = 0
        while True:
            try:
                with trace_scope(trace.trace_id):
                    new = await self._admit(anomaly, trace=trace, received_at_ns=received_at_ns)
                break
            except Exception as exc:
                attempt += 1
                self._counts["admit_failures"] += 1
                self.metrics.consumer_errors.labels(kind="admit").inc()
                delay = self._backoff(attempt)
                _log.warning(
                    "admit failed; retrying the same message",
                    exc_info=attempt == 1,
                    extra={
                        "trace_id": trace.trace_id,
                        "event_id": anomaly.event_id,
                        "partition": state.partition,
                        "offset": offset,
                        "attempt": attempt,
                        "retry_in_s": delay,
                        "error": repr(exc),
                    },
                )
                await asyncio.sleep(delay)
        if new:
            self._counts["admitted"] += 1
            self.metrics.admitted.inc()
        else:
            self._counts["duplicates"] += 1
            self.metrics.duplicates.inc()
        state.in_flight.discard(offset)

    def _backoff(self, attempt: int) -> float:
        cfg = self.config
        return min(cfg.retry_backoff_max_ms, cfg.retry_backoff_ms << min(attempt - 1, 30)) / 1000

    # --- dead letters ---------------------------------------------------------------------------------

    def _dead_letter(
        self, state: _Partition, message: confluent_kafka.Message, offset: int, reason: str, detail: str
    ) -> None:
        """Copy the message to the dead-letter topic in the background; the partition moves on."""
        _log.warning(
            "message is not an anomaly envelope; dead-lettering it",
            extra={"reason": reason, "detail": detail[:200], "partition": state.partition, "offset": offset},
        )
        task = asyncio.create_task(self._send_dead_letter(state, message, offset, reason, detail))
        state.dlq_tasks.add(task)
        task.add_done_callback(state.dlq_tasks.discard)

    async def _send_dead_letter(
        self, state: _Partition, message: confluent_kafka.Message, offset: int, reason: str, detail: str
    ) -> None:
        headers = _header_list(message.headers())
        headers += [
            (DLQ_REASON, reason.encode()),
            (DLQ_DETAIL, detail[:_DETAIL_LIMIT].encode("utf-8", "replace")),
            (DLQ_TOPIC, self._topic.encode()),
            (DLQ_PARTITION, str(state.partition).encode()),
            (DLQ_OFFSET, str(offset).encode()),
        ]
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            done: asyncio.Future[str | None] = loop.create_future()
            try:
                self._producer.produce(
                    self.config.dlq_topic,
                    message.value(),
                    message.key(),
                    headers=headers,
                    on_delivery=functools.partial(self._on_dlq_delivery, loop, done),
                )
                error = await done
            except BufferError:
                error = "the producer's local queue is full"
            except confluent_kafka.KafkaException as exc:
                error = _describe(exc)
            if error is None:
                break
            attempt += 1
            self._counts["dlq_failures"] += 1
            self.metrics.consumer_errors.labels(kind="dead_letter").inc()
            delay = self._backoff(attempt)
            _log.warning(
                "dead-letter copy failed; producing it again",
                extra={"error": error, "partition": state.partition, "offset": offset, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
        self._dead_lettered[reason] += 1
        self.metrics.dead_lettered.labels(reason=reason).inc()
        state.in_flight.discard(offset)

    @staticmethod
    def _on_dlq_delivery(
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[str | None],
        error: confluent_kafka.KafkaError | None,
        _message: confluent_kafka.Message,
    ) -> None:
        # Producer poller thread (or flush in a worker thread): hand the outcome to the event loop.
        outcome = None if error is None else f"{error.name()}: {error.str()}"
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, done, outcome)

    def _serve_producer(self) -> None:
        while not self._producer_stop.is_set():
            self._producer.poll(0.1)

    # --- rebalancing (librdkafka calls these from inside consume, in a worker thread) -----------------

    def _on_assign(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.topic == self._topic]
        self._on_loop(self._assigned(mine))

    def _on_revoke(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        # Not called for lost partitions: `_on_lost` is (subscribe() is given both).
        mine = [tp.partition for tp in partitions if tp.topic == self._topic]
        offsets, paused = self._on_loop(self._release(mine, lost=False))
        if offsets:
            results = self._commit_offsets(offsets)
            self._on_loop(self._recorded(results))
        if paused:
            # librdkafka may keep the pause flag across assignments; a new state starts unpaused.
            consumer.resume(paused)

    def _on_lost(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.topic == self._topic]
        _, paused = self._on_loop(self._release(mine, lost=True))
        if paused:
            consumer.resume(paused)

    def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        timeout = self.config.drain_timeout_ms / 1000 + 30
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition in self._partitions:
                continue
            state = _Partition(partition)
            state.worker = asyncio.create_task(self._work(state), name=f"aerie-consume-{partition}")
            state.worker.add_done_callback(self._worker_done)
            self._partitions[partition] = state
        _log.info("partitions assigned", extra={"topic": self._topic, "partitions": partitions})

    async def _release(
        self, partitions: list[int], *, lost: bool
    ) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """Stop work on these partitions and forget them; the offsets to commit (none when lost)."""
        states = [self._partitions[p] for p in partitions if p in self._partitions]
        if not states:
            return [], []
        if lost:
            _log.warning("partitions lost (no commit)", extra={"partitions": partitions})
            await self._abandon(states)
        else:
            self._counts["revocations"] += 1
            _log.info("partitions revoked; draining", extra={"partitions": partitions})
            await self._drain(states)
        offsets = [] if lost else self._commit_offsets_for(states)
        paused = [TopicPartition(self._topic, s.partition) for s in states if s.paused]
        for state in states:
            del self._partitions[state.partition]
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(self._topic, str(state.partition))
        return offsets, paused

    async def _drain(self, states: list[_Partition]) -> None:
        """Let in-flight admits and dead-letter copies finish (up to the drain timeout); queued
        messages are not started. What is still running at the timeout is abandoned, uncommitted."""
        tasks: list[asyncio.Task[None]] = []
        for state in states:
            state.closing = True
            state.wakeup.set()
            if state.worker is not None:
                tasks.append(state.worker)
            tasks.extend(state.dlq_tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.config.drain_timeout_ms / 1000)
        if late:
            _log.warning(
                "drain timed out; unfinished messages are left uncommitted for the next owner",
                extra={"tasks": len(late)},
            )
            await self._abandon(states)

    async def _abandon(self, states: list[_Partition]) -> None:
        tasks: list[asyncio.Task[None]] = []
        for state in states:
            state.closing = True
            self._counts["abandoned"] += len(state.in_flight)
            if state.worker is not None and not state.worker.done():
                tasks.append(state.worker)
            tasks.extend(t for t in state.dlq_tasks if not t.done())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._fail(error)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            _log.error("consumer failed; shutting down", exc_info=exc)
            self._failure = exc
        self._stopping = True

    # --- commits --------------------------------------------------------------------------------------

    def _commit_offsets_for(self, states: list[_Partition]) -> list[TopicPartition]:
        offsets = []
        for state in states:
            point = state.commit_point()
            if point is not None and (state.committed is None or point > state.committed):
                offsets.append(TopicPartition(self._topic, state.partition, point))
        return offsets

    async def _commit(self, states: list[_Partition]) -> None:
        offsets = self._commit_offsets_for(states)
        if offsets:
            results = await asyncio.to_thread(self._commit_offsets, offsets)
            await self._recorded(results)

    def _commit_offsets(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """A synchronous commit (any thread); what the broker accepted, per partition."""
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            _log.warning("commit failed", extra={"error": _describe(exc)})
            return [TopicPartition(tp.topic, tp.partition, confluent_kafka.OFFSET_INVALID) for tp in offsets]
        return list(results or [])

    async def _recorded(self, results: list[TopicPartition]) -> None:
        for tp in results:
            if tp.error is not None or tp.offset < 0:
                self._counts["commit_failures"] += 1
                self.metrics.consumer_errors.labels(kind="commit").inc()
                if tp.error is not None:
                    _log.warning(
                        "commit refused",
                        extra={"partition": tp.partition, "error": str(tp.error)},
                    )
                continue
            self._counts["commits"] += 1
            self._committed[tp.partition] = tp.offset
            state = self._partitions.get(tp.partition)
            if state is not None:
                state.committed = tp.offset

    # --- lag ------------------------------------------------------------------------------------------

    async def _refresh_lag(self) -> None:
        partitions = [TopicPartition(self._topic, p) for p in self._partitions]
        if not partitions:
            return
        try:
            lags = await asyncio.to_thread(self._query_lag, partitions)
        except confluent_kafka.KafkaException as exc:
            _log.debug("lag not refreshed", extra={"error": _describe(exc)})
            return
        for partition, lag in lags.items():
            if partition in self._partitions:
                self.metrics.consumer_lag.labels(topic=self._topic, partition=str(partition)).set(lag)

    def _query_lag(self, partitions: list[TopicPartition]) -> dict[int, int]:
        committed = {tp.partition: tp.offset for tp in self._consumer.committed(partitions, timeout=2.0)}
        lags = {}
        for tp in partitions:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue  # nothing fetched yet: the broker has not said
            base = committed.get(tp.partition, -1)
            lags[tp.partition] = max(0, high - (base if base >= 0 else max(low, 0)))
        return lags

    # --- shutdown -------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        try:
            if self._polling is not None and not self._polling.done():
                await asyncio.wait([self._polling])
            states = list(self._partitions.values())
            await self._drain(states)
            await self._commit(states)
            for state in states:
                del self._partitions[state.partition]
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(self._topic, str(state.partition))
            await asyncio.to_thread(self._close_clients)
        finally:
            self._finished.set()

    def _close_clients(self) -> None:
        # close() runs the revoke callback, which finds nothing left to drain or commit.
        self._consumer.close()
        self._producer_stop.set()
        if self._producer_thread is not None:
            self._producer_thread.join()
        left = self._producer.flush(5.0)
        if left:
            _log.warning(
                "dead-letter copies not confirmed at close (their offsets were not committed)",
                extra={"records": left},
            )

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.fatal():
            _log.error("librdkafka fatal error", extra={"error": f"{error.name()}: {error.str()}"})
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(
                        self._fail, ConsumerFailed(f"{error.name()}: {error.str()}")
                    )
        else:
            _log.debug("librdkafka: %s: %s", error.name(), error.str())

    def __repr__(self) -> str:
        return (
            f"AnomalyConsumer(topic={self._topic!r}, group={self.config.group_id!r}, "
            f"assigned={sorted(self._partitions)}, stopping={self._stopping})"
        )


def _header_list(headers: Headers | None) -> list[tuple[str, bytes | str | None]]:
    """Kafka headers as a list of pairs (confluent-kafka may hand them over as a dict)."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _settle(done: asyncio.Future[str | None], outcome: str | None) -> None:
    if not done.done():
        done.set_result(outcome)


def _offset(message: confluent_kafka.Message) -> int:
    offset = message.offset()
    assert offset is not None, "a consumed message always has an offset"
    return offset


def _describe(exc: BaseException) -> str:
    if exc.args and isinstance(exc.args[0], confluent_kafka.KafkaError):
        error: confluent_kafka.KafkaError = exc.args[0]
        return f"{error.name()}: {error.str()}"
    return str(exc)
