"""The edge's spool → Kafka forwarder: reads the disk spool in order and publishes it, acknowledging a
record in the spool only once Kafka confirmed it.

Every anomaly is first appended, fsync'd, to the `Spool`; the `Forwarder` is the only reader. A
record leaves the spool (`Spool.ack`) only after its delivery report said delivered (``acks=all``),
so killing the edge at any moment loses nothing that was spooled: whatever was read and not yet
acknowledged is read and sent again after a restart. Delivery is therefore at least once; consumers
de-duplicate by the envelope's event id.

Flow
----
* A bounded window: at most ``max_in_flight`` records are read from the spool and not yet
  acknowledged (held in memory until confirmed, so a resend does not re-read the spool). A full window
  stops reading; the spool holds the rest (bounded itself, with counted drops of the oldest records
  when it is full).
* Acknowledgement covers the contiguous delivered prefix of sequence numbers: deliveries to different
  partitions complete out of order, and ``ack`` is cumulative. Acks are batched (``ack_interval_s``),
  each one an fsync.
* A failed delivery (``on_failed``: a message timeout after a long outage, a purge, ...) marks its
  record for resending; after a backoff (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``,
  reset by any delivery) every failed record is published again in sequence order, before anything new
  is read, so order within a key holds as far as Kafka allows. Records still in flight are never sent
  twice at once. `PublishBackpressure` (the publisher's local queue is full) pauses reading briefly and
  retries the same record.
* A record that can never be produced (`RecordRejected` at publish, or a delivery failing with a
  reason in `PERMANENT_REASONS`) would block the spool forever: it is acknowledged without delivery,
  counted in `ForwarderStats.dropped` by reason and logged with its seq. ``not_authorized`` is not
  permanent: the settings can be fixed, so those records wait like any others.
* A producer in a fatal state (`PublisherFailed`) is replaced by a new `KafkaPublisher`; the old one's
  outstanding records come back as failed and are resent.

Broker trouble never raises out of `Forwarder.run`: records wait (in librdkafka's queue up to the
window, the rest in the spool), `Forwarder.broker_up` says whether a broker connection is up, and the
transitions are logged once each (``aerie.edge.forwarder``, with ``backlog``, ``in_flight`` and
``acked_seq`` fields). `SpoolError` does propagate: the spool belongs to the daemon, which must reopen
it (after a failed ``ack`` the spool closes itself).

Threading and asyncio
---------------------
`Forwarder.run` runs on one event loop and keeps all its bookkeeping there. Spool calls run in worker
threads (`asyncio.to_thread`); `KafkaPublisher.publish` never blocks; delivery reports arrive on the
publisher's poller thread, are queued, and wake the loop with one ``call_soon_threadsafe`` per batch,
not per record. `Forwarder.wake` may be called from any thread after new records were appended; without
it the forwarder still notices them within ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from typing import Final

import msgspec

from aerie.edge.errors import PublishBackpressure, PublisherClosed, PublisherFailed, RecordRejected
from aerie.edge.kafka import KafkaConfig, KafkaPublisher, OutboundRecord
from aerie.edge.spool import Spool, SpoolEntry, SpoolRecord

__all__ = ["PERMANENT_REASONS", "Forwarder", "ForwarderStats"]

_log = logging.getLogger("aerie.edge.forwarder")

#: Delivery-failure reasons that belong to the record itself: sending it again can never succeed.
PERMANENT_REASONS: Final[frozenset[str]] = frozenset({"too_large", "rejected_by_broker"})

# A record in the window is in flight (sent, no report yet), failed (to be resent) or done
# (delivered, or dropped as permanently unproducible).
_SENT: Final = 0
_FAILED: Final = 1
_DONE: Final = 2

# How many records to publish between yields to the event loop (keeps one slice to a few ms).
_YIELD_EVERY: Final = 256


class ForwarderStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the forwarder. Counters count since this forwarder was built."""

    sent: int
    """Records handed to the publisher, resends included."""
    delivered: int
    """Delivery confirmations."""
    resent: int
    """Sends of a record whose earlier send failed."""
    failed: dict[str, int]
    """Failed deliveries by reason (each was resent, or dropped if permanent)."""
    dropped: dict[str, int]
    """Records that can never be produced, acknowledged without delivery, by reason."""
    backpressure: int
    """Publishes refused because the publisher's local queue was full (retried)."""
    rewinds: int
    """Times failed records were scheduled for resending."""
    publisher_rebuilds: int
    """Publishers replaced after a fatal producer error."""
    in_flight: int
    """Records sent and not yet reported on."""
    window: int
    """Records read from the spool and not yet acknowledged (at most ``max_in_flight``)."""
    acked_seq: int
    """The highest seq acknowledged in the spool."""
    backlog: int | None
    """Unacknowledged records in the spool as of the last read or ack (None before the first)."""
    broker_up: bool


