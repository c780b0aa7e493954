"""The MITRE ATT&CK table aerie maps Falco rules with: its one home, served by the ``aerie-attack``
MCP server (`aerie.brain.mcp.attack_server`) and read directly by the analyst only when it runs
without MCP.

Looked up by the Falco rule's *name* first (curated, highest confidence), then by the rule's tags
(``mitre_<tactic>``, ``TA<nnnn>`` and ``T<nnnn>[.<nnn>]``, as Falco's own rules carry them). Rule names
and tags come from the rule definitions the operator deployed, never from an event's output fields,
which an attacker can write into; nothing here reads those fields.

The table is small and fixed; a full ATT&CK import replaces the data, the shapes (`Mapping`,
`Technique`) stay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FIELDS_MAX",
    "FIELD_NAME_MAX",
    "FIELD_VALUE_MAX",
    "RULE_MAX",
    "TACTICS",
    "TACTIC_NAMES",
    "TAGS_MAX",
    "TAG_MAX",
    "Mapping",
    "Technique",
    "lookup",
    "tactic_name",
    "technique",
]

# Bounds of what a mapping request may carry (the ``map_technique`` tool's input schema); callers
# cut what they send to fit. Falco rule names and tags are short; output fields are the event's.
RULE_MAX: Final = 256
TAG_MAX: Final = 64
TAGS_MAX: Final = 64
FIELD_NAME_MAX: Final = 128
FIELD_VALUE_MAX: Final = 1024
FIELDS_MAX: Final = 128

TACTICS: Final = {
    "reconnaissance": "TA0043",
    "resource_development": "TA0042",
    "initial_access": "TA0001",
    "execution": "TA0002",
    "persistence": "TA0003",
    "privilege_escalation": "TA0004",
    "defense_evasion": "TA0005",
    "credential_access": "TA0006",
    "discovery": "TA0007",
    "lateral_movement": "TA0008",
    "collection": "TA0009",
    "exfiltration": "TA0010",
    "command_and_control": "TA0011",
    "impact": "TA0040",
}
"""Falco's ``mitre_<tactic>`` tag suffix → tactic id."""

TACTIC_NAMES: Final = {
    "TA0043": "Reconnaissance",
    "TA0042": "Resource Development",
    "TA0001": "Initial Access",
    "TA0002": "Execution",
    "TA0003": "Persistence",
    "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion",
    "TA0006": "Credential Access",
    "TA0007": "Discovery",
    "TA0008": "Lateral Movement",
    "TA0009": "Collection",
    "TA0010": "Exfiltration",
    "TA0011": "Command and Control",
    "TA0040": "Impact",
}
"""Tactic id → its ATT&CK name."""

_TECHNIQUE_NAMES: Final = {
    "T1005": "Data from Local System",
    "T1020": "Automated Exfiltration",
    "T1053": "Scheduled Task/Job",
    "T1053.003": "Scheduled Task/Job: Cron",
    "T1055.008": "Process Injection: Ptrace System Calls",
    "T1059": "Command and Scripting Interpreter",
    "T1059.004": "Command and Scripting Interpreter: Unix Shell",
    "T1070": "Indicator Removal",
    "T1071": "Application Layer Protocol",
    "T1098": "Account Manipulation",
    "T1105": "Ingress Tool Transfer",
    "T1190": "Exploit Public-Facing Application",
    "T1222": "File and Directory Permissions Modification",
    "T1485": "Data Destruction",
    "T1496": "Resource Hijacking",
    "T1505": "Server Software Component",
    "T1543": "Create or Modify System Process",
    "T1552": "Unsecured Credentials",
    "T1552.001": "Unsecured Credentials: Credentials In Files",
    "T1555": "Credentials from Password Stores",
    "T1565": "Data Manipulation",
    "T1610": "Deploy Container",
    "T1611": "Escape to Host",
    "T1613": "Container and Resource Discovery",
    "T1620": "Reflective Code Loading",
}


@dataclass(frozen=True)
class Mapping:
    """Where a rule sits in ATT&CK, and how sure the table is."""

    tactic: str
    technique: str
    technique_name: str
    confidence: float
    source: str
    """``rule`` (curated by name), ``tags`` (the rule's own tags), or ``none``."""


def _entry(tactic: str, technique: str, confidence: float) -> Mapping:
    return Mapping(tactic, technique, _TECHNIQUE_NAMES.get(technique, ""), confidence, "rule")


