"""`aerie mcp run` and the analyst's ``--mcp-attack`` on the command line: clear refusals of bad
options, the plain-HTTP conformance mode, and the trace helpers the agents rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp_testkit import sdk_client, spawn_attack

from aerie.brain.cli import main as agent_main
from aerie.brain.cli import main as mcp_main
from aerie.brain.mcp.trace import current_traceparent, inbound_trace, parent_trace, parse, serving_traceparent
from aerie.proto.envelope import TraceContext
from aerie.proto.logs import trace_scope


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--insecure-http", "--host", "0.0.0.0"], "--insecure-http: only on a loopback --host, not 0.0.0.0"),
        ([], "--certs is required"),
        (["--certs", "/nonexistent/aerie"], "is not a directory"),
        (["--port", "70000", "--insecure-http"], "--port: 70000 is not a port number"),
        (["--grace", "-1", "--insecure-http"], "--grace: -1 is negative"),
    ],
)
def test_bad_options_exit_2_with_the_flag_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AERIE_MCP_CERTS", "AERIE_MCP_INSECURE_HTTP", "AERIE_MCP_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert mcp_main(["mcp", "run", "attack", *argv]) == 2
    assert message in capsys.readouterr().err


def test_certificates_and_allow_list_are_checked_before_serving(
    certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    assert mcp_main(["mcp", "run", "attack", "--certs", str(tmp_path)]) == 2
    assert "run `aerie certs init" in capsys.readouterr().err
    assert mcp_main(["mcp", "run", "attack", "--certs", str(certs), "--allow", "spiffe://other/x"]) == 2
    assert "--allow: 'spiffe://other/x' is not in the spiffe://aerie/ trust domain" in capsys.readouterr().err


def test_an_unknown_server_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        mcp_main(["mcp", "run", "kubernetes", "--insecure-http"])
    assert exited.value.code == 2
    assert "invalid choice: 'kubernetes'" in capsys.readouterr().err


def test_the_analysts_mcp_option_is_checked(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["agent", "run"]
    assert (
        agent_main([*base, "detect", "--certs", str(certs), "--mcp-attack", "https://127.0.0.1:1/mcp"]) == 2
    )
    assert "--mcp-attack: only the analyst maps ATT&CK, not detect" in capsys.readouterr().err
    assert (
        agent_main([*base, "analyst", "--certs", str(certs), "--mcp-attack", "http://127.0.0.1:1/mcp"]) == 2
    )
    assert "is not an https:// URL" in capsys.readouterr().err


async def test_insecure_http_serves_plain_http_on_loopback_for_conformance_runs(tmp_path: Path) -> None:
    proc = spawn_attack(None, tmp_path / "plain.log", "--insecure-http")
    try:
        assert proc.url.startswith("http://127.0.0.1:")
        async with sdk_client(proc.url, None) as client:
            result = await client.call_tool("technique", {"id": "T1059"})
        assert result.structured_content is not None
        assert result.structured_content["found"] is True
        (started,) = proc.lines("mcp server listening")
        assert started["insecure_http"] is True
    finally:
        assert proc.stop() == 0


def test_the_parent_of_an_mcp_call_is_the_best_trace_at_hand() -> None:
    explicit, served, logged = TraceContext.new(), TraceContext.new(), TraceContext.new()
    assert parent_trace(explicit.traceparent) == explicit
    with serving_traceparent(served.traceparent):
        assert current_traceparent() == served.traceparent
        assert parent_trace(None) == served
        assert parent_trace("not a traceparent") == served
    assert current_traceparent() is None
    with trace_scope(logged.trace_id):
        fallback = parent_trace(None)
    assert fallback.trace_id == logged.trace_id
    assert fallback.span_id != logged.span_id
    assert parent_trace(None).trace_id not in (explicit.trace_id, served.trace_id, logged.trace_id)


def test_inbound_trace_prefers_meta_over_the_header_and_ignores_junk() -> None:
    meta, header = TraceContext.new(), TraceContext.new()
    assert inbound_trace({"traceparent": meta.traceparent}, {"traceparent": header.traceparent}) == meta
    assert inbound_trace({"traceparent": 42}, {"traceparent": header.traceparent}) == header
    assert inbound_trace({}, None) is None
    assert parse("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None  # all-zero trace id
    assert parse("x" * 500) is None
