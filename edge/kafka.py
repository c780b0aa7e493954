"""The edge's Kafka publisher: hands anomaly records to an idempotent confluent-kafka producer.

The publisher is generic over records (value, key, headers); what goes in them (the anomaly envelope,
``node/container`` key, schema-version and ``traceparent`` headers) is `aerie.proto.envelope`'s job.

Delivery semantics: at least once. The producer is idempotent (``enable.idempotence``, ``acks=all``),
so librdkafka's own retries never duplicate or reorder within a partition; what can still duplicate is
a record handed back to the caller (``on_failed``) after the broker in fact stored it (a timeout or a
purge of in-flight requests), and replayed later from the spool. Consumers de-duplicate by the
envelope's stable event id.

Every record ends in exactly one of three ways:

* ``publish`` raises (the record was never accepted): `PublishBackpressure` when the bounded local
  queue is full (the caller spools or sheds it, and counts that), `RecordRejected` when the record can
  never be produced (too large), `PublisherFailed` / `PublisherClosed` when the producer cannot take
  records at all;
* its delivery report says delivered (counted in `PublishStats.delivered`) and, when an
  ``on_delivered(token)`` hook is set, the ``token`` given to `publish` is handed to it;
* its delivery report says failed: counted under a stable reason label (`FailureReason`) and handed to
  the ``on_failed(record, reason)`` hook (``record.token`` is the ``token`` given to `publish`), so the
  edge can put it into its disk spool, or resend it.

The ``token`` is opaque to the publisher: it lets a caller that keeps its own ledger (the spool
forwarder keys records by spool sequence number) match each outcome to the record it published.

Threading: `start` runs one background *poller thread* that serves librdkafka's callbacks (delivery
reports, errors, statistics, logs). ``on_failed`` and ``on_delivered`` are therefore called on that
thread (and, during `flush` / `close`, on the caller's thread): they must be thread-safe and quick
(append to a queue or call ``loop.call_soon_threadsafe``); an exception either raises is logged and
counted in `PublishStats.hook_errors`, never propagated into librdkafka. `publish` never blocks and is
safe to call from an asyncio event loop.

Broker availability (`KafkaPublisher.broker_up`) comes from librdkafka's statistics (any broker
connection in state ``UP``), from error callbacks (``_ALL_BROKERS_DOWN`` marks it down at once) and
from delivery reports (a delivered record proves it up). Readiness reports it; nothing in the
publisher waits for it, because librdkafka keeps records queued and reconnects on its own until
``message.timeout.ms``. A broker that comes back without the producer's state (restarted without its
data) is handled by building a new producer (see `KafkaPublisher`). When requests were in flight to it
when it went away, librdkafka cannot retry them without risking duplicates and puts the producer in a
fatal state instead: `KafkaPublisher.failed_fatally` says so, `publish` raises `PublisherFailed`, the
outstanding records come back through ``on_failed``, and only a new publisher can go on (the spool
forwarder, `aerie.edge.forwarder`, builds one and resends).

Exceptions: `PublishError` and its subclasses, and `KafkaConfigError`, all defined with the edge's
other exceptions in `aerie.edge.errors` (the tree is drawn there) and re-exported here. No
confluent_kafka exception escapes this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import confluent_kafka
import msgspec

from aerie.edge.errors import (
    KafkaConfigError,
    PublishBackpressure,
    PublisherClosed,
    PublisherFailed,
    PublishError,
    RecordRejected,
)
from aerie.proto.logs import quiet_logger

__all__ = [
    "FAILURE_REASONS",
    "RETRIABLE_REASONS",
    "DeliveredHook",
    "FailedHook",
    "FailureReason",
    "KafkaConfig",
    "KafkaConfigError",
    "KafkaPublisher",
    "OutboundRecord",
    "PublishBackpressure",
    "PublishError",
    "PublishStats",
    "PublisherClosed",
    "PublisherFailed",
    "RecordRejected",
    "failure_reason",
]

_log = logging.getLogger("aerie.edge.kafka")
# librdkafka logs every failed reconnect, many per second while a broker is away: once a minute is enough.
_LIBRDKAFKA_LOG = quiet_logger("aerie.edge.kafka.librdkafka")


# --- failure reasons --------------------------------------------------------------------------------

FailureReason = Literal[
    "timeout",
    "broker_unreachable",
    "too_large",
    "unknown_topic",
    "not_authorized",
    "rejected_by_broker",
    "purged",
    "fatal",
    "other",
]

FAILURE_REASONS: Final[frozenset[str]] = frozenset(FailureReason.__args__)  # type: ignore[attr-defined]

#: Reasons after which sending the same record again later can succeed (spool it); the others mean the
#: record or the settings are wrong (dead-letter it).
RETRIABLE_REASONS: Final[frozenset[str]] = frozenset(
    {"timeout", "broker_unreachable", "unknown_topic", "purged", "fatal", "other"}
)

_E = confluent_kafka.KafkaError
_REASON_BY_CODE: Final[Mapping[int, FailureReason]] = {
    _E._MSG_TIMED_OUT: "timeout",
    _E._TIMED_OUT: "timeout",
    _E.REQUEST_TIMED_OUT: "timeout",
    _E._TRANSPORT: "broker_unreachable",
    _E._ALL_BROKERS_DOWN: "broker_unreachable",
    _E._RESOLVE: "broker_unreachable",
    _E.MSG_SIZE_TOO_LARGE: "too_large",
    _E.RECORD_LIST_TOO_LARGE: "too_large",
    _E.UNKNOWN_TOPIC_OR_PART: "unknown_topic",
    _E._UNKNOWN_TOPIC: "unknown_topic",
    _E._UNKNOWN_PARTITION: "unknown_topic",
    _E.TOPIC_AUTHORIZATION_FAILED: "not_authorized",
    _E.CLUSTER_AUTHORIZATION_FAILED: "not_authorized",
    _E._AUTHENTICATION: "not_authorized",
    _E.INVALID_RECORD: "rejected_by_broker",
    _E.INVALID_MSG: "rejected_by_broker",
    _E.POLICY_VIOLATION: "rejected_by_broker",
    _E._PURGE_QUEUE: "purged",
    _E._PURGE_INFLIGHT: "purged",
    _E._FATAL: "fatal",
    _E.OUT_OF_ORDER_SEQUENCE_NUMBER: "fatal",
    _E.INVALID_PRODUCER_EPOCH: "fatal",
}


def failure_reason(error: confluent_kafka.KafkaError) -> FailureReason:
    """A KafkaError → a stable, low-cardinality label for counters and the spool."""
    if error.fatal():
        return "fatal"
    return _REASON_BY_CODE.get(error.code(), "other")


# --- configuration ----------------------------------------------------------------------------------

Compression = Literal["zstd", "lz4", "snappy", "gzip", "none"]

# Properties the publisher owns: overriding them would break idempotence, the bounded queue, or the
# callbacks this module relies on.
_RESERVED: Final = frozenset(
    {
        "bootstrap.servers",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "max.in.flight.requests.per.connection",
        "max.in.flight",
        "retries",
        "message.send.max.retries",
        "compression.type",
        "compression.codec",
        "linger.ms",
        "queue.buffering.max.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "statistics.interval.ms",
        "on_delivery",
        "delivery.report.only.error",
        "error_cb",
        "stats_cb",
        "logger",
        "transactional.id",
    }
)


class KafkaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where and how the edge publishes. Every field but ``bootstrap_servers`` has a working default.

    ``compression`` defaults to zstd: on anomaly envelopes (~0.9 kB of JSON) it sent ~255 bytes per
    record against ~410 for lz4, for ~4 µs more CPU per record, and Tansu and Kafka both accept it.
    ``librdkafka`` passes further properties through (TLS, SASL, client.rack, ...); properties this
    module owns (``_RESERVED``) are refused.
    """

    bootstrap_servers: str
    topic: str = "aerie.anomalies"
    client_id: str = "aerie-edge"
    compression: Compression = "zstd"
    linger_ms: int = 5
    queue_max_messages: int = 100_000
    queue_max_kbytes: int = 32 * 1024
    message_timeout_ms: int = 300_000
    """How long librdkafka keeps retrying one record before it fails with ``timeout`` (0 = forever)."""
    reconnect_backoff_max_ms: int = 2_000
    stats_interval_ms: int = 1_000
    """How often broker availability is refreshed from librdkafka's statistics."""
    librdkafka: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise KafkaConfigError("bootstrap_servers is empty")
        if not self.topic:
            raise KafkaConfigError("topic is empty")
        for name in ("linger_ms", "message_timeout_ms"):
            if getattr(self, name) < 0:
                raise KafkaConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "queue_max_messages",
            "queue_max_kbytes",
            "reconnect_backoff_max_ms",
            "stats_interval_ms",
        ):
            if getattr(self, name) < 1:
                raise KafkaConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        reserved = sorted(set(self.librdkafka) & _RESERVED)
        if reserved:
            raise KafkaConfigError(f"librdkafka properties set by aerie itself: {', '.join(reserved)}")

    def __repr__(self) -> str:
        # librdkafka passthrough may carry sasl.password or ssl.key.password: show names only.
        return (
            f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, topic={self.topic!r}, "
            f"compression={self.compression!r}, librdkafka=<{', '.join(sorted(self.librdkafka))}>)"
        )

    def producer_settings(self) -> dict[str, Any]:
        """The librdkafka properties (without callbacks) this configuration stands for."""
        return {
            **self.librdkafka,
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "queue.buffering.max.messages": self.queue_max_messages,
            "queue.buffering.max.kbytes": self.queue_max_kbytes,
            "message.timeout.ms": self.message_timeout_ms,
            "reconnect.backoff.max.ms": self.reconnect_backoff_max_ms,
            "statistics.interval.ms": self.stats_interval_ms,
        }


