"""Brain benchmark: anomalies → verdict through the whole brain, over A2A and mutual TLS, in one run.

    python -m aerie.perf.bench_brain [--quick] [--postgres DSN] [--json PATH]

Everything is real and on this machine: a Tansu broker, a fresh PKI, the five deterministic agents as
their own processes (``python -m aerie.brain agent run NAME``, HTTPS with mutual TLS), and in this
process the Kafka consumer feeding the coordinator (LangGraph, durable checkpoints) with SQLite stores
in a temporary directory (``--postgres DSN``: a fresh schema per brain in that database instead).
Anomaly envelopes are built from a generated corpus (attacks and rare-but-benign events, as the edge
would forward them) and produced with the edge's producer settings.

What it measures:

* one agent call, one at a time, client wall time: p50/p99 per agent over A2A/mTLS, against the same
  requests given to the agent's logic in this process (`InProcessAgentsBaseline`);
* ``steady``: anomalies at a fixed rate (20/s by default): latency per incident from the moment the
  message is handed to the Kafka producer to the verdict recorded in the audit store, exact
  percentiles over the audit rows (``verdict_at_ns``), split into produce → consumer read (the row's
  ``received_at_ns``) and read → verdict, which is cut again at the audit timestamps (admitted,
  queued, each step's start: `SEGMENTS`);
* ``burst``: every anomaly produced at once: incidents/s from the first produce to the last incident
  settled (finished, or waiting for a human);
* both again with the coordinator calling `InProcessAgentsBaseline` instead of the agent processes
  (Kafka, consumer, coordinator and stores unchanged): the difference is the A2A/mTLS transport;
* CPU time per incident in each phase, by process (from ``/proc``): on a machine shared with other
  work, wall-clock figures move with the load, CPU per incident much less.

Each brain first settles a few warm-up incidents (TLS handshakes, first-call costs), which are not
counted. The consumer runs on the brain's defaults except the two settings Tansu needs: the session
timeouts, and ``fetch.wait.max.ms`` (`FETCH_WAIT_MS`). The run ends with the design's target (steady
p50 ≤ 200 ms over A2A/mTLS) marked met or missed; it exits 0 either way (timing on a shared machine is
a measurement, not a gate). It fails (`BenchError`) when the pipeline itself did not work: an incident
without a verdict, an agent that failed or could not be reached, a broker or an agent that would not
start.

``--quick`` (CI smoke, ~25 s) runs 3 s of steady load and a burst of 60; the full run (~2 min) 20 s
and 400.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import confluent_kafka
import msgspec

from aerie.brain.agents.client import A2AAgentCaller
from aerie.brain.agents.logic import AgentLogic, LogicError, build_logic
from aerie.brain.audit import IncidentRecord, StepRecord
from aerie.brain.certs import init_pki
from aerie.brain.consumer import AnomalyConsumer, ConsumerConfig
from aerie.brain.coordinator import Coordinator, incident_id_for
from aerie.brain.metrics import BrainMetrics
from aerie.edge.kafka import KafkaConfig
from aerie.models.corpus import CorpusOptions, write_corpus
from aerie.perf.tansu import Tansu
from aerie.proto.agents import (
    AGENTS,
    AgentCaller,
    AgentReply,
    AnalyseRequest,
    Analysis,
    Detection,
    DetectRequest,
    NotifyRequest,
    RemediateRequest,
    Review,
    ReviewRequest,
)
from aerie.proto.envelope import Anomaly, TraceContext, encode_anomaly
from aerie.proto.event import decode_json
from aerie.proto.logs import JsonFormatter

__all__ = [
    "A2A",
    "BASELINE",
    "SEGMENTS",
    "BenchError",
    "BrainBench",
    "HopResult",
    "InProcessAgentsBaseline",
    "Latency",
    "PhaseResult",
    "main",
    "render",
    "run",
]

A2A: Final = "A2A over mTLS"
BASELINE: Final = "in-process (baseline)"
TARGET_P50_MS: Final = 200.0
THRESHOLD: Final = 0.61
"""The model threshold the envelopes carry (a plausible policy value; the agents read the score)."""
FETCH_WAIT_MS: Final = 10
"""The consumer's ``fetch.wait.max.ms``. Tansu answers a fetch late when records arrive while it waits
(a plain consumer at 20 msg/s read them ~10 ms after producing at 10, ~40 ms at 100, ~70 ms at 300;
the brain at librdkafka's default 500, ~180 ms), where Kafka answers as soon as ``fetch.min.bytes``
are there. 10 ms keeps Tansu's long poll out of the brain's figures (``--fetch-wait-ms`` to compare)."""
CONSUMER_POLL_TIMEOUT_MS: Final[int] = next(
    int(f.default) for f in msgspec.structs.fields(ConsumerConfig) if f.name == "poll_timeout_ms"
)
"""The brain's own default: one ``consume`` call waits this long unless its batch fills first."""
_SETTLED: Final = ("executed", "rejected", "escalated")
_FAILED_AGENT: Final = ("unavailable", "answered failed", "fail closed", "call raised", "unusable")


class BenchError(RuntimeError):
    """The benchmark could not measure: the pipeline did not work (the message says what failed)."""


# --- results --------------------------------------------------------------------------------------


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Exact percentiles (linear interpolation between ranks) of one set of durations."""

    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of_ns(cls, values: Sequence[int | float]) -> Latency:
        ms = sorted(v / 1e6 for v in values)
        if not ms:
            nan = float("nan")
            return cls(n=0, p50_ms=nan, p99_ms=nan, max_ms=nan)
        return cls(n=len(ms), p50_ms=_percentile(ms, 0.50), p99_ms=_percentile(ms, 0.99), max_ms=ms[-1])


def _percentile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class HopResult(msgspec.Struct, frozen=True, kw_only=True):
    """One agent called on its own, one call at a time: client wall time per call."""

    agent: str
    a2a: Latency
    in_process: Latency


class PhaseResult(msgspec.Struct, frozen=True, kw_only=True):
    """One load phase through one brain; every latency is per incident, from the audit rows."""

    phase: str
    """``steady`` or ``burst``."""
    label: str
    caller: str
    """`A2A` or `BASELINE`."""
    incidents: int
    seconds: float
    """First produce → last incident settled."""
    incidents_per_s: float
    verdicts_per_s: float
    """Incidents over first produce → last verdict."""
    to_verdict: Latency
    """Produce → verdict recorded: the headline latency."""
    kafka: Latency
    """Produce → read by the consumer (``received_at_ns``)."""
    brain: Latency
    """Read by the consumer → verdict recorded."""
    to_settled: Latency
    """Produce → finished (executed, rejected) or waiting for a human."""
    segments: dict[str, Latency]
    """Consumer read → verdict, cut at the audit timestamps (`SEGMENTS`)."""
    calls: dict[str, Latency]
    """The agent calls before the verdict as the coordinator's steps timed them, by agent."""
    verdicts: dict[str, int]
    statuses: dict[str, int]
    cpu_ms: dict[str, float]
    """CPU time per incident over the phase, by process (``brain``: this process, consumer and producer
    included; ``agents``; ``broker``) and ``total``: unlike wall time, what other load on the machine
    does not change much. Empty where ``/proc`` cannot be read."""


class BrainBench(msgspec.Struct, frozen=True, kw_only=True):
    context: dict[str, Any]
    hops: list[HopResult]
    phases: list[PhaseResult]


# --- the baseline caller --------------------------------------------------------------------------


class InProcessAgentsBaseline:
    """BASELINE for the transport's cost: the five agents' own logic (`build_logic`), called in this
    process. No A2A, HTTP, TLS or JSON; the same decisions and the same durable idempotency records
    (remediate and notify keep them in ``state_dir``). Implements `aerie.proto.agents.AgentCaller`."""

    def __init__(self, state_dir: Path) -> None:
        self._logic: dict[str, AgentLogic] = {name: build_logic(name, state_dir=state_dir) for name in AGENTS}

    async def start(self) -> None:
        for logic in self._logic.values():
            await logic.start()

    async def close(self) -> None:
        for logic in self._logic.values():
            await logic.close()

    async def call(
        self, agent: str, request: msgspec.Struct, *, traceparent: str, timeout_s: float | None = None
    ) -> AgentReply:
        started = time.perf_counter()
        task_id = uuid.uuid4().hex
        try:
            outcome = await self._logic[agent].handle(request)
        except LogicError as exc:
            return AgentReply(
                agent=agent,
                state="failed",
                data={},
                task_id=task_id,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                error=f"bad request: {exc}",
            )
        return AgentReply(
            agent=agent,
            state=outcome.state,
            data=msgspec.to_builtins(outcome.reply),
            task_id=task_id,
            duration_ms=(time.perf_counter() - started) * 1000.0,
        )


# --- inputs ---------------------------------------------------------------------------------------


def _anomalies(workdir: Path, count: int, seed: int) -> list[Anomaly]:
    """``count`` distinct anomalies from a generated corpus: attacks and rare-but-benign events first
    (what a model flags), in the corpus's time order; ordinary events only if those run short."""
    from aerie.models.features.spec import N_FEATURES, FeatureParams, spec_hash

    corpus = workdir / "corpus"
    write_corpus(corpus, CorpusOptions(seed=seed, events=max(2_000, count * 20), attack_rate=0.05, hours=6))
    events = (corpus / "events.jsonl").read_bytes().splitlines()
    labels = [msgspec.json.decode(line) for line in (corpus / "labels.jsonl").read_bytes().splitlines()]
    flagged = [i for i, lb in enumerate(labels) if lb["label"] == "attack" or lb["benign_kind"] == "rare"]
    others = [
        i for i, lb in enumerate(labels) if not (lb["label"] == "attack" or lb["benign_kind"] == "rare")
    ]
    rng = random.Random(seed)
    feature_hash = spec_hash(FeatureParams())
    out: list[Anomaly] = []
    seen: set[str] = set()
    for index in [*flagged, *others]:
        event = decode_json(events[index])
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        attack = labels[index]["label"] == "attack"
        score = THRESHOLD + (rng.uniform(0.05, 0.35) if attack else rng.uniform(0.005, 0.1))
        out.append(
            Anomaly(
                event_id=event.event_id,
                traceparent=TraceContext.new().traceparent,
                node=event.hostname or "node",
                model_version="bench-iforest-1",
                feature_spec_hash=feature_hash,
                score=round(score, 4),
                threshold=THRESHOLD,
                features=[round(rng.random(), 4) for _ in range(N_FEATURES)],
                detected_at_ns=event.time_ns + rng.randint(100_000, 3_000_000),
                event=event,
            )
        )
        if len(out) == count:
            return out
    raise BenchError(f"the corpus holds {len(out)} distinct events; {count} needed")


# --- processes ------------------------------------------------------------------------------------


@dataclass
class _Agent:
    name: str
    proc: subprocess.Popen[str]
    log: Path
    url: str = ""

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.asynccontextmanager
async def _agents(certs: Path, workdir: Path) -> AsyncIterator[dict[str, _Agent]]:
    """The five agents as processes on free ports, each started once its socket accepts connections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AERIE_")}
    state = workdir / "agent-state"
    started: list[_Agent] = []
    try:
        for name in AGENTS:
            started.append(_spawn(name, certs, state, workdir / f"agent-{name}.log", env))
        try:
            lines = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(_first_line, a) for a in started)), timeout=120
            )
        except TimeoutError:
            tails = "\n".join(f"{a.name}: {a.log_tail()}" for a in started)
            raise BenchError(f"the agents did not start within 120 s:\n{tails}") from None
        for agent, line in zip(started, lines, strict=True):
            prefix = f"aerie agent {agent.name} listening on "
            if not line.startswith(prefix):
                raise BenchError(f"agent {agent.name} did not start: {line!r}\n{agent.log_tail()}")
            agent.url = line.removeprefix(prefix).strip()
        yield {a.name: a for a in started}
    finally:
        # A readline still waiting (start timed out) returns once its process is gone.
        for agent in started:
            agent.stop()


def _spawn(name: str, certs: Path, state: Path, log_path: Path, env: dict[str, str]) -> _Agent:
    args = [sys.executable, "-m", "aerie.brain", "agent", "run", name, "--certs", str(certs)]
    # --grace 1: an idle pooled connection of the caller holds the agent's stop that long.
    args += ["--port", "0", "--state-dir", str(state), "--grace", "1"]
    with log_path.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    return _Agent(name=name, proc=proc, log=log_path)


def _first_line(agent: _Agent) -> str:
    assert agent.proc.stdout is not None
    return agent.proc.stdout.readline()


@contextlib.contextmanager
def _tansu(workdir: Path) -> Iterator[Tansu]:
    log_dir = workdir / "tansu"
    log_dir.mkdir()
    broker = Tansu(log_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def _brain_logs(path: Path) -> Iterator[None]:
    """The coordinator's and consumer's INFO lines, as production writes them, to a file: their cost is
    part of the brain's. The ``aerie`` logger's level and handlers are restored afterwards."""
    logger = logging.getLogger("aerie")
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("spiffe://aerie/brain"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


class _Stores:
    """Audit and checkpoint URLs per brain: SQLite files in the work directory, or a fresh schema in
    ``postgres`` (dropped at the end)."""

    def __init__(self, workdir: Path, postgres: str | None) -> None:
        self.workdir = workdir
        self.postgres = postgres
        self.schemas: list[str] = []

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.postgres else "SQLite"

    async def new(self, name: str) -> tuple[str, str]:
        if self.postgres is None:
            return (
                f"sqlite:///{self.workdir / f'{name}-audit.db'}",
                f"sqlite:///{self.workdir / f'{name}-ckpt.db'}",
            )
        import psycopg

        schema = f"aerie_bench_{name}_{uuid.uuid4().hex[:8]}"
        async with await psycopg.AsyncConnection.connect(self.postgres, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        self.schemas.append(schema)
        joiner = "&" if urllib.parse.urlsplit(self.postgres).query else "?"
        dsn = f"{self.postgres}{joiner}options=-csearch_path%3D{schema}"
        return dsn, dsn

    async def drop(self) -> None:
        if self.postgres is None or not self.schemas:
            return
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.postgres, autocommit=True) as conn:
            for schema in self.schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- one agent call at a time ---------------------------------------------------------------------


async def _hops(callers: dict[str, AgentCaller], anomalies: Sequence[Anomaly]) -> list[HopResult]:
    """Each anomaly through detect → analyst → reviewer → remediate → notify by hand, one call at a
    time, through each caller in turn (interleaved, so both see the same machine). The first anomaly
    goes through once untimed: it pays for the connections."""
    times: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    sample = [anomalies[0], *anomalies]

    async def timed(who: str, agent: str, request: msgspec.Struct, trace: TraceContext) -> dict[str, Any]:
        started = time.perf_counter_ns()
        reply = await callers[who].call(agent, request, traceparent=trace.child().traceparent)
        if n > 0:
            times[who, agent].append(time.perf_counter_ns() - started)
        if reply.state == "failed":
            raise BenchError(f"{who}: agent {agent} failed: {reply.error}")
        return reply.data

    for n, anomaly in enumerate(sample):
        plain = msgspec.to_builtins(anomaly)
        for who in callers:
            trace = TraceContext.new()
            incident = f"hop-{who.split()[0].lower()}-{n}"
            detection = msgspec.convert(
                await timed(who, "detect", DetectRequest(incident_id=incident, anomaly=plain), trace),
                Detection,
            )
            analysis = msgspec.convert(
                await timed(
                    who,
                    "analyst",
                    AnalyseRequest(incident_id=incident, anomaly=plain, detection=detection),
                    trace,
                ),
                Analysis,
            )
            review = msgspec.convert(
                await timed(
                    who,
                    "reviewer",
                    ReviewRequest(incident_id=incident, detection=detection, analysis=analysis),
                    trace,
                ),
                Review,
            )
            await timed(
                who,
                "remediate",
                RemediateRequest(
                    incident_id=incident,
                    action=analysis.proposed_action,
                    idempotency_key=f"{incident}:execute",
                ),
                trace,
            )
            await timed(
                who,
                "notify",
                NotifyRequest(
                    incident_id=incident,
                    kind="executed" if review.verdict == "auto_execute" else "rejected",
                    summary=detection.summary,
                    chain=[{"step": "detect", "agent": "detect", "output": msgspec.to_builtins(detection)}],
                    idempotency_key=f"{incident}:notify",
                ),
                trace,
            )
    return [
        HopResult(
            agent=agent,
            a2a=Latency.of_ns(times[A2A, agent]),
            in_process=Latency.of_ns(times[BASELINE, agent]),
        )
        for agent in AGENTS
    ]


# --- the whole brain ------------------------------------------------------------------------------


class _Producer:
    """The edge's producer settings (idempotent, acks=all, zstd, linger 5 ms) on one topic; remembers
    when each anomaly was handed to it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        settings = KafkaConfig(bootstrap_servers=bootstrap, topic=topic).producer_settings()
        settings["statistics.interval.ms"] = 0  # no stats callback here
        self._producer = confluent_kafka.Producer(settings)
        self.topic = topic
        self.produced_ns: dict[str, int] = {}
        self.failures: list[str] = []

    def produce(self, anomaly: Anomaly) -> None:
        # A new trace per message, as the edge starts one per anomaly.
        message = msgspec.structs.replace(anomaly, traceparent=TraceContext.new().traceparent)
        value = encode_anomaly(message)
        self.produced_ns[anomaly.event_id] = time.time_ns()
        headers: list[tuple[str, str | bytes | None]] = [*message.headers()]
        self._producer.produce(
            self.topic, value, message.partition_key, headers=headers, on_delivery=self._delivered
        )
        self._producer.poll(0)

    def _delivered(self, error: confluent_kafka.KafkaError | None, _message: confluent_kafka.Message) -> None:
        if error is not None:
            self.failures.append(f"{error.name()}: {error.str()}")

    async def flush(self) -> None:
        left = await asyncio.to_thread(self._producer.flush, 30.0)
        if left or self.failures:
            raise BenchError(f"producer: {left} records unconfirmed, failures {self.failures[:3]}")


async def _settle(
    consumer: AnomalyConsumer,
    consuming: asyncio.Task[None],
    coordinator: Coordinator,
    admitted: int,
    timeout_s: float,
) -> None:
    """Wait until ``admitted`` anomalies are admitted and every incident has settled."""
    deadline = time.monotonic() + timeout_s
    while consumer.stats.admitted < admitted:
        if consuming.done():
            consuming.result()
            raise BenchError("the consumer stopped before every anomaly was admitted")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{consumer.stats.admitted} of {admitted} anomalies admitted after {timeout_s:.0f}s"
            )
        await asyncio.sleep(0.02)
    if not await coordinator.drain(max(1.0, deadline - time.monotonic())):
        raise BenchError(f"incidents still running after {timeout_s:.0f}s")


