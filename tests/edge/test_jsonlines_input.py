"""`JsonLinesInput` on real files, pipes, FIFOs and a real stdin: follow, rotation, partial lines."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aerie.edge.inputs.base import InputError
from aerie.edge.inputs.jsonlines import JsonLinesInput, _FollowedFile, _LineSplitter
from aerie.proto.event import FalcoEvent, decode_json

POLL = 0.02


def alert(tag: str) -> dict[str, Any]:
    return {
        "hostname": "node-a",
        "output": f"Shell spawned {tag}",
        "output_fields": {"proc.name": "bash", "tag": tag, "proc.pid": 42},
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": ["container"],
        "time": "2024-05-01T12:00:00.000000001Z",
    }


def line(tag: str) -> bytes:
    return json.dumps(alert(tag)).encode() + b"\n"


def tags(events: list[FalcoEvent]) -> list[str]:
    return [str(e.output_fields["tag"]) for e in events]


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll with a deadline: the input gives no signal other than what it yields and counts."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Collector:
    """Runs ``events()`` in the background, keeping what it yields."""

    def __init__(self, inp: JsonLinesInput) -> None:
        self.inp = inp
        self.events: list[FalcoEvent] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.inp.events():
            self.events.append(event)

    async def wait_for(self, n: int) -> list[str]:
        await wait_until(lambda: len(self.events) >= n or self.task.done())
        if self.task.done():
            self.task.result()  # surface an exception from the input
        return tags(self.events)

    async def stop(self) -> None:
        await self.inp.close()
        async with asyncio.timeout(10):
            await self.task


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for c in made:
        await c.stop()


def follow(path: Path, collectors: list[Collector], **kw: Any) -> Collector:
    inp = JsonLinesInput(path, follow=True, poll_interval=POLL, **kw)
    collectors.append(Collector(inp))
    return collectors[-1]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


# -- read to the end ----------------------------------------------------------------------------


@pytest.mark.parametrize("read_size", [7, 1 << 18])
async def test_reads_a_file_to_its_end_counting_bad_lines(tmp_path: Path, read_size: int) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        line("a")
        + b"\n   \n"  # blank lines: skipped, not counted
        + line("b").replace(b"\n", b"\r\n")  # CRLF
        + b"{not json\n"
        + json.dumps({"rule": "no time"}).encode()
        + b"\n"
        + json.dumps(alert("x") | {"time": "yesterday"}).encode()
        + b"\n"
        + b'{"pad": "'
        + b"x" * 5000
        + b'"}\n'  # over max_line
        + line("c")
        + line("d").rstrip(b"\n")  # last line without newline: the file is finished, so it counts
    )
    inp = JsonLinesInput(path, max_line=2000, read_size=read_size)
    async with asyncio.timeout(10):
        events = [e async for e in inp.events()]
    assert tags(events) == ["a", "b", "c", "d"]
    assert events[0] == decode_json(line("a"))
    assert inp.stats.snapshot() == {
        "input": "jsonlines",
        "received": 8,
        "decoded": 4,
        "rejected": {"invalid_json": 1, "schema": 1, "bad_time": 1, "too_large": 1},
    }


async def test_unusable_paths_are_input_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for inp in (
        JsonLinesInput(tmp_path / "missing.jsonl"),
        JsonLinesInput(tmp_path / "missing.jsonl", follow=True),
        JsonLinesInput(tmp_path),
        JsonLinesInput(fifo, follow=True),
    ):
        with pytest.raises(InputError):
            async for _ in inp.events():
                pass
    with pytest.raises(InputError):
        JsonLinesInput(tmp_path / "x", poll_interval=0)


# -- follow ---------------------------------------------------------------------------------------


async def test_follow_picks_up_appends_and_holds_a_partial_line(
    tmp_path: Path, collectors: list[Collector]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line("a0"))
    c = follow(path, collectors)
    assert await c.wait_for(1) == ["a0"]
    append(path, line("a1") + line("a2"))
    assert await c.wait_for(3) == ["a0", "a1", "a2"]

    half = len(line("a3")) // 2
    append(path, line("a3")[:half])
    await asyncio.sleep(10 * POLL)  # many polls: the half line must still be held, not rejected
    assert len(c.events) == 3
    assert c.inp.stats.rejected == {}
    append(path, line("a3")[half:])
    assert await c.wait_for(4) == ["a0", "a1", "a2", "a3"]
    assert c.events[-1] == decode_json(line("a3"))

    # One write: once a4 is yielded, the partial line after it has been read too.
    append(path, line("a4") + b'{"unfinished": ')
    await c.wait_for(5)
    await c.stop()  # close interrupts the followed file: the partial line is counted
    assert c.inp.stats.rejected == {"partial_line": 1}
    assert c.inp.stats.decoded == 5


async def test_rotation_by_rename_and_recreate_loses_nothing(
    tmp_path: Path, collectors: list[Collector]
) -> None:
    path = tmp_path / "events.jsonl"
    writer = path.open("ab", buffering=0)
    writer.write(line("a0"))
    c = follow(path, collectors, rotation_grace=0.2)
    await c.wait_for(1)

    writer.write(line("a1") + line("a2"))
    path.rename(tmp_path / "events.jsonl.1")  # logrotate: rename ...
    writer.write(line("a3"))  # ... the writer has not reopened yet
    path.write_bytes(line("b0"))  # ... create
    writer.write(line("a4") + line("a5").rstrip(b"\n"))  # its last line never gets a newline
    writer.close()
    append(path, line("b1"))

    got = await c.wait_for(8)
    assert sorted(got) == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]
    assert [t for t in got if t[0] == "a"] == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert [t for t in got if t[0] == "b"] == ["b0", "b1"]
    assert c.inp.stats.rejected == {}

    # A second rotation, with the path missing for a while in between.
    path.rename(tmp_path / "events.jsonl.2")
    await asyncio.sleep(5 * POLL)
    path.write_bytes(line("c0"))
    assert (await c.wait_for(9))[-1] == "c0"


async def test_rotation_by_copytruncate_loses_nothing(tmp_path: Path, collectors: list[Collector]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line(f"a{i}") for i in range(5)))
    c = follow(path, collectors)
    await c.wait_for(5)

    shutil.copy(path, tmp_path / "events.jsonl.1")  # logrotate copytruncate: copy, then truncate
    os.truncate(path, 0)
    append(path, line("b0"))  # shorter than what was read before
    assert await c.wait_for(6) == [*(f"a{i}" for i in range(5)), "b0"]

    # Truncated and refilled past the old read position in one go: still detected.
    os.truncate(path, 0)
    append(path, b"".join(line(f"c{i}") for i in range(8)))
    assert (await c.wait_for(14))[6:] == [f"c{i}" for i in range(8)]
    assert c.inp.stats.rejected == {}


def test_truncate_and_refill_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"".join(line(f"a{i}") for i in range(3)))
    fd = os.open(path, os.O_RDONLY)
    f = _FollowedFile(fd, os.fstat(fd), 1 << 20)
    try:
        data = asyncio.run(f.read(1 << 20, checked=True))
        assert data == path.read_bytes()
        append(path, line("a3"))
        assert not f.truncated()  # growth is not truncation
        path.write_bytes(b"".join(line(f"zz{i}") for i in range(9)))  # truncate + refill, longer
        assert f.truncated()
        assert asyncio.run(f.read(1 << 20, checked=True)) is None
    finally:
        f.close()


# -- streams ---------------------------------------------------------------------------------------


def feed_pipe(fd: int, data: bytes, piece: int) -> threading.Thread:
    def run() -> None:
        with os.fdopen(fd, "wb", buffering=0) as w:
            for i in range(0, len(data), piece):
                w.write(data[i : i + piece])
                time.sleep(0.001)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_stdin_from_a_pipe_in_pieces(tmp_path: Path) -> None:
    data = b"".join(line(f"s{i}") for i in range(50)) + b"garbage\n\n" + line("last").rstrip(b"\n")
    read_fd, write_fd = os.pipe()
    thread = feed_pipe(write_fd, data, piece=97)  # pieces cut lines at arbitrary points
    try:
        inp = JsonLinesInput("-", stdin_fd=read_fd, read_size=64)
        async with asyncio.timeout(20):
            events = [e async for e in inp.events()]
    finally:
        thread.join()
        os.close(read_fd)
    assert tags(events) == [*(f"s{i}" for i in range(50)), "last"]
    assert inp.stats.rejected == {"invalid_json": 1}
    assert inp.stats.received == 52


async def test_close_interrupts_a_silent_stream() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, line("one") + b'{"half": ')
        c = Collector(JsonLinesInput("-", stdin_fd=read_fd))
        assert await c.wait_for(1) == ["one"]
        await c.stop()  # the writer never closes: close alone must end the iteration
        assert c.inp.stats.rejected == {"partial_line": 1}
    finally:
        os.close(write_fd)
        os.close(read_fd)


async def test_fifo_is_read_as_a_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb") as w:
            w.write(line("f0") + line("f1"))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        async with asyncio.timeout(10):
            events = [e async for e in JsonLinesInput(fifo).events()]
    finally:
        thread.join()
    assert tags(events) == ["f0", "f1"]


_STDIN_SCRIPT = """
import asyncio, json, sys
from aerie.edge.inputs.jsonlines import JsonLinesInput

