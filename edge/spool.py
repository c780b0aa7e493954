"""A bounded, crash-safe, append-only on-disk queue of records: where anomalies wait while Kafka is away.

Contract
--------
* `Spool.append` / `Spool.append_many` return only after the records are written **and** fdatasync'd:
  a record whose sequence number was returned survives SIGKILL of the process and, as far as the disk
  honours fsync, power loss. `append_many` pays one fdatasync per batch (group commit).
* Every record gets a sequence number (``seq``), strictly increasing across reopens, starting at 1.
* Reading is at-least-once: `Spool.peek` returns the oldest records not yet acknowledged (repeated peeks
  return the same records); `Spool.ack` acknowledges every record up to a ``seq``. Only acknowledged
  records are ever removed, so a crash between peek and ack replays them after reopen. Callers must
  therefore tolerate duplicates (the anomaly envelope carries a stable event id for that).
* Bounded: the segment files never hold more than ``max_bytes``. When an append would exceed it, whole
  oldest segments are deleted first, acknowledged or not; every unacknowledged record lost that way is
  counted in ``dropped_records`` / ``dropped_bytes``. A record that alone exceeds ``max_bytes`` is
  dropped and counted (``dropped_oversize``); its append returns ``None`` instead of a ``seq``.
* Damage is counted, never fatal: a torn write at the end of the newest segment (a crash mid-append) is
  truncated on open and counted in ``torn_tail``; any other damaged region (CRC mismatch, garbage) is
  skipped up to the next valid record and counted in ``corrupt`` (one per region; how many records a
  region held cannot be known). A record whose checksum is right but that does not decode as a
  `SpoolRecord` (say, written by a future version) is skipped and counted in ``undecodable``.
  A damaged last record of the newest segment cannot be told apart from a torn write: it is a torn tail.
* Operating-system errors become `SpoolError` naming the path. After a `SpoolError` from a call that
  writes (append, ack) the spool is closed, because what reached the disk is then unknown (a failed
  fsync may have lost pages): open it again, which rescans the files and recovers every complete
  record. A `SpoolError` from `peek` leaves the spool usable.

On disk
-------
A directory holding:

* ``<first seq, 20 digits>.seg`` segment files. Each record is one frame::

      magic  b"\\xaeSPL"      4 bytes
      length u32 LE          payload bytes
      seq    u64 LE
      crc32  u32 LE          of the payload
      crc32  u32 LE          of the 20 header bytes before it
      payload                msgpack of SpoolRecord (array-like: value, key, headers)

  The separate header checksum tells a damaged length (resynchronise on the next magic whose whole
  frame checks out) from a damaged payload; both are skipped the same way.
* ``ack``: the highest acknowledged ``seq`` (magic, u64, crc32), replaced atomically (write a temporary
  file, fsync, rename, fsync the directory). Segments whose records are all acknowledged are deleted
  after the ack file is durable, so a crash in between only leaves files that the next open deletes.
  The newest (active) segment is kept, even when fully acknowledged, and written on until it is full.
* ``lock``: an exclusive `fcntl.flock`, so two processes cannot share one spool (the kernel releases it
  when its holder dies, SIGKILL included).

Concurrency
-----------
`Spool` is thread-safe: every public method takes one lock. Its methods block (file I/O, fsync);
from asyncio, run them in a worker thread — `AsyncSpool` does exactly that with `asyncio.to_thread`.
Counters in `Spool.stats` count since this open; queue sizes describe what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

import msgspec

from aerie.edge.errors import SpoolError

__all__ = ["HEADER_BYTES", "AsyncSpool", "Spool", "SpoolEntry", "SpoolError", "SpoolRecord"]

_MAGIC: Final = b"\xaeSPL"
_HEADER: Final = struct.Struct("<4sIQII")
HEADER_BYTES: Final = _HEADER.size  # 24: per-record overhead on disk
_ACK: Final = struct.Struct("<8sQI")
_ACK_MAGIC: Final = b"AERIEACK"
_SUFFIX: Final = ".seg"
_READ_CHUNK: Final = 256 * 1024
_MAX_PAYLOAD: Final = (1 << 31) - 1


class SpoolRecord(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One spooled message, shaped like a Kafka message so the publisher can send it unchanged."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class SpoolEntry(msgspec.Struct, frozen=True):
    """A record read back, with the sequence number to acknowledge it by."""

    seq: int
    record: SpoolRecord


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(SpoolRecord)


@dataclass(eq=False)
class _Segment:
    base: int  # the seq in the file name: no record in the file has a lower seq
    path: Path
    size: int = 0  # bytes in the file, damaged regions included
    records: int = 0  # valid records in the file
    last_seq: int = 0  # 0 while it holds none
    # Damaged regions already counted: start offset -> offset of the next valid frame (or the end).
    skips: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    payload: bytes
    end: int


@dataclass(frozen=True, slots=True)
class _Bad:
    end: int  # where the next valid frame starts, or the end of the data
    torn: bool  # no valid frame follows: the tail of the file


class _Reader:
    """`os.pread` through a read-ahead buffer, bounded by ``end``."""

    def __init__(self, fd: int, end: int) -> None:
        self._fd = fd
        self._end = end
        self._buf = b""
        self._at = 0

    def read(self, off: int, n: int) -> bytes:
        n = min(n, self._end - off)
        if n <= 0:
            return b""
        rel = off - self._at
        if rel >= 0 and rel + n <= len(self._buf):
            return self._buf[rel : rel + n]
        self._buf = os.pread(self._fd, min(max(n, _READ_CHUNK), self._end - off), off)
        self._at = off
        return self._buf[:n]


def _encode_frame(seq: int, payload: bytes) -> bytes:
    head = struct.pack("<4sIQI", _MAGIC, len(payload), seq, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _try_frame(reader: _Reader, off: int, end: int, prev_seq: int) -> _Frame | None:
    head = reader.read(off, HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        return None
    magic, length, seq, payload_crc, head_crc = _HEADER.unpack(head)
    if magic != _MAGIC or zlib.crc32(head[: HEADER_BYTES - 4]) != head_crc:
        return None
    frame_end = off + HEADER_BYTES + length
    if frame_end > end or seq <= prev_seq:
        return None
    payload = reader.read(off + HEADER_BYTES, length)
    if zlib.crc32(payload) != payload_crc:
        return None
    return _Frame(seq, payload, frame_end)


def _next_frame(reader: _Reader, off: int, end: int, prev_seq: int) -> _Frame | _Bad:
    """The valid frame at ``off``, or the damaged region starting there and where it ends."""
    frame = _try_frame(reader, off, end, prev_seq)
    if frame is not None:
        return frame
    # Resynchronise: the next magic whose whole frame checks out. Both checksums and the seq order
    # must hold, so magic bytes inside a payload do not pass for a frame.
    rest = reader.read(off + 1, end - off - 1)
    pos = rest.find(_MAGIC)
    while pos >= 0:
        if _try_frame(reader, off + 1 + pos, end, prev_seq) is not None:
            return _Bad(off + 1 + pos, torn=False)
        pos = rest.find(_MAGIC, pos + 1)
    return _Bad(end, torn=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A bounded on-disk FIFO of `SpoolRecord`s with at-least-once reading (see the module docstring).

    Opening scans every segment (bounded by ``max_bytes``), truncates a torn tail, and deletes
    segments that are already fully acknowledged. Raises `SpoolError` when the directory cannot be
    created, read or locked (another process holds it), and `ValueError` for sizes that cannot work.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if segment_bytes < HEADER_BYTES + 1:
            raise ValueError(f"segment_bytes must be at least {HEADER_BYTES + 1}, got {segment_bytes}")
        if max_bytes < segment_bytes:
            raise ValueError(f"max_bytes ({max_bytes}) must be at least segment_bytes ({segment_bytes})")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segs: list[_Segment] = []
        self._wfd: int | None = None  # append-only fd of self._segs[-1]
        self._cur_off = 0  # offset in self._segs[0] of the first unacknowledged frame
        self._head_acked = 0  # valid records in self._segs[0] before _cur_off
        self._acked_seq = 0
        self._next_seq = 1
        self._total = 0
        self._hint: tuple[int, int, int] | None = None  # (seq, segment base, end offset) of the last peek
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "appended",
                "acked",
                "dropped_records",
                "dropped_bytes",
                "dropped_oversize",
                "torn_tail",
                "corrupt",
                "corrupt_bytes",
                "undecodable",
            ),
            0,
        )
        self._lock_fd = -1
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(self.directory, f"cannot open spool directory: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise SpoolError(self.directory, "spool is locked by another process") from exc
        self._acked_seq = self._read_ack()
        try:
            names = sorted(
                (int(p.stem), p)
                for p in self.directory.iterdir()
                if p.suffix == _SUFFIX and p.stem.isdigit() and len(p.stem) == 20
            )
            for p in self.directory.glob("*.tmp"):
                p.unlink()
        except OSError as exc:
            raise SpoolError(self.directory, f"cannot list spool directory: {exc.strerror}") from exc
        prev = 0
        for i, (base, path) in enumerate(names):
            seg = _Segment(base, path)
            prev = self._scan(seg, prev, last=i == len(names) - 1)
            self._segs.append(seg)
            self._total += seg.size
        self._next_seq = max(prev, self._acked_seq, names[-1][0] - 1 if names else 0) + 1
        # Whole segments already acknowledged (a crash came between the ack and their deletion).
        while len(self._segs) > 1 and self._segs[0].last_seq <= self._acked_seq:
            self._delete(self._segs.pop(0))
        if self._segs:
            path = self._segs[-1].path
            try:
                self._cur_off, self._head_acked = self._position_after(self._acked_seq)
                self._wfd = os.open(path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                raise SpoolError(path, f"cannot open segment: {exc.strerror}") from exc

    def _read_ack(self) -> int:
        path = self.directory / "ack"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise SpoolError(path, f"cannot read ack position: {exc.strerror}") from exc
        if len(data) == _ACK.size:
            magic, seq, crc = _ACK.unpack(data)
            if magic == _ACK_MAGIC and zlib.crc32(data[:-4]) == crc:
                return int(seq)
        # It is replaced atomically, so this is damage after the fact: replaying everything is the
        # at-least-once answer.
        self._counts["corrupt"] += 1
        return 0

    def _scan(self, seg: _Segment, prev: int, *, last: bool) -> int:
        """Validate every frame of ``seg``; returns the highest seq seen (``prev`` when none)."""
        try:
            fd = os.open(seg.path, os.O_RDWR if last else os.O_RDONLY)
        except OSError as exc:
            raise SpoolError(seg.path, f"cannot open segment: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            reader = _Reader(fd, size)
            off = 0
            while off < size:
                step = _next_frame(reader, off, size, prev)
                if isinstance(step, _Frame):
                    seg.records += 1
                    seg.last_seq = prev = step.seq
                    off = step.end
                elif step.torn and last:
                    # A crash mid-append: the caller was never told this record was durable.
                    os.ftruncate(fd, off)
                    os.fsync(fd)
                    self._counts["torn_tail"] += 1
                    size = off
                else:
                    self._note_corrupt(seg, off, step.end)
                    off = step.end
            seg.size = size
        except OSError as exc:
            raise SpoolError(seg.path, f"cannot read segment: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return prev

    def _position_after(self, seq: int) -> tuple[int, int]:
        """Offset in the head segment of the first frame after ``seq``, and the valid records before it."""
        head = self._segs[0]
        count = 0
        with contextlib.closing(self._walk(0, 0)) as frames:
            for idx, start, _end, fseq, _ in frames:
                if idx != 0 or fseq > seq:
                    return (start if idx == 0 else head.size), count
                count += 1
        return head.size, count

    # -- reading ---------------------------------------------------------------------------------

    def _note_corrupt(self, seg: _Segment, start: int, end: int) -> None:
        seg.skips[start] = end
        self._counts["corrupt"] += 1
        self._counts["corrupt_bytes"] += end - start

    def _walk(self, seg_idx: int, off: int) -> Generator[tuple[int, int, int, int, bytes], None, None]:
        """Valid frames from (segment index, offset) on: (index, start, end, seq, payload).

        Damaged regions met for the first time (damage after open) are counted and remembered.
        """
        prev = 0
        for idx in range(seg_idx, len(self._segs)):
            seg = self._segs[idx]
            start = off if idx == seg_idx else 0
            if start >= seg.size:
                continue
            fd = os.open(seg.path, os.O_RDONLY)
            try:
                reader = _Reader(fd, seg.size)
                pos = start
                while pos < seg.size:
                    if pos in seg.skips:
                        pos = seg.skips[pos]
                        continue
                    step = _next_frame(reader, pos, seg.size, prev)
                    if isinstance(step, _Bad):
                        self._note_corrupt(seg, pos, step.end)
                        pos = step.end
                        continue
                    prev = step.seq
                    yield idx, pos, step.end, step.seq, step.payload
                    pos = step.end
            finally:
                os.close(fd)

    def peek(self, n: int, *, after: int | None = None) -> list[SpoolEntry]:
        """Up to ``n`` of the oldest unacknowledged records, in order; nothing is removed.

        With ``after``, only records with a higher seq (to read ahead while earlier ones are in
        flight). Reading on from the previous peek's last seq is cheap: it resumes where that ended.
        Raises `SpoolError` on a read failure (the spool stays usable).
        """
        with self._lock:
            self._check_open()
            floor = max(self._acked_seq, after or 0)
            seg_idx, off = 0, self._cur_off
            if self._hint is not None and after is not None and self._hint[0] == after:
                for i, seg in enumerate(self._segs):
                    if seg.base == self._hint[1]:
                        seg_idx, off = i, self._hint[2] if i else max(self._hint[2], self._cur_off)
                        break
            out: list[SpoolEntry] = []
            if n <= 0 or not self._segs:
                return out
            try:
                with contextlib.closing(self._walk(seg_idx, off)) as frames:
                    for idx, start, end, seq, payload in frames:
                        if seq <= floor:
                            continue
                        try:
                            record = _DECODER.decode(payload)
                        except msgspec.DecodeError:
                            seg = self._segs[idx]
                            seg.skips[start] = end
                            seg.records -= 1
                            self._counts["undecodable"] += 1
                            continue
                        out.append(SpoolEntry(seq, record))
                        self._hint = (seq, self._segs[idx].base, end)
                        if len(out) >= n:
                            break
            except OSError as exc:
                raise SpoolError(self.directory, f"cannot read spool: {exc.strerror}") from exc
            return out

    # -- writing ---------------------------------------------------------------------------------

    def append(self, record: SpoolRecord) -> int | None:
        """Write one record durably; returns its seq, or ``None`` if it alone exceeds ``max_bytes``."""
        return self.append_many((record,))[0]

    def append_many(self, records: Iterable[SpoolRecord]) -> list[int | None]:
        """Write records durably with one fdatasync per segment touched; returns their seqs in order.

        Makes room by dropping the oldest segments first (counted). On `SpoolError` a prefix of the
        batch may be durable (it will be read back) and the spool is closed: reopen it.
        """
        with self._lock:
            self._check_open()
            out: list[int | None] = []
            pending: list[bytes] = []
            try:
                for record in records:
                    payload = _ENCODER.encode(record)
                    size = HEADER_BYTES + len(payload)
                    if size > self.max_bytes or len(payload) > _MAX_PAYLOAD:
                        self._counts["dropped_records"] += 1
                        self._counts["dropped_bytes"] += size
                        self._counts["dropped_oversize"] += 1
                        out.append(None)
                        continue
                    if self._total + size > self.max_bytes:
                        self._flush(pending)
                        while self._segs and self._total + size > self.max_bytes:
                            self._drop_oldest()
                    active = self._segs[-1] if self._wfd is not None else None
                    if active is None or (active.size and active.size + size > self.segment_bytes):
                        self._flush(pending)
                        active = self._roll()
                    seq = self._next_seq
                    self._next_seq += 1
                    pending.append(_encode_frame(seq, payload))
                    active.size += size
                    active.records += 1
                    active.last_seq = seq
                    self._total += size
                    out.append(seq)
                self._flush(pending)
            except OSError as exc:
                path = self._segs[-1].path if self._segs else self.directory
                self._fail()
                raise SpoolError(path, f"cannot append: {exc.strerror}; the spool is closed") from exc
            return out

    def _flush(self, pending: list[bytes]) -> None:
        if not pending:
            return
        assert self._wfd is not None
        data = b"".join(pending)
        view = memoryview(data)
        while view:
            written = os.write(self._wfd, view)
            view = view[written:]
        os.fdatasync(self._wfd)
        self._counts["appended"] += len(pending)
        pending.clear()

    def _roll(self) -> _Segment:
        """Close the active segment and start a new one named after the next seq."""
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        seg = _Segment(self._next_seq, self.directory / f"{self._next_seq:020d}{_SUFFIX}")
        self._wfd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        _fsync_dir(self.directory)  # the file's name must be durable before its records are
        self._segs.append(seg)
        return seg

    def _drop_oldest(self) -> None:
        seg = self._segs.pop(0)
        lost = seg.records - self._head_acked
        if lost > 0:
            self._counts["dropped_records"] += lost
            self._counts["dropped_bytes"] += seg.size - self._cur_off
        if not self._segs and self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        self._total -= seg.size
        self._cur_off = self._head_acked = 0
        if self._hint is not None and self._hint[1] == seg.base:
            self._hint = None
        self._delete(seg)

    def _delete(self, seg: _Segment) -> None:
        # Not fsync'ing the directory here: a deletion lost to a crash only brings back acknowledged
        # records (deleted again on open) or dropped ones (replayed: at-least-once still holds).
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpoolError(seg.path, f"cannot delete segment: {exc.strerror}") from exc

    def ack(self, upto: int) -> int:
        """Acknowledge every record with seq <= ``upto``; returns how many were newly acknowledged.

        The position is durable when this returns; segments left fully acknowledged are deleted
        (the active one is kept and written on). ``upto`` at or below the current position is a
        no-op; above the last appended seq raises `ValueError`. On `SpoolError` the spool is closed.
        """
        with self._lock:
            self._check_open()
            if upto <= self._acked_seq:
                return 0
            if upto >= self._next_seq:
                raise ValueError(f"cannot ack seq {upto}: the last appended seq is {self._next_seq - 1}")
            try:
                new_idx, new_off, count, head_count = 0, self._cur_off, 0, self._head_acked
                stopped = False
                if self._segs:
                    with contextlib.closing(self._walk(0, self._cur_off)) as frames:
                        for idx, start, end, seq, _ in frames:
                            if seq > upto:
                                if idx != new_idx:
                                    head_count = 0
                                new_idx, new_off, stopped = idx, start, True
                                break
                            if idx != new_idx:
                                new_idx, head_count = idx, 0
                            new_off, count, head_count = end, count + 1, head_count + 1
                    if not stopped:
                        new_idx = len(self._segs) - 1
                        last = self._segs[new_idx]
                        new_off, head_count = last.size, last.records
                self._write_ack(upto)
                self._acked_seq = upto
                self._counts["acked"] += count
                for seg in self._segs[:new_idx]:
                    self._total -= seg.size
                    self._delete(seg)
                del self._segs[:new_idx]
                self._cur_off, self._head_acked = new_off, head_count
                return count
            except OSError as exc:
                self._fail()
                raise SpoolError(self.directory, f"cannot ack: {exc.strerror}; the spool is closed") from exc
            except SpoolError:
                self._fail()
                raise

    def _write_ack(self, seq: int) -> None:
        head = struct.pack("<8sQ", _ACK_MAGIC, seq)
        data = head + struct.pack("<I", zlib.crc32(head))
        tmp = self.directory / "ack.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / "ack")
        _fsync_dir(self.directory)

    # -- state -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot: what is queued on disk now, and counters since this open."""
        with self._lock:
            records = sum(s.records for s in self._segs) - self._head_acked
            return {
                "queued_records": records,
                "queued_bytes": self._total - self._cur_off if self._segs else 0,
                "disk_bytes": self._total,
                "segments": len(self._segs),
                "next_seq": self._next_seq,
                "acked_seq": self._acked_seq,
                **self._counts,
            }

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(self.directory, "spool is closed")

    def _fail(self) -> None:
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._wfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wfd)
            self._wfd = None
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def close(self) -> None:
        """Release the files and the lock. Safe to call more than once; records are already durable."""
        with self._lock:
            self._closed = True
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Spool({str(self.directory)!r}, max_bytes={self.max_bytes}, segment_bytes={self.segment_bytes})"
        )


class AsyncSpool:
    """`Spool` for an asyncio loop: each blocking call runs in a worker thread (`asyncio.to_thread`)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    @classmethod
    async def open(cls, directory: Path | str, *, max_bytes: int, segment_bytes: int) -> AsyncSpool:
        spool = await asyncio.to_thread(Spool, directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
        return cls(spool)

    async def append(self, record: SpoolRecord) -> int | None:
        return await asyncio.to_thread(self.spool.append, record)

    async def append_many(self, records: list[SpoolRecord]) -> list[int | None]:
        return await asyncio.to_thread(self.spool.append_many, records)

    async def peek(self, n: int, *, after: int | None = None) -> list[SpoolEntry]:
        return await asyncio.to_thread(self.spool.peek, n, after=after)

    async def ack(self, upto: int) -> int:
        return await asyncio.to_thread(self.spool.ack, upto)

    def stats(self) -> dict[str, int]:
        return self.spool.stats()

    async def close(self) -> None:
        await asyncio.to_thread(self.spool.close)
