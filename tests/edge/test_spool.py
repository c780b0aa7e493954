"""The disk spool against real files: order, at-least-once, bounds, damage, SIGKILL, and a model check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aerie.edge.spool import HEADER_BYTES, AsyncSpool, Spool, SpoolError, SpoolRecord


def rec(i: int, size: int = 0) -> SpoolRecord:
    return SpoolRecord(
        value=b"value-%d-" % i + b"x" * size, key=b"node-%d" % (i % 3), headers=(("trace", b"t%d" % i),)
    )


def seg_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def values(spool: Spool, n: int = 1_000_000) -> list[bytes]:
    return [e.record.value for e in spool.peek(n)]


def frame_size(record: SpoolRecord) -> int:
    return HEADER_BYTES + len(msgspec.msgpack.encode(record))


def test_order_preserved_across_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=200, max_bytes=1 << 20) as spool:
        seqs = [spool.append(rec(i)) for i in range(10)]
        seqs += spool.append_many(rec(i) for i in range(10, 30))
    assert seqs == list(range(1, 31))
    assert len(seg_files(tmp_path)) > 3  # crossed several segments
    with Spool(tmp_path, segment_bytes=200, max_bytes=1 << 20) as spool:
        entries = spool.peek(100)
        assert [e.seq for e in entries] == list(range(1, 31))
        assert [e.record for e in entries] == [rec(i) for i in range(30)]
        assert spool.append(rec(30)) == 31  # seq keeps counting after reopen
        st = spool.stats()
        assert st["queued_records"] == 31
        assert st["torn_tail"] == st["corrupt"] == st["dropped_records"] == 0


def test_unacked_records_are_read_again_after_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append_many(rec(i) for i in range(5))
        assert [e.seq for e in spool.peek(3)] == [1, 2, 3]
        assert [e.seq for e in spool.peek(3)] == [1, 2, 3]  # peeking removes nothing
    with Spool(tmp_path) as spool:
        assert [e.seq for e in spool.peek(10)] == [1, 2, 3, 4, 5]


def test_ack_persists_across_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=150, max_bytes=1 << 20) as spool:
        spool.append_many(rec(i) for i in range(12))
        assert spool.ack(7) == 7
        assert spool.ack(5) == 0  # behind the position: nothing to do
        assert [e.seq for e in spool.peek(2)] == [8, 9]
        with pytest.raises(ValueError, match="last appended seq is 12"):
            spool.ack(13)
    with Spool(tmp_path, segment_bytes=150, max_bytes=1 << 20) as spool:
        assert [e.seq for e in spool.peek(10)] == [8, 9, 10, 11, 12]
        st = spool.stats()
        assert st["acked_seq"] == 7
        assert st["queued_records"] == 5
        assert spool.ack(12) == 5
        assert spool.peek(10) == []
    with Spool(tmp_path, segment_bytes=150, max_bytes=1 << 20) as spool:
        assert spool.peek(10) == []
        assert spool.append(rec(99)) == 13  # numbering survives a fully drained spool


def test_fully_acked_segments_are_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=200, max_bytes=1 << 20) as spool:
        seqs = spool.append_many(rec(i) for i in range(40))
        files = seg_files(tmp_path)
        assert len(files) >= 5
        second_base = int(files[1].stem)
        spool.ack(second_base - 1)  # exactly the whole first segment
        assert seg_files(tmp_path) == files[1:]
        spool.ack(second_base)  # one record into the next: it stays
        assert seg_files(tmp_path) == files[1:]
        last = seqs[-1]
        assert last is not None
        spool.ack(last)
        # Only the active segment is kept, to be written on.
        assert seg_files(tmp_path) == files[-1:]
        assert spool.stats()["segments"] == 1
        assert spool.stats()["queued_records"] == 0
        assert spool.stats()["queued_bytes"] == 0
        assert spool.stats()["acked"] == 40


def test_bound_drops_oldest_whole_segments_and_counts(tmp_path: Path) -> None:
    size = frame_size(rec(0, 50))
    seg_bytes = size * 4
    max_bytes = seg_bytes * 3
    n = 50
    with Spool(tmp_path, segment_bytes=seg_bytes, max_bytes=max_bytes) as spool:
        for i in range(n):
            assert spool.append(rec(i, 50)) == i + 1
            assert sum(p.stat().st_size for p in seg_files(tmp_path)) <= max_bytes
        got = spool.peek(1000)
        st = spool.stats()
    kept = [e.seq for e in got]
    assert kept == list(range(n - len(kept) + 1, n + 1))  # a suffix: only the oldest went
    assert [e.record for e in got] == [rec(s - 1, 50) for s in kept]
    assert st["dropped_records"] == n - len(kept) > 0
    assert st["dropped_bytes"] == sum(frame_size(rec(i, 50)) for i in range(n - len(kept)))
    assert st["disk_bytes"] <= max_bytes


def test_bound_counts_only_unacked_records(tmp_path: Path) -> None:
    size = frame_size(rec(0, 50))
    with Spool(tmp_path, segment_bytes=size * 4, max_bytes=size * 8) as spool:
        spool.append_many([rec(i, 50) for i in range(8)])
        spool.ack(2)  # half of the first segment acknowledged
        spool.append(rec(8, 50))  # needs the first segment's room
        assert spool.stats()["dropped_records"] == 2  # seqs 3 and 4, not the acked 1 and 2
        assert [e.seq for e in spool.peek(100)] == [5, 6, 7, 8, 9]


def test_oversize_record_is_dropped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=256, max_bytes=512) as spool:
        assert spool.append_many([rec(0), SpoolRecord(value=b"x" * 600), rec(1)]) == [1, None, 2]
        st = spool.stats()
        assert st["dropped_oversize"] == st["dropped_records"] == 1
        assert values(spool) == [rec(0).value, rec(1).value]


@pytest.mark.parametrize("cut", [1, HEADER_BYTES - 3, HEADER_BYTES + 2, -1])
def test_torn_tail_is_truncated_and_counted(tmp_path: Path, cut: int) -> None:
    with Spool(tmp_path) as spool:
        spool.append_many(rec(i) for i in range(5))
    (seg,) = seg_files(tmp_path)
    full = seg.stat().st_size
    last_start = full - frame_size(rec(4))
    os.truncate(seg, last_start + cut if cut > 0 else full + cut)
    with Spool(tmp_path) as spool:
        st = spool.stats()
        assert st["torn_tail"] == 1
        assert st["corrupt"] == 0
        assert seg.stat().st_size == last_start
        assert values(spool) == [rec(i).value for i in range(4)]
        assert spool.append(rec(5)) == 5  # the torn record's seq was never handed out as durable
    with Spool(tmp_path) as spool:
        assert spool.stats()["torn_tail"] == 0
        assert values(spool) == [rec(i).value for i in [0, 1, 2, 3, 5]]


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    # What some filesystems leave after a crash: the size grew, the data never came.
    with Spool(tmp_path) as spool:
        spool.append_many(rec(i) for i in range(3))
    (seg,) = seg_files(tmp_path)
    with seg.open("ab") as f:
        f.write(b"\0" * 100)
    with Spool(tmp_path) as spool:
        assert spool.stats()["torn_tail"] == 1
        assert values(spool) == [rec(i).value for i in range(3)]


@pytest.mark.parametrize(
    ("where", "what"),
    [(0, "magic"), (5, "length"), (10, "seq"), (HEADER_BYTES + 3, "payload")],
)
def test_corrupt_middle_record_is_skipped_and_counted(tmp_path: Path, where: int, what: str) -> None:
    with Spool(tmp_path) as spool:
        spool.append_many(rec(i) for i in range(6))
    (seg,) = seg_files(tmp_path)
    data = bytearray(seg.read_bytes())
    start = 2 * frame_size(rec(0))  # all frames here have the same size
    data[start + where] ^= 0x5A
    seg.write_bytes(bytes(data))
    with Spool(tmp_path) as spool:
        st = spool.stats()
        assert st["corrupt"] == 1, what
        assert st["torn_tail"] == 0
        entries = spool.peek(10)
        assert [e.seq for e in entries] == [1, 2, 4, 5, 6]
        assert spool.stats()["corrupt"] == 1  # counted once, not again on every read
        assert spool.ack(4) == 3
        assert [e.seq for e in spool.peek(10)] == [5, 6]


def test_corrupt_ack_file_replays_everything(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append_many(rec(i) for i in range(3))
        spool.ack(2)
    (tmp_path / "ack").write_bytes(b"garbage")
    with Spool(tmp_path) as spool:
        assert spool.stats()["corrupt"] == 1
        assert [e.seq for e in spool.peek(10)] == [1, 2, 3]


def test_undecodable_record_is_skipped_and_counted(tmp_path: Path) -> None:
    from aerie.edge.spool import _encode_frame

    with Spool(tmp_path) as spool:
        spool.append(rec(0))
    (seg,) = seg_files(tmp_path)
    with seg.open("ab") as f:  # a well-framed record from some other writer
        f.write(_encode_frame(2, msgspec.msgpack.encode({"not": "a record"})))
    with Spool(tmp_path) as spool:
        assert spool.append(rec(2)) == 3
        assert [e.seq for e in spool.peek(10)] == [1, 3]
        assert [e.seq for e in spool.peek(10)] == [1, 3]
        st = spool.stats()
        assert st["undecodable"] == 1
        assert st["queued_records"] == 2
        assert spool.ack(3) == 2


def test_peek_after_reads_ahead(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=150, max_bytes=1 << 20) as spool:
        spool.append_many(rec(i) for i in range(10))
        first = spool.peek(4)
        nxt = spool.peek(4, after=first[-1].seq)
        assert [e.seq for e in nxt] == [5, 6, 7, 8]
        assert [e.seq for e in spool.peek(4, after=2)] == [3, 4, 5, 6]
        spool.ack(6)
        assert [e.seq for e in spool.peek(4, after=3)] == [7, 8, 9, 10]
        assert [e.seq for e in spool.peek(4, after=nxt[-1].seq)] == [9, 10]


def test_second_opener_is_refused_and_errors_name_the_path(tmp_path: Path) -> None:
    with Spool(tmp_path):
        with pytest.raises(SpoolError, match="locked") as info:
            Spool(tmp_path)
        assert info.value.path == tmp_path
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(SpoolError) as info:
        Spool(not_a_dir / "spool")
    assert str(not_a_dir / "spool") in str(info.value)
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path / "x", segment_bytes=1000, max_bytes=999)


def test_closed_spool_refuses_work(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append(rec(0))
    with Spool(tmp_path) as again:  # the lock went with close
        assert again.peek(1) == []


async def test_async_wrapper(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert await spool.append(rec(0)) == 1
    assert await spool.append_many([rec(1), rec(2)]) == [2, 3]
    assert [e.seq for e in await spool.peek(2)] == [1, 2]
    assert await spool.ack(2) == 2
    assert [e.seq for e in await spool.peek(5)] == [3]
    assert spool.stats()["appended"] == 3
    await spool.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from aerie.edge.spool import Spool, SpoolRecord

    spool = Spool(sys.argv[1], segment_bytes=2048, max_bytes=1 << 30)
    batch = int(sys.argv[2])
    i = 0
    while True:
        recs = [SpoolRecord(value=b"v%d" % (i + k), key=b"k") for k in range(batch)]
        seqs = spool.append_many(recs) if batch > 1 else [spool.append(recs[0])]
        for k, seq in enumerate(seqs):
            sys.stdout.write(f"{seq} {i + k}\\n")
        sys.stdout.flush()
        i += batch
    """
)


