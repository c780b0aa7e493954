"""The audit store: every incident, every step, every human decision, label and action, replayable by trace.

One schema, two drivers: SQLite (a file, the default) and PostgreSQL (production), chosen by a URL
(`parse_store_url`): ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a bare path, or
``postgresql://...``. Tables are prefixed ``audit_`` so they can share a database with the
coordinator's checkpoints.

What the coordinator relies on:

* `AuditStore.admit` inserts an incident unless its event id is known (``event_id`` is UNIQUE): the
  de-duplication that makes Kafka's at-least-once delivery exactly-once in effect. It returns only
  after the row is committed (SQLite ``synchronous=FULL``; PostgreSQL autocommit).
* steps are keyed by ``(incident_id, seq)`` and upserted: a step replayed after a crash overwrites the
  row of its first, interrupted run instead of adding a second one.
* actions are keyed by their idempotency key: a side effect recorded here is never sent again.

Failure modes: `StoreError` for a URL that names no usable store (bad scheme, missing SQLite file when
``create=False``, unreachable PostgreSQL). Database errors while running propagate as the driver's own
exceptions (``sqlite3.Error``, ``psycopg.Error``): the coordinator treats them as a stalled incident to
retry, never as a verdict.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple, Protocol

import msgspec

__all__ = [
    "DECISIONS",
    "FINAL_STATUSES",
    "OPEN_STATUSES",
    "PENDING_STATUSES",
    "ActionRecord",
    "AuditStore",
    "DecisionRecord",
    "FeedbackRecord",
    "IncidentRecord",
    "StepRecord",
    "StoreError",
    "StoreUrl",
    "TraceRecord",
    "open_postgres_pool",
    "parse_store_url",
    "redact_url",
]

Status = Literal["admitted", "running", "escalated", "deciding", "executed", "rejected", "stalled"]
"""``admitted`` (durable, not started) → ``running`` → ``escalated`` (waiting for a human) →
``deciding`` (a decision is being applied) → ``executed`` | ``rejected``. ``stalled``: the coordinator
hit an unexpected error; the incident is retried at the next start."""

OPEN_STATUSES: Final = ("escalated", "deciding")
PENDING_STATUSES: Final = ("admitted", "running", "stalled", "deciding")
FINAL_STATUSES: Final = ("executed", "rejected")
DECISIONS: Final = ("approve", "dismiss", "investigate")


class StoreError(Exception):
    """A store URL that names nothing usable; the message says which and why."""


# --- records ---------------------------------------------------------------------------------------


class IncidentRecord(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    event_id: str
    trace_id: str
    traceparent: str
    """The coordinator's span for this incident; agent calls are its children."""
    status: str
    received_at_ns: int
    admitted_at_ns: int
    updated_at_ns: int
    anomaly: dict[str, Any]
    verdict: str | None = None
    outcome: str | None = None
    reason: str | None = None
    """Why it escalated or stalled, most recent first."""
    verdict_at_ns: int | None = None
    finished_at_ns: int | None = None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    seq: int
    trace_id: str
    step: str
    component: str
    """Who did it: an agent's SPIFFE id, the coordinator's, or ``human:<name>``."""
    started_at_ns: int
    duration_ms: float
    input: dict[str, Any]
    output: dict[str, Any]
    span_id: str | None = None
    verdict: str | None = None
    error: str | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    """A2A task id, attempts, task state; ``replayed`` when a recorded side effect was reused."""


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    decision_id: str
    incident_id: str
    decision: str
    decided_by: str
    note: str
    decided_at_ns: int


class FeedbackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A label for retraining: ``malicious`` or ``benign``, from a ``human`` or the ``policy``."""

    incident_id: str
    event_id: str
    trace_id: str
    label: Literal["malicious", "benign"]
    source: Literal["human", "policy"]
    decided_by: str
    recorded_at_ns: int


class ActionRecord(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str
    incident_id: str
    agent: str
    kind: str
    result: dict[str, Any]
    recorded_at_ns: int


class TraceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Everything recorded under one trace id, in order."""

    trace_id: str
    incidents: list[IncidentRecord]
    steps: list[StepRecord]
    decisions: list[DecisionRecord]
    feedback: list[FeedbackRecord]
    actions: list[ActionRecord]


# --- URLs ------------------------------------------------------------------------------------------


class StoreUrl(NamedTuple):
    kind: Literal["sqlite", "postgresql"]
    target: str
    """The SQLite file path, or the PostgreSQL DSN."""