@dataclass(frozen=True)
class _Plan:
    """What every brain in one run gets: the same anomalies, the same load, the same settings."""

    stores: _Stores
    bootstrap: str
    warm: Sequence[Anomaly]
    steady: Sequence[Anomaly]
    burst: Sequence[Anomaly]
    rate: float
    concurrency: int
    fetch_wait_ms: int
    poll_timeout_ms: int


async def _brain(name: str, caller: AgentCaller, *, label: str, plan: _Plan) -> list[PhaseResult]:
    """One brain (consumer + coordinator on fresh stores and a fresh topic) through warm-up, the steady
    phase and the burst; per-incident figures from its audit store."""
    audit, checkpoints = await plan.stores.new(name)
    topic = f"aerie.bench.{name}.{uuid.uuid4().hex[:8]}"
    producer = _Producer(plan.bootstrap, topic)
    # Produced before the consumer subscribes: Tansu creates the topic on first use.
    for anomaly in plan.warm:
        producer.produce(anomaly)
    await producer.flush()
    metrics = BrainMetrics()
    config = ConsumerConfig(
        bootstrap_servers=plan.bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id=f"bench-{name}-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        poll_timeout_ms=plan.poll_timeout_ms,
        librdkafka={"fetch.wait.max.ms": str(plan.fetch_wait_ms)},
    )
    warm_n, steady_n, burst_n = len(plan.warm), len(plan.steady), len(plan.burst)
    async with Coordinator.open(
        caller=caller, checkpoints=checkpoints, audit=audit, metrics=metrics, concurrency=plan.concurrency
    ) as coordinator:
        consumer = AnomalyConsumer(config, coordinator.admit, metrics=metrics)
        consuming = asyncio.create_task(consumer.run(), name=f"bench-consumer-{name}")
        try:
            await _settle(consumer, consuming, coordinator, warm_n, timeout_s=90)
            cpu = [_cpu_seconds()]
            # Steady: on an absolute schedule, so a late wake-up does not shift every later message.
            steady_start = time.monotonic()
            for i, anomaly in enumerate(plan.steady):
                delay = steady_start + i / plan.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                producer.produce(anomaly)
            await producer.flush()
            await _settle(consumer, consuming, coordinator, warm_n + steady_n, timeout_s=120)
            cpu.append(_cpu_seconds())
            # Burst: everything at once.
            for anomaly in plan.burst:
                producer.produce(anomaly)
            await producer.flush()
            await _settle(consumer, consuming, coordinator, warm_n + steady_n + burst_n, timeout_s=300)
            cpu.append(_cpu_seconds())
        finally:
            await consumer.stop()
            with contextlib.suppress(Exception):
                await consuming
        rows = {r.event_id: r for r in await coordinator.audit.incidents(limit=1_000_000)}
        steps = {r.event_id: await coordinator.audit.steps(r.incident_id) for r in rows.values()}
    failures = [
        f"{r.incident_id} {r.status}: {r.reason}"
        for r in rows.values()
        if r.status not in _SETTLED or r.verdict is None or any(s in (r.reason or "") for s in _FAILED_AGENT)
    ]
    failures += [
        f"{incident_id_for(event_id)} step {s.step}: {s.error}"
        for event_id, records in steps.items()
        for s in records
        if s.error
    ]
    if failures:
        raise BenchError(f"{label}: {len(failures)} incidents did not work, e.g. {failures[:3]}")
    return [
        _phase(
            phase=phase,
            phase_label=phase_label,
            caller=label,
            anomalies=anomalies,
            rows=rows,
            steps=steps,
            produced_ns=producer.produced_ns,
            cpu_ms=_cpu_per_incident(before, after, len(anomalies)),
        )
        for phase, phase_label, anomalies, before, after in (
            ("steady", f"steady {plan.rate:g}/s", plan.steady, cpu[0], cpu[1]),
            ("burst", f"burst {burst_n}", plan.burst, cpu[1], cpu[2]),
        )
    ]