class _Slot:
    __slots__ = ("record", "state")

    def __init__(self, record: SpoolRecord | None, state: int) -> None:
        self.record = record  # kept until done, to resend without re-reading the spool
        self.state = state


class Forwarder:
    """Forwards a `Spool` to Kafka, at least once, in order (see the module docstring).

    Build it, ``await run()`` in a task, call `wake` after appending, and ``await stop(timeout)`` to
    shut down. ``config`` builds the `KafkaPublisher` at once (`KafkaConfigError` for bad settings).
    """

    def __init__(
        self,
        spool: Spool,
        config: KafkaConfig,
        *,
        max_in_flight: int = 10_000,
        read_batch: int = 1_000,
        poll_interval_s: float = 0.5,
        ack_interval_s: float = 0.1,
        retry_backoff_s: float = 0.5,
        retry_backoff_max_s: float = 10.0,
    ) -> None:
        if max_in_flight < 1 or read_batch < 1:
            raise ValueError(f"max_in_flight and read_batch must be >= 1, got {max_in_flight}, {read_batch}")
        if min(poll_interval_s, retry_backoff_s) <= 0 or ack_interval_s < 0:
            raise ValueError("poll_interval_s and retry_backoff_s must be > 0, ack_interval_s >= 0")
        self._spool = spool
        self._config = config
        self._max_in_flight = max_in_flight
        self._read_batch = read_batch
        self._poll_interval = poll_interval_s
        self._ack_interval = ack_interval_s
        self._backoff_base = retry_backoff_s
        self._backoff_max = max(retry_backoff_s, retry_backoff_max_s)
        # Until the first statistics arrive the publisher says "down": do not log that as an outage.
        self._broker_grace = 1.0 + 3 * config.stats_interval_ms / 1000
        self._publisher = self._new_publisher()

        # Loop-owned ledger: seqs in the window in order, and their slots.
        self._window: deque[int] = deque()
        self._slots: dict[int, _Slot] = {}
        self._failed_seqs: set[int] = set()
        self._cursor = 0  # highest seq read from the spool
        self._done_upto = 0  # highest seq of the contiguous done prefix
        self._acked = 0
        self._backlog: int | None = None
        self._in_flight = 0
        self._retry_at: float | None = None  # when to resend failed records
        self._backoff = retry_backoff_s
        self._reads_paused_until = 0.0
        self._maybe_more = True  # the spool may hold records past the cursor
        self._last_peek = 0.0
        self._last_ack = 0.0
        self._broker_logged: bool | None = None
        self._started_at = 0.0

        # Counters; the dicts are guarded so `stats` can be read from any thread.
        self._counts_lock = threading.Lock()
        self._sent = self._delivered = self._resent = 0
        self._backpressure = self._rewinds = self._rebuilds = 0
        self._failed: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

        # Cross-thread: delivery reports (token, failure reason or None) and the loop wake-up.
        self._reports: deque[tuple[object, str | None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nudge_pending = False
        self._activity = asyncio.Event()

        self._running = False
        self._stopping = False
        self._drain_deadline = 0.0
        self._closed = False
        self._finished = asyncio.Event()
        self._left = 0

    def _new_publisher(self) -> KafkaPublisher:
        return KafkaPublisher(self._config, on_failed=self._hook_failed, on_delivered=self._hook_delivered)

    # -- public state --------------------------------------------------------------------------

    @property
    def publisher(self) -> KafkaPublisher:
        """The current publisher (replaced after a fatal producer error)."""
        return self._publisher

    @property
    def broker_up(self) -> bool:
        """Whether a broker connection is up now (`KafkaPublisher.broker_up`)."""
        return self._publisher.broker_up

    @property
    def stats(self) -> ForwarderStats:
        with self._counts_lock:
            failed, dropped = dict(self._failed), dict(self._dropped)
        return ForwarderStats(
            sent=self._sent,
            delivered=self._delivered,
            resent=self._resent,
            failed=failed,
            dropped=dropped,
            backpressure=self._backpressure,
            rewinds=self._rewinds,
            publisher_rebuilds=self._rebuilds,
            in_flight=self._in_flight,
            window=len(self._window),
            acked_seq=self._acked,
            backlog=self._backlog,
            broker_up=self._publisher.broker_up,
        )

    def __repr__(self) -> str:
        return f"Forwarder(spool={self._spool!r}, publisher={self._publisher!r})"

    # -- cross-thread entry points -------------------------------------------------------------

    def wake(self) -> None:
        """New records were appended: read them now rather than at the next poll. Any thread."""
        self._maybe_more = True
        self._nudge()

    def _hook_delivered(self, token: object) -> None:
        self._reports.append((token, None))
        self._nudge()

    def _hook_failed(self, record: OutboundRecord, reason: str) -> None:
        self._reports.append((record.token, reason))
        self._nudge()

    def _nudge(self) -> None:
        # One call_soon_threadsafe per burst: the flag is cleared on the loop before the event is set,
        # and everything queued before that is taken by the step the event wakes.
        loop = self._loop
        if loop is None or self._nudge_pending:
            return
        self._nudge_pending = True
        try:
            loop.call_soon_threadsafe(self._on_nudge)
        except RuntimeError:  # the loop is closed: nothing is left to wake
            self._nudge_pending = False

    def _on_nudge(self) -> None:
        self._nudge_pending = False
        self._activity.set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forward until `stop`; then drain, acknowledge and close the publisher. Call once (after
        `stop` it returns at once).

        Never raises on broker trouble (it waits). Raises `SpoolError` when the spool fails (the
        publisher is closed first; unacknowledged records stay in the spool).
        """
        if self._running:
            raise RuntimeError("Forwarder.run() can be called once")
        self._running = True
        if self._closed:
            self._finished.set()
            return
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        try:
            stats = await asyncio.to_thread(self._spool.stats)
            self._acked = self._done_upto = self._cursor = stats["acked_seq"]
            self._backlog = stats["queued_records"]
            self._publisher.start()
            while not self._stopping:
                await self._step()
            await self._shutdown()
        finally:
            if not self._closed:  # cancelled, or the spool failed: blocks the loop up to about 1 s
                self._closed = True
                self._publisher.close(timeout=0)
                self._left = len(self._window)
            self._finished.set()

    async def stop(self, drain_timeout_s: float = 5.0) -> int:
        """Stop reading, wait up to ``drain_timeout_s`` for records in flight, acknowledge what was
        delivered and close the publisher (what is still outstanding is purged). Returns how many
        records read from the spool were left unacknowledged: they stay in the spool and are sent
        again after the next start (a record delivered behind an undelivered one is sent twice).
        """
        if not self._stopping:
            self._stopping = True
            self._drain_deadline = time.monotonic() + max(0.0, drain_timeout_s)
            self._activity.set()
        if self._running:
            await self._finished.wait()
        elif not self._closed:
            self._closed = True
            await asyncio.to_thread(self._publisher.close, 0)
        return self._left

    async def _shutdown(self) -> None:
        while True:
            self._activity.clear()
            self._take_reports()
            self._watch_broker()
            now = time.monotonic()
            if self._in_flight == 0 or now >= self._drain_deadline:
                break
            if self._ack_due(now):
                await self._ack()
            await self._idle(min(self._drain_deadline - now, self._poll_interval))
        self._closed = True
        # Hands every record still outstanding back as purged; those reports are taken below.
        await asyncio.to_thread(self._publisher.close, 0)
        self._take_reports()
        if self._done_upto > self._acked:
            await self._ack()
        self._left = len(self._window)
        _log.info(
            "forwarder stopped",
            extra={"acked_seq": self._acked, "undelivered": self._left, "delivered": self._delivered},
        )

    # -- the loop ------------------------------------------------------------------------------

    async def _step(self) -> None:
        self._activity.clear()
        self._take_reports()
        self._watch_broker()
        if self._publisher.failed_fatally is not None:
            await self._replace_publisher()
            return
        now = time.monotonic()
        if self._ack_due(now):
            await self._ack()
            return
        timeout = self._poll_interval
        if self._failed_seqs:
            # Failed records go again before anything new is read, in seq order.
            if self._retry_at is None:
                self._retry_at = now
            if now >= self._retry_at:
                await self._resend()
                return
            timeout = self._retry_at - now
        elif now < self._reads_paused_until:
            timeout = self._reads_paused_until - now
        else:
            if now - self._last_peek >= self._poll_interval:
                self._maybe_more = True
            if self._maybe_more and len(self._window) < self._max_in_flight:
                await self._read()
                return
        if self._done_upto > self._acked:
            timeout = min(timeout, self._last_ack + self._ack_interval - now)
        await self._idle(timeout)

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._activity.wait()
        except TimeoutError:
            pass

    def _ack_due(self, now: float) -> bool:
        return self._done_upto > self._acked and now - self._last_ack >= self._ack_interval

    async def _ack(self) -> None:
        upto = self._done_upto
        self._last_ack = time.monotonic()
        self._backlog = await asyncio.to_thread(self._ack_sync, upto)
        self._acked = upto

    def _ack_sync(self, upto: int) -> int:
        self._spool.ack(upto)
        return self._spool.stats()["queued_records"]

    def _peek_sync(self, n: int, after: int) -> tuple[list[SpoolEntry], int]:
        entries = self._spool.peek(n, after=after)
        return entries, self._spool.stats()["queued_records"]

    async def _read(self) -> None:
        n = min(self._read_batch, self._max_in_flight - len(self._window))
        # Cleared before reading, so a wake() that lands during the read is not lost.
        self._maybe_more = False
        self._last_peek = time.monotonic()
        entries, self._backlog = await asyncio.to_thread(self._peek_sync, n, self._cursor)
        if len(entries) >= n:
            self._maybe_more = True
        for i, entry in enumerate(entries):
            if self._stopping:
                return
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if not self._publish_new(entry):
                # Not taken: read again from the same place once the pause (if any) is over.
                self._maybe_more = True
                return
        self._advance()

    def _publish_new(self, entry: SpoolEntry) -> bool:
        seq, record = entry.seq, entry.record
        try:
            self._publisher.publish(record.value, record.key, list(record.headers), token=seq)
        except PublishBackpressure:
            self._backpressure += 1
            self._reads_paused_until = time.monotonic() + self._backoff_base
            return False
        except RecordRejected as exc:
            self._cursor = seq
            self._window.append(seq)
            self._slots[seq] = _Slot(None, _DONE)
            self._drop(seq, exc.reason, str(exc))
            return True
        except (PublisherFailed, PublisherClosed):
            return False  # replaced by the next step (fatal), or we are stopping (closed)
        self._cursor = seq
        self._window.append(seq)
        self._slots[seq] = _Slot(record, _SENT)
        self._in_flight += 1
        self._sent += 1
        return True

    async def _resend(self) -> None:
        self._retry_at = None
        for i, seq in enumerate(sorted(self._failed_seqs)):
            if self._stopping:
                return
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            slot = self._slots[seq]
            assert slot.record is not None
            record = slot.record
            try:
                self._publisher.publish(record.value, record.key, list(record.headers), token=seq)
            except PublishBackpressure:
                self._backpressure += 1
                self._retry_at = time.monotonic() + self._backoff_base
                return
            except RecordRejected as exc:
                self._failed_seqs.discard(seq)
                slot.state, slot.record = _DONE, None
                self._drop(seq, exc.reason, str(exc))
                continue
            except (PublisherFailed, PublisherClosed):
                self._retry_at = time.monotonic()
                return
            self._failed_seqs.discard(seq)
            slot.state = _SENT
            self._in_flight += 1
            self._sent += 1
            self._resent += 1
        self._advance()

    def _take_reports(self) -> None:
        delivered = failed = 0
        reasons: Counter[str] = Counter()
        while self._reports:
            token, reason = self._reports.popleft()
            slot = self._slots.get(token) if isinstance(token, int) else None
            if slot is None or slot.state != _SENT:
                _log.warning("delivery report for a record not in flight ignored", extra={"token": token})
                continue
            assert isinstance(token, int)
            self._in_flight -= 1
            if reason is None:
                slot.state, slot.record = _DONE, None
                delivered += 1
            elif reason in PERMANENT_REASONS:
                slot.state, slot.record = _DONE, None
                self._drop(token, reason, "delivery failed")
            else:
                slot.state = _FAILED
                self._failed_seqs.add(token)
                reasons[reason] += 1
                failed += 1
        if delivered:
            self._delivered += delivered
            self._backoff = self._backoff_base
        if failed:
            with self._counts_lock:
                self._failed.update(reasons)
            if not self._stopping and self._retry_at is None:
                self._retry_at = time.monotonic() + self._backoff
                self._rewinds += 1
                _log.warning(
                    "records not delivered; resending them",
                    extra={
                        "failed": dict(reasons),
                        "retry_in_s": round(self._backoff, 3),
                        "from_seq": min(self._failed_seqs),
                    },
                )
                self._backoff = min(self._backoff * 2, self._backoff_max)
        self._advance()

    def _advance(self) -> None:
        """Move the done prefix forward (acknowledged at the next `_ack`)."""
        window, slots = self._window, self._slots
        while window and slots[window[0]].state == _DONE:
            seq = window.popleft()
            del slots[seq]
            self._done_upto = seq

    def _drop(self, seq: int, reason: str, detail: str) -> None:
        with self._counts_lock:
            self._dropped[reason] += 1
        _log.error(
            "record can never be produced; acknowledged without delivery",
            extra={"seq": seq, "reason": reason, "detail": detail},
        )

    async def _replace_publisher(self) -> None:
        old = self._publisher
        _log.error(
            "Kafka producer failed fatally; replacing it",
            extra={"error": old.failed_fatally, "in_flight": self._in_flight},
        )
        self._publisher = self._new_publisher()
        self._publisher.start()
        self._rebuilds += 1
        # The old producer's outstanding records come back as failed reports and are resent.
        await asyncio.to_thread(old.close, 0)

    def _watch_broker(self) -> None:
        up = self._publisher.broker_up
        if up == self._broker_logged:
            return
        if (
            not up
            and self._broker_logged is None
            and time.monotonic() - self._started_at < self._broker_grace
        ):
            return
        self._broker_logged = up
        extra = {"backlog": self._backlog, "in_flight": self._in_flight, "acked_seq": self._acked}
        if up:
            _log.info("Kafka broker up; forwarding the spool", extra=extra)
        else:
            _log.warning(
                "Kafka broker down; records wait in the spool",
                extra=extra | {"error": self._publisher.last_error},
            )
