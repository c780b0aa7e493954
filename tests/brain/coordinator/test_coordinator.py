"""The coordinator graph end to end against real stores (SQLite files, PostgreSQL), agents stood in.

"New process" below means a new `Coordinator` on the same store URLs after the first was closed:
nothing in memory carries over, only what the stores hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from coordinator_standins import InProcessAgents, make_anomaly

from aerie.brain.audit import AuditStore, IncidentRecord
from aerie.brain.coordinator import CaseError, Coordinator, incident_id_for
from aerie.brain.metrics import BrainMetrics
from aerie.proto.envelope import TraceContext

HAPPY = ["detect", "analyse", "review", "execute", "notify", "feedback"]


@contextlib.asynccontextmanager
async def coordinator(
    agents: InProcessAgents, stores: dict[str, str], **options: Any
) -> AsyncIterator[Coordinator]:
    async with Coordinator.open(
        caller=agents, checkpoints=stores["checkpoints"], audit=stores["audit"], **options
    ) as coord:
        yield coord


async def admit(coord: Coordinator, n: int = 0) -> tuple[str, TraceContext]:
    trace = TraceContext.new()
    anomaly = make_anomaly(n, trace=trace)
    assert await coord.admit(anomaly, trace=trace, received_at_ns=anomaly.detected_at_ns)
    return incident_id_for(anomaly.event_id), trace


async def admit_and_drain(coord: Coordinator) -> tuple[IncidentRecord, TraceContext]:
    """Admit one anomaly and run it as far as it goes: its incident as the audit store holds it."""
    incident_id, trace = await admit(coord)
    assert await coord.drain(timeout_s=30)
    incident = await coord.audit.incident(incident_id)
    assert incident is not None
    return incident, trace


async def admit_and_close(agents: InProcessAgents, stores: dict[str, str]) -> str:
    """Admit one anomaly, run it as far as it goes and close the coordinator: its incident id."""
    async with coordinator(agents, stores) as coord:
        incident_id, _ = await admit(coord)
        assert await coord.drain(timeout_s=30)
    return incident_id


def sample(metrics: BrainMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def steps_of(coord: Coordinator, incident_id: str) -> list[str]:
    return [s.step for s in await coord.audit.steps(incident_id)]


async def test_auto_execute_runs_every_step_once_and_labels_malicious(
    agents: InProcessAgents, stores: dict[str, str]
) -> None:
    metrics = BrainMetrics()
    async with coordinator(agents, stores, metrics=metrics) as coord:
        incident, trace = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert incident.status == incident.outcome == "executed"
        assert incident.verdict == "auto_execute"
        assert incident.finished_at_ns is not None
        assert incident.verdict_at_ns is not None
        steps = await coord.audit.steps(incident_id)
        assert [s.step for s in steps] == HAPPY
        assert [s.seq for s in steps] == [1, 2, 3, 4, 5, 6]
        assert all(s.trace_id == trace.trace_id and s.error is None for s in steps)
        review = steps[2]
        assert review.verdict == "auto_execute"
        assert review.component == "spiffe://aerie/agent/reviewer"
        assert review.input["analysis"]["technique"] == "T1059"  # inputs recorded, not only outputs
        assert steps[3].output["action"]["kind"] == "isolate_pod"
        labels = await coord.audit.feedback()
        assert [(f.incident_id, f.label, f.source) for f in labels] == [(incident_id, "malicious", "policy")]
        actions = await coord.audit.actions(incident_id)
        assert {a.idempotency_key for a in actions} == {
            f"{incident_id}:execute:isolate_pod",
            f"{incident_id}:notify:executed",
        }
    assert agents.effects == {f"{incident_id}:execute:isolate_pod": 1, f"{incident_id}:notify:executed": 1}
    # Every agent call is a child span of the anomaly's trace, each with its own span id.
    parents = [TraceContext.parse(tp) for _, tp, _ in agents.calls]
    assert {p.trace_id for p in parents} == {trace.trace_id}
    assert len({p.span_id for p in parents}) == len(parents) == 5
    assert trace.span_id not in {p.span_id for p in parents}
    assert sample(metrics, "aerie_reviewer_verdicts_total", {"verdict": "auto_execute"}) == 1
    assert sample(metrics, "aerie_verdict_seconds_count") == 1
    assert sample(metrics, "aerie_incidents_total", {"outcome": "executed"}) == 1
    assert sample(metrics, "aerie_step_seconds_count", {"step": "execute"}) == 1


async def test_auto_reject_runs_no_action_and_labels_benign(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    agents.verdict = "auto_reject"
    async with coordinator(agents, sqlite_stores) as coord:
        incident, _ = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert (incident.status, incident.verdict) == ("rejected", "auto_reject")
        assert await steps_of(coord, incident_id) == [*HAPPY[:3], "reject", "notify", "feedback"]
        assert [(f.label, f.source) for f in await coord.audit.feedback()] == [("benign", "policy")]
    assert agents.called("remediate") == []
    assert agents.called("notify")[0]["kind"] == "rejected"


async def test_duplicate_admit_is_refused_and_changes_nothing(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    trace = TraceContext.new()
    anomaly = make_anomaly(7, trace=trace)
    async with coordinator(agents, sqlite_stores) as coord:
        assert await coord.admit(anomaly, trace=trace, received_at_ns=1)
        assert await coord.drain(timeout_s=30)
        before = await coord.audit.incident(incident_id_for(anomaly.event_id))
        assert not await coord.admit(anomaly, trace=trace, received_at_ns=2)
        assert await coord.drain(timeout_s=30)
        after = await coord.audit.incident(incident_id_for(anomaly.event_id))
        assert len(await coord.audit.incidents()) == 1
    assert after == before
    assert len(agents.called("detect")) == 1


async def test_escalation_approved_from_a_new_process_executes_once(
    agents: InProcessAgents, stores: dict[str, str]
) -> None:
    agents.verdict = "escalate"
    first_metrics = BrainMetrics()
    async with coordinator(agents, stores, metrics=first_metrics) as coord:
        incident, _ = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert (incident.status, incident.verdict) == ("escalated", "escalate")
        assert incident.reason == "test policy says escalate"
        assert sample(first_metrics, "aerie_open_escalations") == 1
    assert agents.called("notify")[0]["kind"] == "escalation"
    assert agents.called("remediate") == []

    metrics = BrainMetrics()
    async with coordinator(agents, stores, metrics=metrics) as other:
        assert await other.resume_pending() == 0  # waiting for a human is not "pending"
        assert await other.decide(incident_id, "approve", "alice", "shell in prod web pod") == "executed"
        steps = await other.audit.steps(incident_id)
        assert [s.step for s in steps] == [
            "detect", "analyse", "review", "escalate", "decision", "execute", "notify", "feedback"
        ]  # fmt: skip
        decision = steps[4]
        assert decision.component == "human:alice"
        assert decision.verdict == "approve"
        assert decision.output["note"] == "shell in prod web pod"
        assert [(d.decision, d.decided_by) for d in await other.audit.decisions(incident_id)] == [
            ("approve", "alice")
        ]
        assert [(f.label, f.source, f.decided_by) for f in await other.audit.feedback()] == [
            ("malicious", "human", "alice")
        ]
        assert sample(metrics, "aerie_open_escalations") == 0
        with pytest.raises(CaseError, match="not waiting"):
            await other.decide(incident_id, "approve", "bob")
    assert agents.effects[f"{incident_id}:execute:isolate_pod"] == 1
    assert agents.called("notify")[-1]["kind"] == "decision"


async def test_investigate_keeps_waiting_then_dismiss_rejects(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    agents.verdict = "escalate"
    incident_id = await admit_and_close(agents, sqlite_stores)
    async with coordinator(agents, sqlite_stores) as other:
        assert await other.decide(incident_id, "investigate", "bob", "pulling logs") == "escalated"
        assert await other.decide(incident_id, "investigate", "carol") == "escalated"
    async with coordinator(agents, sqlite_stores) as third:
        assert await third.decide(incident_id, "dismiss", "bob", "known admin") == "rejected"
        steps = await steps_of(third, incident_id)
        assert steps[3:] == ["escalate", "decision", "decision", "decision", "reject", "notify", "feedback"]
        assert [d.decision for d in await third.audit.decisions(incident_id)] == [
            "investigate",
            "investigate",
            "dismiss",
        ]
        assert [(f.label, f.source, f.decided_by) for f in await third.audit.feedback()] == [
            ("benign", "human", "bob")
        ]
    assert agents.called("remediate") == []


async def test_decide_refuses_unknown_incidents_and_decisions(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    async with coordinator(agents, sqlite_stores) as coord:
        with pytest.raises(CaseError, match="no incident"):
            await coord.decide("inc-0000000000000000", "approve", "alice")
        incident_id, _ = await admit(coord)
        assert await coord.drain(timeout_s=30)
        with pytest.raises(CaseError, match="unknown decision"):
            await coord.decide(incident_id, "nuke", "alice")
        with pytest.raises(CaseError, match=r"not waiting .*status executed"):
            await coord.decide(incident_id, "dismiss", "alice")


@pytest.mark.parametrize(
    ("knob", "agent", "done_steps", "reason"),
    [
        ("down", "analyst", ["detect", "analyse"], "agent analyst unavailable after 3 attempt(s)"),
        ("failing", "reviewer", ["detect", "analyse", "review"], "agent reviewer answered failed: boom"),
        ("down", "detect", ["detect"], "agent detect unavailable"),
    ],
)
async def test_agent_trouble_escalates_with_the_reason(
    agents: InProcessAgents,
    sqlite_stores: dict[str, str],
    *,
    knob: str,
    agent: str,
    done_steps: list[str],
    reason: str,
) -> None:
    getattr(agents, knob).add(agent)
    metrics = BrainMetrics()
    async with coordinator(agents, sqlite_stores, metrics=metrics) as coord:
        incident, _ = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert (incident.status, incident.verdict) == ("escalated", "escalate")  # fail closed
        assert incident.reason is not None
        assert reason in incident.reason
        steps = await coord.audit.steps(incident_id)
        failed = [s for s in steps if s.error]
        assert len(failed) == 1
        assert reason in (failed[0].error or "")
        assert [s.step for s in steps] == [*done_steps, "escalate"]
        assert sample(metrics, "aerie_reviewer_verdicts_total", {"verdict": "escalate"}) == 1
    assert agents.called("notify")[0]["kind"] == "escalation"
    assert reason in agents.called("notify")[0]["summary"]


async def test_remediate_down_escalates_and_approval_executes_once_it_is_back(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    agents.down.add("remediate")
    async with coordinator(agents, sqlite_stores) as coord:
        incident, _ = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert (incident.status, incident.verdict) == ("escalated", "auto_execute")
        agents.down.clear()
        assert await coord.decide(incident_id, "approve", "alice") == "executed"
    assert agents.effects[f"{incident_id}:execute:isolate_pod"] == 1


async def test_notify_down_still_waits_for_a_human(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    agents.verdict = "escalate"
    agents.down.add("notify")
    async with coordinator(agents, sqlite_stores) as coord:
        incident, _ = await admit_and_drain(coord)
        incident_id = incident.incident_id
        assert incident.status == "escalated"
        escalate = (await coord.audit.steps(incident_id))[-1]
        assert escalate.step == "escalate"
        assert "agent notify unavailable" in (escalate.error or "")
        assert [i.incident_id for i in await coord.audit.incidents(["escalated"])] == [incident_id]


async def test_crash_during_remediation_resumes_and_executes_once(
    agents: InProcessAgents, stores: dict[str, str]
) -> None:
    gate = agents.hold["remediate"] = asyncio.Event()
    async with coordinator(agents, stores, concurrency=1) as coord:
        first, _ = await admit(coord, 1)
        second, _ = await admit(coord, 2)  # queued behind the first: admitted, never started
        await agents.entered["remediate"].wait()  # the effect happened; the reply never arrives
        assert await coord.drain(timeout_s=0.05) is False
    # The coordinator is gone (cancelled mid-step); the agent process is not.
    del agents.hold["remediate"]
    gate.set()
    async with coordinator(agents, stores) as coord:
        states = {i.incident_id: i.status for i in await coord.audit.incidents()}
        assert states == {first: "running", second: "admitted"}
        assert await coord.resume_pending() == 2
        assert await coord.drain(timeout_s=30)
        assert await steps_of(coord, first) == HAPPY
        assert {i.status for i in await coord.audit.incidents()} == {"executed"}
    assert agents.effects[f"{first}:execute:isolate_pod"] == 1
    assert agents.effects[f"{second}:execute:isolate_pod"] == 1
    assert len(agents.called("remediate")) == 3  # the first one's replayed step, deduped by the agent
    assert len(agents.called("detect")) == 2  # finished steps were not run again


async def test_recorded_action_is_not_sent_again_after_a_crash(
    agents: InProcessAgents, sqlite_stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = asyncio.Event()
    original = AuditStore.record_action

    async def record_then_hang(self: AuditStore, action: Any) -> bool:
        recorded = await original(self, action)
        if action.kind == "isolate_pod":
            crash.set()
            await asyncio.Event().wait()  # the process dies before the step's checkpoint
        return recorded

    monkeypatch.setattr(AuditStore, "record_action", record_then_hang)
    async with coordinator(agents, sqlite_stores) as coord:
        incident_id, _ = await admit(coord)
        await crash.wait()
    monkeypatch.setattr(AuditStore, "record_action", original)
    async with coordinator(agents, sqlite_stores) as coord:
        assert await coord.resume_pending() == 1
        assert await coord.drain(timeout_s=30)
        execute = [s for s in await coord.audit.steps(incident_id) if s.step == "execute"]
        assert len(execute) == 1
        assert execute[0].meta.get("replayed") is True
    assert len(agents.called("remediate")) == 1  # the coordinator's own record stopped the resend


async def test_decision_interrupted_mid_run_is_applied_at_the_next_start(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    agents.verdict = "escalate"
    incident_id = await admit_and_close(agents, sqlite_stores)
    gate = agents.hold["remediate"] = asyncio.Event()
    async with coordinator(agents, sqlite_stores) as cli:
        deciding = asyncio.create_task(cli.decide(incident_id, "approve", "alice"))
        await agents.entered["remediate"].wait()
        deciding.cancel()  # `aerie cases approve` killed while the action runs
        with pytest.raises(asyncio.CancelledError):
            await deciding
    del agents.hold["remediate"]
    gate.set()
    async with coordinator(agents, sqlite_stores) as brain:
        incident = await brain.audit.incident(incident_id)
        assert incident is not None
        assert incident.status == "deciding"
        assert await brain.resume_pending() == 1
        assert await brain.drain(timeout_s=30)
        incident = await brain.audit.incident(incident_id)
        assert incident is not None
        assert incident.status == "executed"
        assert [s.step for s in await brain.audit.steps(incident_id)].count("decision") == 1
    assert agents.effects[f"{incident_id}:execute:isolate_pod"] == 1


async def test_worker_pool_and_admission_are_bounded(
    agents: InProcessAgents, sqlite_stores: dict[str, str]
) -> None:
    gate = agents.hold["detect"] = asyncio.Event()
    in_detect = 0
    three = asyncio.Event()
    inner = agents.call

    async def counting(agent: str, request: Any, *, traceparent: str, timeout_s: float | None = None) -> Any:
        nonlocal in_detect
        if agent == "detect":
            in_detect += 1
            if in_detect == 3:
                three.set()
        return await inner(agent, request, traceparent=traceparent, timeout_s=timeout_s)

    agents.call = counting  # type: ignore[method-assign]
    async with coordinator(agents, sqlite_stores, concurrency=3, max_queued=5) as coord:
        admits = asyncio.gather(*(admit(coord, n) for n in range(8)))
        await three.wait()
        assert await coord.drain(timeout_s=0.2) is False  # let anything that could start, start
        assert in_detect == 3  # three workers, all held
        assert len(await coord.audit.incidents()) == 5  # five slots: three admits wait (back-pressure)
        assert not admits.done()
        gate.set()
        ids = [incident_id for incident_id, _ in await admits]
        assert await coord.drain(timeout_s=30)
        assert {i.status for i in await coord.audit.incidents()} == {"executed"}
    assert len(set(ids)) == 8


async def test_cancelled_admit_still_runs_an_incident_whose_write_landed(
    agents: InProcessAgents, sqlite_stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written, gate = asyncio.Event(), asyncio.Event()
    original = AuditStore.admit

    async def slow_reply(self: AuditStore, record: Any) -> bool:
        landed = await original(self, record)
        written.set()
        await gate.wait()  # committed, but the answer is late
        return landed

    monkeypatch.setattr(AuditStore, "admit", slow_reply)
    trace = TraceContext.new()
    anomaly = make_anomaly(3, trace=trace)
    async with coordinator(agents, sqlite_stores) as coord:
        admitting = asyncio.create_task(coord.admit(anomaly, trace=trace, received_at_ns=1))
        await written.wait()
        admitting.cancel()  # the consumer gives up on this message (it will be offered again)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        assert await coord.drain(timeout_s=30)
        incident = await coord.audit.incident(incident_id_for(anomaly.event_id))
        assert incident is not None
        assert incident.status == "executed"
        assert not await coord.admit(anomaly, trace=trace, received_at_ns=2)  # the redelivery