def _phase(
    *,
    phase: str,
    phase_label: str,
    caller: str,
    anomalies: Sequence[Anomaly],
    rows: dict[str, IncidentRecord],
    steps: dict[str, list[StepRecord]],
    produced_ns: dict[str, int],
    cpu_ms: dict[str, float],
) -> PhaseResult:
    missing = [a.event_id for a in anomalies if a.event_id not in rows]
    if missing:
        raise BenchError(f"{caller} {phase_label}: {len(missing)} anomalies have no incident")
    records = [rows[a.event_id] for a in anomalies]
    produced = [produced_ns[a.event_id] for a in anomalies]
    verdict_at = [r.verdict_at_ns or 0 for r in records]  # every one has a verdict: checked by the caller
    settled_at = [r.updated_at_ns for r in records]
    first = min(produced)
    seconds = (max(settled_at) - first) / 1e9
    segments, calls = _segments(records, [steps[a.event_id] for a in anomalies])
    return PhaseResult(
        phase=phase,
        label=phase_label,
        caller=caller,
        incidents=len(records),
        seconds=seconds,
        incidents_per_s=len(records) / seconds,
        verdicts_per_s=len(records) / ((max(verdict_at) - first) / 1e9),
        to_verdict=Latency.of_ns([v - p for v, p in zip(verdict_at, produced, strict=True)]),
        kafka=Latency.of_ns([r.received_at_ns - p for r, p in zip(records, produced, strict=True)]),
        brain=Latency.of_ns([v - r.received_at_ns for v, r in zip(verdict_at, records, strict=True)]),
        to_settled=Latency.of_ns([s - p for s, p in zip(settled_at, produced, strict=True)]),
        segments=segments,
        calls=calls,
        verdicts=dict(collections.Counter(r.verdict or "none" for r in records).most_common()),
        statuses=dict(collections.Counter(r.status for r in records).most_common()),
        cpu_ms=cpu_ms,
    )


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process and its children (the agents, the broker), from
    ``/proc``; empty where there is none. Children are found by parent pid, agents by command line."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    used: dict[str, float] = collections.defaultdict(float)
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if pid != me and int(fields[1]) != me:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick
            role = "brain" if pid == me else "broker"
            if role == "broker" and b"aerie.brain\x00agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                role = "agents"
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
        used[role] += seconds
    return dict(used)


