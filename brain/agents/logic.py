"""What each agent decides: deterministic logic behind one small interface.

`AgentLogic.handle` takes the agent's request Struct (`aerie.proto.agents`) and returns an `Outcome`:
the reply Struct and the task state it maps to. The A2A service (`aerie.brain.agents.service`)
does everything else (decoding, task states, metrics, traces), so a later logic (ATT&CK mapping,
Rego, MCP tools, an LLM) replaces one class and nothing around it.

Event fields are attacker-controlled text. They are copied into descriptive fields (summary, asset
names) and never parsed for meaning: severity comes from the event's priority and the model's score,
the ATT&CK mapping from the rule's name and tags (set by whoever deployed the rules), the verdict
from confidence, namespace, action kind and target. A namespace that an attacker could spoof would
need control of the container runtime's metadata, which is out of scope.

The defaults here are placeholders with a clear shape; the reviewer's verdict moves to Rego next.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from aerie.brain.agents.registry import SPECS, AgentSpec
from aerie.brain.agents.store import IdempotentStore
from aerie.brain.mcp import attack
from aerie.proto.agents import (
    Action,
    AnalyseRequest,
    Analysis,
    Asset,
    Detection,
    DetectRequest,
    Notice,
    NotifyRequest,
    RemediateRequest,
    Remediation,
    Review,
    ReviewRequest,
)
from aerie.proto.event import Priority

if TYPE_CHECKING:
    from aerie.brain.mcp.client import McpCaller

__all__ = [
    "ALWAYS_ESCALATE_NAMESPACES",
    "MIN_CONFIDENCE",
    "POLICY_VERSION",
    "AgentLogic",
    "AnalystLogic",
    "DetectLogic",
    "LogicError",
    "NotifyLogic",
    "Outcome",
    "RemediateLogic",
    "ReviewerLogic",
    "build_logic",
]

OutcomeState = Literal["completed", "input_required", "rejected"]
Severity = Literal["low", "medium", "high", "critical"]

POLICY_VERSION: Final = "aerie-builtin/1"
"""The reviewer's policy identity, recorded with every verdict (Rego bundles carry their own)."""

MIN_CONFIDENCE: Final = 0.6

ALWAYS_ESCALATE_NAMESPACES: Final = frozenset(
    {
        # control plane
        "kube-system",
        "kube-public",
        "kube-node-lease",
        # identity and secrets
        "cert-manager",
        "vault",
        "keycloak",
        "dex",
        "external-secrets",
        # the security stack itself
        "aerie",
        "falco",
    }
)

_FIELD_MAX: Final = 256
_TEXT_MAX: Final = 1024


class LogicError(Exception):
    """A request that decoded but cannot be acted on (an empty key, say): the task fails with this."""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent decided: the reply, the task state it maps to, and a line for the task status."""

    state: OutcomeState
    reply: msgspec.Struct
    note: str = ""


class AgentLogic(abc.ABC):
    """One agent's decision. Subclasses set `spec` and implement `handle`; `start`/`close` hold
    whatever the logic keeps open (a database)."""

    spec: AgentSpec

    async def start(self) -> None:  # noqa: B027 - an optional hook
        """Open what `handle` needs; raises on a state directory that cannot be used."""

    @abc.abstractmethod
    async def handle(self, request: Any) -> Outcome:
        """Decide on ``request`` (an instance of ``spec.request_type``); `LogicError` on bad data."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release what `start` opened. Safe to call twice."""


# --- reading an anomaly ------------------------------------------------------------------------


class _EventView(msgspec.Struct, kw_only=True):
    """The parts of a `FalcoEvent` the logic reads (as plain data after an A2A hop: numbers may be floats)."""

    rule: str
    priority: int | str
    hostname: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    output_fields: Any = None  # only sent on to MCP, and only what fits (`_mcp_fields`)


class _AnomalyView(msgspec.Struct, kw_only=True):
    event_id: str = ""
    node: str = ""
    score: float
    threshold: float
    event: _EventView


def _view(anomaly: Mapping[str, Any]) -> _AnomalyView:
    try:
        return msgspec.convert(anomaly, _AnomalyView, strict=False)
    except msgspec.ValidationError as exc:
        raise LogicError(f"anomaly: {exc}") from None


