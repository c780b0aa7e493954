"""Fixtures shared by every test folder."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from aerie.brain.certs import Pki, init_pki, issue, make_ca
from aerie.perf.tansu import Tansu, free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The local PostgreSQL (trust authentication): tests make their own database through it."""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    """A real CA with one certificate per component (see `aerie.brain.certs.DEFAULT_COMPONENTS`)."""
    return init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A certificate for ``edge`` from a different CA: must be refused everywhere."""
    directory = tmp_path_factory.mktemp("foreign-pki")
    make_ca(directory, name="not aerie")
    return issue(directory, "edge")


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    """A fresh, running Tansu broker (real Kafka wire protocol); ``tansu.bootstrap`` is its ``host:port``."""
    broker = Tansu(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (for clients that must not reach a broker)."""
    return free_port()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session (its DSN), dropped afterwards."""
    name = f"aerie_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_schema(pg_database: str) -> Callable[[], str]:
    """Makes a new schema in the session's database on each call: a DSN whose search path is that
    schema alone, so stores opened on it see nothing of any other test's."""

    def new_schema() -> str:
        schema = f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return f"{pg_database}?options=-csearch_path%3D{schema}"

    return new_schema
