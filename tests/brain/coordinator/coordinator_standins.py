"""Test stand-ins for the coordinator's tests: in-process agents and anomalies."""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import msgspec
from falco_testkit import T0_NS, anomaly_of, pod_shell_event

from aerie.proto.agents import (
    Action,
    AgentReply,
    AgentUnavailable,
    Analysis,
    Asset,
    Detection,
    Notice,
    Remediation,
    Review,
)
from aerie.proto.envelope import Anomaly, TraceContext
from aerie.proto.event import Priority


class InProcessAgents:
    """TEST STAND-IN for the five A2A agents (the real ones are separate processes behind mTLS).

    Deterministic answers computed in-process. Like the real remediate and notify agents it dedupes
    side effects by idempotency key and keeps that memory across coordinators (it plays the agents'
    processes, which outlive a brain restart). Knobs: ``verdict``, ``action``, ``down`` (agents that
    raise `AgentUnavailable`), ``failing`` (agents that answer ``failed``), ``hold`` (an agent that
    performs its effect, then blocks until the event is set: a crash window).
    """

    def __init__(self, *, verdict: str = "auto_execute", action: str = "isolate_pod") -> None:
        self.verdict = verdict
        self.action = action
        self.down: set[str] = set()
        self.failing: set[str] = set()
        self.hold: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        """(agent, traceparent, request as plain data) for every call that reached an agent."""
        self.effects: collections.Counter[str] = collections.Counter()
        """Idempotency key → how many times the effect really happened."""
        self._results: dict[str, dict[str, Any]] = {}

    def called(self, agent: str) -> list[dict[str, Any]]:
        return [request for name, _, request in self.calls if name == agent]

    async def call(
        self, agent: str, request: msgspec.Struct, *, traceparent: str, timeout_s: float | None = None
    ) -> AgentReply:
        TraceContext.parse(traceparent)  # a malformed header is a bug in the caller
        if agent in self.down:
            raise AgentUnavailable(agent, 3, "connection refused")
        plain = msgspec.to_builtins(request)
        self.calls.append((agent, traceparent, plain))
        if agent in self.failing:
            return AgentReply(
                agent=agent, state="failed", data={}, task_id="t", duration_ms=0.1, error="boom"
            )
        state, data = self._answer(agent, plain)
        gate = self.hold.get(agent)
        if gate is not None:
            self.entered[agent].set()
            await gate.wait()
        return AgentReply(agent=agent, state=state, data=data, task_id=uuid.uuid4().hex, duration_ms=0.1)

    def _answer(self, agent: str, request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if agent == "detect":
            event = request["anomaly"]["event"]
            asset = Asset(
                node=request["anomaly"]["node"],
                namespace=str(event["output_fields"].get("k8s.ns.name")),
                pod=str(event["output_fields"].get("k8s.pod.name")),
            )
            reply: msgspec.Struct = Detection(
                summary=f"{event['rule']} in {asset.pod}",
                severity="high",
                asset=asset,
                rule=event["rule"],
                related_event_ids=[request["anomaly"]["event_id"]],
            )
            return "completed", msgspec.to_builtins(reply)
        if agent == "analyst":
            asset = msgspec.convert(request["detection"]["asset"], Asset)
            reply = Analysis(
                tactic="TA0002",
                technique="T1059",
                technique_name="Command and Scripting Interpreter",
                confidence=0.9,
                rationale="interactive shell in a web container",
                proposed_action=Action(kind=self.action, target=asset, reason="contain"),  # type: ignore[arg-type]
            )
            return "completed", msgspec.to_builtins(reply)
        if agent == "reviewer":
            review = Review(
                verdict=self.verdict,  # type: ignore[arg-type]
                reasons=[f"test policy says {self.verdict}"],
                policy_version="t1",
            )
            state = {"auto_execute": "completed", "auto_reject": "rejected", "escalate": "input_required"}
            return state[self.verdict], msgspec.to_builtins(review)
        key = request["idempotency_key"]
        first = key not in self._results
        if first:
            self.effects[key] += 1
            if agent == "remediate":
                action = msgspec.convert(request["action"], Action)
                result: msgspec.Struct = Remediation(
                    action=action,
                    idempotency_key=key,
                    executed=True,
                    first_time=True,
                    result="dry-run: isolated",
                )
            else:
                result = Notice(delivered=True, channel="test", message_id=key, first_time=True)
            self._results[key] = msgspec.to_builtins(result)
        return "completed", self._results[key] | {"first_time": first}


def make_anomaly(n: int = 0, *, trace: TraceContext | None = None) -> Anomaly:
    event = pod_shell_event(
        time_ns=T0_NS + n,
        priority=Priority.WARNING,
        output=f"A shell was spawned in a container (n={n})",
        hostname="worker-1",
        tags=(),
        fields={"container.id": "abc123", "k8s.pod.name": "web-1"},
    )
    traceparent = (trace or TraceContext.new()).traceparent
    return anomaly_of(event, traceparent=traceparent, model_version="m-test", score=0.93, threshold=0.61)
