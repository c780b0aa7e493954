"""`aerie.brain.consumer` against a real Kafka-compatible broker (Tansu, memory storage).

``admit`` is an in-test stand-in (`AdmitStandIn`): it records calls and answers like the coordinator
(True for a new event id, False for a known one), optionally failing or holding chosen messages.
Committed offsets are read back from the broker with a separate client in the same group.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from falco_testkit import shell_anomaly
from kafka_testkit import read_messages

from aerie.brain.consumer import (
    DLQ_DETAIL,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    AnomalyConsumer,
    ConsumerConfig,
    ConsumerConfigError,
    message_trace,
)
from aerie.brain.metrics import BrainMetrics
from aerie.proto.envelope import HEADER_SCHEMA, HEADER_TRACEPARENT, Anomaly, TraceContext, encode_anomaly


class Tansu(Protocol):
    bootstrap: str


TOPIC = "aerie.anomalies.test"
DLQ = "aerie.anomalies.test.dlq"
PARTITIONS = 4  # what Tansu gives an auto-created topic


def anomaly(i: int, *, container: str | None = None, traceparent: str | None = None) -> Anomaly:
    return shell_anomaly(i, container=container or f"c{i % 5}", fields={}, traceparent=traceparent)


Headers = list[tuple[str, bytes | str | None]]
Record = tuple[bytes | None, bytes | None, Headers]  # value, key, headers


def record(a: Anomaly) -> Record:
    return encode_anomaly(a), a.partition_key, list(a.headers())


def produce(bootstrap: str, records: list[Record], topic: str = TOPIC) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 1})
    for value, key, headers in records:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(20) == 0


def committed(bootstrap: str, group: str) -> dict[int, int]:
    """What the broker holds as the group's committed offsets (partitions with none left out)."""
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = client.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        client.close()
    return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}


def config(tansu: Tansu, group: str | None = None, **overrides: object) -> ConsumerConfig:
    settings: dict[str, object] = {
        "bootstrap_servers": tansu.bootstrap,
        "topic": TOPIC,
        "dlq_topic": DLQ,
        "group_id": group or f"brain-{uuid.uuid4()}",
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "retry_backoff_ms": 10,
        "drain_timeout_ms": 10_000,
    }
    return ConsumerConfig(**(settings | overrides))  # type: ignore[arg-type]


class DatabaseDown(Exception):
    pass


@dataclass
class Call:
    anomaly: Anomaly
    trace: TraceContext
    received_at_ns: int
    outcome: bool | None = None  # None: raised, or still running


class AdmitStandIn:
    """Test stand-in for the coordinator's ``admit``: records calls, de-duplicates by event id.

    ``fail[event_id] = n`` makes the next n calls for that event raise `DatabaseDown`; a gate in
    ``hold[event_id]`` is awaited (after the failures) before the call answers. Not durable.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.known: set[str] = set()
        self.fail: dict[str, int] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.hold_all: asyncio.Event | None = None
        self._changed = asyncio.Event()

    async def __call__(self, anomaly: Anomaly, *, trace: TraceContext, received_at_ns: int) -> bool:
        call = Call(anomaly, trace, received_at_ns)
        self.calls.append(call)
        self._changed.set()
        await asyncio.sleep(0)  # a real admit awaits its database: let other tasks run
        if self.fail.get(anomaly.event_id, 0) > 0:
            self.fail[anomaly.event_id] -= 1
            raise DatabaseDown("connection refused")
        gate = self.hold.get(anomaly.event_id) or self.hold_all
        if gate is not None:
            await gate.wait()
        call.outcome = anomaly.event_id not in self.known
        self.known.add(anomaly.event_id)
        self._changed.set()
        return call.outcome

    def answered(self) -> list[Call]:
        return [c for c in self.calls if c.outcome is not None]

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(20):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a condition on the consumer's own state (it has no event to wait on)."""
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Running:
    """A consumer running in a task; `stop` stops it and re-raises what `run` raised."""

    def __init__(self, consumer: AnomalyConsumer) -> None:
        self.consumer = consumer
        self.task = asyncio.create_task(consumer.run())

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.task