@pytest.mark.parametrize("batch", [1, 7])
def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, batch: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < 300:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {proc.stderr.read() if proc.stderr else ''}")
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lines += proc.stdout.read().splitlines(keepends=True)  # printed before the kill: durable too
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    durable = [tuple(int(x) for x in line.split()) for line in lines if line.endswith("\n")]
    with Spool(tmp_path, segment_bytes=2048, max_bytes=1 << 30) as spool:
        got = spool.peek(1_000_000)
        st = spool.stats()
    assert st["corrupt"] == 0
    assert [e.seq for e in got] == list(range(1, len(got) + 1))  # nothing missing, in order
    assert [e.record.value for e in got] == [b"v%d" % i for i in range(len(got))]
    assert len(got) >= len(durable)
    assert [(e.seq, int(e.record.value[1:])) for e in got[: len(durable)]] == durable


# -- model check -----------------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"), st.lists(st.binary(max_size=120), min_size=1, max_size=6), st.booleans()
        ),
        st.tuples(st.just("peek"), st.integers(0, 8), st.integers(0, 4)),
        st.tuples(st.just("ack"), st.integers(0, 7)),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


def _run_model(directory: Path, ops: list[tuple[object, ...]], max_bytes: int) -> None:
    """Replays ``ops`` on a spool and on a list; with a bound, the spool may only lose the oldest."""
    seg_bytes = 300

    def open_spool() -> Spool:
        return Spool(directory, segment_bytes=seg_bytes, max_bytes=max_bytes)

    spool = open_spool()
    model: list[tuple[int, bytes]] = []  # unacknowledged (seq, value), oldest first
    acked = 0
    last_peek: list[int] = []
    carried = 0  # drop counters of earlier opens (counters restart with every open)
    accounted = 0  # drops already reflected in the model
    try:
        for op in ops:
            peeked: tuple[list[tuple[int, bytes]], int | None, int] | None = None
            match op:
                case ("append", list() as vals, bool() as batched):
                    recs = [SpoolRecord(value=v) for v in vals]
                    seqs = spool.append_many(recs) if batched else [spool.append(r) for r in recs]
                    assert all(s is not None for s in seqs)
                    model += [(s, v) for s, v in zip(seqs, vals, strict=True) if s is not None]
                case ("peek", int() as n, int() as skip):
                    after = model[skip - 1][0] if 0 < skip <= len(model) else None
                    got = spool.peek(n, after=after)
                    peeked = ([(e.seq, e.record.value) for e in got], after, n)
                    last_peek = [e.seq for e in got]
                case ("ack", int() as i):
                    if last_peek:
                        upto = last_peek[min(i, len(last_peek) - 1)]
                        newly = spool.ack(upto)
                        before = len(model)
                        model = [m for m in model if m[0] > upto]
                        assert newly == (before - len(model) if upto > acked else 0)
                        acked = max(acked, upto)
                case ("reopen",):
                    carried += spool.stats()["dropped_records"]
                    spool.close()
                    spool = open_spool()
                    last_peek = []
            # Everything queued, checked against the model after every step.
            everything = [(e.seq, e.record.value) for e in spool.peek(1_000_000)]
            st = spool.stats()
            lost = len(model) - len(everything)
            assert everything == model[lost:]  # a suffix: only the oldest can go
            assert lost == carried + st["dropped_records"] - accounted  # and every loss is counted
            accounted += lost
            model = everything
            if peeked is not None:
                got_pairs, after, n = peeked
                assert got_pairs == [m for m in model if after is None or m[0] > after][:n]
            assert st["queued_records"] == len(model)
            assert st["disk_bytes"] <= max_bytes
            assert sum(p.stat().st_size for p in directory.glob("*.seg")) == st["disk_bytes"]
            assert st["corrupt"] == st["torn_tail"] == 0
            if max_bytes >= 1 << 20:
                assert lost == 0
    finally:
        spool.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_model_unbounded(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[object, ...]]) -> None:
    _run_model(tmp_path_factory.mktemp("spool"), ops, max_bytes=1 << 20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_model_bounded(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[object, ...]]) -> None:
    _run_model(tmp_path_factory.mktemp("spool"), ops, max_bytes=900)
