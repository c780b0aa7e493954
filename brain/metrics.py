"""The brain's Prometheus metrics: one home, one registry per process.

Every brain process (``aerie brain run``, each ``aerie agent run NAME``) makes one `BrainMetrics` and
hands it to the parts it runs; each part records into the instruments it owns. A part built without
one (tests, embedding) gets a private instance, so recording never needs an ``if``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["LATENCY_BUCKETS", "BrainMetrics"]

LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class BrainMetrics:
    """Every instrument the brain exports, on its own registry (``aerie_`` prefix)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # A2A, caller side (the coordinator).
        self.agent_requests = Counter(
            "aerie_agent_requests",
            "A2A calls made, by agent and outcome (completed, input_required, rejected, failed, unavailable)",
            ["agent", "outcome"],
            registry=r,
        )
        self.agent_latency = Histogram(
            "aerie_agent_request_seconds",
            "A2A call latency, retries included, by agent",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.agent_retries = Counter(
            "aerie_agent_retries",
            "A2A attempts that failed and were retried, by agent",
            ["agent"],
            registry=r,
        )
        self.a2a_in_flight = Gauge(
            "aerie_a2a_in_flight", "A2A calls in flight, by agent (caller side)", ["agent"], registry=r
        )
        # A2A, server side (each agent process).
        self.agent_served = Counter(
            "aerie_agent_served",
            "A2A requests an agent served, by agent and final task state",
            ["agent", "state"],
            registry=r,
        )
        self.agent_refused = Counter(
            "aerie_agent_refused",
            "A2A requests refused before reaching the agent, by agent and reason (identity, malformed, ...)",
            ["agent", "reason"],
            registry=r,
        )
        self.agent_serve_latency = Histogram(
            "aerie_agent_serve_seconds",
            "Time an agent took to answer, by agent",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # MCP.
        self.mcp_latency = Histogram(
            "aerie_mcp_call_seconds",
            "MCP tool call latency, by server and tool",
            ["server", "tool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mcp_served = Counter(
            "aerie_mcp_served",
            "MCP tool calls a server answered, by server, tool and outcome (ok, tool_error, invalid, ...)",
            ["server", "tool", "outcome"],
            registry=r,
        )
        self.mcp_refused = Counter(
            "aerie_mcp_refused",
            "MCP requests refused before the server saw them, by server and reason",
            ["server", "reason"],
            registry=r,
        )
        self.mcp_serve_latency = Histogram(
            "aerie_mcp_serve_seconds",
            "Time an MCP server took to answer a tool call, by server and tool",
            ["server", "tool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Coordinator.
        self.verdicts = Counter(
            "aerie_reviewer_verdicts",
            "Reviewer verdicts: auto_execute, auto_reject, escalate",
            ["verdict"],
            registry=r,
        )
        self.open_escalations = Gauge(
            "aerie_open_escalations", "Incidents waiting for a human decision", registry=r
        )
        self.incidents = Counter("aerie_incidents", "Incidents finished, by outcome", ["outcome"], registry=r)
        self.verdict_latency = Histogram(
            "aerie_verdict_seconds",
            "From the Kafka message's arrival to the recorded verdict",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.step_latency = Histogram(
            "aerie_step_seconds",
            "Coordinator step latency, by step",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Consumer.
        self.consumed = Counter("aerie_consumed", "Kafka messages read from the anomalies topic", registry=r)
        self.admitted = Counter("aerie_admitted", "Anomalies admitted as new incidents", registry=r)
        self.duplicates = Counter(
            "aerie_duplicates", "Messages whose event id was already admitted (dropped)", registry=r
        )
        self.dead_lettered = Counter(
            "aerie_dead_lettered", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.consumer_errors = Counter(
            "aerie_consumer_errors",
            "Consumer failures that were retried, by kind (admit, dead_letter, commit, consume)",
            ["kind"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "aerie_consumer_lag",
            "Messages between the committed offset and the end of each partition",
            ["topic", "partition"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every instrument."""
        return generate_latest(self.registry)
