"""The incident graph: one LangGraph thread per incident, its state plain data only.

::

    detect → analyse → review ─┬─ auto_execute → execute ─┐
                               ├─ auto_reject  → reject  ─┼→ notify → feedback → END
                               └─ escalate → await_human ─┘   (approve → execute, dismiss → reject,
                                                ↺ investigate   investigate → wait again)

Any agent that is unavailable (after the caller's retries), answers ``failed`` or answers something
that does not decode routes the incident to ``escalate`` with the reason: nothing is dropped, and a
failure before the reviewer's verdict counts as an ``escalate`` verdict (fail closed).

Every node records exactly one audit step, numbered by ``seq`` from the checkpointed state, so a node
replayed after a crash overwrites its own row. Side effects (remediate, notify) carry idempotency
keys; a key already in the audit store's actions is not sent again, and the agents dedupe by key too,
which covers a crash between the agent's effect and the coordinator's record of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypedDict, TypeVar

import msgspec
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from aerie.brain.audit import DECISIONS, ActionRecord, AuditStore, FeedbackRecord, StepRecord
from aerie.brain.metrics import BrainMetrics
from aerie.proto.agents import (
    Action,
    AgentCaller,
    AgentReply,
    AgentUnavailable,
    AnalyseRequest,
    Analysis,
    Detection,
    DetectRequest,
    Notice,
    NotifyRequest,
    RemediateRequest,
    Remediation,
    Review,
    ReviewRequest,
)
from aerie.proto.envelope import TraceContext
from aerie.proto.identity import spiffe_id

__all__ = ["COORDINATOR", "IncidentState", "IncidentSteps", "build_graph"]

log = logging.getLogger("aerie.brain.coordinator.graph")

COORDINATOR: Final = spiffe_id("brain")
"""The component identity recorded for steps the coordinator does itself."""

T = TypeVar("T", bound=msgspec.Struct)


class IncidentState(TypedDict, total=False):
    """The checkpointed state. Plain data only: LangGraph's serializer does not take msgspec Structs."""

    incident_id: str
    event_id: str
    trace_id: str
    traceparent: str
    received_at_ns: int
    anomaly: dict[str, Any]
    detection: dict[str, Any] | None
    analysis: dict[str, Any] | None
    review: dict[str, Any] | None
    remediation: dict[str, Any] | None
    route: str
    """The node to run next, set by every routing node."""
    escalation_reason: str
    escalations: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    outcome: Literal["executed", "rejected"]
    decided_by: str
    seq: int
    chain: list[dict[str, Any]]
    """The reasoning so far, for the person reading a notification: step, agent, output."""


@dataclass
class _Outcome:
    """What one agent call came to."""

    parsed: Any = None
    error: str | None = None
    seq: int = 0
    data: dict[str, Any] = field(default_factory=dict)


def _component(agent: str) -> str:
    return spiffe_id(f"agent-{agent}")


def _summary(state: IncidentState) -> str:
    detection = state.get("detection")
    if detection:
        return str(detection.get("summary", ""))
    event = state.get("anomaly", {}).get("event", {})
    return f"{event.get('rule', 'anomaly')} on {state.get('anomaly', {}).get('node', '?')}"