def _cpu_per_incident(before: dict[str, float], after: dict[str, float], incidents: int) -> dict[str, float]:
    if not before or not after or incidents == 0:
        return {}
    out = {
        role: max(0.0, after.get(role, 0.0) - before.get(role, 0.0)) * 1000 / incidents
        for role in ("brain", "agents", "broker")
    }
    out["total"] = sum(out.values())
    return out


SEGMENTS: Final = ("admit", "queue", "detect", "analyse", "review")
"""Consumer read → verdict, cut at the audit timestamps: read → admitted (the incident row committed),
admitted → detect step starts (queue, status write), detect start → analyse start (the call, its step
record, the checkpoint), likewise analyse, then review start → verdict recorded."""


def _segments(
    records: Sequence[IncidentRecord], steps: Sequence[list[StepRecord]]
) -> tuple[dict[str, Latency], dict[str, Latency]]:
    cuts: dict[str, list[float]] = collections.defaultdict(list)
    calls: dict[str, list[float]] = collections.defaultdict(list)
    for record, incident_steps in zip(records, steps, strict=True):
        first: dict[str, StepRecord] = {}
        for step in incident_steps:
            first.setdefault(step.step, step)
        if not all(name in first for name in ("detect", "analyse", "review")):
            continue  # an incident that escalated before its review has no such cuts
        detect, analyse, review = first["detect"], first["analyse"], first["review"]
        cuts["admit"].append(record.admitted_at_ns - record.received_at_ns)
        cuts["queue"].append(detect.started_at_ns - record.admitted_at_ns)
        cuts["detect"].append(analyse.started_at_ns - detect.started_at_ns)
        cuts["analyse"].append(review.started_at_ns - analyse.started_at_ns)
        cuts["review"].append((record.verdict_at_ns or 0) - review.started_at_ns)
        for step in (detect, analyse, review):
            calls[step.component.rsplit("/", 1)[-1]].append(step.duration_ms * 1e6)
    return (
        {name: Latency.of_ns(cuts[name]) for name in SEGMENTS},
        {name: Latency.of_ns(values) for name, values in calls.items()},
    )


