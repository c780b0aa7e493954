"""`aerie.edge.forwarder` against a real Kafka-compatible broker (Tansu on loopback, memory storage) and a
real disk spool. Run as a script, this module is the child process of the SIGKILL test."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from falco_testkit import shell_anomaly
from kafka_testkit import read_anomalies

from aerie.edge.forwarder import Forwarder
from aerie.edge.kafka import KafkaConfig
from aerie.edge.spool import Spool, SpoolRecord
from aerie.perf.tansu import Tansu
from aerie.proto.envelope import Anomaly, encode_anomaly

TOPIC = "aerie.anomalies.forwarder-test"
TESTS = str(Path(__file__).parents[1])
"""Where the shared test helpers are, for the child process, which pytest does not start."""


def spooled(a: Anomaly) -> SpoolRecord:
    return SpoolRecord(value=encode_anomaly(a), key=a.partition_key, headers=tuple(a.headers()))


def append(spool: Spool, anomalies: list[Anomaly]) -> dict[str, int]:
    """Append durably; event id → seq."""
    seqs = spool.append_many([spooled(a) for a in anomalies])
    assert None not in seqs
    return {a.event_id: seq for a, seq in zip(anomalies, seqs, strict=True) if seq is not None}


def config(bootstrap: str, **overrides: object) -> KafkaConfig:
    # Statistics every 200 ms so broker_up (and the publisher's stuck-epoch check) follow the broker
    # quickly in tests.
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topic": TOPIC,
        "stats_interval_ms": 200,
        "reconnect_backoff_max_ms": 500,
    }
    return KafkaConfig(**(settings | overrides))  # type: ignore[arg-type]


def consume(bootstrap: str, want: set[str]) -> dict[str, list[tuple[int, int]]]:
    """(partition, offset) of every copy by event id, until each id in ``want`` was seen: at least
    once allows duplicates."""
    seen = read_anomalies(bootstrap, TOPIC, want)
    return {
        event_id: [(m.partition() or 0, m.offset() or 0) for m in copies] for event_id, copies in seen.items()
    }


async def wait_until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aerie.edge.forwarder"]


BROKER_DOWN = "Kafka broker down; records wait in the spool"
BROKER_UP = "Kafka broker up; forwarding the spool"


async def test_records_spooled_while_the_broker_is_down_wait_then_arrive_in_order(
    tansu: Tansu, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aerie.edge.forwarder")
    tansu.stop()
    spool = Spool(tmp_path / "spool")
    anomalies = [shell_anomaly(i) for i in range(300)]
    seqs = append(spool, anomalies)
    forwarder = Forwarder(spool, config(tansu.bootstrap), max_in_flight=100, read_batch=40)
    task = asyncio.create_task(forwarder.run())

    await wait_until(lambda: BROKER_DOWN in messages(caplog), "the broker-down log line")
    stats = forwarder.stats
    # The window is full and nothing more is read: the rest waits in the spool, nothing is acked.
    assert (stats.window, stats.in_flight, stats.sent, stats.delivered) == (100, 100, 100, 0)
    assert (stats.acked_seq, stats.backlog, stats.broker_up) == (0, 300, False)
    assert forwarder.publisher.stats.accepted == 100
    assert spool.stats()["queued_records"] == 300

    tansu.start()
    await wait_until(lambda: forwarder.stats.acked_seq == max(seqs.values()), "the spool acked to the end")
    assert forwarder.broker_up
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    assert spool.stats()["queued_records"] == 0
    stats = forwarder.stats
    assert (stats.delivered, stats.failed, stats.dropped, stats.window, stats.backlog) == (300, {}, {}, 0, 0)

    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(seqs))
    # Nothing failed, so the idempotent producer wrote each record once; one key's records keep the
    # spool's order (one partition, offsets increasing with seq).
    assert all(len(copies) == 1 for copies in seen.values())
    for key in {a.partition_key for a in anomalies}:
        mine = [seen[a.event_id][0] for a in anomalies if a.partition_key == key]
        assert len({partition for partition, _ in mine}) == 1
        assert [offset for _, offset in mine] == sorted(offset for _, offset in mine)
    # One line per transition, not one per record.
    assert messages(caplog).count(BROKER_DOWN) == 1
    assert messages(caplog).count(BROKER_UP) == 1
    spool.close()


async def test_broker_killed_with_records_in_flight_everything_unconfirmed_arrives_after_restart(
    tansu: Tansu, tmp_path: Path
) -> None:
    """Tansu keeps everything in memory: a killed broker loses what it had confirmed. To make the claim
    sound, the broker is frozen (SIGSTOP) before phase B is sent, so it cannot confirm anything of B;
    then it is killed with B in flight. Every record the dead broker never confirmed (B, plus C sent
    while it is down and D after the restart) must arrive at the new one; A was confirmed (acked)."""
    spool = Spool(tmp_path / "spool")
    forwarder = Forwarder(spool, config(tansu.bootstrap))
    task = asyncio.create_task(forwarder.run())
    counter = iter(range(10**6))

    async def stream(n: int) -> dict[str, int]:
        """Append n records in small batches, waking the forwarder after each, as the pipeline does."""
        out: dict[str, int] = {}
        for _ in range(n // 50):
            out |= await asyncio.to_thread(append, spool, [shell_anomaly(next(counter)) for _ in range(50)])
            forwarder.wake()
        return out

    phase_a = await stream(500)
    await wait_until(lambda: forwarder.stats.acked_seq == max(phase_a.values()), "phase A acked")

    assert tansu._process is not None
    os.kill(tansu._process.pid, signal.SIGSTOP)
    phase_b = await stream(200)
    await wait_until(lambda: forwarder.stats.in_flight == 200, "phase B sent to the frozen broker")
    tansu.stop()  # SIGKILL, with B in flight
    await wait_until(lambda: not forwarder.broker_up, "broker_up to drop")
    phase_c = await stream(200)
    assert forwarder.stats.acked_seq == max(phase_a.values())  # nothing unconfirmed is acked
    tansu.start()
    phase_d = await stream(200)

    last = max(phase_d.values())
    await wait_until(lambda: forwarder.stats.acked_seq == last, "the spool acked to the end")
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    stats = forwarder.stats
    assert stats.delivered >= 1100
    assert stats.dropped == {}
    # The restarted broker did not know the producer. With B in flight librdkafka cannot retry without
    # risking duplicates and fails fatally, so the forwarder builds a new publisher and resends; with
    # records only queued, the publisher moves them into a new producer itself. Either way, once.
    assert forwarder.stats.publisher_rebuilds + forwarder.publisher.stats.rebuilds >= 1

    unconfirmed = phase_b | phase_c | phase_d
    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(unconfirmed))
    assert set(unconfirmed) <= seen.keys()
    assert spool.stats()["queued_records"] == 0
    spool.close()


async def test_stop_with_the_broker_down_leaves_records_in_the_spool_for_the_next_start(
    tansu: Tansu, tmp_path: Path
) -> None:
    tansu.stop()
    directory = tmp_path / "spool"
    spool = Spool(directory)
    anomalies = [shell_anomaly(i) for i in range(100)]
    seqs = append(spool, anomalies)
    forwarder = Forwarder(spool, config(tansu.bootstrap))
    task = asyncio.create_task(forwarder.run())
    await wait_until(lambda: forwarder.stats.in_flight == 100, "100 records in flight")

    assert await forwarder.stop(drain_timeout_s=0.5) == 100
    await task
    stats = forwarder.stats
    assert (stats.delivered, stats.failed, stats.in_flight, stats.acked_seq) == (0, {"purged": 100}, 0, 0)
    assert forwarder.publisher.outstanding() == 0
    assert spool.stats()["queued_records"] == 100
    spool.close()

    # The next start (a new process would do the same): the spool still holds them, and they go out.
    tansu.start()
    spool = Spool(directory)
    forwarder = Forwarder(spool, config(tansu.bootstrap))
    task = asyncio.create_task(forwarder.run())
    await wait_until(lambda: forwarder.stats.acked_seq == max(seqs.values()), "the spool acked to the end")
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    assert forwarder.stats.delivered == 100
    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(seqs))
    assert seen.keys() == set(seqs)
    spool.close()


async def test_timed_out_and_refused_records_are_resent_until_delivered(tansu: Tansu, tmp_path: Path) -> None:
    """Broker away longer than message.timeout.ms, and a local queue smaller than the window: records
    fail with ``timeout`` and come back, publishes meet backpressure; all are sent again until the
    broker returns, and nothing is acked before it confirms."""
    tansu.stop()
    spool = Spool(tmp_path / "spool")
    seqs = append(spool, [shell_anomaly(i) for i in range(150)])
    cfg = config(tansu.bootstrap, message_timeout_ms=300, queue_max_messages=40)
    forwarder = Forwarder(spool, cfg, max_in_flight=100, retry_backoff_s=0.1, retry_backoff_max_s=0.2)
    task = asyncio.create_task(forwarder.run())

    await wait_until(lambda: forwarder.stats.rewinds >= 2, "two rounds of resending")
    stats = forwarder.stats
    assert stats.failed.get("timeout", 0) >= 40
    assert stats.backpressure >= 1
    assert stats.resent >= 40
    # Nothing new is read while failed records wait to go again, so the window stays at what the local
    # queue took before the first backpressure.
    assert (stats.delivered, stats.acked_seq, stats.window) == (0, 0, 40)

    tansu.start()
    await wait_until(lambda: forwarder.stats.acked_seq == max(seqs.values()), "the spool acked to the end")
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    assert forwarder.stats.dropped == {}
    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(seqs))
    assert seen.keys() == set(seqs)
    spool.close()


async def test_a_record_that_can_never_be_produced_is_dropped_counted_and_passed(
    tansu: Tansu, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    before = append(spool, [shell_anomaly(i) for i in range(10)])
    (poison,) = spool.append_many([SpoolRecord(value=b"x" * 5000, key=b"k")])
    after = append(spool, [shell_anomaly(i) for i in range(10, 20)])
    cfg = config(tansu.bootstrap, librdkafka={"message.max.bytes": "2000"})
    forwarder = Forwarder(spool, cfg)
    task = asyncio.create_task(forwarder.run())
    await wait_until(lambda: forwarder.stats.acked_seq == max(after.values()), "the spool acked to the end")
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    stats = forwarder.stats
    assert (stats.dropped, stats.delivered, stats.sent) == ({"too_large": 1}, 20, 20)
    assert poison is not None
    assert max(before.values()) < poison < min(after.values())
    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(before) | set(after))
    assert seen.keys() == set(before) | set(after)
    spool.close()


async def test_sigkill_mid_stream_loses_nothing_that_was_spooled(tansu: Tansu, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    journal = tmp_path / "appended.txt"
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            str(directory),
            tansu.bootstrap,
            str(journal),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONPATH": TESTS},
        )
    try:

        def streaming() -> bool:
            assert child.returncode is None, log.read_text()
            lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
            return lines >= 2000 and (directory / "ack").exists()

        # Killed once it has appended a good stretch and Kafka has confirmed (and it acked) some of it.
        await wait_until(streaming, "the child to append and forward", within=30)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    # Every seq the child was told is durable, with its event id (a torn last line was never complete).
    text = journal.read_text()
    appended = dict(line.split(" ") for line in text[: text.rfind("\n")].splitlines())
    assert len(appended) >= 2000

    spool = Spool(directory)
    before = spool.stats()
    assert before["acked_seq"] > 0
    assert before["queued_records"] > 0  # it died with records not yet confirmed
    last = before["next_seq"] - 1
    assert last >= max(int(seq) for seq in appended)
    forwarder = Forwarder(spool, config(tansu.bootstrap))
    task = asyncio.create_task(forwarder.run())
    await wait_until(lambda: forwarder.stats.acked_seq == last, "the spool acked to the end")
    assert await forwarder.stop(drain_timeout_s=5) == 0
    await task
    seen = await asyncio.to_thread(consume, tansu.bootstrap, set(appended.values()))
    assert set(appended.values()) <= seen.keys()
    spool.close()


async def _child(directory: str, bootstrap: str, journal: str) -> None:
    """Append to a spool and forward it until killed, journalling (fsync'd) each seq append returned."""
    spool = Spool(directory)
    forwarder = Forwarder(spool, config(bootstrap), ack_interval_s=0.05)
    task = asyncio.create_task(forwarder.run())
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    i = 0
    while not task.done():
        batch = [shell_anomaly(i + k, run="child") for k in range(50)]
        seqs = await asyncio.to_thread(append, spool, batch)
        os.write(fd, "".join(f"{seq} {event_id}\n" for event_id, seq in seqs.items()).encode())
        os.fsync(fd)
        forwarder.wake()
        i += len(batch)
    await task


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:4]))
