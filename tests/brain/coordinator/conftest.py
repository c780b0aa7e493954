"""Fixtures for the coordinator: the agents' test stand-in and both store backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from coordinator_standins import InProcessAgents

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def agents() -> InProcessAgents:
    return InProcessAgents()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session, dropped afterwards."""
    name = f"aerie_coord_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """``{"audit": URL, "checkpoints": URL}`` for each backend (PostgreSQL: one schema per test)."""
    if request.param == "sqlite":
        return {
            "audit": f"sqlite:///{tmp_path / 'audit.db'}",
            "checkpoints": f"sqlite:///{tmp_path / 'checkpoints.db'}",
        }
    base = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = f"{base}?options=-csearch_path%3D{schema}"
    return {"audit": dsn, "checkpoints": dsn}


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> dict[str, str]:
    return {
        "audit": f"sqlite:///{tmp_path / 'audit.db'}",
        "checkpoints": f"sqlite:///{tmp_path / 'checkpoints.db'}",
    }