# --- the run --------------------------------------------------------------------------------------


async def _run(
    *,
    quick: bool,
    postgres: str | None,
    rate: float,
    concurrency: int,
    fetch_wait_ms: int,
    poll_timeout_ms: int,
    workdir: Path,
    seed: int,
) -> BrainBench:
    load_before = os.getloadavg()
    hops_n, warm_n, steady_s, burst_n = (20, 5, 3.0, 60) if quick else (200, 10, 20.0, 400)
    steady_n = round(rate * steady_s)
    anomalies = _anomalies(workdir, warm_n + steady_n + burst_n, seed)
    certs = workdir / "pki"
    init_pki(certs)
    stores = _Stores(workdir, postgres)
    baseline = InProcessAgentsBaseline(workdir / "baseline-state")
    await baseline.start()
    try:
        with _tansu(workdir) as broker, _brain_logs(workdir / "brain.log"):
            plan = _Plan(
                stores=stores,
                bootstrap=broker.bootstrap,
                warm=anomalies[:warm_n],
                steady=anomalies[warm_n : warm_n + steady_n],
                burst=anomalies[warm_n + steady_n :],
                rate=rate,
                concurrency=concurrency,
                fetch_wait_ms=fetch_wait_ms,
                poll_timeout_ms=poll_timeout_ms,
            )
            async with _agents(certs, workdir) as agents:
                endpoints = {name: agent.url for name, agent in agents.items()}
                async with A2AAgentCaller.from_certs(
                    certs, endpoints=endpoints, metrics=BrainMetrics()
                ) as a2a:
                    hops = await _hops({A2A: a2a, BASELINE: baseline}, anomalies[:hops_n])
                    phases = await _brain("a2a", a2a, label=A2A, plan=plan)
            # The agent processes are stopped: the baseline has the machine to itself, as it would.
            phases += await _brain("inproc", baseline, label=BASELINE, plan=plan)
    finally:
        await baseline.close()
        await stores.drop()
    steady_a2a = next(p for p in phases if p.phase == "steady" and p.caller == A2A)
    context = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "stores": stores.kind,
        "concurrency": concurrency,
        "rate": rate,
        "fetch_wait_ms": fetch_wait_ms,
        "poll_timeout_ms": poll_timeout_ms,
        "quick": quick,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "hop_calls": hops_n,
        "target_p50_ms": TARGET_P50_MS,
        "target_met": steady_a2a.to_verdict.p50_ms <= TARGET_P50_MS,
    }
    return BrainBench(context=context, hops=hops, phases=phases)