async def main():
    inp = JsonLinesInput("-")
    tags = [e.output_fields["tag"] async for e in inp.events()]
    print(json.dumps({"tags": tags, "stats": inp.stats.snapshot()}))

asyncio.run(main())
"""


def test_real_stdin_of_a_process() -> None:
    data = line("p0") + b"\n" + b"[1, 2]\n" + line("p1")
    done = subprocess.run(
        [sys.executable, "-c", _STDIN_SCRIPT], input=data, capture_output=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["tags"] == ["p0", "p1"]
    assert result["stats"]["rejected"] == {"schema": 1}
    assert result["stats"]["decoded"] == 2


# -- the line splitter ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=10),
    max_line=st.integers(min_value=1, max_value=30),
)
def test_splitter_matches_a_whole_buffer_split(parts: list[bytes], cuts: list[int], max_line: int) -> None:
    data = b"\n".join(parts)
    *complete, trailing = data.split(b"\n")
    expected: list[bytes | None] = [p if len(p) <= max_line else None for p in complete]
    if len(trailing) > max_line:
        expected.append(None)  # an oversize partial line is reported as soon as it is known
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    splitter = _LineSplitter(max_line)
    got: list[bytes | None] = []
    for start, end in itertools.pairwise(bounds):
        got += splitter.feed(data[start:end])
    assert got == expected
    assert splitter.finish() == (trailing if 0 < len(trailing) <= max_line else None)