def _clip(text: str, limit: int = _FIELD_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field(fields: Mapping[str, Any], name: str) -> str | None:
    """A Falco field as a bounded string; missing, null, non-text and ``<NA>`` are None."""
    value = fields.get(name)
    if not isinstance(value, str) or value in ("", "<NA>"):
        return None
    return _clip(value)


def _priority(value: int | str) -> Priority:
    if isinstance(value, int):
        try:
            return Priority(value)
        except ValueError:
            raise LogicError(f"anomaly: priority {value} is not a Falco priority (0..7)") from None
    by_name = {p.name.lower(): p for p in Priority} | {"info": Priority.INFORMATIONAL}
    try:
        return by_name[value.strip().lower()]
    except KeyError:
        raise LogicError(f"anomaly: priority {value[:40]!r} is not a Falco priority") from None


_SEVERITIES: Final[tuple[Severity, ...]] = ("low", "medium", "high", "critical")


def _severity_of_priority(priority: Priority) -> Severity:
    if priority <= Priority.CRITICAL:
        return "critical"
    if priority == Priority.ERROR:
        return "high"
    if priority == Priority.WARNING:
        return "medium"
    return "low"


def _severity_of_score(score: float, threshold: float) -> Severity:
    """How far past the threshold the model put the event: far past is worth a look whatever the rule."""
    margin = score - threshold
    if margin >= 0.10:
        return "high"
    if margin >= 0.05:
        return "medium"
    return "low"


# --- detect ------------------------------------------------------------------------------------


class DetectLogic(AgentLogic):
    """Summary, severity (the higher of the rule's priority and the score's margin), asset, rule."""

    spec = SPECS["detect"]

    async def handle(self, request: DetectRequest) -> Outcome:
        anomaly = _view(request.anomaly)
        event = anomaly.event
        priority = _priority(event.priority)
        severity = max(
            _severity_of_priority(priority),
            _severity_of_score(anomaly.score, anomaly.threshold),
            key=_SEVERITIES.index,
        )
        fields = event.output_fields
        asset = Asset(
            node=_clip(anomaly.node or event.hostname) or "unknown",
            namespace=_field(fields, "k8s.ns.name"),
            pod=_field(fields, "k8s.pod.name"),
            container_id=_field(fields, "container.id"),
            image=_field(fields, "container.image.repository"),
        )
        rule = _clip(event.rule)
        if asset.pod is not None:
            where = f"pod {asset.namespace or '?'}/{asset.pod}"
        elif asset.container_id is not None:
            where = f"container {asset.container_id}"
        else:
            where = "the host"
        summary = (
            f"{rule} in {where} on node {asset.node} (priority {priority.falco_name}, "
            f"score {anomaly.score:.3f} over threshold {anomaly.threshold:.3f})"
        )
        detection = Detection(
            summary=_clip(summary, _TEXT_MAX),
            severity=severity,
            asset=asset,
            rule=rule,
            related_event_ids=[_clip(anomaly.event_id)] if anomaly.event_id else [],
        )
        return Outcome(state="completed", reply=detection, note=f"severity {severity}")


# --- analyst -----------------------------------------------------------------------------------


class _TagsEvent(msgspec.Struct):
    tags: list[str] = msgspec.field(default_factory=list)
    output_fields: Any = None  # only sent on to MCP, and only what fits (`_mcp_fields`)


class _TagsView(msgspec.Struct):
    event: _TagsEvent = msgspec.field(default_factory=_TagsEvent)


class _McpMapping(msgspec.Struct, frozen=True):
    """What ``map_technique`` of the ``aerie-attack`` MCP server answers (its output schema)."""

    tactic: str
    technique: str
    technique_name: str
    confidence: float
    source: str


ATTACK_SERVER: Final = "attack"
"""The analyst's name for the ATT&CK MCP server (`aerie.brain.mcp.client.McpCaller` servers key)."""


def _mcp_fields(fields: Any) -> dict[str, Any]:
    """The event's output fields as ``map_technique`` accepts them: scalar values, cut to the bounds
    (`aerie.brain.mcp.attack`) rather than refused, so an oversized event still gets its mapping."""
    out: dict[str, Any] = {}
    for key, value in fields.items() if isinstance(fields, Mapping) else ():
        if len(out) >= attack.FIELDS_MAX:
            break
        if not isinstance(key, str) or len(key) > attack.FIELD_NAME_MAX:
            continue
        if isinstance(value, str):
            out[key] = value[: attack.FIELD_VALUE_MAX]
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
    return out


class AnalystLogic(AgentLogic):
    """ATT&CK tactic and technique for the detection's rule, and a proposed action: none for low
    severity, isolate the pod when there is one, else kill the process.

    With ``mcp`` (an `aerie.brain.mcp.client.McpCaller` knowing the ``attack`` server) the mapping
    comes from the ``aerie-attack`` MCP server's ``map_technique`` tool, called under the A2A
    request's trace; the analyst owns the caller (closes it). Without ``mcp`` (the no-MCP mode, for
    tests and single-process runs) it reads the same table (`aerie.brain.mcp.attack`) directly. When
    the MCP server cannot be reached or answers no valid mapping, the analysis says so at confidence
    0, which the reviewer escalates; the analyst never fails the task for it.
    """

    spec = SPECS["analyst"]

    def __init__(self, *, mcp: McpCaller | None = None) -> None:
        self.mcp = mcp

    async def close(self) -> None:
        if self.mcp is not None:
            await self.mcp.aclose()

    async def _map(self, rule: str, event: _TagsEvent) -> tuple[attack.Mapping, str]:
        """The mapping and how it was found, for the rationale."""
        if self.mcp is None:
            mapping = attack.lookup(rule, event.tags)
            return mapping, {"rule": "curated table", "tags": "rule tags"}.get(mapping.source, "no mapping")
        from aerie.brain.mcp.client import McpError

        tags = [t for t in event.tags if len(t) <= attack.TAG_MAX]  # longer ones are no ATT&CK tag
        arguments = {
            "rule": rule[: attack.RULE_MAX],
            "tags": tags[: attack.TAGS_MAX],
            "output_fields": _mcp_fields(event.output_fields),
        }
        try:
            data = await self.mcp.call(ATTACK_SERVER, "map_technique", arguments)
            found = msgspec.convert(data, _McpMapping)
        except (McpError, msgspec.ValidationError) as exc:
            why = exc.reason if isinstance(exc, McpError) else f"answer not understood: {exc}"
            return attack.Mapping("unknown", "unknown", "", 0.0, "none"), _clip(
                f"no mapping: ATT&CK MCP server failed ({why})", _FIELD_MAX
            )
        mapping = attack.Mapping(
            found.tactic,
            found.technique,
            found.technique_name,
            min(max(found.confidence, 0.0), 1.0),
            found.source,
        )
        source = {"rule": "curated table", "tags": "rule tags"}.get(mapping.source, "no mapping")
        return mapping, f"{source} via MCP aerie-attack"

    async def handle(self, request: AnalyseRequest) -> Outcome:
        try:
            event = msgspec.convert(request.anomaly, _TagsView, strict=False).event
        except msgspec.ValidationError as exc:
            raise LogicError(f"anomaly: {exc}") from None
        detection = request.detection
        mapping, source = await self._map(detection.rule, event)
        asset = detection.asset
        if detection.severity == "low":
            kind: Literal["none", "isolate_pod", "kill_process"] = "none"
            why = "severity low: watch, do not act"
        elif asset.pod is not None and asset.namespace is not None:
            kind = "isolate_pod"
            why = f"contain pod {asset.namespace}/{asset.pod} with a deny-all network policy"
        else:
            kind = "kill_process"
            why = "no pod to isolate: stop the offending process"
        action = Action(kind=kind, target=asset, reason=why, dry_run=True)
        rationale = (
            f"rule {detection.rule!r} maps to {mapping.tactic}/{mapping.technique} ({source}),"
            f" confidence {mapping.confidence:.2f}; severity {detection.severity}; {why}"
        )
        analysis = Analysis(
            tactic=mapping.tactic,
            technique=mapping.technique,
            technique_name=mapping.technique_name,
            confidence=mapping.confidence,
            rationale=_clip(rationale, _TEXT_MAX),
            proposed_action=action,
        )
        return Outcome(state="completed", reply=analysis, note=f"{mapping.tactic}/{mapping.technique}")


# --- reviewer ----------------------------------------------------------------------------------

_WIDE_ACTIONS: Final = {
    "cordon_node": "cordon_node moves every workload off the node",
    "deploy_rule": "deploy_rule changes detection on every node",
}


class ReviewerLogic(AgentLogic):
    """The safety gate, fail-closed: any escalation reason wins; otherwise no action is an
    auto-reject and anything else an auto-execute.

    Escalation reasons: confidence below ``min_confidence``; the namespace on the always-escalate
    list; an action whose blast radius exceeds one workload (cordon a node, deploy a rule, kill a
    process on the host); an action aimed at something other than the detected asset.
    """

    spec = SPECS["reviewer"]

    def __init__(
        self,
        *,
        min_confidence: float = MIN_CONFIDENCE,
        always_escalate: Iterable[str] = ALWAYS_ESCALATE_NAMESPACES,
        policy_version: str = POLICY_VERSION,
    ) -> None:
        self.min_confidence = min_confidence
        self.always_escalate = frozenset(always_escalate)
        self.policy_version = policy_version

    async def handle(self, request: ReviewRequest) -> Outcome:
        analysis, detection = request.analysis, request.detection
        action = analysis.proposed_action
        target = action.target
        reasons: list[str] = []
        if not analysis.confidence >= self.min_confidence:  # NaN escalates too
            reasons.append(f"confidence {analysis.confidence:.2f} below {self.min_confidence:.2f}")
        for namespace in sorted({n for n in (target.namespace, detection.asset.namespace) if n}):
            if namespace in self.always_escalate:
                reasons.append(f"namespace {namespace} is on the always-escalate list")
        if action.kind in _WIDE_ACTIONS:
            reasons.append(f"blast radius: {_WIDE_ACTIONS[action.kind]}")
        if action.kind == "kill_process" and target.container_id is None and target.pod is None:
            reasons.append("blast radius: kill_process outside any container acts on the host")
        if action.kind != "none" and (target.node, target.namespace, target.pod) != (
            detection.asset.node,
            detection.asset.namespace,
            detection.asset.pod,
        ):
            reasons.append("the action targets something other than the detected asset")
        if reasons:
            verdict: Literal["auto_execute", "auto_reject", "escalate"] = "escalate"
            state: OutcomeState = "input_required"
        elif action.kind == "none":
            verdict, state = "auto_reject", "rejected"
            reasons.append("no action proposed")
        else:
            verdict, state = "auto_execute", "completed"
            reasons.append(
                f"{action.kind} within policy: confidence {analysis.confidence:.2f}, "
                f"namespace {target.namespace or '-'} not listed, one workload affected"
            )
        review = Review(verdict=verdict, reasons=reasons, policy_version=self.policy_version)
        return Outcome(state=state, reply=review, note=f"{verdict}: {'; '.join(reasons)}")


# --- remediate ---------------------------------------------------------------------------------

_ENCODER: Final = msgspec.json.Encoder()


def _describe(action: Action) -> str:
    t = action.target
    pod = f"{t.namespace or '?'}/{t.pod}" if t.pod else None
    match action.kind:
        case "none":
            return "nothing to do"
        case "isolate_pod":
            return f"isolate pod {pod or '?'} with a deny-all NetworkPolicy"
        case "kill_process":
            where = f"container {t.container_id}" if t.container_id else "the host"
            return f"kill the offending process in {where} on node {t.node}"
        case "cordon_node":
            return f"cordon node {t.node}"
        case "label_pod":
            return f"label pod {pod or '?'} aerie.io/quarantine=true"
        case "deploy_rule":
            return "deploy the drafted Falco rule"


class RemediateLogic(AgentLogic):
    """Records what it would do (dry-run) once per idempotency key, durably in ``state_dir``.

    A repeated key returns the first result with ``first_time=False``, also after a restart. An
    action with ``dry_run=False`` is recorded but not executed: this build has no executor yet
    (Kubernetes actions arrive with the MCP server), and says so in ``result``.
    """

    spec = SPECS["remediate"]

    def __init__(self, state_dir: Path) -> None:
        self.store = IdempotentStore(state_dir / "remediate.sqlite3")

    async def start(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def handle(self, request: RemediateRequest) -> Outcome:
        key = request.idempotency_key
        if not key.strip():
            raise LogicError("idempotency_key is empty")
        action = request.action

        def produce() -> bytes:
            what = _describe(action)
            if action.kind == "none":
                result = "nothing to do"
            elif action.dry_run:
                result = f"dry-run: would {what}"
            else:
                result = f"not executed: no executor in this build (would {what}); recorded only"
            return _ENCODER.encode(
                Remediation(
                    action=action, idempotency_key=key, executed=False, first_time=True, result=result
                )
            )

        record = await self.store.once(key, _ENCODER.encode(request.action), produce)
        first = msgspec.json.decode(record.value, type=Remediation)
        if record.first_time:
            return Outcome(state="completed", reply=first, note=first.result)
        note = "repeated key: first result returned"
        if not record.same_request:
            note += " (the key was first used for a different action)"
        reply = msgspec.structs.replace(first, first_time=False)
        return Outcome(state="completed", reply=reply, note=note)


# --- notify ------------------------------------------------------------------------------------


class OutboxMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message in the notify outbox, as the Mattermost card will carry it."""

    message_id: str
    incident_id: str
    kind: str
    text: str
    chain: list[dict[str, Any]]


class _Posted(msgspec.Struct, frozen=True):
    notice: Notice
    message: OutboxMessage


class NotifyLogic(AgentLogic):
    """A stand-in for Mattermost: posts into a durable outbox in ``state_dir``, once per key.

    The message id is derived from the key, so a repeat names the same message. Real Mattermost
    delivery replaces this class; the reply keeps its shape (``channel`` says where it went).
    """

    spec = SPECS["notify"]
    channel: Final = "outbox (Mattermost stand-in)"

    def __init__(self, state_dir: Path) -> None:
        self.store = IdempotentStore(state_dir / "notify-outbox.sqlite3")

    async def start(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def outbox(self) -> list[OutboxMessage]:
        """Every message posted, oldest first."""
        return [msgspec.json.decode(v, type=_Posted).message for v in await self.store.values()]

    async def handle(self, request: NotifyRequest) -> Outcome:
        key = request.idempotency_key
        if not key.strip():
            raise LogicError("idempotency_key is empty")
        message_id = "msg-" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()

        def produce() -> bytes:
            text = _clip(f"[{request.kind}] incident {request.incident_id}: {request.summary}", _TEXT_MAX * 4)
            message = OutboxMessage(
                message_id=message_id,
                incident_id=request.incident_id,
                kind=request.kind,
                text=text,
                chain=request.chain,
            )
            notice = Notice(delivered=True, channel=self.channel, message_id=message_id, first_time=True)
            return _ENCODER.encode(_Posted(notice=notice, message=message))

        record = await self.store.once(key, _ENCODER.encode(request), produce)
        posted = msgspec.json.decode(record.value, type=_Posted)
        if record.first_time:
            return Outcome(state="completed", reply=posted.notice, note=f"posted {message_id}")
        return Outcome(
            state="completed",
            reply=msgspec.structs.replace(posted.notice, first_time=False),
            note=f"repeated key: {message_id} was posted before",
        )


def build_logic(name: str, *, state_dir: Path | None = None) -> AgentLogic:
    """The default logic of agent ``name``. Raises `KeyError` for an unknown name and `ValueError`
    when the agent keeps records and ``state_dir`` is None."""
    match name:
        case "detect":
            return DetectLogic()
        case "analyst":
            return AnalystLogic()
        case "reviewer":
            return ReviewerLogic()
        case "remediate" | "notify":
            if state_dir is None:
                raise ValueError(f"agent {name} keeps idempotency records and needs a state directory")
            return RemediateLogic(state_dir) if name == "remediate" else NotifyLogic(state_dir)
    raise KeyError(f"unknown agent {name!r}")
