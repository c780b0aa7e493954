"""`JsonLinesInput`: Falco JSON alerts, one per line, from a file (optionally followed) or stdin.

Sources:

* a regular file, read to the end and stopped, or with ``follow=True`` kept open like
  ``tail -F``: appended lines are picked up by polling (no inotify), every ``poll_interval``;
* ``"-"`` (stdin), or any non-regular file such as a FIFO or ``/dev/stdin``: read as a stream
  until end of file, on a reader thread so the event loop never blocks on the read.

Records: each line is decoded with `aerie.proto.event.decode_json`. Blank lines are skipped
without counting. A bad line is counted in ``stats.rejected`` under its `DecodeError` reason and
skipped; a line longer than ``max_line`` bytes is counted as ``too_large`` and skipped without
ever being held whole in memory. Counting: every non-blank line is ``received`` and then exactly
one of ``decoded`` / one rejection.

Partial lines: a last line without its newline is held while more may come (follow mode, a
stream still open). When its source is finished for good (end of a file read without follow, end
of a stream, a rotated-away file after its grace period) it is decoded like any other line; when
`close` interrupts a followed file or an open stream it is counted as ``partial_line``.

Rotation in follow mode (checked every poll, by comparing the path's device/inode with the open
file's and the open file's size and content with what was already read):

* rename + recreate (logrotate ``create``): the old file stays open and is read to its end,
  including lines its writer appends after the rename, until it has been quiet for
  ``rotation_grace`` seconds; the new file at the path is read from its start. Lines written to
  the old file before rotation are never lost.
* truncation in place (logrotate ``copytruncate``, ``: > file``): detected when the file is
  shorter than the read position, or when the bytes just before the read position changed (the
  file was truncated and refilled past the old position between two polls); reading restarts at
  offset 0 and a held partial line is counted as ``truncated``. Bytes written before the
  truncation that had not been read by then are gone with it; that is inherent to copytruncate
  (logrotate documents the same window) and is bounded by one ``poll_interval``.
* the path missing for a while (between rename and create) is waited out; the open file keeps
  being read.

Failure modes: `InputError` when the path does not exist or cannot be opened at start, when
``follow`` is asked of something that is not a regular file, when a rotated-in file cannot be
opened for lack of permission, or when reading a stream fails. Nothing else stops the input.
Opening a FIFO waits for its writer; `close` does not cut that wait short (cancelling the
consuming task does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Final

from aerie.edge.inputs.base import FalcoInput, InputError
from aerie.proto.event import DecodeError, FalcoEvent, decode_json

__all__ = ["JsonLinesInput"]

# Bytes before the read position, re-checked to catch truncate + refill: a whole line or more,
# since refilled lines of the same shape often share long suffixes (same priority, tags, source).
_FINGERPRINT: Final = 4096
_STREAM_QUEUE: Final = 4  # chunks in flight from the reader thread: bounds stdin memory

_Chunk = bytes | OSError | None  # from the stream reader thread: data, a read error, end of file


class _LineSplitter:
    """Bytes in, complete lines out, never holding more than ``max_line`` bytes of one line.

    `feed` returns lines without their ``\\n``; ``None`` stands for one line that went over the
    limit (reported once, as soon as it does; the rest of it is skipped up to its newline).
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    @property
    def pending(self) -> bool:
        """A partial line is held (an oversize one being skipped does not count: it was reported)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start, end = 0, len(data)
        while start < end:
            newline = data.find(b"\n", start)
            if newline == -1:
                if not self._skipping:
                    if len(self._buf) + end - start > self.max_line:
                        self._buf.clear()
                        self._skipping = True
                        out.append(None)
                    else:
                        self._buf += data[start:]
                return out
            piece = data[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False  # the oversize line ends here; it was reported already
                continue
            if self._buf:
                self._buf += piece
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = piece
            out.append(line if len(line) <= self.max_line else None)
        return out

    def finish(self) -> bytes | None:
        """The held partial line (now considered complete), if any; resets the splitter."""
        line = bytes(self._buf) if self._buf else None
        self._buf.clear()
        self._skipping = False
        return line


class _FollowedFile:
    """One open regular file and how far it has been read."""

    def __init__(self, fd: int, st: os.stat_result, max_line: int) -> None:
        self.fd = fd
        self.ident = (st.st_dev, st.st_ino)
        self.pos = 0
        self.splitter = _LineSplitter(max_line)
        self.tail = b""  # the last bytes read, to recognise the same file content later
        self.last_data = time.monotonic()

    async def read(self, size: int, *, checked: bool) -> bytes | None:
        """The next bytes (``b""`` at the end); None when the file was truncated under us.

        ``checked`` verifies, in the same worker-thread call, that the file was not truncated
        before *and* after the read: a truncate-and-refill racing the read would otherwise hand
        us bytes from the middle of the new content.
        """
        data = await asyncio.to_thread(self._read_sync, size, checked)
        if data:
            self.pos += len(data)
            self.tail = (self.tail + data[-_FINGERPRINT:])[-_FINGERPRINT:]
            self.last_data = time.monotonic()
        return data

    def _read_sync(self, size: int, checked: bool) -> bytes | None:
        if checked and self.truncated():
            return None
        data = os.pread(self.fd, size, self.pos)
        if checked and self.truncated():
            return None
        return data

    def truncated(self) -> bool:
        """Whether the file was truncated (and possibly refilled) under the read position.

        Refilled past the old position is recognised by the bytes just before it changing; a
        refill that happens to repeat those bytes exactly is not (and is harmless if it repeats
        everything before them too).
        """
        if os.fstat(self.fd).st_size < self.pos:
            return True
        if not self.tail:
            return False
        return os.pread(self.fd, len(self.tail), self.pos - len(self.tail)) != self.tail

    def rewind(self) -> None:
        self.pos = 0
        self.tail = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class JsonLinesInput(FalcoInput):
    """Falco JSON lines from a file path or ``"-"`` for stdin. See the module docstring.

    Args:
        path: a file, or ``"-"`` for standard input.
        follow: keep reading a regular file as it grows and across rotation (``tail -F``).
        poll_interval: seconds between checks for new data / rotation in follow mode.
        max_line: longest accepted line in bytes (without the newline).
        rotation_grace: seconds a rotated-away file must stay quiet before it is let go.
        read_size: bytes per read.
        stdin_fd: the descriptor read for ``"-"`` (default: this process's stdin); not closed.
    """

    name = "jsonlines"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        follow: bool = False,
        poll_interval: float = 0.25,
        max_line: int = 1 << 20,
        rotation_grace: float = 1.0,
        read_size: int = 1 << 18,
        stdin_fd: int | None = None,
    ) -> None:
        super().__init__()
        if poll_interval <= 0 or max_line < 1 or read_size < 1 or rotation_grace < 0:
            raise InputError("jsonlines input: intervals and sizes must be positive")
        self.path = os.fspath(path)
        self.follow = follow
        self.poll_interval = poll_interval
        self.max_line = max_line
        self.rotation_grace = rotation_grace
        self.read_size = read_size
        self._stdin_fd = stdin_fd
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._stream_queue: asyncio.Queue[_Chunk] | None = None

    async def close(self) -> None:
        """Stop reading; `events` ends at its next step. Safe to call more than once."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        queue = self._stream_queue
        if queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _is_closed(self) -> bool:
        # A call, not the attribute: it changes across awaits, which type narrowing cannot see.
        return self._closed

    async def events(self) -> AsyncIterator[FalcoEvent]:
        """Yield the decoded lines in order (see the module docstring for the end conditions)."""
        self._wake = asyncio.Event()
        if self._closed:
            return
        if self.path == "-":
            fd = self._stdin_fd if self._stdin_fd is not None else sys.stdin.fileno()
            async for event in self._stream(fd):
                yield event
            return
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise InputError(f"jsonlines input: cannot read {self.path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            if self.follow:
                raise InputError(f"jsonlines input: follow needs a regular file, {self.path} is not one")
            if stat.S_ISDIR(st.st_mode):
                raise InputError(f"jsonlines input: {self.path} is a directory")
            # A FIFO's open blocks until a writer appears: keep it off the event loop.
            fd = await self._open(self.path, in_thread=True)
            try:
                async for event in self._stream(fd):
                    yield event
            finally:
                os.close(fd)
            return
        fd = await self._open(self.path)
        current = _FollowedFile(fd, os.fstat(fd), self.max_line)
        if self.follow:
            async for event in self._follow(current):
                yield event
        else:
            try:
                async for event in self._drain(current):
                    yield event
                if not self._closed:
                    for event in self._finished_events(current):
                        yield event
            finally:
                current.close()

    # -- regular files ---------------------------------------------------------------------------

    async def _open(self, path: str, *, in_thread: bool = False) -> int:
        try:
            if in_thread:
                fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"jsonlines input: cannot open {path}: {exc.strerror}") from exc
        return fd

    async def _drain(self, f: _FollowedFile, *, checked: bool = False) -> AsyncIterator[FalcoEvent]:
        """Everything from the read position to the current end of ``f``.

        ``checked``: ``f`` may be truncated in place (the followed path); restart it from offset 0
        when it is.
        """
        while not self._closed:
            data = await f.read(self.read_size, checked=checked)
            if data is None:
                if f.splitter.finish() is not None:
                    self.stats.record_received()
                    self.stats.record_rejected("truncated")
                f.rewind()
                continue
            for line in f.splitter.feed(data):
                event = self._decode(line)
                if event is not None:
                    yield event
            if len(data) < self.read_size:
                return

    async def _follow(self, current: _FollowedFile) -> AsyncIterator[FalcoEvent]:
        rotated: list[_FollowedFile] = []  # renamed-away files, read until quiet
        try:
            while not self._closed:
                # Older data first: whatever rotated files still receive predates the new file.
                for old in list(rotated):
                    async for event in self._drain(old):
                        yield event
                    if time.monotonic() - old.last_data >= self.rotation_grace and not self._closed:
                        for event in self._finished_events(old):
                            yield event
                        old.close()
                        rotated.remove(old)

                async for event in self._drain(current, checked=True):
                    yield event

                replacement = self._replacement(current)
                if replacement is not None:
                    rotated.append(current)
                    current = replacement
                    continue  # read the new file now; the old one is drained first next round
                await self._sleep()
            if current.splitter.pending:
                self.stats.record_received()
                self.stats.record_rejected("partial_line")
        finally:
            current.close()
            for old in rotated:
                old.close()

    def _finished_events(self, f: _FollowedFile) -> list[FalcoEvent]:
        """``f`` is done for good: its unterminated last line is a record too."""
        line = f.splitter.finish()
        if line is None:
            return []
        event = self._decoded_or_counted(line)
        return [event] if event is not None else []

    def _replacement(self, current: _FollowedFile) -> _FollowedFile | None:
        """A different file now at the path, opened, or None (same file, or no file yet)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # between rename and create: keep reading the open file
        except OSError as exc:
            raise InputError(f"jsonlines input: cannot stat {self.path}: {exc.strerror}") from exc
        if (st.st_dev, st.st_ino) == current.ident or not stat.S_ISREG(st.st_mode):
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # gone again between stat and open; next poll
        except OSError as exc:
            raise InputError(f"jsonlines input: cannot open rotated {self.path}: {exc.strerror}") from exc
        return _FollowedFile(fd, os.fstat(fd), self.max_line)

    async def _sleep(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    # -- streams (stdin, FIFOs) ------------------------------------------------------------------

    async def _stream(self, fd: int) -> AsyncIterator[FalcoEvent]:
        """Lines from a stream descriptor until end of file or `close`.

        The reader thread is stopped and joined before this returns, so the caller may close
        ``fd`` right after (a thread still reading it could otherwise read whatever file reuses
        the number).
        """
        queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        self._stream_queue = queue
        reader = _StreamReader(fd, self.read_size, queue, asyncio.get_running_loop())
        reader.start()
        splitter = _LineSplitter(self.max_line)
        try:
            while not self._closed:
                chunk = await queue.get()
                reader.slots.release()
                if self._is_closed():  # close() wakes this get with a None
                    break
                if isinstance(chunk, OSError):
                    raise InputError(f"jsonlines input: read failed: {chunk.strerror}")
                if chunk is None:
                    line = splitter.finish()
                    if line is not None:
                        event = self._decoded_or_counted(line)
                        if event is not None:
                            yield event
                    return
                for item in splitter.feed(chunk):
                    event = self._decode(item)
                    if event is not None:
                        yield event
            if splitter.pending:
                self.stats.record_received()
                self.stats.record_rejected("partial_line")
        finally:
            reader.halt()
            self._stream_queue = None
            await asyncio.to_thread(reader.join, 5.0)  # it notices the halt within one poll

    # -- decoding --------------------------------------------------------------------------------

    def _decode(self, line: bytes | None) -> FalcoEvent | None:
        if line is None:
            self.stats.record_received()
            self.stats.record_rejected("too_large")
            return None
        return self._decoded_or_counted(line)

    def _decoded_or_counted(self, line: bytes) -> FalcoEvent | None:
        if not line or line.isspace():
            return None
        self.stats.record_received()
        try:
            event = decode_json(line)
        except DecodeError as exc:
            self.stats.record_rejected(exc.reason)
            return None
        self.stats.record_decoded()
        return event


class _StreamReader(threading.Thread):
    """Reader thread: chunks into ``queue`` (waiting for a free slot), ``None`` at end of file.

    Waits with ``poll`` (any descriptor number, unlike ``select``) so it notices `halt` within a
    fraction of a second even on a silent pipe, and copes with a descriptor set non-blocking.
    Reads only what poll reported ready, so a read never blocks, and never touches ``fd`` once
    halted. Daemon: should a join time out, it must not keep the process alive.
    """

    def __init__(
        self, fd: int, size: int, queue: asyncio.Queue[_Chunk], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(name="aerie-jsonlines-reader", daemon=True)
        self.fd, self.size, self.queue, self.loop = fd, size, queue, loop
        # The queue is unbounded; these slots bound it, and spare the thread from creating
        # coroutines for a loop that may already be gone.
        self.slots = threading.Semaphore(_STREAM_QUEUE)
        self.halted = threading.Event()

    def halt(self) -> None:
        self.halted.set()

    def _put(self, item: _Chunk) -> bool:
        while not self.slots.acquire(timeout=0.2):
            if self.halted.is_set():
                return False
        if self.halted.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.halted.is_set():
            try:
                if not poller.poll(200) or self.halted.is_set():
                    continue
                data = os.read(self.fd, self.size)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._put(exc)
                return
            if not self._put(data or None) or not data:
                return
