"""Fixtures for the coordinator: the agents' test stand-in and both store backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from coordinator_standins import InProcessAgents


@pytest.fixture
def agents() -> InProcessAgents:
    return InProcessAgents()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest) -> dict[str, str]:
    """``{"audit": URL, "checkpoints": URL}`` for each backend (PostgreSQL: one schema per test)."""
    if request.param == "sqlite":
        sqlite: dict[str, str] = request.getfixturevalue("sqlite_stores")
        return sqlite
    pg_schema: Callable[[], str] = request.getfixturevalue("pg_schema")
    dsn = pg_schema()
    return {"audit": dsn, "checkpoints": dsn}


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> dict[str, str]:
    return {
        "audit": f"sqlite:///{tmp_path / 'audit.db'}",
        "checkpoints": f"sqlite:///{tmp_path / 'checkpoints.db'}",
    }
