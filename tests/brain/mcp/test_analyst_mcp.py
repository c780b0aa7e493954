"""The analyst maps ATT&CK through the aerie-attack MCP server: in process, and as a real agent process
(``--mcp-attack``) called over A2A, with the trace carried from the A2A call into the MCP call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from mcp_testkit import anomaly, detection
from process_testkit import Proc, listening_agent, spawn_agent, tls_of

from aerie.brain.agents.client import A2AAgentCaller
from aerie.brain.agents.logic import ATTACK_SERVER, AnalystLogic, ReviewerLogic
from aerie.brain.certs import Pki
from aerie.brain.mcp.client import McpCaller
from aerie.brain.mcp.trace import serving_traceparent
from aerie.brain.metrics import BrainMetrics
from aerie.proto.agents import AnalyseRequest, Analysis, ReviewRequest
from aerie.proto.envelope import TraceContext


def mcp_count(metrics: BrainMetrics) -> float | None:
    return metrics.registry.get_sample_value(
        "aerie_mcp_call_seconds_count", {"server": "attack", "tool": "map_technique"}
    )


async def analyse(logic: AnalystLogic, rule: str = "Terminal shell in container") -> Analysis:
    outcome = await logic.handle(
        AnalyseRequest(incident_id="i-1", anomaly=anomaly(rule=rule), detection=detection(rule))
    )
    assert outcome.state == "completed"
    assert isinstance(outcome.reply, Analysis)
    return outcome.reply


async def test_the_analyst_gets_its_mapping_through_mcp_under_the_requests_trace(
    attack: Proc, pki: dict[str, Pki]
) -> None:
    metrics = BrainMetrics()
    caller = McpCaller({ATTACK_SERVER: attack.url}, tls=tls_of(pki["agent-analyst"]), metrics=metrics)
    logic = AnalystLogic(mcp=caller)
    request = TraceContext.new()
    try:
        with serving_traceparent(request.traceparent):  # what the agent service does per A2A request
            via_mcp = await analyse(logic)
    finally:
        await logic.close()
    local = await analyse(AnalystLogic())
    assert (
        (via_mcp.tactic, via_mcp.technique, via_mcp.technique_name, via_mcp.confidence)
        == (
            local.tactic,
            local.technique,
            local.technique_name,
            local.confidence,
        )
        == ("TA0002", "T1059", "Command and Scripting Interpreter", 0.9)
    )
    assert "via MCP aerie-attack" in via_mcp.rationale
    assert "MCP" not in local.rationale
    assert mcp_count(metrics) == 1.0
    (served,) = [line for line in attack.lines("mcp tool call") if line.get("trace_id") == request.trace_id]
    assert served["caller"] == "spiffe://aerie/agent/analyst"
    assert TraceContext.parse(served["traceparent"]).span_id != request.span_id


async def test_an_unreachable_attack_server_gives_confidence_zero_and_the_reviewer_escalates(
    pki: dict[str, Pki], closed_port: int
) -> None:
    metrics = BrainMetrics()
    caller = McpCaller(
        {ATTACK_SERVER: f"https://127.0.0.1:{closed_port}/mcp"},
        tls=tls_of(pki["agent-analyst"]),
        metrics=metrics,
        attempts=2,
        backoff_s=0.01,
    )
    logic = AnalystLogic(mcp=caller)
    try:
        analysis = await analyse(logic)
    finally:
        await logic.close()
    assert (analysis.tactic, analysis.technique, analysis.confidence) == ("unknown", "unknown", 0.0)
    assert "ATT&CK MCP server failed" in analysis.rationale
    assert "unavailable after 2 attempt(s)" in analysis.rationale
    assert mcp_count(metrics) == 1.0
    review = await ReviewerLogic().handle(
        ReviewRequest(incident_id="i-1", detection=detection(), analysis=analysis)
    )
    assert review.state == "input_required"
    assert "confidence 0.00 below" in review.note


# --- the analyst as a real agent process ---------------------------------------------------------


@pytest.fixture(scope="module")
def analyst(attack: Proc, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    log = tmp_path_factory.mktemp("analyst") / "analyst.log"
    options = ("--mcp-attack", attack.url)
    proc = listening_agent(spawn_agent("analyst", certs, None, log, *options, ops=True))
    try:
        yield proc
    finally:
        assert proc.stop() == 0


async def test_the_analyst_agent_process_maps_through_mcp_and_counts_it(
    analyst: Proc, attack: Proc, pki: dict[str, Pki]
) -> None:
    trace = TraceContext.new()
    request = AnalyseRequest(incident_id="i-9", anomaly=anomaly(), detection=detection())
    async with A2AAgentCaller(
        {"analyst": analyst.url}, tls=tls_of(pki["brain"]), metrics=BrainMetrics()
    ) as a2a:
        reply = await a2a.call("analyst", request, traceparent=trace.traceparent)
    assert reply.state == "completed", reply.error
    analysis = msgspec.convert(reply.data, Analysis)
    assert (analysis.technique, analysis.confidence) == ("T1059", 0.9)
    assert "via MCP aerie-attack" in analysis.rationale
    # One trace from the A2A call through the MCP call: the agent's "mcp call" line and the server's.
    (made,) = [line for line in analyst.lines("mcp call") if line.get("trace_id") == trace.trace_id]
    assert (made["component"], made["server"], made["outcome"]) == (
        "spiffe://aerie/agent/analyst",
        "attack",
        "ok",
    )
    (served,) = [line for line in attack.lines("mcp tool call") if line.get("trace_id") == trace.trace_id]
    assert served["caller"] == "spiffe://aerie/agent/analyst"
    # The agent's /metrics shows the MCP latency histogram.
    (started,) = analyst.lines("agent listening")
    async with httpx.AsyncClient() as http:
        exposition = (await http.get(f"http://127.0.0.1:{started['ops_port']}/metrics")).text
    counts = [
        line
        for line in exposition.splitlines()
        if line.startswith('aerie_mcp_call_seconds_count{server="attack",tool="map_technique"}')
    ]
    assert counts == ['aerie_mcp_call_seconds_count{server="attack",tool="map_technique"} 1.0'], json.dumps(
        counts
    )
