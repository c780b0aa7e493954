"""`aerie trace TRACE_ID` and `aerie cases ...`: a decision's whole chain; the humans' side of escalations.

``trace`` and ``cases list`` only read the audit store. ``cases approve|dismiss|investigate`` resume the
paused incident from this process: they open the coordinator's checkpoints and audit store and call
the agents (as the ``cli`` identity by default, which the agents allow) to run the remaining steps.

Everything printed for a person has control characters escaped: event text is attacker-controlled and
must not drive the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aerie.brain.cli import CliError, flag, option

if TYPE_CHECKING:
    from aerie.brain.audit import IncidentRecord, StepRecord, TraceRecord
    from aerie.proto.agents import AgentCaller

__all__ = ["add_agent_options", "add_store_options", "register", "render_cases", "render_trace"]

DEFAULT_AUDIT: Final = "sqlite:///aerie-audit.db"
DEFAULT_CHECKPOINTS: Final = "sqlite:///aerie-checkpoints.db"

_TRACE_EPILOG = """\
Exit status: 0 when the trace was found, 1 when the audit store has no such trace, 2 for a bad
option or an audit store that cannot be opened. --json prints one JSON object: the incidents,
their steps (inputs, outputs, verdicts, timings), human decisions, labels and actions.
"""

_DECIDE_EPILOG = """\
Runs the rest of the incident in this process: approve executes the proposed action (dry-run unless
the action says otherwise), dismiss rejects it, investigate records the decision and keeps the case
open. Exit status: 0 when the decision was applied, 1 when the incident is unknown or not waiting
for a decision, 2 for bad options or stores/certificates that cannot be used.
"""


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER and no passwd entry, as in some containers
        return "unknown"


def add_store_options(parser: argparse.ArgumentParser, *, checkpoints: bool = True) -> None:
    """``--audit`` (and ``--checkpoints``): the same flags and variables as ``aerie brain run``."""
    option(
        parser,
        "--audit",
        env="AERIE_AUDIT_URL",
        default=DEFAULT_AUDIT,
        metavar="URL",
        help="audit store: sqlite:///PATH or postgresql://...",
    )
    if checkpoints:
        option(
            parser,
            "--checkpoints",
            env="AERIE_CHECKPOINTS_URL",
            default=DEFAULT_CHECKPOINTS,
            metavar="URL",
            help="the coordinator's checkpoints: sqlite:///PATH or postgresql://...",
        )


def add_agent_options(parser: argparse.ArgumentParser, *, identity: str) -> None:
    """``--certs``, ``--identity``, ``--agents``, ``--agent-timeout``: how this process calls the agents."""
    option(
        parser,
        "--certs",
        env="AERIE_CERTS",
        type=Path,
        required=True,
        metavar="DIR",
        help="certificates as `aerie certs init DIR` writes them: ca.crt and IDENTITY.crt/.key",
    )
    option(
        parser,
        "--identity",
        env="AERIE_IDENTITY",
        default=identity,
        metavar="COMPONENT",
        help="whose certificate to present to the agents",
    )
    option(
        parser,
        "--agents",
        env="AERIE_AGENTS",
        metavar="NAME=URL,...",
        help="agent endpoints over the defaults (every agent on 127.0.0.1 at its own port)",
    )
    option(
        parser,
        "--agent-timeout",
        env="AERIE_AGENT_TIMEOUT",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="limit of each attempt of an agent call",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `aerie trace` and `aerie cases` to the `aerie` command."""
    trace = sub.add_parser(
        "trace",
        help="a decision's whole chain, in order",
        description="Print everything recorded for TRACE_ID: the anomaly, every step with its "
        "component, timing, key outputs and verdict, human decisions, actions and the label.",
        epilog=_TRACE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace.add_argument(
        "trace_id",
        metavar="TRACE_ID",
        help="the W3C trace id (32 hex digits); a traceparent or an incident id (inc-...) works too",
    )
    add_store_options(trace, checkpoints=False)
    flag(trace, "--json", env="AERIE_TRACE_JSON", help="one JSON object for tools instead of text")
    trace.set_defaults(handler=_trace)

    cases = sub.add_parser("cases", help="escalated incidents: list, approve, dismiss, investigate")
    actions = cases.add_subparsers(dest="cases_command", required=True, metavar="COMMAND")
    listing = actions.add_parser(
        "list",
        help="incidents, most recent first",
        description="List incidents from the audit store, most recently received first.",
    )
    add_store_options(listing, checkpoints=False)
    flag(listing, "--open", env="AERIE_CASES_OPEN", help="only those waiting for a human decision")
    flag(listing, "--json", env="AERIE_CASES_JSON", help="a JSON array for tools instead of text")
    option(listing, "--limit", env="AERIE_CASES_LIMIT", type=int, default=50, help="at most this many")
    listing.set_defaults(handler=_list)

    helps = {
        "approve": "execute the proposed action of an escalated incident",
        "dismiss": "reject an escalated incident (no action)",
        "investigate": "record that someone is looking; the case stays open",
    }
    for decision, text in helps.items():
        decide = actions.add_parser(
            decision,
            help=text,
            description=f"{text[0].upper()}{text[1:]}, and run the rest of the incident from here.",
            epilog=_DECIDE_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        decide.add_argument("incident_id", metavar="INCIDENT_ID", help="as `aerie cases list` shows it")
        option(decide, "--by", env="AERIE_CASES_BY", default=_default_user(), help="who decides (recorded)")
        option(decide, "--note", env="AERIE_CASES_NOTE", help="why (recorded with the decision)")
        add_store_options(decide)
        add_agent_options(decide, identity="cli")
        decide.set_defaults(handler=_decide, decision=decision)


# --- rendering -------------------------------------------------------------------------------------

_CONTROL: Final = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def _clean(value: Any, limit: int = 160) -> str:
    """Printable, one line, at most ``limit`` characters: event text must not drive the terminal."""
    text = str(value).translate(_CONTROL)
    text = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    stamp = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _describe_detect(o: dict[str, Any]) -> str:
    return f"{o.get('severity', '?')}: {o.get('summary', '')}"


def _describe_analyse(o: dict[str, Any]) -> str:
    action = o.get("proposed_action") or {}
    confidence = o.get("confidence")
    shown = f"{confidence:.2f}" if isinstance(confidence, int | float) else "?"
    return (
        f"{o.get('tactic', '?')} {o.get('technique', '?')} {o.get('technique_name', '')}, "
        f"confidence {shown}; proposes {action.get('kind', 'none')}"
    )


def _describe_review(o: dict[str, Any]) -> str:
    reasons = "; ".join(map(str, o.get("reasons", [])))
    return f"{o.get('verdict', '?')}: {reasons} (policy {o.get('policy_version', '?')})"


def _describe_execute(o: dict[str, Any]) -> str:
    action = o.get("action") or {}
    if not action:
        return str(o.get("result", ""))
    dry = " dry-run" if action.get("dry_run", True) else ""
    done = "executed" if o.get("executed") else "not executed"
    return f"{action.get('kind', '?')}{dry} {done}: {o.get('result', '')}"


def _describe_notice(o: dict[str, Any]) -> str:
    state = "delivered" if o.get("delivered") else "not delivered"
    return f"{state} via {o.get('channel', '?')} ({o.get('message_id', '')})"


def _describe_decision(o: dict[str, Any]) -> str:
    note = f': "{o["note"]}"' if o.get("note") else ""
    return f"{o.get('decision', '?')} by {o.get('by', '?')}{note}"


def _describe_feedback(o: dict[str, Any]) -> str:
    return f"label {o.get('label', '?')} ({o.get('source', '?')})"


def _describe_reject(o: dict[str, Any]) -> str:
    return "rejected: " + "; ".join(map(str, o.get("reasons", [])))


_DESCRIBE: Final[dict[str, Callable[[dict[str, Any]], str]]] = {
    "detect": _describe_detect,
    "analyse": _describe_analyse,
    "review": _describe_review,
    "execute": _describe_execute,
    "escalate": _describe_notice,
    "notify": _describe_notice,
    "decision": _describe_decision,
    "feedback": _describe_feedback,
    "reject": _describe_reject,
}


def _step_line(step: StepRecord) -> str:
    if step.output:
        try:
            what = _DESCRIBE.get(step.step, str)(step.output)
        except (TypeError, ValueError, AttributeError):
            what = str(step.output)
    else:
        what = ""
    if step.meta.get("replayed"):
        what += " (recorded result reused)"
    if step.error:
        what = f"ERROR {step.error}" + (f" | {what}" if what else "")
    return (
        f"{step.seq:>4}  {_when(step.started_at_ns)}  {step.step:<9} {_clean(step.component, 34):<34} "
        f"{step.duration_ms:>9.1f}  {_clean(what, 200)}"
    )


def _anomaly_line(incident: IncidentRecord) -> str:
    anomaly = incident.anomaly
    event = anomaly.get("event") or {}
    score, threshold = anomaly.get("score"), anomaly.get("threshold")
    numbers = (
        f"score {score:.3f} > threshold {threshold:.3f}"
        if isinstance(score, int | float) and isinstance(threshold, int | float)
        else ""
    )
    return (
        f"anomaly   node {_clean(anomaly.get('node', '?'), 60)}  "
        f"rule {_clean(event.get('rule', '?'), 80)}  {numbers}  "
        f"model {_clean(anomaly.get('model_version', '?'), 40)}"
    )


def render_trace(record: TraceRecord) -> str:
    """The chain of ``record`` for a person, in order."""
    lines = [f"trace {record.trace_id}"]
    for incident in record.incidents:
        lines += [
            "",
            f"incident  {incident.incident_id}  event {incident.event_id}  status {incident.status}  "
            f"verdict {incident.verdict or '-'}  outcome {incident.outcome or '-'}",
            _anomaly_line(incident),
            f"received  {_when(incident.received_at_ns)}  verdict at {_when(incident.verdict_at_ns)}  "
            f"finished {_when(incident.finished_at_ns)}",
        ]
        if incident.reason:
            lines.append(f"reason    {_clean(incident.reason, 300)}")
        lines += ["", f"{'seq':>4}  {'started (UTC)':<27}  {'step':<9} {'component':<34} {'ms':>9}  result"]
        lines += [_step_line(s) for s in record.steps if s.incident_id == incident.incident_id]
        decisions = [d for d in record.decisions if d.incident_id == incident.incident_id]
        if decisions:
            lines += ["", "decisions"]
            for d in decisions:
                note = f': "{_clean(d.note, 200)}"' if d.note else ""
                lines.append(f"  {_when(d.decided_at_ns)}  {d.decision} by {_clean(d.decided_by, 60)}{note}")
        actions = [a for a in record.actions if a.incident_id == incident.incident_id]
        if actions:
            lines += ["", "actions"]
            lines += [
                f"  {_when(a.recorded_at_ns)}  {a.agent:<9} {a.kind:<12} {a.idempotency_key}" for a in actions
            ]
        for label in (f for f in record.feedback if f.incident_id == incident.incident_id):
            lines += ["", f"label     {label.label} from {label.source} ({_clean(label.decided_by, 60)})"]
    return "\n".join(lines)


def render_cases(incidents: list[IncidentRecord]) -> str:
    """A table of ``incidents`` for a person."""
    if not incidents:
        return "no incidents"
    lines = [
        f"{'INCIDENT':<20}  {'STATUS':<9}  {'VERDICT':<12}  {'RECEIVED (UTC)':<27}  {'TRACE':<32}  "
        "NODE / RULE / REASON"
    ]
    for i in incidents:
        event = i.anomaly.get("event") or {}
        what = f"{i.anomaly.get('node', '?')} / {event.get('rule', '?')}"
        if i.reason and i.status in ("escalated", "deciding", "stalled"):
            what += f" / {i.reason}"
        lines.append(
            f"{i.incident_id:<20}  {i.status:<9}  {i.verdict or '-':<12}  {_when(i.received_at_ns):<27}  "
            f"{i.trace_id:<32}  {_clean(what, 160)}"
        )
    return "\n".join(lines)


# --- handlers --------------------------------------------------------------------------------------


def _run(coro: Any) -> Any:
    import asyncio

    from aerie.brain.audit import StoreError

    try:
        return asyncio.run(coro)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def _trace(args: argparse.Namespace) -> int:
    import msgspec

    from aerie.brain.audit import AuditStore

    wanted: str = args.trace_id.strip()

    async def load() -> TraceRecord | None:
        store = await AuditStore.open(args.audit, create=False)
        try:
            trace_id = wanted.lower()
            if wanted.startswith("inc-"):
                incident = await store.incident(wanted)
                if incident is None:
                    return None
                trace_id = incident.trace_id
            elif trace_id.startswith("00-") and trace_id.count("-") == 3:
                trace_id = trace_id.split("-")[1]
            return await store.trace(trace_id)
        finally:
            await store.close()

    record = _run(load())
    if record is None:
        print(
            f"aerie: trace {_clean(args.trace_id, 80)}: not in the audit store {_store_name(args.audit)}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(record), indent=2).decode() + "\n")
    else:
        print(render_trace(record))
    return 0


def _store_name(url: str) -> str:
    from aerie.brain.audit import redact_url

    return redact_url(url)


def _list(args: argparse.Namespace) -> int:
    import msgspec

    from aerie.brain.audit import OPEN_STATUSES, AuditStore

    if args.limit < 1:
        raise CliError(f"--limit: {args.limit} is not a positive number")

    async def load() -> list[IncidentRecord]:
        store = await AuditStore.open(args.audit, create=False)
        try:
            return await store.incidents(OPEN_STATUSES if args.open else None, limit=args.limit)
        finally:
            await store.close()

    incidents: list[IncidentRecord] = _run(load())
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(incidents), indent=2).decode() + "\n")
    else:
        print(render_cases(incidents))
    return 0


def _open_agents(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[AgentCaller]:
    """The A2A caller for this process (a seam: tests put an in-process stand-in here)."""
    from aerie.brain.agents.client import A2AAgentCaller
    from aerie.brain.agents.registry import parse_endpoints
    from aerie.edge.errors import TlsError

    try:
        endpoints = parse_endpoints(args.agents or "")
    except ValueError as exc:
        raise CliError(f"--agents: {exc}") from None
    if args.agent_timeout <= 0:
        raise CliError(f"--agent-timeout: {args.agent_timeout} is not a positive number")
    certs: Path = args.certs
    if not certs.is_dir():
        raise CliError(f"--certs: {certs} is not a directory")
    try:
        return A2AAgentCaller.from_certs(
            certs, component=args.identity, endpoints=endpoints, timeout_s=args.agent_timeout
        )
    except TlsError as exc:
        raise CliError(f"--certs: {exc} (run `aerie certs init {certs}`)") from None


def _decide(args: argparse.Namespace) -> int:
    from aerie.brain.coordinator import CaseError, Coordinator

    by = (args.by or "").strip()
    if not by:
        raise CliError("--by: who decides must not be empty")
    agents = _open_agents(args)

    async def decide() -> str:
        async with (
            agents as caller,
            Coordinator.open(
                caller=caller, checkpoints=args.checkpoints, audit=args.audit, concurrency=1, create=False
            ) as coordinator,
        ):
            return await coordinator.decide(args.incident_id, args.decision, by, args.note or "")

    try:
        status = _run(decide())
    except CaseError as exc:
        print(f"aerie: cases {args.decision}: {exc}", file=sys.stderr)
        return 1
    except CliError:
        raise
    except Exception as exc:  # a database or agent failure mid-run: say what happens next
        print(
            f"aerie: cases {args.decision}: {type(exc).__name__}: {_clean(exc, 300)}; a decision that was "
            "recorded is applied by the brain at its next start (see `aerie cases list`)",
            file=sys.stderr,
        )
        return 1
    print(f"{args.incident_id}: {args.decision} by {by}; status now {status}")
    return 0