def sample(metrics: BrainMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def headers(message: Message) -> Headers:
    pairs = message.headers() or []
    assert isinstance(pairs, list)
    return pairs


def header(message: Message, name: str) -> bytes | str | None:
    found = [v for k, v in headers(message) if k == name]
    assert len(found) <= 1
    return found[0] if found else None


# --- tests ----------------------------------------------------------------------------------------------


async def test_envelopes_are_admitted_with_the_header_trace_and_stop_commits(tansu: Tansu) -> None:
    anomalies = [anomaly(i) for i in range(20)]
    records = [record(a) for a in anomalies]
    # The header wins over the envelope's field when both are valid...
    header_trace = TraceContext.new()
    records[3] = (records[3][0], records[3][1], [(HEADER_TRACEPARENT, header_trace.traceparent.encode())])
    # ...and the envelope's is the fallback when the header is missing or bad.
    records[4] = (records[4][0], records[4][1], [(HEADER_SCHEMA, b"1")])
    records[5] = (records[5][0], records[5][1], [(HEADER_TRACEPARENT, b"00-garbage")])
    produce(tansu.bootstrap, records)

    metrics = BrainMetrics()
    admit = AdmitStandIn()
    # Periodic commits out of the way: whatever the broker holds at the end was committed by stop().
    cfg = config(tansu, commit_interval_ms=600_000, lag_interval_ms=100)
    running = Running(AnomalyConsumer(cfg, admit, metrics=metrics))
    before = time.time_ns()
    await admit.until(lambda: len(admit.answered()) == 20)

    by_id = {c.anomaly.event_id: c for c in admit.calls}
    assert len(admit.calls) == 20
    assert by_id.keys() == {a.event_id for a in anomalies}
    for i, a in enumerate(anomalies):
        call = by_id[a.event_id]
        assert call.anomaly == a
        assert call.trace == (header_trace if i == 3 else a.trace)
        assert before - 60 * 10**9 < call.received_at_ns <= time.time_ns()
    assert running.consumer.stats.trace_fallbacks == {"envelope": 2}

    # Lag as the broker reports it: every message read, none committed yet.
    assert committed(tansu.bootstrap, cfg.group_id) == {}

    def lag() -> float:
        return sum(
            s.value
            for metric in metrics.consumer_lag.collect()
            for s in metric.samples
            if s.labels["topic"] == TOPIC
        )

    await eventually(lambda: lag() == 20)

    await running.stop()
    stats = running.consumer.stats
    assert (stats.consumed, stats.admitted, stats.duplicates, stats.admit_failures) == (20, 20, 0, 0)
    assert stats.assigned == []
    assert stats.buffered == 0
    on_broker = committed(tansu.bootstrap, cfg.group_id)
    assert sum(on_broker.values()) == 20  # offsets start at 0: one past the last message, per partition
    assert on_broker == stats.committed
    assert sample(metrics, "aerie_consumed_total") == 20
    assert sample(metrics, "aerie_admitted_total") == 20
    assert lag() == 0  # a consumer that owns nothing exports no lag


async def test_undecodable_messages_are_dead_lettered_and_the_partition_moves_on(tansu: Tansu) -> None:
    key = b"node-a/c0"  # one key: one partition, so order matters
    good = [anomaly(i, container="c0") for i in range(3)]
    v2 = msgspec.structs.replace(good[0], schema_version=2, event_id="v2")
    bad_trace = msgspec.structs.replace(good[0], traceparent="00-nope", event_id="bt")
    extra: Headers = [("x-origin", b"fuzz")]
    sent: list[tuple[bytes | None, str]] = [
        (encode_anomaly(good[0]), ""),
        (b"not json{", "invalid_json"),
        (b'{"event_id": 5}', "schema"),
        (encode_anomaly(v2), "unsupported_version"),
        (encode_anomaly(bad_trace), "bad_traceparent"),
        (None, "missing_value"),
        (encode_anomaly(good[1]), ""),
        (encode_anomaly(good[2]), ""),
    ]
    produce(tansu.bootstrap, [(value, key, extra) for value, _ in sent])

    metrics = BrainMetrics()
    admit = AdmitStandIn()
    cfg = config(tansu, commit_interval_ms=100)
    running = Running(AnomalyConsumer(cfg, admit, metrics=metrics))
    await admit.until(lambda: len(admit.answered()) == 3)
    assert [c.anomaly for c in admit.calls] == good

    dead = await asyncio.to_thread(read_messages, tansu.bootstrap, DLQ, 5, within=20)
    await running.stop()

    by_reason = {header(m, DLQ_REASON): m for m in dead}
    assert set(by_reason) == {reason.encode() for _, reason in sent if reason}
    (partition,) = {header(m, DLQ_PARTITION) for m in dead}
    for offset, (value, reason) in enumerate(sent):
        if not reason:
            continue
        message = by_reason[reason.encode()]
        assert message.value() == value
        assert message.key() == key
        assert headers(message)[0] == extra[0]  # the original headers come first
        assert header(message, DLQ_TOPIC) == TOPIC.encode()
        assert header(message, DLQ_OFFSET) == str(offset).encode()
        assert header(message, DLQ_DETAIL)
    assert int(partition or b"-1") in range(PARTITIONS)

    stats = running.consumer.stats
    assert stats.dead_lettered == {reason: 1 for _, reason in sent if reason}
    for _, reason in sent:
        if reason:
            assert sample(metrics, "aerie_dead_lettered_total", reason=reason) == 1
    # Committed past the dead letters only once the dead-letter topic confirmed them.
    assert committed(tansu.bootstrap, cfg.group_id) == {int(partition or b"-1"): len(sent)}


async def test_an_undeliverable_dead_letter_holds_the_commit_not_the_partition(tansu: Tansu) -> None:
    good = [anomaly(i, container="c0") for i in range(3)]
    key = good[0].partition_key
    # The dead-letter producer refuses records over 1000 bytes: this copy can never be delivered.
    junk = b"x" * 2000
    produce(tansu.bootstrap, [record(good[0]), (junk, key, []), record(good[1]), record(good[2])])
    cfg = config(
        tansu, commit_interval_ms=50, drain_timeout_ms=300, dlq_librdkafka={"message.max.bytes": "1000"}
    )
    admit = AdmitStandIn()
    running = Running(AnomalyConsumer(cfg, admit))
    await admit.until(lambda: len(admit.answered()) == 3)  # the messages after it still flow
    await eventually(lambda: running.consumer.stats.dlq_failures >= 2)  # and it is produced again
    await running.stop()
    stats = running.consumer.stats
    assert stats.dead_lettered == {}
    assert stats.abandoned == 1
    errors = running.consumer.metrics.registry.get_sample_value
    assert errors("aerie_consumer_errors_total", {"kind": "dead_letter"}) == stats.dlq_failures
    (partition,) = stats.committed
    assert committed(tansu.bootstrap, cfg.group_id) == {partition: 1} == stats.committed


async def test_duplicate_event_ids_are_counted_not_admitted_twice(tansu: Tansu) -> None:
    a, b = anomaly(1, container="c0"), anomaly(2, container="c0")
    again = msgspec.structs.replace(b, traceparent=TraceContext.new().traceparent)
    produce(tansu.bootstrap, [record(a), record(b), record(a), record(again)])
    metrics = BrainMetrics()
    admit = AdmitStandIn()
    running = Running(AnomalyConsumer(config(tansu), admit, metrics=metrics))
    await admit.until(lambda: len(admit.answered()) == 4)
    await running.stop()
    assert [c.outcome for c in admit.calls] == [True, True, False, False]
    stats = running.consumer.stats
    assert (stats.admitted, stats.duplicates) == (2, 2)
    assert sample(metrics, "aerie_admitted_total") == 2
    assert sample(metrics, "aerie_duplicates_total") == 2


async def test_a_failing_admit_is_retried_and_nothing_past_it_is_committed(tansu: Tansu) -> None:
    ms = [anomaly(i, container="c0") for i in range(5)]  # one partition, offsets 0..4
    produce(tansu.bootstrap, [record(a) for a in ms])
    group = f"brain-{uuid.uuid4()}"
    admit = AdmitStandIn()
    # m2: the database is down twice, then the third attempt hangs (a stuck write) until released.
    admit.fail[ms[2].event_id] = 2
    release = admit.hold[ms[2].event_id] = asyncio.Event()

    first = Running(AnomalyConsumer(config(tansu, group, commit_interval_ms=50, drain_timeout_ms=300), admit))
    await admit.until(lambda: len(admit.calls) == 5)  # m0, m1, m2 ×3
    assert [c.anomaly for c in admit.calls] == [ms[0], ms[1], ms[2], ms[2], ms[2]]
    await first.stop()  # the hanging admit is abandoned at the drain timeout
    stats = first.consumer.stats
    assert (stats.admitted, stats.admit_failures, stats.abandoned) == (2, 2, 1)
    errors = first.consumer.metrics.registry.get_sample_value
    assert errors("aerie_consumer_errors_total", {"kind": "admit"}) == 2
    (partition,) = stats.committed
    # Periodic commits ran while m2 failed, and stop() committed: none of them went past m2.
    assert committed(tansu.bootstrap, group) == {partition: 2} == stats.committed

    # The same group again: reading resumes at m2, which is retried, never skipped.
    release.set()
    admit.calls.clear()
    admit.fail[ms[3].event_id] = 2  # and m3 fails twice, then goes through in this run
    second = Running(AnomalyConsumer(config(tansu, group, commit_interval_ms=50), admit))
    await admit.until(lambda: len(admit.answered()) == 3)
    await second.stop()
    assert [c.anomaly for c in admit.calls] == [ms[2], ms[3], ms[3], ms[3], ms[4]]
    assert [c.outcome for c in admit.answered()] == [True, True, True]
    stats = second.consumer.stats
    assert (stats.admitted, stats.admit_failures, stats.abandoned) == (3, 2, 0)
    assert committed(tansu.bootstrap, group) == {partition: 5}


async def test_revoked_partitions_finish_in_flight_admits_and_commit_before_handover(tansu: Tansu) -> None:
    anomalies = [anomaly(i, container=f"c{i % 8}") for i in range(200)]
    produce(tansu.bootstrap, [record(a) for a in anomalies])
    group = f"brain-{uuid.uuid4()}"
    admit = AdmitStandIn()
    cfg = config(tansu, group, commit_interval_ms=600_000)  # only revocation and stop commit

    a = Running(AnomalyConsumer(cfg, admit))
    await admit.until(lambda: len(admit.answered()) >= 10)
    admit.hold_all = gate = asyncio.Event()  # admits from here on hang until the rebalance is under way
    b = Running(AnomalyConsumer(cfg, admit))
    await eventually(lambda: a.consumer.stats.revocations >= 1)
    in_flight = [c for c in admit.calls if c.outcome is None]
    assert in_flight  # the revocation is waiting on them
    gate.set()
    await admit.until(
        lambda: {c.anomaly.event_id for c in admit.answered()} >= {x.event_id for x in anomalies}
    )
    await a.stop()
    await b.stop()

    # The admits in flight at the revocation finished, and their offsets were committed before the
    # partitions moved: nothing was offered twice.
    assert all(c.outcome for c in in_flight)
    assert len(admit.calls) == 200
    assert sorted(c.anomaly.event_id for c in admit.calls) == sorted(x.event_id for x in anomalies)
    assert a.consumer.stats.admitted + b.consumer.stats.admitted == 200
    assert b.consumer.stats.admitted > 0
    assert sum(committed(tansu.bootstrap, group).values()) == 200


async def test_a_partition_behind_is_paused_and_resumed_without_gaps(tansu: Tansu) -> None:
    anomalies = [anomaly(i, container="c0") for i in range(60)]
    produce(tansu.bootstrap, [record(a) for a in anomalies])
    admit = AdmitStandIn()
    admit.hold_all = gate = asyncio.Event()
    cfg = config(tansu, max_buffered_per_partition=8, batch_size=4)
    running = Running(AnomalyConsumer(cfg, admit))
    await eventually(lambda: bool(running.consumer.stats.paused))
    assert running.consumer.stats.buffered <= 8 + 4
    gate.set()
    await admit.until(lambda: len(admit.answered()) == 60)
    await running.stop()
    assert [c.anomaly for c in admit.calls] == anomalies  # in order, none lost, none twice
    assert running.consumer.stats.consumed == 60


def test_trace_comes_from_the_header_then_the_envelope_then_a_new_trace() -> None:
    a = anomaly(1)
    other = TraceContext.new()
    good = [(HEADER_TRACEPARENT, other.traceparent.encode())]
    assert message_trace(good, a) == (other, "header")
    assert message_trace({HEADER_TRACEPARENT: other.traceparent}, a) == (other, "header")
    assert message_trace([(HEADER_TRACEPARENT, b"junk")], a) == (a.trace, "envelope")
    assert message_trace(None, a) == (a.trace, "envelope")
    broken = msgspec.structs.replace(a, traceparent="junk")
    trace, source = message_trace(
        [(HEADER_TRACEPARENT, b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01")], broken
    )
    assert source == "new"
    assert trace.trace_id != a.trace.trace_id
    assert len(trace.trace_id) == 32


async def test_settings_that_break_the_guarantees_are_refused(closed_port: int) -> None:
    with pytest.raises(ConsumerConfigError, match=r"enable\.auto\.commit"):
        ConsumerConfig(bootstrap_servers="127.0.0.1:1", librdkafka={"enable.auto.commit": "true"})
    with pytest.raises(ConsumerConfigError, match=r"enable\.idempotence"):
        ConsumerConfig(bootstrap_servers="127.0.0.1:1", dlq_librdkafka={"enable.idempotence": "false"})
    with pytest.raises(ConsumerConfigError, match="dead-letter topic must differ"):
        ConsumerConfig(bootstrap_servers="127.0.0.1:1", dlq_topic="aerie.anomalies")
    with pytest.raises(msgspec.ValidationError, match=r"drain_timeout_ms"):
        msgspec.convert({"bootstrap_servers": "127.0.0.1:1", "drain_timeout_ms": 0}, ConsumerConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"bootstrap_servers": "127.0.0.1:1", "grup_id": "x"}, ConsumerConfig)
    with pytest.raises(ConsumerConfigError, match=r"no\.such\.property"):
        AnomalyConsumer(
            ConsumerConfig(bootstrap_servers="127.0.0.1:1", librdkafka={"no.such.property": "1"}),
            AdmitStandIn(),
        )
    secret = ConsumerConfig(bootstrap_servers="127.0.0.1:1", librdkafka={"sasl.password": "hunter2"})
    assert "hunter2" not in repr(secret)
    assert "sasl.password" in repr(secret)
    defaults = ConsumerConfig(bootstrap_servers=f"127.0.0.1:{closed_port}")
    assert (defaults.topic, defaults.dlq_topic, defaults.group_id) == (
        "aerie.anomalies",
        "aerie.anomalies.dlq",
        "aerie-brain",
    )
    settings = defaults.consumer_settings()
    assert settings["enable.auto.commit"] is False
    assert settings["auto.offset.reset"] == "earliest"
    assert defaults.producer_settings()["enable.idempotence"] is True
    # A consumer stopped before it ran closes its clients and returns.
    consumer = AnomalyConsumer(defaults, AdmitStandIn())
    await consumer.stop()
    with pytest.raises(RuntimeError, match="only once"):
        await consumer.run()
