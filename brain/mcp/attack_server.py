"""``aerie-attack``: the MITRE ATT&CK table (`aerie.brain.mcp.attack`) as an MCP server.

Tools, each with a strict input schema (bounded lengths, unknown properties refused) and an output
schema its structured result always matches:

``map_technique(rule, tags, output_fields)``
    Where a Falco rule sits in ATT&CK: ``{tactic, tactic_name, technique, technique_name,
    confidence, source}``. The mapping is decided by the rule's name and its tags, which the
    operator's rule definitions set. ``output_fields`` are the event's fields: attacker-controlled
    text, accepted (bounded) so a caller can send the event as it is, and never read to decide the
    mapping; nothing in any argument is interpreted as an instruction.
``technique(id)``
    What the table knows of one technique id: ``{technique, technique_name, parent, tactics, found}``.

Served by `aerie.brain.mcp.serving.McpService` (``aerie mcp run attack``); called by the analyst
(`aerie.brain.mcp.client.McpCaller`).
"""

from __future__ import annotations

import importlib.metadata
from typing import Annotated, Any, Final, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from aerie.brain.mcp import attack
from aerie.brain.mcp.attack import FIELD_NAME_MAX, FIELD_VALUE_MAX, FIELDS_MAX, RULE_MAX, TAG_MAX, TAGS_MAX
from aerie.proto.identity import spiffe_id

__all__ = [
    "COMPONENT",
    "DEFAULT_ALLOWED",
    "DEFAULT_PORT",
    "SERVER_NAME",
    "AttackMapping",
    "TechniqueInfo",
    "build_server",
]

SERVER_NAME: Final = "aerie-attack"
COMPONENT: Final = "mcp-attack"
"""The certificate component (`aerie.brain.certs`): identity ``spiffe://aerie/mcp/attack``."""
DEFAULT_PORT: Final = 7201
DEFAULT_ALLOWED: Final = (spiffe_id("agent-analyst"),)
"""Who may call unless configured otherwise: the analyst, the one agent that maps techniques."""

_TACTIC: Final = r"^(TA\d{4}|unknown)$"
_TECHNIQUE: Final = r"^(T\d{4}(\.\d{3})?|unknown)$"
_NAME_MAX: Final = 128


class AttackMapping(BaseModel):
    """Where a rule sits in ATT&CK, and how sure the table is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tactic: Annotated[str, Field(pattern=_TACTIC, description="tactic id, e.g. TA0002, or 'unknown'")]
    tactic_name: Annotated[str, Field(max_length=_NAME_MAX, description="empty when unknown")]
    technique: Annotated[
        str, Field(pattern=_TECHNIQUE, description="technique id, e.g. T1059.004, or 'unknown'")
    ]
    technique_name: Annotated[str, Field(max_length=_NAME_MAX, description="empty when unknown")]
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    source: Literal["rule", "tags", "none"] = Field(
        description="rule: curated by the rule's name; tags: the rule's own tags; none: no mapping"
    )


class TechniqueInfo(BaseModel):
    """One technique as the table knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technique: Annotated[str, Field(pattern=_TECHNIQUE)]
    technique_name: Annotated[str, Field(max_length=_NAME_MAX, description="empty when unknown")]
    parent: Annotated[str, Field(pattern=r"^(T\d{4})?$", description="parent of a sub-technique, else empty")]
    tactics: Annotated[list[Annotated[str, Field(pattern=r"^TA\d{4}$")]], Field(max_length=16)]
    found: bool


RuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=RULE_MAX,
        description="the Falco rule's name, as the deployed rule defines it",
    ),
]
Tags = Annotated[
    list[Annotated[str, Field(max_length=TAG_MAX)]],
    Field(
        max_length=TAGS_MAX, description="the rule's tags (mitre_<tactic>, TA<nnnn>, T<nnnn>[.<nnn>], ...)"
    ),
]
FieldValue = Annotated[str, Field(max_length=FIELD_VALUE_MAX)] | int | float | bool | None
OutputFields = Annotated[
    dict[Annotated[str, Field(max_length=FIELD_NAME_MAX)], FieldValue],
    Field(
        max_length=FIELDS_MAX,
        description="the event's output fields: attacker-controlled text, never read to decide the mapping",
    ),
]
TechniqueId = Annotated[str, Field(pattern=r"^T\d{4}(\.\d{3})?$", description="e.g. T1059 or T1059.004")]


def map_technique(rule: RuleName, tags: Tags, output_fields: OutputFields) -> AttackMapping:
    """Map a Falco rule to a MITRE ATT&CK tactic and technique with a confidence.

    Decided by the rule's name (curated table) and then its tags; the event's output fields never
    change the answer.
    """
    del output_fields  # attacker-controlled: accepted, bounded, and deliberately not consulted
    found = attack.lookup(rule, tags)
    return AttackMapping(
        tactic=found.tactic,
        tactic_name=attack.tactic_name(found.tactic),
        technique=found.technique,
        technique_name=found.technique_name,
        confidence=found.confidence,
        source="rule" if found.source == "rule" else "tags" if found.source == "tags" else "none",
    )


def technique(id: TechniqueId) -> TechniqueInfo:
    """What the ATT&CK table knows of one technique id."""
    found = attack.technique(id)
    return TechniqueInfo(
        technique=found.technique,
        technique_name=found.name,
        parent=found.parent,
        tactics=list(found.tactics),
        found=found.found,
    )


def _strict(tool: Tool) -> Tool:
    # The published input schema forbids unknown properties; the service's middleware enforces the
    # published schema as it stands, before the SDK's own lenient parsing.
    parameters: dict[str, Any] = dict(tool.parameters)
    parameters["additionalProperties"] = False
    return tool.model_copy(update={"parameters": parameters})


def _version() -> str:
    try:
        return importlib.metadata.version("aerie")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed here
        return "0"


def build_server() -> MCPServer:
    """A fresh ``aerie-attack`` server (one per service: middleware is attached per instance)."""
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    tools = [
        _strict(
            Tool.from_function(
                map_technique,
                title="Map a Falco rule to MITRE ATT&CK",
                annotations=read_only,
                structured_output=True,
            )
        ),
        _strict(
            Tool.from_function(
                technique,
                title="Look up a MITRE ATT&CK technique",
                annotations=read_only,
                structured_output=True,
            )
        ),
    ]
    return MCPServer(
        SERVER_NAME,
        title="aerie ATT&CK",
        description="MITRE ATT&CK mapping of Falco rules for aerie's analyst.",
        version=_version(),
        tools=tools,
    )