class IncidentSteps:
    """The graph's nodes, bound to the agents, the audit store and the metrics."""

    def __init__(
        self,
        *,
        caller: AgentCaller,
        audit: AuditStore,
        metrics: BrainMetrics,
        call_timeout_s: float | None = None,
    ) -> None:
        self.caller = caller
        self.audit = audit
        self.metrics = metrics
        self.call_timeout_s = call_timeout_s

    # --- helpers ----------------------------------------------------------------------------------

    async def _record(
        self,
        state: IncidentState,
        *,
        step: str,
        component: str,
        started_at_ns: int,
        t0: float,
        input: dict[str, Any],  # shadows the builtin on purpose: the column's name
        output: dict[str, Any],
        span_id: str | None = None,
        verdict: str | None = None,
        error: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        seq = state.get("seq", 0) + 1
        duration_ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.step_latency.labels(step).observe(duration_ms / 1000.0)
        await self.audit.record_step(
            StepRecord(
                incident_id=state["incident_id"],
                seq=seq,
                trace_id=state["trace_id"],
                span_id=span_id,
                step=step,
                component=component,
                started_at_ns=started_at_ns,
                duration_ms=duration_ms,
                input=input,
                output=output,
                verdict=verdict,
                error=error,
                meta=meta or {},
            )
        )
        if error:
            log.warning(
                "step failed",
                extra={"incident_id": state["incident_id"], "step": step, "error": error},
            )
        return seq

    async def _call(
        self,
        state: IncidentState,
        *,
        step: str,
        agent: str,
        request: msgspec.Struct,
        reply_type: type[T],
        ok_states: tuple[str, ...] = ("completed",),
        verdict_of: Callable[[T], str] | None = None,
        check: Callable[[T], str | None] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> _Outcome:
        """Call ``agent``, decode its reply as ``reply_type``, ``check`` it, and record the step; never
        raises for the agent's sake (cancellation aside)."""
        span = TraceContext.parse(state["traceparent"]).child()
        started_at_ns, t0 = time.time_ns(), time.perf_counter()
        reply: AgentReply | None = None
        parsed: T | None = None
        error: str | None = None
        try:
            reply = await self.caller.call(
                agent, request, traceparent=span.traceparent, timeout_s=self.call_timeout_s
            )
        except AgentUnavailable as exc:
            error = str(exc)
        except Exception as exc:  # a broken caller must escalate the incident, not lose it
            log.exception("agent call raised", extra={"agent": agent, "step": step})
            error = f"agent {agent} call raised {type(exc).__name__}: {exc}"
        if reply is not None:
            if reply.state not in ok_states:
                error = f"agent {agent} answered {reply.state}: {reply.error or 'no reason given'}"
            else:
                try:
                    parsed = msgspec.convert(reply.data, reply_type)
                except msgspec.ValidationError as exc:
                    error = f"agent {agent} answered an unusable {reply_type.__name__}: {exc}"
                else:
                    error = check(parsed) if check is not None else None
        meta = {**(meta or {}), "traceparent": span.traceparent}
        if reply is not None:
            meta |= {"task_id": reply.task_id, "state": reply.state, "attempts": reply.attempts}
        data = dict(reply.data) if reply is not None else {}
        seq = await self._record(
            state,
            step=step,
            component=_component(agent),
            started_at_ns=started_at_ns,
            t0=t0,
            input=msgspec.to_builtins(request),
            output=data,
            span_id=span.span_id,
            verdict=verdict_of(parsed) if parsed is not None and verdict_of is not None else None,
            error=error,
            meta=meta,
        )
        return _Outcome(parsed=parsed if error is None else None, error=error, seq=seq, data=data)

    async def _side_effect(
        self,
        state: IncidentState,
        *,
        step: str,
        agent: str,
        kind: str,
        request: RemediateRequest | NotifyRequest,
        reply_type: type[T],
        succeeded: Callable[[T], str | None] | None = None,
    ) -> _Outcome:
        """A call with an idempotency key: reuse the recorded result when the key ran before."""
        key = request.idempotency_key
        recorded = await self.audit.action(key)
        if recorded is not None:
            started_at_ns, t0 = time.time_ns(), time.perf_counter()
            seq = await self._record(
                state,
                step=step,
                component=_component(agent),
                started_at_ns=started_at_ns,
                t0=t0,
                input=msgspec.to_builtins(request),
                output=recorded.result,
                meta={"replayed": True, "idempotency_key": key},
            )
            return _Outcome(
                parsed=msgspec.convert(recorded.result, reply_type), seq=seq, data=recorded.result
            )
        outcome = await self._call(
            state,
            step=step,
            agent=agent,
            request=request,
            reply_type=reply_type,
            check=succeeded,
            meta={"idempotency_key": key},
        )
        if outcome.error is None:
            await self.audit.record_action(
                ActionRecord(
                    idempotency_key=key,
                    incident_id=state["incident_id"],
                    agent=agent,
                    kind=kind,
                    result=outcome.data,
                    recorded_at_ns=time.time_ns(),
                )
            )
        return outcome

    def _escalate_to(self, reason: str, seq: int, **more: Any) -> dict[str, Any]:
        return {"route": "escalate", "escalation_reason": reason, "seq": seq, **more}

    def _chain(
        self, state: IncidentState, step: str, agent: str, output: dict[str, Any]
    ) -> list[dict[str, Any]]:
        return [*state.get("chain", []), {"step": step, "agent": agent, "output": output}]

    # --- nodes ------------------------------------------------------------------------------------

    async def detect(self, state: IncidentState) -> dict[str, Any]:
        request = DetectRequest(incident_id=state["incident_id"], anomaly=state["anomaly"])
        out = await self._call(state, step="detect", agent="detect", request=request, reply_type=Detection)
        if out.error is not None:
            return self._escalate_to(out.error, out.seq)
        detection = msgspec.to_builtins(out.parsed)
        return {
            "route": "analyse",
            "seq": out.seq,
            "detection": detection,
            "chain": self._chain(state, "detect", "detect", detection),
        }

    async def analyse(self, state: IncidentState) -> dict[str, Any]:
        request = AnalyseRequest(
            incident_id=state["incident_id"],
            anomaly=state["anomaly"],
            detection=msgspec.convert(state["detection"], Detection),
        )
        out = await self._call(state, step="analyse", agent="analyst", request=request, reply_type=Analysis)
        if out.error is not None:
            return self._escalate_to(out.error, out.seq)
        analysis = msgspec.to_builtins(out.parsed)
        return {
            "route": "review",
            "seq": out.seq,
            "analysis": analysis,
            "chain": self._chain(state, "analyse", "analyst", analysis),
        }

    async def review(self, state: IncidentState) -> dict[str, Any]:
        request = ReviewRequest(
            incident_id=state["incident_id"],
            detection=msgspec.convert(state["detection"], Detection),
            analysis=msgspec.convert(state["analysis"], Analysis),
        )
        # The reviewer answers an escalation as INPUT_REQUIRED and an auto-reject as REJECTED.
        out = await self._call(
            state,
            step="review",
            agent="reviewer",
            request=request,
            reply_type=Review,
            ok_states=("completed", "input_required", "rejected"),
            verdict_of=lambda r: r.verdict,
        )
        if out.error is not None:
            return self._escalate_to(f"no verdict (fail closed): {out.error}", out.seq)
        review: Review = out.parsed
        await self._verdict(state, review.verdict)
        update: dict[str, Any] = {
            "seq": out.seq,
            "review": msgspec.to_builtins(review),
            "chain": self._chain(state, "review", "reviewer", msgspec.to_builtins(review)),
        }
        if review.verdict == "auto_execute":
            return update | {"route": "execute", "decided_by": "policy"}
        if review.verdict == "auto_reject":
            return update | {"route": "reject", "decided_by": "policy"}
        reason = "; ".join(review.reasons) or "the policy asks for a human"
        return update | {"route": "escalate", "escalation_reason": reason}

    async def _verdict(self, state: IncidentState, verdict: str) -> None:
        # Counted once per incident, however often the step is replayed.
        if await self.audit.set_verdict(state["incident_id"], verdict):
            self.metrics.verdicts.labels(verdict).inc()
            self.metrics.verdict_latency.observe(max(0, time.time_ns() - state["received_at_ns"]) / 1e9)

    async def execute(self, state: IncidentState) -> dict[str, Any]:
        analysis = state.get("analysis")
        action = msgspec.convert(analysis["proposed_action"], Action) if analysis else None
        if action is None or action.kind == "none":
            started_at_ns, t0 = time.time_ns(), time.perf_counter()
            result = {"executed": False, "result": "no action proposed"}
            seq = await self._record(
                state,
                step="execute",
                component=COORDINATOR,
                started_at_ns=started_at_ns,
                t0=t0,
                input={"action": None if action is None else msgspec.to_builtins(action)},
                output=result,
            )
            return {"route": "notify", "seq": seq, "outcome": "executed", "remediation": result}
        request = RemediateRequest(
            incident_id=state["incident_id"],
            action=action,
            idempotency_key=f"{state['incident_id']}:execute:{action.kind}",
        )
        out = await self._side_effect(
            state,
            step="execute",
            agent="remediate",
            kind=action.kind,
            request=request,
            reply_type=Remediation,
        )
        if out.error is not None:
            return self._escalate_to(out.error, out.seq)
        remediation = msgspec.to_builtins(out.parsed)
        return {
            "route": "notify",
            "seq": out.seq,
            "outcome": "executed",
            "remediation": remediation,
            "chain": self._chain(state, "execute", "remediate", remediation),
        }

    async def reject(self, state: IncidentState) -> dict[str, Any]:
        started_at_ns, t0 = time.time_ns(), time.perf_counter()
        review = state.get("review") or {}
        seq = await self._record(
            state,
            step="reject",
            component=COORDINATOR,
            started_at_ns=started_at_ns,
            t0=t0,
            input={"verdict": review.get("verdict"), "decided_by": state.get("decided_by", "policy")},
            output={"rejected": True, "reasons": review.get("reasons", [])},
        )
        return {"route": "notify", "seq": seq, "outcome": "rejected"}

    async def escalate(self, state: IncidentState) -> dict[str, Any]:
        reason = state.get("escalation_reason") or "escalated"
        if not state.get("review"):
            await self._verdict(state, "escalate")  # no verdict came: fail closed
        escalations = state.get("escalations", [])
        request = NotifyRequest(
            incident_id=state["incident_id"],
            kind="escalation",
            summary=f"{_summary(state)}: needs a decision ({reason})",
            chain=state.get("chain", []),
            idempotency_key=f"{state['incident_id']}:notify:escalation:{len(escalations) + 1}",
        )
        out = await self._side_effect(
            state,
            step="escalate",
            agent="notify",
            kind="escalation",
            request=request,
            reply_type=Notice,
            succeeded=lambda n: None if n.delivered else "notification not delivered",
        )
        # A failed notification still waits for a human: `aerie cases list` shows it.
        entry = {"reason": reason, "notified": out.error is None, "error": out.error}
        return {"route": "await_human", "seq": out.seq, "escalations": [*escalations, entry]}

    async def await_human(self, state: IncidentState) -> dict[str, Any]:
        # Runs again from the top when resumed: nothing before interrupt() may have effects.
        asked = {
            "incident_id": state["incident_id"],
            "reason": state.get("escalation_reason", ""),
            "choices": list(DECISIONS),
        }
        answer = interrupt(asked)
        started_at_ns, t0 = time.time_ns(), time.perf_counter()
        decision = _decision(answer)
        seq = await self._record(
            state,
            step="decision",
            component=f"human:{decision['by']}",
            started_at_ns=started_at_ns,
            t0=t0,
            input=asked,
            output=decision,
            verdict=decision["decision"],
            error=decision.get("error"),
        )
        update: dict[str, Any] = {"seq": seq, "decisions": [*state.get("decisions", []), decision]}
        if decision["decision"] == "approve":
            return update | {"route": "execute", "decided_by": decision["by"]}
        if decision["decision"] == "dismiss":
            return update | {"route": "reject", "decided_by": decision["by"]}
        return update | {"route": "await_human"}

    async def notify(self, state: IncidentState) -> dict[str, Any]:
        outcome = state.get("outcome", "rejected")
        kind: Literal["executed", "rejected", "decision"] = "decision" if state.get("decisions") else outcome
        by = state.get("decided_by", "policy")
        request = NotifyRequest(
            incident_id=state["incident_id"],
            kind=kind,
            summary=f"{_summary(state)}: {outcome} ({'policy' if by == 'policy' else f'decided by {by}'})",
            chain=state.get("chain", []),
            idempotency_key=f"{state['incident_id']}:notify:{kind}",
        )
        out = await self._side_effect(
            state,
            step="notify",
            agent="notify",
            kind=kind,
            request=request,
            reply_type=Notice,
            succeeded=lambda n: None if n.delivered else "notification not delivered",
        )
        if out.error is not None:
            return self._escalate_to(out.error, out.seq)
        return {"route": "feedback", "seq": out.seq}

    async def feedback(self, state: IncidentState) -> dict[str, Any]:
        started_at_ns, t0 = time.time_ns(), time.perf_counter()
        by = state.get("decided_by", "policy")
        label = FeedbackRecord(
            incident_id=state["incident_id"],
            event_id=state["event_id"],
            trace_id=state["trace_id"],
            label="malicious" if state.get("outcome") == "executed" else "benign",
            source="policy" if by == "policy" else "human",
            decided_by=by,
            recorded_at_ns=started_at_ns,
        )
        await self.audit.record_feedback(label)
        seq = await self._record(
            state,
            step="feedback",
            component=COORDINATOR,
            started_at_ns=started_at_ns,
            t0=t0,
            input={"outcome": state.get("outcome"), "decided_by": by},
            output={"label": label.label, "source": label.source},
        )
        return {"route": "end", "seq": seq}


def _decision(answer: Any) -> dict[str, Any]:
    """A resume value as a decision; anything malformed counts as ``investigate`` (keep waiting)."""
    if not isinstance(answer, dict):
        return {"decision": "investigate", "by": "unknown", "note": "", "error": f"malformed: {answer!r}"}
    decision = {
        "decision_id": str(answer.get("decision_id", "")),
        "decision": str(answer.get("decision", "")),
        "by": str(answer.get("by", "unknown")) or "unknown",
        "note": str(answer.get("note", "")),
        "at_ns": int(answer.get("at_ns", 0) or 0),
    }
    if decision["decision"] not in DECISIONS:
        decision["error"] = f"unknown decision {decision['decision']!r}; kept waiting"
        decision["decision"] = "investigate"
    return decision


def _route(state: IncidentState) -> str:
    return state["route"]


def build_graph(steps: IncidentSteps) -> StateGraph[IncidentState]:
    """The uncompiled graph; the coordinator compiles it with its checkpointer."""
    graph: StateGraph[IncidentState] = StateGraph(IncidentState)
    # One call per node: LangGraph's typing wants each node's own signature (its parameter is `state`).
    graph.add_node("detect", steps.detect)
    graph.add_node("analyse", steps.analyse)
    graph.add_node("review", steps.review)
    graph.add_node("execute", steps.execute)
    graph.add_node("reject", steps.reject)
    graph.add_node("escalate", steps.escalate)
    graph.add_node("await_human", steps.await_human)
    graph.add_node("notify", steps.notify)
    graph.add_node("feedback", steps.feedback)
    graph.add_edge(START, "detect")
    graph.add_conditional_edges("detect", _route, ["analyse", "escalate"])
    graph.add_conditional_edges("analyse", _route, ["review", "escalate"])
    graph.add_conditional_edges("review", _route, ["execute", "reject", "escalate"])
    graph.add_conditional_edges("execute", _route, ["notify", "escalate"])
    graph.add_edge("reject", "notify")
    graph.add_edge("escalate", "await_human")
    graph.add_conditional_edges("await_human", _route, ["execute", "reject", "await_human"])
    graph.add_conditional_edges("notify", _route, ["feedback", "escalate"])
    graph.add_edge("feedback", END)
    return graph
