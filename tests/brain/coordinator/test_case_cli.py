"""`aerie trace` and `aerie cases` against stores a real coordinator wrote (agents stood in)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import msgspec
import pytest
from coordinator_standins import InProcessAgents, make_anomaly

from aerie.brain import case_cli, cli
from aerie.brain.audit import AuditStore
from aerie.brain.coordinator import Coordinator, incident_id_for
from aerie.proto.envelope import TraceContext


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Until brain/cli.py's _PARTS lists aerie.brain.case_cli, register it for these tests.
    if "aerie.brain.case_cli" not in cli._PARTS:
        monkeypatch.setattr(cli, "_PARTS", (*cli._PARTS, "aerie.brain.case_cli"))


def seed(
    agents: InProcessAgents, stores: dict[str, str], *, n: int = 0, rule: str | None = None
) -> tuple[str, str]:
    """Run one incident through a coordinator; (incident id, trace id)."""
    trace = TraceContext.new()
    anomaly = make_anomaly(n, trace=trace)
    if rule is not None:
        event = msgspec.structs.replace(anomaly.event, rule=rule)
        anomaly = msgspec.structs.replace(anomaly, event=event, event_id=event.event_id)

    async def run() -> None:
        async with Coordinator.open(
            caller=agents, checkpoints=stores["checkpoints"], audit=stores["audit"]
        ) as coord:
            assert await coord.admit(anomaly, trace=trace, received_at_ns=anomaly.detected_at_ns)
            assert await coord.drain(timeout_s=30)

    asyncio.run(run())
    return incident_id_for(anomaly.event_id), trace.trace_id


def status_of(stores: dict[str, str], incident_id: str) -> str:
    async def get() -> str:
        store = await AuditStore.open(stores["audit"], create=False)
        try:
            record = await store.incident(incident_id)
            assert record is not None
            return record.status
        finally:
            await store.close()

    return asyncio.run(get())


def test_trace_prints_the_chain_in_order(
    agents: InProcessAgents, sqlite_stores: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    incident_id, trace_id = seed(agents, sqlite_stores)
    assert cli.main(["trace", trace_id, "--audit", sqlite_stores["audit"]]) == 0
    out = capsys.readouterr().out
    assert f"trace {trace_id}" in out
    assert f"incident  {incident_id}" in out
    order = [
        out.index(f"  {name} ") for name in ("detect", "analyse", "review", "execute", "notify", "feedback")
    ]
    assert order == sorted(order)
    assert "auto_execute: test policy says auto_execute (policy t1)" in out
    assert "TA0002 T1059 Command and Scripting Interpreter, confidence 0.90; proposes isolate_pod" in out
    assert "isolate_pod dry-run executed" in out
    assert "spiffe://aerie/agent/remediate" in out
    assert "label     malicious from policy (policy)" in out
    assert "score 0.930 > threshold 0.610" in out
    # The incident id and a traceparent find the same chain.
    assert cli.main(["trace", incident_id, "--audit", sqlite_stores["audit"]]) == 0
    assert capsys.readouterr().out == out
    assert cli.main(["trace", f"00-{trace_id}-{'1' * 16}-01", "--audit", sqlite_stores["audit"]]) == 0
    assert capsys.readouterr().out == out


def test_trace_json_is_for_tools(
    agents: InProcessAgents,
    sqlite_stores: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    incident_id, trace_id = seed(agents, sqlite_stores)
    monkeypatch.setenv("AERIE_AUDIT_URL", sqlite_stores["audit"])  # the flag's variable works too
    assert cli.main(["trace", trace_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trace_id"] == trace_id
    assert [i["incident_id"] for i in data["incidents"]] == [incident_id]
    assert [s["step"] for s in data["steps"]] == [
        "detect",
        "analyse",
        "review",
        "execute",
        "notify",
        "feedback",
    ]
    assert data["steps"][2]["verdict"] == "auto_execute"
    assert all(isinstance(s["duration_ms"], float) for s in data["steps"])
    assert data["feedback"][0]["label"] == "malicious"


def test_unknown_trace_and_missing_store_exit_with_a_message(
    sqlite_stores: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], agents: InProcessAgents
) -> None:
    seed(agents, sqlite_stores)
    assert cli.main(["trace", "0" * 31 + "1", "--audit", sqlite_stores["audit"]]) == 1
    assert "not in the audit store" in capsys.readouterr().err
    missing = tmp_path / "none.db"
    assert cli.main(["trace", "0" * 31 + "1", "--audit", f"sqlite:///{missing}"]) == 2
    assert "no audit store" in capsys.readouterr().err
    assert not missing.exists()


def test_event_text_cannot_drive_the_terminal(
    agents: InProcessAgents, sqlite_stores: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, trace_id = seed(agents, sqlite_stores, rule="evil\x1b[2J\x1b]0;owned\x07rule\nAPPROVED")
    assert cli.main(["trace", trace_id, "--audit", sqlite_stores["audit"]]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "evil\\x1b[2J" in out
    assert "\nAPPROVED" not in out


def test_cases_list_approve_and_refuse(
    agents: InProcessAgents,
    sqlite_stores: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done, _ = seed(agents, sqlite_stores, n=1)
    agents.verdict = "escalate"
    waiting, _ = seed(agents, sqlite_stores, n=2)
    audit = ["--audit", sqlite_stores["audit"]]
    assert cli.main(["cases", "list", *audit]) == 0
    listed = capsys.readouterr().out
    assert done in listed
    assert waiting in listed
    assert cli.main(["cases", "list", "--open", "--json", *audit]) == 0
    assert [i["incident_id"] for i in json.loads(capsys.readouterr().out)] == [waiting]

    # The agents of this process: the test stand-in instead of A2A over mTLS.
    monkeypatch.setattr(case_cli, "_open_agents", lambda args: contextlib.nullcontext(agents))
    stores = [*audit, "--checkpoints", sqlite_stores["checkpoints"], "--certs", str(tmp_path)]
    assert cli.main(["cases", "investigate", waiting, "--by", "bob", *stores]) == 0
    assert "status now escalated" in capsys.readouterr().out
    assert cli.main(["cases", "approve", waiting, "--by", "alice", "--note", "confirmed", *stores]) == 0
    assert "approve by alice; status now executed" in capsys.readouterr().out
    assert status_of(sqlite_stores, waiting) == "executed"
    assert agents.effects[f"{waiting}:execute:isolate_pod"] == 1

    assert cli.main(["cases", "dismiss", waiting, *stores]) == 1
    assert "not waiting for a decision (status executed)" in capsys.readouterr().err
    assert cli.main(["cases", "dismiss", "inc-0000000000000000", *stores]) == 1
    assert "no incident inc-0000000000000000" in capsys.readouterr().err
    assert cli.main(["cases", "list", "--open", *audit]) == 0
    assert capsys.readouterr().out.strip() == "no incidents"


def test_decisions_need_certificates_and_a_name(
    sqlite_stores: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AERIE_CERTS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cases", "approve", "inc-1", "--audit", sqlite_stores["audit"]])
    assert exit_info.value.code == 2
    assert "--certs" in capsys.readouterr().err
    assert cli.main(["cases", "approve", "inc-1", "--by", " ", "--certs", str(tmp_path)]) == 2
    assert "--by" in capsys.readouterr().err
    # The real A2A caller refuses a directory without the CLI's certificate.
    assert cli.main(["cases", "approve", "inc-1", "--certs", str(tmp_path)]) == 2
    assert "--certs" in capsys.readouterr().err
    assert (
        cli.main(["cases", "approve", "inc-1", "--certs", str(tmp_path), "--agents", "bogus=https://x"]) == 2
    )
    assert "--agents" in capsys.readouterr().err