def parse_store_url(url: str) -> StoreUrl:
    """``sqlite:///rel.db`` / ``sqlite:////abs.db`` / a bare path → SQLite; ``postgresql://`` → PostgreSQL."""
    text = url.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return StoreUrl("postgresql", text)
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise StoreError(f"{url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return StoreUrl("sqlite", rest[1:])
    if "://" in text or not text:
        raise StoreError(f"{redact_url(url)!r}: expected sqlite:///PATH or postgresql://...")
    return StoreUrl("sqlite", text)


_PASSWORD_KV: Final = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    masked = _PASSWORD_KV.sub(r"\1***", url)
    try:
        parts = urllib.parse.urlsplit(masked)
    except ValueError:
        return masked
    if parts.password is None:
        return masked
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- schema ----------------------------------------------------------------------------------------

# Portable between SQLite and PostgreSQL: TEXT for JSON, BIGINT nanoseconds for time.
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS audit_incidents (
        incident_id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        trace_id TEXT NOT NULL,
        traceparent TEXT NOT NULL,
        status TEXT NOT NULL,
        verdict TEXT,
        outcome TEXT,
        reason TEXT,
        received_at_ns BIGINT NOT NULL,
        admitted_at_ns BIGINT NOT NULL,
        updated_at_ns BIGINT NOT NULL,
        verdict_at_ns BIGINT,
        finished_at_ns BIGINT,
        anomaly TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_incidents_trace ON audit_incidents (trace_id)",
    "CREATE INDEX IF NOT EXISTS audit_incidents_status ON audit_incidents (status)",
    """CREATE TABLE IF NOT EXISTS audit_steps (
        incident_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT,
        step TEXT NOT NULL,
        component TEXT NOT NULL,
        started_at_ns BIGINT NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL,
        input TEXT NOT NULL,
        output TEXT NOT NULL,
        verdict TEXT,
        error TEXT,
        meta TEXT NOT NULL,
        PRIMARY KEY (incident_id, seq))""",
    "CREATE INDEX IF NOT EXISTS audit_steps_trace ON audit_steps (trace_id)",
    """CREATE TABLE IF NOT EXISTS audit_decisions (
        decision_id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        decision TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        note TEXT NOT NULL,
        decided_at_ns BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_decisions_incident ON audit_decisions (incident_id)",
    """CREATE TABLE IF NOT EXISTS audit_feedback (
        incident_id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        recorded_at_ns BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_actions (
        idempotency_key TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        kind TEXT NOT NULL,
        result TEXT NOT NULL,
        recorded_at_ns BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_actions_incident ON audit_actions (incident_id)",
)

_INCIDENT_COLUMNS: Final = (
    "incident_id, event_id, trace_id, traceparent, status, verdict, outcome, reason, received_at_ns, "
    "admitted_at_ns, updated_at_ns, verdict_at_ns, finished_at_ns, anomaly"
)
_STEP_COLUMNS: Final = (
    "incident_id, seq, trace_id, span_id, step, component, started_at_ns, duration_ms, input, output, "
    "verdict, error, meta"
)
_DECISION_COLUMNS: Final = "decision_id, incident_id, decision, decided_by, note, decided_at_ns"
_FEEDBACK_COLUMNS: Final = "incident_id, event_id, trace_id, label, source, decided_by, recorded_at_ns"
_ACTION_COLUMNS: Final = "idempotency_key, incident_id, agent, kind, result, recorded_at_ns"

_ENCODE: Final = msgspec.json.Encoder()
_DECODE: Final = msgspec.json.Decoder(dict[str, Any])

Row = Sequence[Any]


class _Driver(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own committed transaction; the number of rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def close(self) -> None: ...


class _SqliteDriver:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: str, *, create: bool) -> _SqliteDriver:
        import aiosqlite

        if not create and not await asyncio.to_thread(os.path.isfile, path):
            raise StoreError(f"no audit store at {path} (SQLite file not found)")
        try:
            # isolation_level=None: every statement commits on its own, before execute returns.
            conn = await aiosqlite.connect(path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot use SQLite store {path}: {exc}") from None
        return cls(conn)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, tuple(params))
        count: int = cursor.rowcount
        await cursor.close()
        return count

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(sql, tuple(params))
        rows: list[Row] = list(await cursor.fetchall())
        await cursor.close()
        return rows

    async def close(self) -> None:
        await self._conn.close()


def _pg_text(value: Any) -> Any:
    # PostgreSQL TEXT cannot hold NUL; event text is attacker-controlled and may carry one.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


async def open_postgres_pool(dsn: str, *, max_connections: int, kwargs: dict[str, Any]) -> Any:
    """An open ``psycopg_pool.AsyncConnectionPool``; `StoreError` at once when the database cannot be
    reached (one direct connection first: the pool itself would keep retrying until its timeout)."""
    import psycopg
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    try:
        probe = await psycopg.AsyncConnection.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach PostgreSQL at {redact_url(dsn)}: {exc}") from None
    await probe.close()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, kwargs=kwargs, min_size=1, max_size=max(1, max_connections), open=False
    )
    try:
        await pool.open(wait=True, timeout=10.0)
    except (PoolTimeout, psycopg.Error) as exc:
        await pool.close()
        raise StoreError(f"cannot reach PostgreSQL at {redact_url(dsn)}: {exc}") from None
    return pool


class _PostgresDriver:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_connections: int) -> _PostgresDriver:
        return cls(
            await open_postgres_pool(dsn, max_connections=max_connections, kwargs={"autocommit": True})
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), [_pg_text(p) for p in params])
            count: int = cursor.rowcount
            return count

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), [_pg_text(p) for p in params])
            rows: list[Row] = await cursor.fetchall()
            return rows

    async def close(self) -> None:
        await self._pool.close()


