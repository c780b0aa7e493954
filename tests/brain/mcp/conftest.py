"""Fixtures for the MCP tests: the aerie-attack certificate and the server as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_testkit import spawn_attack
from process_testkit import Proc

from aerie.brain.certs import Pki, issue


@pytest.fixture(scope="session")
def certs(pki: dict[str, Pki]) -> Path:
    """The shared test PKI directory, with a certificate for the ``mcp-attack`` component too."""
    directory = pki["brain"].ca.parent
    if not (directory / "mcp-attack.crt").is_file():
        issue(directory, "mcp-attack")
    return directory


@pytest.fixture(scope="module")
def attack(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``aerie mcp run attack`` as its own process over mutual TLS, started once per module."""
    proc = spawn_attack(certs, tmp_path_factory.mktemp("mcp") / "attack.log")
    try:
        yield proc
    finally:
        assert proc.stop() == 0  # SIGTERM: a graceful stop
