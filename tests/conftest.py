"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aerie.brain.certs import Pki, init_pki, issue, make_ca
from aerie.perf.tansu import Tansu, free_port


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


def sample_path(name: str) -> Path:
    return Path(__file__).parent / "data" / name


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