# Curated by rule name. Falco's stock rules at 0.85-0.9; aerie's broad audit rules, which fire on
# ordinary activity too and reach the brain only because the model found them unusual, lower.
_BY_RULE: Final = {
    "Terminal shell in container": _entry("TA0002", "T1059", 0.9),
    "Run shell untrusted": _entry("TA0002", "T1059.004", 0.85),
    "Netcat Remote Code Execution in Container": _entry("TA0002", "T1059", 0.9),
    "Redirect STDOUT/STDIN to Network Connection in Container": _entry("TA0002", "T1059", 0.9),
    "Execution from /dev/shm": _entry("TA0002", "T1059.004", 0.85),
    "Read sensitive file untrusted": _entry("TA0006", "T1555", 0.85),
    "Directory traversal monitored file read": _entry("TA0006", "T1555", 0.8),
    "Search Private Keys or Passwords": _entry("TA0006", "T1552.001", 0.85),
    "Find AWS Credentials": _entry("TA0006", "T1552", 0.85),
    "Contact K8S API Server From Container": _entry("TA0007", "T1613", 0.7),
    "Clear Log Activities": _entry("TA0005", "T1070", 0.85),
    "Delete or rename shell history": _entry("TA0005", "T1070", 0.85),
    "Fileless execution via memfd_create": _entry("TA0005", "T1620", 0.9),
    "Detect release_agent File Container Escapes": _entry("TA0004", "T1611", 0.95),
    "Mount Launched in Privileged Container": _entry("TA0004", "T1611", 0.85),
    "PTRACE attached to process": _entry("TA0004", "T1055.008", 0.85),
    "Drop and execute new binary in container": _entry("TA0003", "T1105", 0.85),
    "Write below binary dir": _entry("TA0003", "T1543", 0.75),
    "Write below etc": _entry("TA0003", "T1098", 0.7),
    "Remove Bulk Data from Disk": _entry("TA0040", "T1485", 0.85),
    "Detect crypto miners using the Stratum protocol": _entry("TA0040", "T1496", 0.95),
    "Launch Ingress Remote File Copy Tools in Container": _entry("TA0011", "T1105", 0.8),
    "Launch Remote File Copy Tools in Container": _entry("TA0010", "T1020", 0.75),
    "aerie: sensitive file opened": _entry("TA0006", "T1552", 0.7),
    "aerie: file permissions changed": _entry("TA0005", "T1222", 0.6),
    "aerie: privileged syscall": _entry("TA0004", "T1611", 0.55),
    "aerie: process spawned": _entry("TA0002", "T1059", 0.5),
    "aerie: outbound connection": _entry("TA0011", "T1071", 0.5),
    "aerie: inbound connection": _entry("TA0001", "T1190", 0.4),
    "aerie: file opened for writing": _entry("TA0003", "T1543", 0.4),
    "aerie: file renamed or removed": _entry("TA0005", "T1070", 0.4),
}

_TECHNIQUE_TAG: Final = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_TACTIC_ID_TAG: Final = re.compile(r"^TA\d{4}$")


def lookup(rule: str, tags: Iterable[str]) -> Mapping:
    """The curated entry for ``rule``; else what its tags say; else ``unknown`` at confidence 0.2."""
    curated = _BY_RULE.get(rule)
    if curated is not None:
        return curated
    tactic = technique = ""
    for tag in tags:
        if not tactic and tag.startswith("mitre_"):
            tactic = TACTICS.get(tag.removeprefix("mitre_"), "")
        elif not tactic and _TACTIC_ID_TAG.match(tag):
            tactic = tag
        elif not technique and _TECHNIQUE_TAG.match(tag):
            technique = tag
    if tactic and technique:
        return Mapping(tactic, technique, _TECHNIQUE_NAMES.get(technique, ""), 0.7, "tags")
    if tactic or technique:
        return Mapping(
            tactic or "unknown", technique or "unknown", _TECHNIQUE_NAMES.get(technique, ""), 0.5, "tags"
        )
    return Mapping("unknown", "unknown", "", 0.2, "none")


@dataclass(frozen=True)
class Technique:
    """One technique as the table knows it."""

    technique: str
    name: str
    """Empty when the table does not know the id."""
    parent: str
    """The parent technique of a sub-technique (``T1059`` for ``T1059.004``), else empty."""
    tactics: tuple[str, ...]
    """Tactic ids the curated rules file this technique under, sorted."""
    found: bool


def tactic_name(tactic: str) -> str:
    """The ATT&CK name of tactic id ``tactic``; empty when unknown."""
    return TACTIC_NAMES.get(tactic, "")


def technique(technique_id: str) -> Technique:
    """What the table knows of ``technique_id`` (``T1059``, ``T1059.004``); ``found`` False when nothing."""
    parent = technique_id.partition(".")[0] if "." in technique_id else ""
    tactics = tuple(sorted({m.tactic for m in _BY_RULE.values() if m.technique == technique_id}))
    name = _TECHNIQUE_NAMES.get(technique_id, "")
    return Technique(technique_id, name, parent, tactics, found=bool(name or tactics))
