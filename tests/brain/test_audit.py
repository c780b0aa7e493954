"""The audit store on both drivers: SQLite files and the local PostgreSQL (a database per session)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aerie.brain.audit import (
    ActionRecord,
    AuditStore,
    DecisionRecord,
    FeedbackRecord,
    IncidentRecord,
    StepRecord,
    StoreError,
    parse_store_url,
    redact_url,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    pg_schema: Callable[[], str] = request.getfixturevalue("pg_schema")
    return pg_schema()


@pytest.fixture
async def store(url: str) -> AsyncIterator[AuditStore]:
    opened = await AuditStore.open(url)
    try:
        yield opened
    finally:
        await opened.close()


def incident(n: int, *, trace_id: str = "a" * 32, status: str = "admitted") -> IncidentRecord:
    return IncidentRecord(
        incident_id=f"inc-{n}",
        event_id=f"event-{n}",
        trace_id=trace_id,
        traceparent=f"00-{trace_id}-{'b' * 16}-01",
        status=status,
        received_at_ns=1_000 + n,
        admitted_at_ns=2_000 + n,
        updated_at_ns=2_000 + n,
        anomaly={"node": "worker-1", "event": {"rule": "r", "output": "x\x00y"}, "score": 0.9},
    )


def step(seq: int, name: str, *, incident_id: str = "inc-1", error: str | None = None) -> StepRecord:
    return StepRecord(
        incident_id=incident_id,
        seq=seq,
        trace_id="a" * 32,
        step=name,
        component="spiffe://aerie/agent/detect",
        started_at_ns=10 * seq,
        duration_ms=1.5,
        input={"q": seq},
        output={"a": name},
        error=error,
    )


async def test_admit_dedupes_by_event_id_and_incident_id(store: AuditStore) -> None:
    assert await store.admit(incident(1))
    assert not await store.admit(incident(1))
    clash = incident(2)
    assert not await store.admit(IncidentRecord(**{**_fields(clash), "event_id": "event-1"}))
    assert await store.admit(clash)
    assert [i.incident_id for i in await store.incidents()] == ["inc-2", "inc-1"]  # latest first
    got = await store.incident("inc-1")
    assert got == incident(1)  # the anomaly round-trips, NUL included
    assert await store.incident("inc-404") is None


def _fields(record: IncidentRecord) -> dict[str, object]:
    return {f: getattr(record, f) for f in record.__struct_fields__}


async def test_status_claims_and_first_verdict(store: AuditStore) -> None:
    await store.admit(incident(1))
    await store.admit(incident(2))
    await store.set_status("inc-1", "escalated", reason="low confidence")
    assert await store.count(["escalated", "deciding"]) == 1
    assert [i.incident_id for i in await store.pending()] == ["inc-2"]
    # Of two deciders, exactly one wins the claim.
    assert await store.claim("inc-1", "escalated", "deciding")
    assert not await store.claim("inc-1", "escalated", "deciding")
    assert [i.incident_id for i in await store.pending()] == ["inc-1", "inc-2"]
    await store.set_status("inc-1", "executed", outcome="executed")
    done = await store.incident("inc-1")
    assert done is not None
    assert (done.status, done.outcome, done.reason) == ("executed", "executed", "low confidence")
    assert done.finished_at_ns is not None
    assert await store.set_verdict("inc-1", "escalate")
    assert not await store.set_verdict("inc-1", "auto_execute")  # a replayed review does not overwrite
    verdict = await store.incident("inc-1")
    assert verdict is not None
    assert verdict.verdict == "escalate"


async def test_steps_upsert_by_seq_and_trace_collects_everything(store: AuditStore) -> None:
    await store.admit(incident(1))
    await store.admit(incident(2, trace_id="c" * 32))
    await store.record_step(step(1, "detect"))
    await store.record_step(step(2, "analyse", error="agent analyst unavailable"))
    await store.record_step(step(2, "analyse"))  # the same step, run again after a crash
    await store.record_step(step(1, "detect", incident_id="inc-2"))
    steps = await store.steps("inc-1")
    assert [(s.seq, s.step, s.error) for s in steps] == [(1, "detect", None), (2, "analyse", None)]
    assert steps[0].input == {"q": 1}
    assert steps[0].output == {"a": "detect"}
    decision = DecisionRecord(
        decision_id="d1",
        incident_id="inc-1",
        decision="approve",
        decided_by="alice",
        note="ok",
        decided_at_ns=5,
    )
    await store.record_decision(decision)
    await store.record_decision(decision)
    label = FeedbackRecord(
        incident_id="inc-1",
        event_id="event-1",
        trace_id="a" * 32,
        label="malicious",
        source="human",
        decided_by="alice",
        recorded_at_ns=7,
    )
    await store.record_feedback(label)
    action = ActionRecord(
        idempotency_key="inc-1:execute:isolate_pod",
        incident_id="inc-1",
        agent="remediate",
        kind="isolate_pod",
        result={"executed": True},
        recorded_at_ns=6,
    )
    assert await store.record_action(action)
    assert not await store.record_action(ActionRecord(**{**_fields(action), "result": {"executed": False}}))
    assert await store.action("inc-1:execute:isolate_pod") == action  # the first result stays
    assert await store.action("nope") is None
    trace = await store.trace("a" * 32)
    assert trace is not None
    assert [i.incident_id for i in trace.incidents] == ["inc-1"]
    assert [s.step for s in trace.steps] == ["detect", "analyse"]
    assert trace.decisions == [decision]
    assert trace.feedback == [label]
    assert trace.actions == [action]
    assert await store.trace("f" * 32) is None
    assert await store.feedback(since_ns=8) == []


async def test_schema_creation_is_idempotent_and_data_survives_reopen(url: str) -> None:
    first = await AuditStore.open(url)
    await first.admit(incident(1))
    await first.close()
    again = await AuditStore.open(url, create=False)
    try:
        assert [i.incident_id for i in await again.incidents()] == ["inc-1"]
    finally:
        await again.close()


async def test_missing_sqlite_file_is_refused_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no audit store"):
        await AuditStore.open(f"sqlite:///{path}", create=False)
    assert not path.exists()


async def test_unreachable_postgres_is_a_clear_error(closed_port: int) -> None:
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at postgresql://u:\*\*\*@"):
        await AuditStore.open(f"postgresql://u:secret@127.0.0.1:{closed_port}/x?connect_timeout=2")


async def test_sqlite_store_is_a_real_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store = await AuditStore.open(str(path))  # a bare path is SQLite too
    await store.admit(incident(1))
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT event_id FROM audit_incidents").fetchall() == [("event-1",)]


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///rel/a.db", "sqlite", "rel/a.db"),
        ("sqlite:////abs/a.db", "sqlite", "/abs/a.db"),
        ("a.db", "sqlite", "a.db"),
        ("postgresql://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgresql", "postgres://u@h/db"),
    ],
)
def test_store_urls(url: str, kind: str, target: str) -> None:
    assert parse_store_url(url) == (kind, target)


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite://", "sqlite:///", ""])
def test_bad_store_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError):
        parse_store_url(url)


def test_passwords_are_masked() -> None:
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("host=h password=s3cret dbname=x") == "host=h password=*** dbname=x"
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    assert "s3cret" not in repr(AuditStore(None, "postgresql://u:s3cret@h/db"))  # type: ignore[arg-type]
