"""Real aerie processes for tests: started as ``python -m MODULE ...`` without the caller's ``AERIE_*``
settings, waited on through the one line each prints once its socket accepts connections, stopped with
SIGTERM; their JSON logs (stderr, to a file); the client TLS that reaches them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aerie.brain.certs import Pki
from aerie.edge.tls import ClientTls


def clean_env() -> dict[str, str]:
    """This process's environment without ``AERIE_*``: a child sees only the options it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AERIE_")}


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log, other lines skipped; a last line still being written is left out."""
    complete = text if text.endswith("\n") else text.rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Proc:
    """A real aerie process whose stderr, JSON lines, goes to ``log``."""

    label: str
    proc: subprocess.Popen[str]
    log: Path
    url: str = ""
    """What it printed it listens on, once `listening` has seen the line."""
    ops_port: int = 0
    """An agent's plain-HTTP ops port (/metrics, /healthz, /readyz); 0 when it serves none."""

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log.read_text(errors="replace"))

    def lines(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("msg") == msg]

    def stop(self) -> int:
        """SIGTERM (unless it has exited already); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc


def spawn(label: str, module: str, args: list[str], log: Path) -> Proc:
    """Start ``python -m module *args``: stdout piped (for `listening`), stderr appended to ``log``."""
    with log.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=clean_env(),
        )
    return Proc(label=label, proc=proc, log=log)


def listening(p: Proc, prefix: str) -> Proc:
    """Wait for the one line the process prints once its socket accepts connections; fail the test
    (and stop the process) when the line is not that."""
    assert p.proc.stdout is not None
    line = p.proc.stdout.readline()
    if not line.startswith(prefix):
        p.stop()
        pytest.fail(f"{p.label} did not start: {line!r}\n{log_tail(p.log)}")
    p.url = line.removeprefix(prefix).strip()
    return p


def spawn_agent(
    name: str,
    certs: Path,
    state: Path | None,
    log: Path,
    *extra: str,
    module: str = "aerie.brain",
    port: int = 0,
    grace: int = 1,
    ops: bool = False,
) -> Proc:
    """Start ``python -m module agent run NAME`` over mutual TLS with the certificates in ``certs``;
    ``state``: its --state-dir; ``grace``: seconds requests in flight get at a stop; ``ops``: serve
    the ops endpoints too; ``extra``: further options."""
    args = ["agent", "run", name, "--certs", str(certs), "--port", str(port), "--grace", str(grace)]
    if state is not None:
        args += ["--state-dir", str(state)]
    if ops:
        args += ["--ops-port", "0"]
    return spawn(name, module, [*args, *extra], log)


def listening_agent(agent: Proc) -> Proc:
    """`listening` for an agent; its ops port, if it serves one, from its "agent listening" log line."""
    listening(agent, f"aerie agent {agent.label} listening on ")
    # An agent restarted on the same port into the same log has one such line per start: the last.
    started = [e for e in agent.lines("agent listening") if e["url"] == agent.url][-1]
    agent.ops_port = int(started["ops_port"] or 0)
    return agent


def tls_of(p: Pki) -> ClientTls:
    """Mutual TLS as the component ``p`` was issued for."""
    return ClientTls(ca=str(p.ca), cert=str(p.cert), key=str(p.key))
