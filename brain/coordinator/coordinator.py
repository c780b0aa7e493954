"""`Coordinator`: admits anomalies as incidents and runs each through the graph on a bounded worker pool.

Durability contract:

* `Coordinator.admit` returns True only after the incident row is committed in the audit store; the
  Kafka consumer commits its offset after that. A re-delivered anomaly (same event id) returns False
  and changes nothing.
* Every graph run uses ``durability="sync"``: a step's checkpoint is written before the next step
  starts, so a side effect is never sent from a step whose predecessor's result could still be lost.
* After a crash (SIGKILL, OOM) `Coordinator.resume_pending` picks every unfinished incident up from
  its last checkpoint; incidents waiting for a human stay waiting.
* `Coordinator.decide` resumes an escalated incident with the human's decision, from any process that
  shares the checkpoint and audit stores (``aerie cases approve`` runs the remaining steps itself).

Failure modes: agent trouble escalates the incident (see `aerie.brain.coordinator.graph`); anything
unexpected (a database error, a bug) marks the incident ``stalled`` with the reason and it is retried
by the next `resume_pending`; `CaseError` for a decision on an incident that is unknown or not waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command

from aerie.brain.audit import (
    DECISIONS,
    OPEN_STATUSES,
    AuditStore,
    DecisionRecord,
    IncidentRecord,
)
from aerie.brain.coordinator.checkpoints import open_checkpointer
from aerie.brain.coordinator.graph import IncidentState, IncidentSteps, build_graph
from aerie.brain.metrics import BrainMetrics
from aerie.proto.agents import AgentCaller
from aerie.proto.envelope import Anomaly, TraceContext
from aerie.proto.logs import trace_scope

__all__ = ["CaseError", "Coordinator", "incident_id_for"]

log = logging.getLogger("aerie.brain.coordinator")

_RESUME: Final = object()
"""Queue marker: continue the thread from its last checkpoint."""


class CaseError(Exception):
    """A decision that cannot be applied: unknown incident, not waiting for a human, bad decision."""


def incident_id_for(event_id: str) -> str:
    """The incident id of an anomaly: stable across re-deliveries, short, and safe to print."""
    return "inc-" + hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


def _config(incident_id: str) -> RunnableConfig:
    # One recursion budget per run: an incident that loops through "investigate" many times
    # resumes in a new run each time, so the budget only has to cover one pass of the graph.
    return {"configurable": {"thread_id": incident_id}, "recursion_limit": 64}


def _initial_state(record: IncidentRecord) -> IncidentState:
    return {
        "incident_id": record.incident_id,
        "event_id": record.event_id,
        "trace_id": record.trace_id,
        "traceparent": record.traceparent,
        "received_at_ns": record.received_at_ns,
        "anomaly": record.anomaly,
        "seq": 0,
        "chain": [],
        "escalations": [],
        "decisions": [],
    }


class Coordinator:
    """One brain's coordinator. Build with `Coordinator.open` (it owns its stores) or directly."""

    def __init__(
        self,
        *,
        caller: AgentCaller,
        audit: AuditStore,
        checkpointer: BaseCheckpointSaver[Any],
        metrics: BrainMetrics | None = None,
        concurrency: int = 8,
        max_queued: int = 1000,
        call_timeout_s: float | None = None,
    ) -> None:
        if concurrency < 1 or max_queued < 1:
            raise ValueError("concurrency and max_queued must be at least 1")
        self.audit = audit
        self.metrics = metrics if metrics is not None else BrainMetrics()
        steps = IncidentSteps(caller=caller, audit=audit, metrics=self.metrics, call_timeout_s=call_timeout_s)
        self._graph = build_graph(steps).compile(checkpointer=checkpointer)
        self._concurrency = concurrency
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_queued)
        """Queued plus running incidents; admit waits for one (back-pressure on the consumer)."""
        self._queued: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._exits: list[asyncio.Task[Any]] = []
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        caller: AgentCaller,
        checkpoints: str,
        audit: str,
        metrics: BrainMetrics | None = None,
        concurrency: int = 8,
        max_queued: int = 1000,
        call_timeout_s: float | None = None,
        create: bool = True,
    ) -> AsyncIterator[Coordinator]:
        """Open both stores (``setup()`` done), yield a coordinator, and on exit `close` it and them.

        Exiting does not wait for running incidents: call `drain` first for a graceful stop; whatever
        is cut short is resumed by the next `resume_pending`."""
        store = await AuditStore.open(audit, create=create, max_connections=concurrency + 2)
        try:
            async with open_checkpointer(
                checkpoints, create=create, max_connections=concurrency + 2
            ) as checkpointer:
                coordinator = cls(
                    caller=caller,
                    audit=store,
                    checkpointer=checkpointer,
                    metrics=metrics,
                    concurrency=concurrency,
                    max_queued=max_queued,
                    call_timeout_s=call_timeout_s,
                )
                try:
                    yield coordinator
                finally:
                    await coordinator.close()
        finally:
            await store.close()

    # --- intake ---------------------------------------------------------------------------------

    async def admit(self, anomaly: Anomaly, *, trace: TraceContext, received_at_ns: int) -> bool:
        """Durably record a new incident for ``anomaly`` and queue it; False for a known event id.

        Returns once the incident row is committed. While ``max_queued`` incidents are queued or
        running it first waits for one to finish: that is the back-pressure on the consumer. Raises
        the store's error when it cannot record; retrying is safe (the event id dedupes), and a write
        that landed despite the error is picked up by the next `resume_pending`."""
        if self._closed:
            raise RuntimeError("coordinator is closed")
        incident_id = incident_id_for(anomaly.event_id)
        now = time.time_ns()
        record = IncidentRecord(
            incident_id=incident_id,
            event_id=anomaly.event_id,
            trace_id=trace.trace_id,
            traceparent=trace.child().traceparent,
            status="admitted",
            received_at_ns=received_at_ns,
            admitted_at_ns=now,
            updated_at_ns=now,
            anomaly=msgspec.to_builtins(anomaly),
        )
        # Wait for room first: once the row is committed it must reach the queue, or the incident
        # would wait for the next start. A cancelled admit still queues a write that landed.
        await self._slots.acquire()
        write = asyncio.ensure_future(self.audit.admit(record))
        try:
            admitted = await asyncio.shield(write)
        except asyncio.CancelledError:
            landed = False
            with contextlib.suppress(Exception):
                landed = await write
            if landed:
                self._put(incident_id, _initial_state(record))
            else:
                self._slots.release()
            raise
        except BaseException:
            self._slots.release()
            raise
        if not admitted:
            self._slots.release()
            log.info("duplicate anomaly", extra={"event_id": anomaly.event_id, "incident_id": incident_id})
            return False
        log.info("incident admitted", extra={"incident_id": incident_id, "trace_id": trace.trace_id})
        self._put(incident_id, _initial_state(record))
        return True

    async def resume_pending(self) -> int:
        """Queue every incident that was admitted or running but not finished, from its last checkpoint;
        incidents waiting for a human stay waiting. Call once at start, before consuming. Returns how
        many were queued."""
        queued = 0
        for record in await self.audit.pending():
            if record.incident_id in self._queued:
                continue
            snapshot = await self._graph.aget_state(_config(record.incident_id))
            if snapshot.created_at is None:
                work: Any = _initial_state(record)  # admitted, never started
            elif snapshot.interrupts:
                work = await self._pending_decision(record, snapshot.values)
                if work is None:
                    await self.audit.set_status(record.incident_id, "escalated")
                    continue
            elif snapshot.next:
                work = _RESUME
            else:
                await self._finish(record.incident_id, snapshot.values)
                continue
            log.info("resuming incident", extra={"incident_id": record.incident_id, "status": record.status})
            await self._enqueue(record.incident_id, work)
            queued += 1
        await self._refresh_open()
        return queued

    async def _pending_decision(self, record: IncidentRecord, values: dict[str, Any]) -> Command[Any] | None:
        """A decision recorded but never applied (the deciding process died): apply it again."""
        decisions = await self.audit.decisions(record.incident_id)
        if not decisions:
            return None
        latest = decisions[-1]
        applied = {d.get("decision_id") for d in values.get("decisions", [])}
        if latest.decision_id in applied:
            return None
        return Command(resume=_resume_value(latest))

    # --- human decisions --------------------------------------------------------------------------

    async def decide(self, incident_id: str, decision: str, by: str, note: str = "") -> str:
        """Apply a human decision to an escalated incident and run it on; the incident's status after.

        ``approve`` executes the proposed action, ``dismiss`` rejects, ``investigate`` records the
        decision and keeps waiting. Raises `CaseError` when the incident is unknown, not waiting for a
        decision, or another process is applying one right now."""
        if decision not in DECISIONS:
            raise CaseError(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}")
        record = await self.audit.incident(incident_id)
        if record is None:
            raise CaseError(f"no incident {incident_id}")
        if not await self.audit.claim(incident_id, "escalated", "deciding"):
            raise CaseError(f"incident {incident_id} is not waiting for a decision (status {record.status})")
        snapshot = await self._graph.aget_state(_config(incident_id))
        if not snapshot.interrupts:
            await self.audit.set_status(incident_id, "stalled", reason="escalated without a pending question")
            raise CaseError(
                f"incident {incident_id} has no pending question; the brain resumes it at its next start"
            )
        entry = DecisionRecord(
            decision_id=uuid.uuid4().hex,
            incident_id=incident_id,
            decision=decision,
            decided_by=by,
            note=note,
            decided_at_ns=time.time_ns(),
        )
        await self.audit.record_decision(entry)
        log.info(
            "decision",
            extra={"incident_id": incident_id, "decision": decision, "by": by, "trace_id": record.trace_id},
        )
        return await self._run(incident_id, Command(resume=_resume_value(entry)), running="deciding")

    # --- running --------------------------------------------------------------------------------

    async def _enqueue(self, incident_id: str, work: Any) -> None:
        await self._slots.acquire()
        self._put(incident_id, work)

    def _put(self, incident_id: str, work: Any) -> None:
        """Queue work that holds a slot (released by the worker when the run ends)."""
        self._start_workers()
        self._queued.add(incident_id)
        self._queue.put_nowait((incident_id, work))

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"aerie-coordinator-{i}")
                for i in range(self._concurrency)
            ]

    async def _worker(self) -> None:
        while True:
            incident_id, work = await self._queue.get()
            try:
                if isinstance(work, Command):
                    await self._run(incident_id, work, running="deciding")
                else:
                    await self._run(incident_id, None if work is _RESUME else work)
            except asyncio.CancelledError as exc:
                # LangGraph hands back the task that is still unwinding its checkpoint writes.
                self._exits += [a for a in exc.args if isinstance(a, asyncio.Task)]
                raise
            except Exception:  # _run already recorded it; a worker must not die
                log.exception("incident failed", extra={"incident_id": incident_id})
            finally:
                self._queued.discard(incident_id)
                self._slots.release()
                self._queue.task_done()

    async def _run(self, incident_id: str, work: Any, *, running: str = "running") -> str:
        """Run the incident's thread until it finishes or waits for a human; its status after."""
        config = _config(incident_id)
        record = await self.audit.incident(incident_id)
        trace_id = record.trace_id if record is not None else None
        with trace_scope(trace_id):
            try:
                if running == "running":
                    await self.audit.set_status(incident_id, "running")
                await self._graph.ainvoke(work, config, durability="sync")
                snapshot = await self._graph.aget_state(config)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("incident stalled", extra={"incident_id": incident_id})
                await self.audit.set_status(incident_id, "stalled", reason=f"{type(exc).__name__}: {exc}")
                raise
            if snapshot.interrupts:
                reason = snapshot.values.get("escalation_reason", "")
                await self.audit.set_status(incident_id, "escalated", reason=reason or None)
                await self._refresh_open()
                log.info("incident escalated", extra={"incident_id": incident_id, "reason": reason})
                return "escalated"
            if snapshot.next:  # not reachable with this graph; keep it pending rather than lose it
                await self.audit.set_status(incident_id, "stalled", reason=f"stopped before {snapshot.next}")
                return "stalled"
            return await self._finish(incident_id, snapshot.values)

    async def _finish(self, incident_id: str, values: dict[str, Any]) -> str:
        outcome = values.get("outcome", "rejected")
        await self.audit.set_status(incident_id, outcome, outcome=outcome)
        self.metrics.incidents.labels(outcome).inc()
        await self._refresh_open()
        log.info("incident finished", extra={"incident_id": incident_id, "outcome": outcome})
        return str(outcome)

    async def _refresh_open(self) -> None:
        # From the store, not a local count: another process (aerie cases) may have decided a case.
        self.metrics.open_escalations.set(await self.audit.count(OPEN_STATUSES))

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued incident has finished or is waiting for a human; False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop now: running incidents are cancelled at their current step and resume at the next start."""
        self._closed = True
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        exits, self._exits = self._exits, []
        for task in exits:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task


def _resume_value(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "decision_id": decision.decision_id,
        "decision": decision.decision,
        "by": decision.decided_by,
        "note": decision.note,
        "at_ns": decision.decided_at_ns,
    }
