"""What the coordinator and the agents say to each other over A2A: names, payloads, replies.

Each call is one A2A ``SendMessage`` whose message holds one data part: the request Struct below,
encoded to plain JSON. The agent answers with a task whose final state tells the coordinator what
happened (``TASK_STATE_COMPLETED``, ``TASK_STATE_INPUT_REQUIRED`` for an escalation,
``TASK_STATE_REJECTED`` for an auto-reject, ``TASK_STATE_FAILED``) and whose artifact holds the
reply Struct as one data part. ``traceparent`` travels as an HTTP header on every call.

The coordinator keeps graph state as plain data (LangGraph cannot checkpoint msgspec Structs):
convert with ``msgspec.to_builtins`` on the way in and ``msgspec.convert`` on the way out.
Everything that came from an event is attacker-controlled text: agents treat it as data only.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol

import msgspec

__all__ = [
    "ACTIONS",
    "AGENTS",
    "Action",
    "AgentCaller",
    "AgentReply",
    "AgentUnavailable",
    "AnalyseRequest",
    "Analysis",
    "Asset",
    "DetectRequest",
    "Detection",
    "Notice",
    "NotifyRequest",
    "RemediateRequest",
    "Remediation",
    "Review",
    "ReviewRequest",
    "TaskState",
    "Verdict",
]

AGENTS: Final = ("detect", "analyst", "reviewer", "remediate", "notify")
"""Agent names; an agent's identity is ``spiffe_id(f"agent-{name}")``, e.g. spiffe://aerie/agent/analyst."""

ActionKind = Literal["none", "isolate_pod", "kill_process", "cordon_node", "label_pod", "deploy_rule"]
ACTIONS: Final = ("none", "isolate_pod", "kill_process", "cordon_node", "label_pod", "deploy_rule")
Verdict = Literal["auto_execute", "auto_reject", "escalate"]
TaskState = Literal["completed", "input_required", "rejected", "failed"]


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    """What an incident is about, as far as the event says."""

    node: str
    namespace: str | None = None
    pod: str | None = None
    container_id: str | None = None
    image: str | None = None


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """A proposed response. ``dry_run`` is the default everywhere: executing for real is opt-in."""

    kind: ActionKind
    target: Asset
    reason: str = ""
    dry_run: bool = True


# --- requests (coordinator → agent) ---------------------------------------------------------------


class DetectRequest(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    anomaly: dict[str, Any]
    """The `aerie.proto.envelope.Anomaly` as plain data."""


class AnalyseRequest(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    anomaly: dict[str, Any]
    detection: Detection


class ReviewRequest(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    detection: Detection
    analysis: Analysis


class RemediateRequest(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    action: Action
    idempotency_key: str
    """Same key, same effect: a replayed or resumed step gets the first result back, never a second run."""


class NotifyRequest(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    kind: Literal["escalation", "executed", "rejected", "decision"]
    summary: str
    chain: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """The reasoning chain so far (step name, agent, output), for the person reading the card."""
    idempotency_key: str


# --- replies (agent → coordinator) ----------------------------------------------------------------


class Detection(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    severity: Literal["low", "medium", "high", "critical"]
    asset: Asset
    rule: str
    related_event_ids: list[str] = msgspec.field(default_factory=list)


class Analysis(msgspec.Struct, frozen=True, kw_only=True):
    tactic: str
    """MITRE ATT&CK tactic id, e.g. TA0002."""
    technique: str
    """MITRE ATT&CK technique id, e.g. T1059."""
    technique_name: str
    confidence: float
    """0..1."""
    rationale: str
    proposed_action: Action


class Review(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    reasons: list[str]
    policy_version: str


class Remediation(msgspec.Struct, frozen=True, kw_only=True):
    action: Action
    idempotency_key: str
    executed: bool
    first_time: bool
    """False when this key had run before and the stored result was returned instead."""
    result: str


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    delivered: bool
    channel: str
    message_id: str
    first_time: bool


class AgentReply(msgspec.Struct, frozen=True, kw_only=True):
    """One finished A2A call as the coordinator sees it."""

    agent: str
    state: TaskState
    data: dict[str, Any]
    """The reply Struct as plain data (empty when the task failed)."""
    task_id: str
    duration_ms: float
    attempts: int = 1
    error: str | None = None


class AgentUnavailable(Exception):
    """The agent could not be reached (down, refused, timed out) after every retry; the incident escalates."""

    def __init__(self, agent: str, attempts: int, reason: str) -> None:
        super().__init__(f"agent {agent} unavailable after {attempts} attempt(s): {reason}")
        self.agent = agent
        self.attempts = attempts
        self.reason = reason


class AgentCaller(Protocol):
    """How the coordinator calls an agent; `aerie.brain.agents.client.A2AAgentCaller` is the real one."""

    async def call(
        self, agent: str, request: msgspec.Struct, *, traceparent: str, timeout_s: float | None = None
    ) -> AgentReply:
        """Send ``request`` to ``agent``; retries with backoff inside; raises `AgentUnavailable`."""
        ...
