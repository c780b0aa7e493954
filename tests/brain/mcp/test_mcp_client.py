"""`McpCaller` against `McpService` in process (real sockets, real mutual TLS): retries with backoff,
a server that comes back, errors that are not retried, and the service's own refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_testkit import json_log, parsed, sdk_client
from process_testkit import tls_of

from aerie.brain.certs import Pki
from aerie.brain.mcp.attack_server import DEFAULT_ALLOWED, build_server
from aerie.brain.mcp.client import McpCaller, McpToolError, McpUnavailable
from aerie.brain.mcp.serving import McpService, McpServiceError
from aerie.brain.metrics import BrainMetrics
from aerie.edge.errors import TlsError
from aerie.edge.tls import ClientTls, ServerTls


def server_tls(certs: Path) -> ServerTls:
    return ServerTls(
        cert=str(certs / "mcp-attack.crt"), key=str(certs / "mcp-attack.key"), ca=str(certs / "ca.crt")
    )


@pytest.fixture
async def service(certs: Path) -> AsyncIterator[McpService]:
    async with McpService(
        build_server(), tls=server_tls(certs), allowed=DEFAULT_ALLOWED, graceful_timeout_s=1
    ) as s:
        yield s


def count(metrics: BrainMetrics, tool: str) -> float | None:
    return metrics.registry.get_sample_value(
        "aerie_mcp_call_seconds_count", {"server": "attack", "tool": tool}
    )


async def test_an_outage_is_retried_then_given_up_and_a_restarted_server_is_found_again(
    service: McpService, certs: Path, pki: dict[str, Pki]
) -> None:
    metrics = BrainMetrics()
    async with McpCaller(
        {"attack": service.url}, tls=tls_of(pki["agent-analyst"]), metrics=metrics, attempts=3, backoff_s=0.01
    ) as c:
        assert (await c.call("attack", "technique", {"id": "T1059"}))["found"] is True
        port = service.port
        await service.stop()
        with json_log("aerie.brain.mcp.client") as log, pytest.raises(McpUnavailable) as down:
            await c.call("attack", "technique", {"id": "T1059"})
        assert down.value.attempts == 3
        assert len(parsed(log, "mcp call failed, retrying")) == 2
        (made,) = parsed(log, "mcp call")
        assert (made["outcome"], made["attempts"]) == ("unavailable", 3)
        # The same port again: the caller opens a new session on its next call.
        again = McpService(build_server(), tls=server_tls(certs), port=port, allowed=DEFAULT_ALLOWED)
        async with again:
            assert (await c.call("attack", "technique", {"id": "T1611"}))[
                "technique_name"
            ] == "Escape to Host"
    # Every call is timed, the failed one included.
    assert count(metrics, "technique") == 3.0


async def test_concurrent_calls_from_many_tasks_share_the_caller(
    service: McpService, pki: dict[str, Pki]
) -> None:
    async with McpCaller({"attack": service.url}, tls=tls_of(pki["agent-analyst"])) as c:
        ids = [f"T{n}" for n in (1059, 1611, 1070, 1105, 1552)] * 4
        answers = await asyncio.gather(*(c.call("attack", "technique", {"id": i}) for i in ids))
    assert [a["technique"] for a in answers] == ids
    assert all(a["found"] for a in answers)


async def test_a_tool_error_is_raised_at_once_and_a_hung_tool_times_out(
    certs: Path, pki: dict[str, Pki]
) -> None:
    release = asyncio.Event()
    server = MCPServer("aerie-test")

    @server.tool()
    def refuse(why: str) -> dict[str, str]:
        raise ToolError(f"refused: {why}")

    @server.tool()
    async def hang() -> dict[str, str]:
        await release.wait()
        return {"ok": "late"}

    async with McpService(server, tls=server_tls(certs), allowed=DEFAULT_ALLOWED, graceful_timeout_s=1) as s:
        async with McpCaller(
            {"t": s.url}, tls=tls_of(pki["agent-analyst"]), attempts=2, backoff_s=0.01, timeout_s=0.2
        ) as c:
            with pytest.raises(McpToolError, match="refused: no") as refused:
                await c.call("t", "refuse", {"why": "no"})
            assert refused.value.attempts == 1
            with pytest.raises(McpUnavailable, match="timed out") as hung:
                await c.call("t", "hang", {})
            assert hung.value.attempts == 2
        release.set()


async def test_the_caller_refuses_what_it_cannot_use(pki: dict[str, Pki], tmp_path: Path) -> None:
    analyst = tls_of(pki["agent-analyst"])
    with pytest.raises(ValueError, match="not an https:// URL"):
        McpCaller({"attack": "http://127.0.0.1:1/mcp"}, tls=analyst)
    with pytest.raises(TlsError, match="missing: cert, key"):
        McpCaller({"attack": "https://127.0.0.1:1/mcp"}, tls=ClientTls(ca=analyst.ca))
    with pytest.raises(ValueError, match="attempts"):
        McpCaller({}, tls=analyst, attempts=0)
    async with McpCaller({}, tls=analyst) as c:
        with pytest.raises(McpUnavailable, match="no endpoint configured") as unknown:
            await c.call("attack", "technique", {"id": "T1059"})
        assert unknown.value.attempts == 0
    with pytest.raises(TlsError):
        McpCaller.from_certs(tmp_path, component="agent-analyst", servers={})


async def test_the_service_serves_mutual_tls_or_loopback_plain_http_only(
    certs: Path, pki: dict[str, Pki]
) -> None:
    with pytest.raises(McpServiceError, match="mutual TLS"):
        McpService(build_server(), tls=None)
    with pytest.raises(McpServiceError, match="not loopback"):
        McpService(build_server(), tls=None, host="0.0.0.0", insecure_http=True)
    one_way = ServerTls(cert=str(certs / "mcp-attack.crt"), key=str(certs / "mcp-attack.key"))
    with pytest.raises(McpServiceError, match="mutual TLS only"):
        McpService(build_server(), tls=one_way, allowed=DEFAULT_ALLOWED)
    with pytest.raises(McpServiceError, match="allow-list is empty"):
        McpService(build_server(), tls=server_tls(certs), allowed=())
    with pytest.raises(McpServiceError, match="exclude each other"):
        McpService(build_server(), tls=server_tls(certs), allowed=DEFAULT_ALLOWED, insecure_http=True)
    async with McpService(build_server(), tls=server_tls(certs), allowed=DEFAULT_ALLOWED) as taken:
        clash = McpService(build_server(), tls=server_tls(certs), port=taken.port, allowed=DEFAULT_ALLOWED)
        with pytest.raises(McpServiceError, match="cannot bind"):
            await clash.start()


async def test_plain_http_on_loopback_serves_the_same_tools(pki: dict[str, Pki]) -> None:
    async with (
        McpService(build_server(), tls=None, insecure_http=True) as plain,
        sdk_client(plain.url, None) as client,
    ):
        assert plain.url.startswith("http://127.0.0.1:")
        tools = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("technique", {"id": "T1059"})
    assert tools == {"map_technique", "technique"}
    assert result.structured_content is not None
    assert result.structured_content["found"] is True


async def test_the_service_counts_what_it_served_and_refused(
    service: McpService, pki: dict[str, Pki]
) -> None:
    async with McpCaller({"attack": service.url}, tls=tls_of(pki["agent-analyst"])) as c:
        await c.call("attack", "technique", {"id": "T1059"})
        await c.call("attack", "technique", {"id": "T1611"})
    with json_log("aerie.brain.mcp.serving") as log:
        async with McpCaller({"attack": service.url}, tls=tls_of(pki["edge"]), attempts=1) as stranger:
            with pytest.raises(McpUnavailable):
                await stranger.call("attack", "technique", {"id": "T1059"})
    # Every refused request is counted, the client's closing request included.
    refusals = len(parsed(log, "request refused: identity not allowed"))
    assert refusals >= 1
    sample = service.metrics.registry.get_sample_value
    assert (
        sample("aerie_mcp_served_total", {"server": "aerie-attack", "tool": "technique", "outcome": "ok"})
        == 2
    )
    assert sample("aerie_mcp_serve_seconds_count", {"server": "aerie-attack", "tool": "technique"}) == 2
    assert sample("aerie_mcp_refused_total", {"server": "aerie-attack", "reason": "identity"}) == refusals
