"""Who the agents are: name, certificate component, default port, request/reply types, who may call.

One table (`SPECS`) that the service, the caller and the command line all read, so a port or an
allow-list cannot drift between them. Outside Kubernetes every agent listens on 127.0.0.1 on its own
port (7101..7105); in Kubernetes each is a Service and the caller gets its URLs from configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from aerie.proto.agents import (
    AGENTS,
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
from aerie.proto.identity import spiffe_id

__all__ = [
    "DEFAULT_ALLOWED",
    "DEFAULT_HOST",
    "SPECS",
    "AgentSpec",
    "default_endpoints",
    "parse_endpoints",
    "parse_identities",
    "spec",
]

DEFAULT_HOST: Final = "127.0.0.1"

DEFAULT_ALLOWED: Final = (spiffe_id("brain"), spiffe_id("cli"))
"""Who may call any agent unless configured otherwise: the coordinator and the operator's CLI."""


@dataclass(frozen=True)
class AgentSpec:
    """One agent's fixed facts."""

    name: str
    port: int
    request_type: type[msgspec.Struct]
    reply_type: type[msgspec.Struct]
    description: str
    skill: str
    """One line for the agent card's single skill."""
    tags: tuple[str, ...]
    needs_state: bool = False
    """Whether the agent keeps durable records (idempotency) and so needs ``--state-dir``."""

    @property
    def component(self) -> str:
        """The certificate component name, ``agent-<name>`` (`aerie.brain.certs`)."""
        return f"agent-{self.name}"

    @property
    def identity(self) -> str:
        """The agent's own SPIFFE identity, e.g. ``spiffe://aerie/agent/analyst``."""
        return spiffe_id(self.component)


SPECS: Final[Mapping[str, AgentSpec]] = {
    s.name: s
    for s in (
        AgentSpec(
            name="detect",
            port=7101,
            request_type=DetectRequest,
            reply_type=Detection,
            description="Turns an anomaly into a detection: summary, severity, asset, rule.",
            skill="Summarise an anomalous Falco event and rate its severity",
            tags=("detection", "falco"),
        ),
        AgentSpec(
            name="analyst",
            port=7102,
            request_type=AnalyseRequest,
            reply_type=Analysis,
            description="Maps a detection to MITRE ATT&CK and proposes a response.",
            skill="Map a detection to an ATT&CK tactic and technique with a confidence",
            tags=("mitre-attack", "analysis"),
        ),
        AgentSpec(
            name="reviewer",
            port=7103,
            request_type=ReviewRequest,
            reply_type=Review,
            description="Decides auto_execute, auto_reject or escalate by policy; escalation is "
            "TASK_STATE_INPUT_REQUIRED, auto-reject TASK_STATE_REJECTED.",
            skill="Gate a proposed response by policy",
            tags=("policy", "safety"),
        ),
        AgentSpec(
            name="remediate",
            port=7104,
            request_type=RemediateRequest,
            reply_type=Remediation,
            description="Carries out (dry-run by default) a response, idempotent by key.",
            skill="Apply a response action once per idempotency key",
            tags=("response", "kubernetes"),
            needs_state=True,
        ),
        AgentSpec(
            name="notify",
            port=7105,
            request_type=NotifyRequest,
            reply_type=Notice,
            description="Posts an incident card for people (stand-in outbox until Mattermost), "
            "idempotent by key.",
            skill="Tell people about an incident, once per idempotency key",
            tags=("chatops",),
            needs_state=True,
        ),
    )
}
if tuple(SPECS) != AGENTS:  # pragma: no cover - a contract edit without this table
    raise RuntimeError("aerie.brain.agents.registry and aerie.proto.agents.AGENTS disagree")


def spec(name: str) -> AgentSpec:
    """The spec of agent ``name``; `KeyError` naming the known agents when there is none."""
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown agent {name!r}; agents: {', '.join(AGENTS)}") from None


def default_endpoints(host: str = DEFAULT_HOST) -> dict[str, str]:
    """``{name: https://host:port}`` for every agent on its default port."""
    shown = f"[{host}]" if ":" in host else host
    return {name: f"https://{shown}:{s.port}" for name, s in SPECS.items()}


def parse_endpoints(text: str, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``"detect=https://h:1,notify=https://h:2"`` over ``base`` (default: `default_endpoints`).

    Raises `ValueError` on an unknown agent, a missing ``=``, or a URL that is not ``https://``.
    """
    endpoints = dict(default_endpoints() if base is None else base)
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not url:
            raise ValueError(f"expected NAME=URL, got {item!r}")
        if name not in SPECS:
            raise ValueError(f"unknown agent {name!r}; agents: {', '.join(AGENTS)}")
        if not url.startswith("https://"):
            raise ValueError(f"agent {name}: {url!r} is not an https:// URL (agents speak mutual TLS only)")
        endpoints[name] = url.rstrip("/")
    return endpoints


def parse_identities(items: Iterable[str]) -> tuple[str, ...]:
    """SPIFFE URIs, or component names (``brain``, ``agent-detect``) turned into them.

    Raises `ValueError` on an empty list or a ``spiffe://`` URI outside the ``aerie`` trust domain.
    """
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item.startswith("spiffe://"):
            if not item.startswith("spiffe://aerie/"):
                raise ValueError(f"{item!r} is not in the spiffe://aerie/ trust domain")
            out.append(item)
        elif "/" in item or ":" in item:
            raise ValueError(f"{item!r} is neither a spiffe:// URI nor a component name")
        else:
            out.append(spiffe_id(item))
    if not out:
        raise ValueError("the allow-list is empty: no caller could reach the agent")
    return tuple(dict.fromkeys(out))
