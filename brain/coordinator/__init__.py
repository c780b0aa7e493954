"""The coordinator: a LangGraph graph, one durable thread per incident.

`Coordinator` admits anomalies (durably, de-duplicated by event id), runs each incident through
detect → analyse → review → execute | reject | escalate (a human decides) → notify → feedback on a
bounded worker pool, resumes unfinished incidents after a crash, and applies human decisions from any
process that shares its stores. `open_checkpointer` picks SQLite or PostgreSQL from a URL.
"""

from aerie.brain.coordinator.checkpoints import open_checkpointer
from aerie.brain.coordinator.coordinator import CaseError, Coordinator, incident_id_for
from aerie.brain.coordinator.graph import COORDINATOR, IncidentState, IncidentSteps, build_graph

__all__ = [
    "COORDINATOR",
    "CaseError",
    "Coordinator",
    "IncidentState",
    "IncidentSteps",
    "build_graph",
    "incident_id_for",
    "open_checkpointer",
]