def run(
    *,
    quick: bool = False,
    postgres: str | None = None,
    rate: float = 20.0,
    concurrency: int = 8,
    fetch_wait_ms: int = FETCH_WAIT_MS,
    poll_timeout_ms: int = CONSUMER_POLL_TIMEOUT_MS,
    seed: int = 7,
) -> BrainBench:
    """Run the whole benchmark in a temporary directory (removed afterwards); `BenchError` when the
    pipeline did not work."""
    if rate <= 0 or concurrency < 1 or fetch_wait_ms < 0 or poll_timeout_ms < 1:
        raise ValueError(
            "rate must be positive, concurrency and poll_timeout_ms at least 1, fetch_wait_ms not negative"
        )
    with tempfile.TemporaryDirectory(prefix="aerie-bench-brain-") as tmp:
        return asyncio.run(
            _run(
                quick=quick,
                postgres=postgres,
                rate=rate,
                concurrency=concurrency,
                fetch_wait_ms=fetch_wait_ms,
                poll_timeout_ms=poll_timeout_ms,
                workdir=Path(tmp),
                seed=seed,
            )
        )


# --- output ---------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}×" if denominator > 0 else "n/a"


def render(bench: BrainBench) -> str:
    ctx = bench.context
    lines = [
        "brain: Kafka → consumer → coordinator → 5 deterministic agents → verdict",
        f"{ctx['cores']} cores, Python {ctx['python']}, {ctx['stores']} stores, coordinator concurrency "
        f"{ctx['concurrency']}, Tansu (memory){', --quick (not the design figures)' if ctx['quick'] else ''}",
        f"consumer: consume timeout {ctx['poll_timeout_ms']} ms"
        f"{' (the brain default)' if ctx['poll_timeout_ms'] == CONSUMER_POLL_TIMEOUT_MS else ''}, "
        "fetch.wait.max.ms "
        f"{ctx['fetch_wait_ms']} (Tansu's long poll kept out); load average "
        f"{ctx['load_before'][0]:.2f} before, {ctx['load_after'][0]:.2f} after (shared machines: see CPU)",
        "",
        "latency per incident, Kafka produce → verdict recorded (exact, from the audit store)",
        f"{'phase':<14}{'caller':<24}{'incidents':>10}{'inc/s':>9}{'verdicts/s':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for p in bench.phases:
        lines.append(
            f"{p.label:<14}{p.caller:<24}{p.incidents:>10}{p.incidents_per_s:>9.1f}{p.verdicts_per_s:>12.1f}"
            f"{p.to_verdict.p50_ms:>9.1f}{p.to_verdict.p99_ms:>9.1f}{p.to_verdict.max_ms:>9.1f}"
        )
    lines += [
        "",
        "where the time goes, p50 / p99 ms: produce → consumer read | read → verdict | produce → settled",
    ]
    for p in bench.phases:
        lines.append(
            f"{p.label:<14}{p.caller:<24}"
            f"{p.kafka.p50_ms:>8.1f} /{p.kafka.p99_ms:>7.1f}  |{p.brain.p50_ms:>8.1f} /{p.brain.p99_ms:>7.1f}"
            f"  |{p.to_settled.p50_ms:>8.1f} /{p.to_settled.p99_ms:>8.1f}"
        )
    lines += [
        "",
        "consumer read → verdict, p50 ms per segment: read → admitted | admitted → detect starts | "
        "detect | analyse | review → verdict",
        f"{'phase':<14}{'caller':<24}" + "".join(f"{name:>9}" for name in SEGMENTS) + "   agent calls p50 ms",
    ]
    for p in bench.phases:
        calls = ", ".join(f"{agent} {c.p50_ms:.1f}" for agent, c in p.calls.items())
        lines.append(
            f"{p.label:<14}{p.caller:<24}"
            + "".join(f"{p.segments[name].p50_ms:>9.1f}" for name in SEGMENTS)
            + f"   {calls}"
        )
    if all(p.cpu_ms for p in bench.phases):
        cores = int(ctx["cores"] or 1)
        lines += [
            "",
            "CPU ms per incident (brain process | agents | broker = total), and what that cost allows on "
            f"{cores} idle cores: min({cores} cores / total, 1 core / brain process: one Python thread)",
        ]
        for p in bench.phases:
            c = p.cpu_ms
            ceiling = min(cores * 1000 / c["total"], 1000 / c["brain"])
            lines.append(
                f"{p.label:<14}{p.caller:<24}{c['brain']:>7.1f} |{c['agents']:>7.1f} |{c['broker']:>6.1f}"
                f" = {c['total']:>6.1f}   ≈ {ceiling:>5.0f} incidents/s"
            )
    lines += ["", "outcomes"]
    for p in bench.phases:
        verdicts = ", ".join(f"{k} {v}" for k, v in p.verdicts.items())
        statuses = ", ".join(f"{k} {v}" for k, v in p.statuses.items())
        lines.append(f"{p.label:<14}{p.caller:<24}verdicts: {verdicts}; status: {statuses}")
    by = {(p.phase, p.caller): p for p in bench.phases}
    steady_a2a, steady_base = by["steady", A2A], by["steady", BASELINE]
    burst_a2a, burst_base = by["burst", A2A], by["burst", BASELINE]
    lines += [
        "",
        f"transport cost ({A2A} against the {BASELINE}):",
        f"  steady p50 latency   {steady_a2a.to_verdict.p50_ms:.1f} ms vs "
        f"{steady_base.to_verdict.p50_ms:.1f} ms"
        f"  = {_ratio(steady_a2a.to_verdict.p50_ms, steady_base.to_verdict.p50_ms)}",
        f"  steady read→verdict  {steady_a2a.brain.p50_ms:.1f} ms vs {steady_base.brain.p50_ms:.1f} ms"
        f"  = {_ratio(steady_a2a.brain.p50_ms, steady_base.brain.p50_ms)}",
        f"  burst throughput     {burst_a2a.incidents_per_s:.1f} vs "
        f"{burst_base.incidents_per_s:.1f} incidents/s"
        f"  = in-process {_ratio(burst_base.incidents_per_s, burst_a2a.incidents_per_s)} faster",
        "",
        f"one agent call, one at a time ({ctx['hop_calls']} calls each; client wall time)",
        f"{'agent':<12}{'A2A p50 ms':>12}{'p99 ms':>9}{'in-process p50 µs':>20}{'p99 µs':>9}"
        f"{'ratio p50':>11}",
    ]
    for h in bench.hops:
        lines.append(
            f"{h.agent:<12}{h.a2a.p50_ms:>12.2f}{h.a2a.p99_ms:>9.2f}{h.in_process.p50_ms * 1000:>20.0f}"
            f"{h.in_process.p99_ms * 1000:>9.0f}{_ratio(h.a2a.p50_ms, h.in_process.p50_ms):>11}"
        )
    verdict = "met" if ctx["target_met"] else "missed"
    lines += [
        "",
        f"target: steady p50 Kafka → verdict ≤ {TARGET_P50_MS:.0f} ms over A2A/mTLS: "
        f"{steady_a2a.to_verdict.p50_ms:.1f} ms, {verdict}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aerie.perf.bench_brain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: a few seconds per phase")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="PostgreSQL URL (postgresql://...) for the stores, a fresh schema per brain; SQLite otherwise",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="anomalies per second in the steady phase")
    parser.add_argument("--concurrency", type=int, default=8, help="the coordinator's incident workers")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=FETCH_WAIT_MS,
        help="the consumer's fetch.wait.max.ms (Tansu answers fetches late: see the module)",
    )
    parser.add_argument(
        "--poll-timeout-ms",
        type=int,
        default=CONSUMER_POLL_TIMEOUT_MS,
        help="the consumer's consume timeout (ConsumerConfig.poll_timeout_ms)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    bench = run(
        quick=args.quick,
        postgres=args.postgres,
        rate=args.rate,
        concurrency=args.concurrency,
        fetch_wait_ms=args.fetch_wait_ms,
        poll_timeout_ms=args.poll_timeout_ms,
    )
    print(render(bench))
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(bench)) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