# --- records and counters ---------------------------------------------------------------------------


class OutboundRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A record as `publish` took it, handed back by ``on_failed`` to be spooled and replayed."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    token: object = None
    """The caller's ``token`` given to `publish` (not sent to Kafka)."""


FailedHook = Callable[[OutboundRecord, str], None]
DeliveredHook = Callable[[object], None]


class PublishStats:
    """Accepted / delivered / failed-by-reason / backpressure counts. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.delivered = 0
        self.backpressure = 0
        self.failed: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.hook_errors = 0
        self.rebuilds = 0

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def _count(self, counter: Counter[str], reason: str) -> None:
        with self._lock:
            counter[reason] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "delivered": self.delivered,
                "backpressure": self.backpressure,
                "failed": dict(self.failed),
                "rejected": dict(self.rejected),
                "hook_errors": self.hook_errors,
                "rebuilds": self.rebuilds,
            }

    def __repr__(self) -> str:
        return f"PublishStats({self.snapshot()!r})"


# --- the publisher ----------------------------------------------------------------------------------


class KafkaPublisher:
    """An idempotent, compressing, bounded producer for one topic. See the module docstring.

    Use as a context manager, or call `start` and `close` yourself.

    Self-healing: when the broker has lost the idempotent producer's state (a broker that restarted
    without its data, as a memory-only Tansu does), librdkafka answers ``UNKNOWN_PRODUCER_ID`` by
    bumping the epoch locally and retrying, which such a broker refuses forever: records would sit
    until ``message.timeout.ms`` and every later one would too. The publisher notices the epoch
    climbing (`_STUCK_EPOCH_BUMPS` bumps with no delivery in between), builds a new librdkafka
    producer (a new producer id), moves every queued and in-flight record into it, and counts it in
    `PublishStats.rebuilds`. A record in flight during the move may arrive twice (at least once);
    order within a key can interleave with records published during the move.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        on_failed: FailedHook | None = None,
        on_delivered: DeliveredHook | None = None,
    ) -> None:
        self.config = config
        self.stats = PublishStats()
        self._on_failed = on_failed
        self._on_delivered = on_delivered
        self._topic = config.topic
        self._state_lock = threading.Lock()
        # Held around produce() and the swap of producers, so no record lands in a retired producer.
        self._produce_lock = threading.Lock()
        self._broker_up = False
        self._last_error: str | None = None
        self._fatal: str | None = None
        self._closed = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._rebuild_wanted = False
        self._moving = False
        self._retiring: confluent_kafka.Producer | None = None
        self._epoch_base: int | None = None
        self._delivered_at_base = 0
        self._producer = self._new_producer()

    def _new_producer(self) -> confluent_kafka.Producer:
        settings = self.config.producer_settings()
        settings.update({"error_cb": self._on_error, "stats_cb": self._on_stats, "logger": _LIBRDKAFKA_LOG})
        try:
            return confluent_kafka.Producer(settings)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise KafkaConfigError(f"librdkafka refused the settings: {_describe(exc)}") from None

    # lifecycle

    def start(self) -> None:
        """Start the poller thread (idempotent)."""
        if self._poller is not None or self._closed:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="aerie-kafka-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            # poll() returns early whenever a callback is served, so 0.1 s bounds only the shutdown
            # latency, not the delivery-report latency.
            if not self._serve(self._producer.poll, 0.1):
                self._stop.wait(0.1)  # no busy loop if it keeps raising
            if self._rebuild_wanted:
                self._rebuild()

    def _rebuild(self) -> None:
        """Replace the producer with a new one (new producer id) and move the old one's records over."""
        self._rebuild_wanted = False
        with self._produce_lock:
            old, self._producer = self._producer, self._new_producer()
            self._retiring = old
            self._epoch_base = None
        _log.warning("broker lost the idempotent producer's state; rebuilt the Kafka producer")
        self.stats._add("rebuilds")
        # Purged records come back as delivery reports on this thread; _on_delivery re-produces them
        # into the new producer while _moving is set.
        self._moving = True
        try:
            old.purge(in_queue=True, in_flight=True, blocking=True)
            self._serve(old.flush, 5.0)
        finally:
            self._moving = False
            self._retiring = None

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for outstanding records; return how many are still outstanding.

        Delivery reports served meanwhile may call ``on_failed`` on this thread.
        """
        deadline = time.monotonic() + timeout
        while True:
            # Short slices: a rebuild may swap the producer while we wait.
            self._serve(self._producer.flush, max(0.0, min(0.1, deadline - time.monotonic())))
            left = self.outstanding()
            if (left == 0 and not self._rebuild_wanted) or time.monotonic() >= deadline:
                return left

    def close(self, timeout: float = 10.0) -> int:
        """Flush for up to ``timeout`` seconds, then hand every record still outstanding to ``on_failed``
        with reason ``purged``, and stop. Returns how many were purged.

        A purged record that was already in flight may have been stored by the broker too: at least
        once, de-duplicated downstream. Safe to call more than once.
        """
        if self._closed:
            return 0
        self._closed = True
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        left = self.flush(timeout)
        if left:
            self._producer.purge(in_queue=True, in_flight=True, blocking=True)
            # Purged records come back as delivery reports; serve them now, on this thread.
            self._serve(self._producer.flush, 1.0)
        return left

    def _serve(self, call: Callable[[float], object], timeout: float) -> bool:
        """``poll`` or ``flush`` the producer; False when it raised.

        confluent-kafka raises a fatal producer error from poll/flush instead of passing it to
        ``error_cb`` (and re-raises what a callback raised): recorded here, so that it cannot kill
        the poller thread and `failed_fatally` / `PublisherFailed` report it.
        """
        try:
            call(timeout)
        except confluent_kafka.KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.fatal():
                self._set_fatal(error)
            else:
                _log.error("librdkafka raised while serving callbacks: %s", _describe(exc))
            return False
        except Exception:
            _log.exception("a librdkafka callback raised")
            return False
        return True

    def __enter__(self) -> KafkaPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the hot path

    def publish(
        self,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        token: object = None,
    ) -> None:
        """Queue one record; never blocks. Its outcome arrives later (``on_delivered(token)``, or
        ``on_failed`` with ``record.token``); ``token`` is opaque here and is not sent.

        Raises `PublishBackpressure` (queue full; nothing was queued), `RecordRejected` (this record can
        never be produced), `PublisherFailed` (fatal producer state), `PublisherClosed`.
        """
        if self._closed:
            raise PublisherClosed("the publisher is closed")
        if self._fatal is not None:
            raise PublisherFailed(self._fatal)
        try:
            with self._produce_lock:
                self._produce(value, key, tuple(headers), token)
        except BufferError:
            self.stats._add("backpressure")
            raise PublishBackpressure(
                f"local queue full ({self.outstanding()} records outstanding)"
            ) from None
        except confluent_kafka.KafkaException as exc:
            error = _error_of(exc)
            # A producer already in a fatal state refuses with a plain ``_FATAL`` (not flagged fatal).
            if error is not None and (error.fatal() or error.code() == _E._FATAL):
                self._set_fatal(error)
                raise PublisherFailed(self._fatal or "fatal") from None
            reason = failure_reason(error) if error is not None else "other"
            self.stats._count(self.stats.rejected, reason)
            raise RecordRejected(reason, _describe(exc)) from None
        except (TypeError, ValueError) as exc:
            self.stats._count(self.stats.rejected, "invalid")
            raise RecordRejected("invalid", str(exc)) from None
        self.stats._add("accepted")

    def _produce(
        self, value: bytes, key: bytes | None, headers: tuple[tuple[str, bytes], ...], token: object
    ) -> None:
        # Delivery reports do not carry headers (confluent-kafka-python #574): bind them (and the
        # caller's token) to the record's own callback so a failed record can be handed back whole.
        self._producer.produce(
            self._topic,
            value,
            key,
            headers=list(headers),
            on_delivery=lambda error, message: self._on_delivery(error, message, headers, token),
        )

    # state for readiness and metrics

    @property
    def broker_up(self) -> bool:
        """Whether a broker connection is up now (see the module docstring for where it comes from)."""
        return self._broker_up

    @property
    def failed_fatally(self) -> str | None:
        """The fatal error, when the producer is in a fatal state (then only a new publisher helps)."""
        return self._fatal

    @property
    def last_error(self) -> str | None:
        """The last client-level error librdkafka reported (for health output), or None."""
        return self._last_error

    def outstanding(self) -> int:
        """Records queued or in flight, not yet reported (a retiring producer's included)."""
        retiring = self._retiring
        return len(self._producer) + (len(retiring) if retiring is not None else 0)

    # callbacks (poller thread, or the caller's thread during flush/close)

    def _on_delivery(
        self,
        error: confluent_kafka.KafkaError | None,
        message: confluent_kafka.Message,
        headers: tuple[tuple[str, bytes], ...],
        token: object,
    ) -> None:
        if error is None:
            self._broker_up = True
            self.stats._add("delivered")
            if self._on_delivered is not None:
                try:
                    self._on_delivered(token)
                except Exception:
                    self.stats._add("hook_errors")
                    _log.exception("on_delivered hook raised")
            return
        value = message.value()
        record = OutboundRecord(
            value=value if isinstance(value, bytes) else (value or "").encode(),
            key=_as_bytes(message.key()),
            headers=headers,
            token=token,
        )
        reason = failure_reason(error)
        if self._moving and reason == "purged":
            try:
                self._produce(record.value, record.key, record.headers, token)
                return
            except (BufferError, confluent_kafka.KafkaException) as exc:
                _log.warning("record not moved to the rebuilt producer: %s", _describe(exc))
        if error.fatal():
            self._set_fatal(error)
        self.stats._count(self.stats.failed, reason)
        if self._on_failed is None:
            _log.warning("record not delivered (%s: %s) and no on_failed hook: dropped", reason, error.str())
            return
        try:
            self._on_failed(record, reason)
        except Exception:
            self.stats._add("hook_errors")
            _log.exception("on_failed hook raised; the record (%s) is lost to the spool", reason)

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        self._last_error = f"{error.name()}: {error.str()}"
        if error.fatal():
            self._set_fatal(error)
        elif error.code() == _E._ALL_BROKERS_DOWN:
            self._broker_up = False
        _log.debug("librdkafka: %s", self._last_error)

    def _on_stats(self, raw: str) -> None:
        try:
            stats = _STATS_DECODER.decode(raw)
        except msgspec.DecodeError:
            _log.debug("unreadable librdkafka statistics ignored")
            return
        self._broker_up = any(b.state == "UP" for b in stats.brokers.values())
        # Stuck-epoch detection (see the class docstring): count local epoch bumps since the last
        # statistics interval that saw a delivery.
        delivered = self.stats.delivered
        epoch = stats.eos.producer_epoch
        if self._epoch_base is None or delivered != self._delivered_at_base or epoch < self._epoch_base:
            self._epoch_base, self._delivered_at_base = epoch, delivered
        elif epoch - self._epoch_base >= _STUCK_EPOCH_BUMPS and not self._closed:
            self._rebuild_wanted = True

    def _set_fatal(self, error: confluent_kafka.KafkaError) -> None:
        with self._state_lock:
            if self._fatal is None:
                self._fatal = f"{error.name()}: {error.str()}"
                _log.error("Kafka producer in fatal state: %s", self._fatal)

    def __repr__(self) -> str:
        return (
            f"KafkaPublisher(topic={self._topic!r}, bootstrap={self.config.bootstrap_servers!r}, "
            f"broker_up={self._broker_up}, closed={self._closed})"
        )


#: Local epoch bumps without a delivery after which the broker is taken to have lost the producer id.
#: A broker that kept its state accepts the first bump (KIP-360), so 3 leaves room for races.
_STUCK_EPOCH_BUMPS: Final = 3


class _EosStats(msgspec.Struct):
    producer_epoch: int = -1


class _BrokerStats(msgspec.Struct):
    state: str = ""


class _Stats(msgspec.Struct):
    """The part of librdkafka's statistics JSON this module reads (it ignores the rest)."""

    brokers: dict[str, _BrokerStats] = msgspec.field(default_factory=dict)
    eos: _EosStats = msgspec.field(default_factory=_EosStats)


_STATS_DECODER: Final = msgspec.json.Decoder(_Stats)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


def _error_of(exc: BaseException) -> confluent_kafka.KafkaError | None:
    if exc.args and isinstance(exc.args[0], confluent_kafka.KafkaError):
        error: confluent_kafka.KafkaError = exc.args[0]
        return error
    return None


def _describe(exc: BaseException) -> str:
    if exc.args and isinstance(exc.args[0], confluent_kafka.KafkaError):
        error: confluent_kafka.KafkaError = exc.args[0]
        return f"{error.name()}: {error.str()}"
    return str(exc)