def _json(value: dict[str, Any]) -> str:
    return _ENCODE.encode(value).decode()


def _incident(row: Row) -> IncidentRecord:
    return IncidentRecord(
        incident_id=row[0],
        event_id=row[1],
        trace_id=row[2],
        traceparent=row[3],
        status=row[4],
        verdict=row[5],
        outcome=row[6],
        reason=row[7],
        received_at_ns=int(row[8]),
        admitted_at_ns=int(row[9]),
        updated_at_ns=int(row[10]),
        verdict_at_ns=None if row[11] is None else int(row[11]),
        finished_at_ns=None if row[12] is None else int(row[12]),
        anomaly=_DECODE.decode(row[13]),
    )


def _step(row: Row) -> StepRecord:
    return StepRecord(
        incident_id=row[0],
        seq=int(row[1]),
        trace_id=row[2],
        span_id=row[3],
        step=row[4],
        component=row[5],
        started_at_ns=int(row[6]),
        duration_ms=float(row[7]),
        input=_DECODE.decode(row[8]),
        output=_DECODE.decode(row[9]),
        verdict=row[10],
        error=row[11],
        meta=_DECODE.decode(row[12]),
    )


def _decision(row: Row) -> DecisionRecord:
    return DecisionRecord(
        decision_id=row[0],
        incident_id=row[1],
        decision=row[2],
        decided_by=row[3],
        note=row[4],
        decided_at_ns=int(row[5]),
    )


def _feedback(row: Row) -> FeedbackRecord:
    return FeedbackRecord(
        incident_id=row[0],
        event_id=row[1],
        trace_id=row[2],
        label=row[3],
        source=row[4],
        decided_by=row[5],
        recorded_at_ns=int(row[6]),
    )


