"""The edge's stages in one event loop, with a bounded queue between each pair:

    input ──(events, bounded: shed or block)──▶ score ──(anomalies, bounded: waits)──▶ spool writer

* **ingest** takes decoded events from the Falco input and queues them with their arrival time. When
  the queue is full it sheds the event and counts it (``queue_full``) for live inputs, where Falco
  will not wait, or waits for room for files, which can.
* **score** takes whatever is waiting, up to ``max_batch`` events, and never waits to fill a batch:
  alone, an event is scored at once; under load, the added latency is bounded by one batch's work.
  It runs `Detector.process` and hands the batch result and per-event latencies (arrival → decision)
  to ``on_batch`` (metrics). Anomalies go to the spool writer's queue; when that is full, scoring
  waits: anomalies are never shed, events are (counted) at the front instead.
* **spool writer** appends anomalies to the disk spool in group commits (one fsync per batch) and
  wakes the forwarder, which publishes them to Kafka and acks the spool once delivered.

`stop` closes the input; every event accepted before is still scored and every anomaly spooled
before `run` returns. No stage holds an unbounded buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from aerie.edge.detector import BatchResult, Detector
from aerie.edge.inputs.base import FalcoInput
from aerie.edge.spool import AsyncSpool, SpoolRecord
from aerie.models.scorer import ScorerError
from aerie.proto.event import FalcoEvent

__all__ = ["BatchHook", "Pipeline", "PipelineStats"]

log = logging.getLogger("aerie.edge.pipeline")

BatchHook = Callable[[BatchResult, npt.NDArray[np.int64], npt.NDArray[np.int64], int], None]
"""``on_batch(result, latency_ns, queue_wait_ns, spool_ns)``: per-event arrival→decision and
arrival→batch-start times, and the last spool write's duration (0 when none since the last batch)."""

_SPOOL_BATCH: Final = 1_024
_INGEST_SLICE: Final = 1_024
_END: Final = None


class PipelineStats:
    """Counts since start. Read from any thread (plain ints; a torn read costs one scrape's accuracy)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.scored = 0
        self.anomalies = 0
        self.spooled = 0
        self.batches = 0
        self.shed: Counter[str] = Counter()

    def snapshot(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "scored": self.scored,
            "anomalies": self.anomalies,
            "spooled": self.spooled,
            "batches": self.batches,
            "shed": dict(self.shed),
        }


class Pipeline:
    """Input → detector → spool, in the running event loop. See the module docstring."""

    def __init__(
        self,
        source: FalcoInput,
        detector: Detector,
        spool: AsyncSpool,
        *,
        queue_size: int = 16_384,
        max_batch: int = 64,
        anomaly_queue: int = 4_096,
        shed: bool = True,
        on_batch: BatchHook | None = None,
        on_spooled: Callable[[], None] | None = None,
    ) -> None:
        if queue_size < 1 or max_batch < 1 or anomaly_queue < 1:
            raise ValueError("queue_size, max_batch and anomaly_queue must be >= 1")
        self.source = source
        self.detector = detector
        self.spool = spool
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.shed = shed
        self.stats = PipelineStats()
        self._on_batch = on_batch
        self._on_spooled = on_spooled
        self._events: deque[tuple[FalcoEvent, int]] = deque()
        self._anomalies: asyncio.Queue[SpoolRecord | None] = asyncio.Queue(maxsize=anomaly_queue)
        self._has_events = asyncio.Event()
        self._has_room = asyncio.Event()
        self._input_done = False
        self._spool_ns = 0
        self.running = False

    @property
    def queued(self) -> int:
        """Events waiting to be scored."""
        return len(self._events)

    async def run(self) -> None:
        """Run every stage until the input ends (or `stop`), then drain; a stage's failure propagates."""
        self.running = True
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest(), name="aerie-edge-ingest")
                tasks.create_task(self._score(), name="aerie-edge-score")
                tasks.create_task(self._write(), name="aerie-edge-spool-writer")
        finally:
            self.running = False

    async def stop(self) -> None:
        """Close the input; `run` returns once what was accepted is scored and spooled."""
        await self.source.close()

    # -- stages ---------------------------------------------------------------------------------

    async def _ingest(self) -> None:
        events, cap, stats = self._events, self.queue_size, self.stats
        clock = time.perf_counter_ns
        since_yield = 0
        try:
            async for event in self.source.events():
                if len(events) >= cap:
                    if self.shed:
                        stats.shed["queue_full"] += 1
                        continue
                    while len(events) >= cap:
                        self._has_room.clear()
                        await self._has_room.wait()
                events.append((event, clock()))
                stats.accepted += 1
                self._has_events.set()
                # An input with data buffered yields without suspending: let the rest of the loop
                # (scoring, the ops endpoints) run now and then. Not every batch: the input must be
                # drained faster than it is scored, so an overload shows here, counted, rather than
                # in the input's own buffers or in Falco.
                since_yield += 1
                if since_yield >= _INGEST_SLICE:
                    since_yield = 0
                    await asyncio.sleep(0)
        finally:
            self._input_done = True
            self._has_events.set()

    async def _score(self) -> None:
        events, stats, detector = self._events, self.stats, self.detector
        clock = time.perf_counter_ns
        while True:
            if not events:
                if self._input_done:
                    break
                self._has_events.clear()
                await self._has_events.wait()
                continue
            n = min(len(events), self.max_batch)
            batch = [events.popleft() for _ in range(n)]
            self._has_room.set()
            started = clock()
            stamps = np.fromiter((t for _, t in batch), np.int64, n)
            try:
                result = detector.process([e for e, _ in batch])
            except ScorerError as exc:
                stats.shed["model_error"] += n
                log.error("scoring failed; batch dropped", extra={"events": n, "error": str(exc)})
                continue
            decided = clock()
            stats.batches += 1
            stats.scored += n - result.unscored
            if result.unscored:
                stats.shed["non_finite"] += result.unscored
            for record in result.records:
                await self._anomalies.put(record)
            stats.anomalies += len(result.records)
            if self._on_batch is not None:
                spool_ns, self._spool_ns = self._spool_ns, 0
                self._on_batch(result, decided - stamps, started - stamps, spool_ns)
            await asyncio.sleep(0)
        await self._anomalies.put(_END)

    async def _write(self) -> None:
        queue, stats = self._anomalies, self.stats
        ended = False
        while not ended:
            first = await queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _SPOOL_BATCH and not queue.empty():
                record = queue.get_nowait()
                if record is None:
                    ended = True
                    break
                batch.append(record)
            started = time.perf_counter_ns()
            seqs = await self.spool.append_many(batch)
            self._spool_ns = time.perf_counter_ns() - started
            stats.spooled += sum(1 for s in seqs if s is not None)
            # A record larger than the whole spool is dropped by the spool and counted there.
            if self._on_spooled is not None:
                self._on_spooled()