def _action(row: Row) -> ActionRecord:
    return ActionRecord(
        idempotency_key=row[0],
        incident_id=row[1],
        agent=row[2],
        kind=row[3],
        result=_DECODE.decode(row[4]),
        recorded_at_ns=int(row[5]),
    )


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class AuditStore:
    """The audit tables behind one async API; open with `AuditStore.open`, close with `close`."""

    def __init__(self, driver: _Driver, url: str) -> None:
        self._db = driver
        self.url = redact_url(url)

    def __repr__(self) -> str:
        return f"AuditStore({self.url!r})"

    @classmethod
    async def open(cls, url: str, *, create: bool = True, max_connections: int = 8) -> AuditStore:
        """Connect and create the schema (idempotent). ``create=False``: a missing SQLite file is a
        `StoreError` instead of a new, empty store (read-only commands)."""
        parsed = parse_store_url(url)
        driver: _Driver
        if parsed.kind == "sqlite":
            driver = await _SqliteDriver.open(parsed.target, create=create)
        else:
            driver = await _PostgresDriver.open(parsed.target, max_connections=max_connections)
        store = cls(driver, url)
        try:
            for statement in _SCHEMA:
                await driver.execute(statement)
        except BaseException:
            await driver.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    # --- incidents --------------------------------------------------------------------------------

    async def admit(self, incident: IncidentRecord) -> bool:
        """Insert ``incident``; False (and nothing written) when its event id or incident id is known."""
        changed = await self._db.execute(
            f"INSERT INTO audit_incidents ({_INCIDENT_COLUMNS}) VALUES ({_placeholders(14)}) "
            "ON CONFLICT DO NOTHING",
            (
                incident.incident_id,
                incident.event_id,
                incident.trace_id,
                incident.traceparent,
                incident.status,
                incident.verdict,
                incident.outcome,
                incident.reason,
                incident.received_at_ns,
                incident.admitted_at_ns,
                incident.updated_at_ns,
                incident.verdict_at_ns,
                incident.finished_at_ns,
                _json(incident.anomaly),
            ),
        )
        return changed == 1

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        rows = await self._db.fetchall(
            f"SELECT {_INCIDENT_COLUMNS} FROM audit_incidents WHERE incident_id = ?", (incident_id,)
        )
        return _incident(rows[0]) if rows else None

    async def incidents(
        self, statuses: Sequence[str] | None = None, *, limit: int = 100
    ) -> list[IncidentRecord]:
        """Most recently received first; only ``statuses`` when given."""
        where = f"WHERE status IN ({_placeholders(len(statuses))}) " if statuses else ""
        rows = await self._db.fetchall(
            f"SELECT {_INCIDENT_COLUMNS} FROM audit_incidents {where}"
            "ORDER BY received_at_ns DESC, incident_id LIMIT ?",
            (*(statuses or ()), limit),
        )
        return [_incident(r) for r in rows]

    async def pending(self) -> list[IncidentRecord]:
        """Incidents admitted but neither finished nor waiting for a human, oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {_INCIDENT_COLUMNS} FROM audit_incidents "
            f"WHERE status IN ({_placeholders(len(PENDING_STATUSES))}) ORDER BY received_at_ns, incident_id",
            PENDING_STATUSES,
        )
        return [_incident(r) for r in rows]

    async def count(self, statuses: Sequence[str]) -> int:
        rows = await self._db.fetchall(
            f"SELECT COUNT(*) FROM audit_incidents WHERE status IN ({_placeholders(len(statuses))})",
            tuple(statuses),
        )
        return int(rows[0][0])

    async def set_status(
        self, incident_id: str, status: Status, *, outcome: str | None = None, reason: str | None = None
    ) -> None:
        """Move an incident to ``status``; ``outcome`` and ``reason`` are kept when not given."""
        now = time.time_ns()
        finished = now if status in FINAL_STATUSES else None
        await self._db.execute(
            "UPDATE audit_incidents SET status = ?, updated_at_ns = ?, outcome = COALESCE(?, outcome), "
            "reason = COALESCE(?, reason), finished_at_ns = COALESCE(?, finished_at_ns) "
            "WHERE incident_id = ?",
            (status, now, outcome, reason, finished, incident_id),
        )

    async def claim(self, incident_id: str, expected: Status, status: Status) -> bool:
        """Compare-and-set: move to ``status`` only from ``expected``. Of two processes deciding the
        same case at once, exactly one wins."""
        changed = await self._db.execute(
            "UPDATE audit_incidents SET status = ?, updated_at_ns = ? WHERE incident_id = ? AND status = ?",
            (status, time.time_ns(), incident_id, expected),
        )
        return changed == 1

    async def set_verdict(self, incident_id: str, verdict: str) -> bool:
        """Record the first verdict; False when one was already recorded (a replayed review step)."""
        changed = await self._db.execute(
            "UPDATE audit_incidents SET verdict = ?, verdict_at_ns = ? "
            "WHERE incident_id = ? AND verdict IS NULL",
            (verdict, time.time_ns(), incident_id),
        )
        return changed == 1

    # --- steps, decisions, labels, actions --------------------------------------------------------

    async def record_step(self, step: StepRecord) -> None:
        """Insert, or replace the row of the same ``(incident_id, seq)`` (a step run again after a crash)."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS.split(", ")[2:])
        await self._db.execute(
            f"INSERT INTO audit_steps ({_STEP_COLUMNS}) VALUES ({_placeholders(13)}) "
            f"ON CONFLICT (incident_id, seq) DO UPDATE SET {updates}",
            (
                step.incident_id,
                step.seq,
                step.trace_id,
                step.span_id,
                step.step,
                step.component,
                step.started_at_ns,
                step.duration_ms,
                _json(step.input),
                _json(step.output),
                step.verdict,
                step.error,
                _json(step.meta),
            ),
        )

    async def steps(self, incident_id: str) -> list[StepRecord]:
        rows = await self._db.fetchall(
            f"SELECT {_STEP_COLUMNS} FROM audit_steps WHERE incident_id = ? ORDER BY seq", (incident_id,)
        )
        return [_step(r) for r in rows]

    async def record_decision(self, decision: DecisionRecord) -> None:
        await self._db.execute(
            f"INSERT INTO audit_decisions ({_DECISION_COLUMNS}) VALUES ({_placeholders(6)}) "
            "ON CONFLICT (decision_id) DO NOTHING",
            (
                decision.decision_id,
                decision.incident_id,
                decision.decision,
                decision.decided_by,
                decision.note,
                decision.decided_at_ns,
            ),
        )

    async def decisions(self, incident_id: str) -> list[DecisionRecord]:
        rows = await self._db.fetchall(
            f"SELECT {_DECISION_COLUMNS} FROM audit_decisions WHERE incident_id = ? "
            "ORDER BY decided_at_ns, decision_id",
            (incident_id,),
        )
        return [_decision(r) for r in rows]

    async def record_feedback(self, label: FeedbackRecord) -> None:
        """One label per incident; a later one (a replayed step) replaces it."""
        await self._db.execute(
            f"INSERT INTO audit_feedback ({_FEEDBACK_COLUMNS}) VALUES ({_placeholders(7)}) "
            "ON CONFLICT (incident_id) DO UPDATE SET label = excluded.label, source = excluded.source, "
            "decided_by = excluded.decided_by, recorded_at_ns = excluded.recorded_at_ns",
            (
                label.incident_id,
                label.event_id,
                label.trace_id,
                label.label,
                label.source,
                label.decided_by,
                label.recorded_at_ns,
            ),
        )

    async def feedback(self, *, since_ns: int = 0, limit: int = 100_000) -> list[FeedbackRecord]:
        """Labels recorded at or after ``since_ns``, oldest first: the retraining input."""
        rows = await self._db.fetchall(
            f"SELECT {_FEEDBACK_COLUMNS} FROM audit_feedback WHERE recorded_at_ns >= ? "
            "ORDER BY recorded_at_ns, incident_id LIMIT ?",
            (since_ns, limit),
        )
        return [_feedback(r) for r in rows]

    async def action(self, idempotency_key: str) -> ActionRecord | None:
        rows = await self._db.fetchall(
            f"SELECT {_ACTION_COLUMNS} FROM audit_actions WHERE idempotency_key = ?", (idempotency_key,)
        )
        return _action(rows[0]) if rows else None

    async def record_action(self, action: ActionRecord) -> bool:
        """Record a completed side effect; False when its key was already recorded (the first stays)."""
        changed = await self._db.execute(
            f"INSERT INTO audit_actions ({_ACTION_COLUMNS}) VALUES ({_placeholders(6)}) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (
                action.idempotency_key,
                action.incident_id,
                action.agent,
                action.kind,
                _json(action.result),
                action.recorded_at_ns,
            ),
        )
        return changed == 1

    async def actions(self, incident_id: str) -> list[ActionRecord]:
        rows = await self._db.fetchall(
            f"SELECT {_ACTION_COLUMNS} FROM audit_actions WHERE incident_id = ? "
            "ORDER BY recorded_at_ns, idempotency_key",
            (incident_id,),
        )
        return [_action(r) for r in rows]

    async def trace(self, trace_id: str) -> TraceRecord | None:
        """Everything recorded under ``trace_id``; None when the store has never seen it."""
        rows = await self._db.fetchall(
            f"SELECT {_INCIDENT_COLUMNS} FROM audit_incidents WHERE trace_id = ? ORDER BY received_at_ns",
            (trace_id,),
        )
        if not rows:
            return None
        incidents = [_incident(r) for r in rows]
        steps: list[StepRecord] = []
        decisions: list[DecisionRecord] = []
        feedback: list[FeedbackRecord] = []
        actions: list[ActionRecord] = []
        for incident in incidents:
            steps += await self.steps(incident.incident_id)
            decisions += await self.decisions(incident.incident_id)
            actions += await self.actions(incident.incident_id)
            feedback += [
                _feedback(r)
                for r in await self._db.fetchall(
                    f"SELECT {_FEEDBACK_COLUMNS} FROM audit_feedback WHERE incident_id = ?",
                    (incident.incident_id,),
                )
            ]
        return TraceRecord(
            trace_id=trace_id,
            incidents=incidents,
            steps=steps,
            decisions=decisions,
            feedback=feedback,
            actions=actions,
        )
