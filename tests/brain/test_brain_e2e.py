"""The brain end to end, every part real: a Tansu broker, PostgreSQL, the five agents as their own
processes over mutual TLS (``python -m aerie.brain agent run NAME``), ``aerie brain run`` as its own
process, and ``aerie trace`` / ``aerie cases`` as the operator runs them.

The tests wait on what the brain recorded (the audit store, its /metrics), polled against a deadline.
The brain runs with Tansu's consumer timings (``--session-timeout 2000 --heartbeat-interval 500``), so
a restarted brain does not wait for its killed predecessor's group membership to expire.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from confluent_kafka import Message, Producer
from falco_testkit import anomaly_of, pod_shell_event
from kafka_testkit import create_topic, read_until
from process_testkit import Proc, clean_env, json_lines, listening_agent, log_tail, spawn_agent, tls_of
from prometheus_client.parser import text_string_to_metric_families

from aerie.brain.agents.client import A2AAgentCaller
from aerie.brain.agents.logic import NotifyLogic, OutboxMessage, RemediateLogic
from aerie.brain.audit import AuditStore, IncidentRecord, StepRecord, TraceRecord
from aerie.brain.certs import Pki
from aerie.brain.consumer import DLQ_REASON, DLQ_TOPIC
from aerie.brain.coordinator import incident_id_for
from aerie.perf.tansu import Tansu, free_port
from aerie.proto.agents import AGENTS, DetectRequest, Remediation
from aerie.proto.envelope import (
    HEADER_SCHEMA,
    HEADER_TRACEPARENT,
    Anomaly,
    TraceContext,
    encode_anomaly,
)
from aerie.proto.event import Priority

T = TypeVar("T")

PARTITIONS = 4
DEADLINE_S = 90.0
"""How long any one wait may take before the test fails (a slow, shared machine; normally seconds)."""

RUN = uuid.uuid4().hex[:8]
_numbers = itertools.count()


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Brain:
    """One ``aerie brain run`` process; `start` again runs the same command again (a restart)."""

    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ops_port: int = 0
    starts: int = 0
    started: dict[str, Any] = field(default_factory=dict)
    """The "brain started" log line of the current process."""

    def start(self) -> Brain:
        self.starts += 1
        with self.log.open("a") as err:
            err.write(f"--- start {self.starts}\n")
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=clean_env()
            )
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = [e for e in self.this_run() if e.get("msg") == "brain started"]
            if found:
                self.started = found[0]
                self.ops_port = int(found[0]["ops_port"])
                break
            self.check_alive()
            assert time.monotonic() < deadline, f"brain did not start:\n{log_tail(self.log)}"
            time.sleep(0.05)
        # Assigned partitions: from here on, what is produced is consumed without a group join first.
        while not self.ready().get("assigned"):
            self.check_alive()
            assert time.monotonic() < deadline, f"brain got no partitions:\n{log_tail(self.log)}"
            time.sleep(0.05)
        return self

    def _text(self) -> str:
        return self.log.read_text(errors="replace").split(f"--- start {self.starts}\n")[-1]

    def this_run(self) -> list[dict[str, Any]]:
        """The JSON log lines of the current process."""
        return json_lines(self._text())

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"brain exited with {self.proc.returncode}:\n{log_tail(self.log)}")

    def ready(self) -> dict[str, Any]:
        answer = httpx.get(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=5)
        assert answer.status_code == 200, answer.text
        detail: dict[str, Any] = answer.json()["detail"]
        return detail

    async def metrics(self) -> Samples:
        return await scrape(self.ops_port)

    def kill(self) -> int:
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM: stop consuming, drain, close; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(url)


async def scrape(port: int) -> Samples:
    """Every sample of a /metrics page, by name and sorted labels."""
    answer = await get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    tansu = Tansu(tmp_path_factory.mktemp("tansu"))
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


@pytest.fixture(scope="module")
def certs(pki: dict[str, Pki]) -> Path:
    return pki["brain"].ca.parent


@dataclass
class Agents:
    by_name: dict[str, Proc]
    state: Path

    def endpoints(self, **override: str) -> str:
        urls = {name: a.url for name, a in self.by_name.items()} | override
        return ",".join(f"{name}={url}" for name, url in urls.items())


@pytest.fixture(scope="module")
def agents(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    """The five agents, each its own process, started together once for the module."""
    base = tmp_path_factory.mktemp("agents")
    spawned = [
        spawn_agent(name, certs, base / "state", base / f"{name}.log", grace=2, ops=True) for name in AGENTS
    ]
    try:
        yield Agents({a.label: listening_agent(a) for a in spawned}, base / "state")
    finally:
        for agent in spawned:
            agent.stop()


def brain_args(
    broker: Tansu,
    *,
    topic: str,
    store: str,
    certs: Path,
    agents: str,
    concurrency: int = 8,
    agent_timeout: float = 10.0,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aerie.brain",
        "brain",
        "run",
        "--session-timeout",
        "2000",
        "--heartbeat-interval",
        "500",
        # Tansu does not answer a waiting fetch early when data arrives: keep the wait short.
        "--kafka-option",
        "fetch.wait.max.ms=10",
        "--kafka",
        broker.bootstrap,
        "--topic",
        topic,
        "--dlq-topic",
        f"{topic}.dlq",
        "--group",
        f"brain-{topic}",
        "--audit",
        store,
        "--checkpoints",
        store,
        "--certs",
        str(certs),
        "--agents",
        agents,
        "--agent-timeout",
        str(agent_timeout),
        "--concurrency",
        str(concurrency),
        "--ops-host",
        "127.0.0.1",
        "--ops-port",
        "0",
        "--drain-timeout",
        "5",
    ]


@dataclass
class Deployment:
    """A running brain with its topic and stores."""

    brain: Brain
    topic: str
    store: str


def deploy(broker: Tansu, topic_prefix: str, store: str, log: Path, **options: Any) -> Deployment:
    """A brain of its own on a new topic, started; ``options``: `brain_args`'s."""
    topic = create_topic(broker.bootstrap, topic_prefix, PARTITIONS)
    args = brain_args(broker, topic=topic, store=store, **options)
    return Deployment(Brain(args, log).start(), topic, store)


@pytest.fixture(scope="module")
def main_brain(
    broker: Tansu,
    pg_schema: Callable[[], str],
    agents: Agents,
    certs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The brain most tests share: every agent up, its own topic and schema."""
    log = tmp_path_factory.mktemp("brain") / "brain.log"
    deployment = deploy(
        broker, "aerie.anomalies.e2e", pg_schema(), log, certs=certs, agents=agents.endpoints()
    )
    try:
        yield deployment
    finally:
        deployment.brain.stop()


OwnBrain = Callable[..., Deployment]
"""``own_brain(topic_prefix, agents, **options)``: see the fixture."""


@pytest.fixture
def own_brain(pg_schema: Callable[[], str], broker: Tansu, certs: Path, tmp_path: Path) -> OwnBrain:
    """Starts a brain of the test's own: on a new topic, its own schema, logging to tmp_path;
    ``agents``: their endpoints; ``options``: further `brain_args`."""

    def start(topic_prefix: str, agents: str, **options: Any) -> Deployment:
        log = tmp_path / "brain.log"
        return deploy(broker, topic_prefix, pg_schema(), log, certs=certs, agents=agents, **options)

    return start


@pytest.fixture
async def audit(main_brain: Deployment) -> AsyncIterator[AuditStore]:
    """The main brain's audit store, read from the test process."""
    store = await AuditStore.open(main_brain.store, create=False)
    try:
        yield store
    finally:
        await store.close()


# --- anomalies and Kafka -----------------------------------------------------------------------


def make_anomaly(*, namespace: str = "shop", low: bool = False) -> Anomaly:
    """An anomaly the real agents decide on: a medium-severity shell in a pod (auto_execute:
    isolate the pod), ``low`` (auto_reject: no action), or in an always-escalate ``namespace``."""
    n = next(_numbers)
    event = pod_shell_event(
        time_ns=1_763_000_000_000_000_000 + n,
        priority=Priority.INFORMATIONAL if low else Priority.NOTICE,
        output=f"A shell was spawned in a container with an attached terminal (run {RUN}, n={n})",
        fields={"k8s.ns.name": namespace, "k8s.pod.name": f"cart-{n}", "container.id": f"{RUN}{n:04d}"},
    )
    return anomaly_of(event, model_version="m-e2e", score=0.63 if low else 0.70, threshold=0.62)


Headers = list[tuple[str, bytes]]
Record = tuple[bytes, bytes, Headers]


def record(anomaly: Anomaly, headers: Headers | None = None) -> Record:
    return (
        encode_anomaly(anomaly),
        anomaly.partition_key,
        list(anomaly.headers()) if headers is None else headers,
    )


@dataclass
class Kafka:
    """The module's broker and one long-lived producer."""

    broker: Tansu
    producer: Producer
    """One long-lived producer, as the edge has: a new one per message would time its start-up."""


@pytest.fixture(scope="module")
def kafka(broker: Tansu) -> Iterator[Kafka]:
    settings = {"enable.idempotence": True, "linger.ms": 1, "log.connection.close": False}
    producer = Producer({"bootstrap.servers": broker.bootstrap, **settings})
    producer.list_topics(timeout=20)  # connected before the first timed message
    try:
        yield Kafka(broker, producer)
    finally:
        producer.flush(10)


def produce(kafka: Kafka, topic: str, records: Sequence[Record]) -> list[int]:
    """Produce and wait for the broker's acknowledgements; when each was handed over (ns)."""
    stamps = []
    for value_, key, headers in records:
        stamps.append(time.time_ns())
        kafka.producer.produce(topic, value_, key, headers=headers)
    assert kafka.producer.flush(30) == 0
    return stamps


def read_topic(broker: Tansu, topic: str, wanted: Callable[[Message], bool]) -> Message:
    """The first message of ``topic`` that ``wanted`` accepts, read in a new group from the start."""
    found: list[Message] = []

    def done(message: Message) -> bool:
        if wanted(message):
            found.append(message)
        return bool(found)

    if not read_until(broker.bootstrap, topic, done, within=DEADLINE_S):
        pytest.fail(f"no such message in {topic}")
    return found[0]


# --- waiting on what the brain recorded --------------------------------------------------------


async def until(probe: Callable[[], Awaitable[T | None]], what: str, *, brains: Sequence[Brain] = ()) -> T:
    """Poll ``probe`` until it returns something truthy; fail at the deadline or when a brain dies."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = await probe()
        if got:
            return got
        for brain in brains:
            brain.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def incidents_for(store: AuditStore, anomalies: Sequence[Anomaly]) -> list[IncidentRecord | None]:
    return [await store.incident(incident_id_for(a.event_id)) for a in anomalies]


async def all_with_status(
    store: AuditStore, anomalies: Sequence[Anomaly], statuses: Sequence[str]
) -> list[IncidentRecord] | None:
    found = await incidents_for(store, anomalies)
    done = [i for i in found if i is not None and i.status in statuses]
    return done if len(done) == len(anomalies) else None


def steps_of(steps: Sequence[StepRecord]) -> list[str]:
    assert [s.seq for s in steps] == list(range(1, len(steps) + 1)), "steps are numbered without gaps"
    return [s.step for s in steps]


async def remediations(state: Path) -> list[Remediation]:
    """What the remediate agent recorded, read through its own store."""
    logic = RemediateLogic(state)
    await logic.start()
    try:
        return [msgspec.json.decode(v, type=Remediation) for v in await logic.store.values()]
    finally:
        await logic.close()


async def outbox(state: Path) -> list[OutboxMessage]:
    logic = NotifyLogic(state)
    await logic.start()
    try:
        return await logic.outbox()
    finally:
        await logic.close()


def aerie(*args: str) -> subprocess.CompletedProcess[str]:
    """The `aerie` command as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "aerie.brain", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )


def latency(measured: Sequence[tuple[IncidentRecord, int]]) -> str:
    """Produced (ns) → verdict recorded, as produced → received by the brain + received → verdict."""
    total, kafka, brain = [], [], []
    for incident, produced_ns in measured:
        assert incident.verdict_at_ns is not None
        total.append(incident.verdict_at_ns - produced_ns)
        kafka.append(incident.received_at_ns - produced_ns)
        brain.append(incident.verdict_at_ns - incident.received_at_ns)

    def ms(values: list[int]) -> str:
        return f"{statistics.median(values) / 1e6:.0f} ms"

    return f"{ms(total)} ({max(total) / 1e6:.0f} ms) = Kafka {ms(kafka)} + brain {ms(brain)}"


# --- tests -------------------------------------------------------------------------------------


async def test_every_anomaly_reaches_a_verdict_with_its_kafka_trace_and_duplicates_are_one_incident(
    main_brain: Deployment, audit: AuditStore, kafka: Kafka, agents: Agents
) -> None:
    brain = main_brain.brain
    before = await brain.metrics()
    anomalies = [make_anomaly(low=i % 4 == 3) for i in range(12)]
    # The traceparent header wins over the envelope's own field: for half of them the two differ.
    traces = [a.trace if i % 2 == 0 else TraceContext.new() for i, a in enumerate(anomalies)]
    records = [
        record(a, [(HEADER_SCHEMA, b"1"), (HEADER_TRACEPARENT, t.traceparent.encode())])
        for a, t in zip(anomalies, traces, strict=True)
    ]
    produced = produce(kafka, main_brain.topic, [*records, records[0]])  # the first one twice

    finished = await until(
        lambda: all_with_status(audit, anomalies, ("executed", "rejected")),
        "every incident to finish",
        brains=[brain],
    )
    by_event = {i.event_id: i for i in finished}
    for i, (a, trace) in enumerate(zip(anomalies, traces, strict=True)):
        incident = by_event[a.event_id]
        expected = "auto_reject" if i % 4 == 3 else "auto_execute"
        assert (incident.verdict, incident.status) == (
            expected,
            "rejected" if expected == "auto_reject" else "executed",
        ), incident
        assert incident.trace_id == trace.trace_id
        assert incident.verdict_at_ns is not None

    # The duplicate was read and dropped: one incident, its steps not run twice.
    async def duplicate_counted() -> bool:
        return (
            value(await brain.metrics(), "aerie_duplicates_total") - value(before, "aerie_duplicates_total")
            >= 1
        )

    await until(duplicate_counted, "the duplicate to be consumed", brains=[brain])
    after = await brain.metrics()
    assert value(after, "aerie_duplicates_total") - value(before, "aerie_duplicates_total") == 1
    assert value(after, "aerie_admitted_total") - value(before, "aerie_admitted_total") == len(anomalies)
    first = by_event[anomalies[0].event_id]
    assert steps_of(await audit.steps(first.incident_id)) == [
        "detect",
        "analyse",
        "review",
        "execute",
        "notify",
        "feedback",
    ]
    assert len(await audit.actions(first.incident_id)) == 2  # one remediation, one notification

    # `aerie trace` in its own process prints the whole chain of one trace, in order.
    for index, chain in ((1, ["execute", "notify", "feedback"]), (3, ["reject", "notify", "feedback"])):
        trace_id = traces[index].trace_id
        shown = await asyncio.to_thread(aerie, "trace", trace_id, "--audit", main_brain.store, "--json")
        assert shown.returncode == 0, shown.stderr
        got = msgspec.json.decode(shown.stdout, type=TraceRecord)
        assert got.trace_id == trace_id
        assert [i.event_id for i in got.incidents] == [anomalies[index].event_id]
        assert steps_of(got.steps) == ["detect", "analyse", "review", *chain]
        assert {s.trace_id for s in got.steps} == {trace_id}
        # Every agent call carried a span of this trace.
        for step in got.steps:
            if step.step in ("detect", "analyse", "review", "execute", "notify"):
                assert TraceContext.parse(step.meta["traceparent"]).trace_id == trace_id, step
        assert [s.component for s in got.steps[:3]] == [
            "spiffe://aerie/agent/detect",
            "spiffe://aerie/agent/analyst",
            "spiffe://aerie/agent/reviewer",
        ]
        assert got.steps[2].verdict == ("auto_reject" if index == 3 else "auto_execute")
        assert [f.label for f in got.feedback] == ["benign" if index == 3 else "malicious"]
    missing = await asyncio.to_thread(
        aerie, "trace", TraceContext.new().trace_id, "--audit", main_brain.store
    )
    assert missing.returncode == 1

    # One at a time, nothing queued: the latency of one anomaly alone.
    alone: list[tuple[IncidentRecord, int]] = []
    calls_ms: list[float] = []
    for _ in range(5):
        a = make_anomaly()
        (stamp,) = produce(kafka, main_brain.topic, [record(a)])
        (incident,) = await until(
            lambda a=a: all_with_status(audit, [a], ("executed",)), "a verdict", brains=[brain]
        )
        alone.append((incident, stamp))
        steps = await audit.steps(incident.incident_id)
        calls_ms.append(sum(s.duration_ms for s in steps if s.step in ("detect", "analyse", "review")))
    burst = [(by_event[a.event_id], stamp) for a, stamp in zip(anomalies, produced, strict=False)]
    print(
        "\nproduce → recorded verdict, p50 (max), split at the brain's receipt: "
        f"one at a time {latency(alone)}, of which detect+analyse+review calls "
        f"{statistics.median(calls_ms):.0f} ms; burst of {len(burst)} {latency(burst)}"
    )

    # The agents' own ops endpoints saw the work.
    for name, agent in agents.by_name.items():
        samples = await scrape(agent.ops_port)
        assert value(samples, "aerie_agent_served_total", agent=name, state="completed") + value(
            samples, "aerie_agent_served_total", agent=name, state="rejected"
        ) >= len(anomalies), name
        assert (await get(f"http://127.0.0.1:{agent.ops_port}/readyz")).json()["ok"] is True


async def test_an_agent_that_is_down_escalates_the_incident_after_retries_with_the_reason(
    kafka: Kafka, own_brain: OwnBrain, agents: Agents
) -> None:
    # The analyst has an address but nothing listens there: it is down.
    down = f"https://127.0.0.1:{free_port()}"
    deployment = await asyncio.to_thread(
        own_brain, "aerie.anomalies.down", agents.endpoints(analyst=down), agent_timeout=2
    )
    brain, topic, store = deployment.brain, deployment.topic, deployment.store
    audit = await AuditStore.open(store, create=False)
    try:
        anomalies = [make_anomaly() for _ in range(2)]
        produce(kafka, topic, [record(a) for a in anomalies])
        escalated = await until(
            lambda: all_with_status(audit, anomalies, ("escalated",)), "the escalations", brains=[brain]
        )
        for incident in escalated:
            assert incident.verdict == "escalate"  # no verdict came: fail closed
            assert incident.reason is not None
            assert incident.reason.startswith("agent analyst unavailable after 3 attempt(s): ConnectError")
            steps = await audit.steps(incident.incident_id)
            assert steps_of(steps) == ["detect", "analyse", "escalate"]
            assert steps[1].error == incident.reason
            assert steps[2].error is None  # the people were told
        samples = await brain.metrics()
        assert value(samples, "aerie_agent_retries_total", agent="analyst") == 2 * len(anomalies)
        assert value(samples, "aerie_agent_requests_total", agent="analyst", outcome="unavailable") == 2
        # Each retry waited a backoff first.
        retries = [
            e
            for e in brain.this_run()
            if e.get("msg") == "agent call failed, retrying" and e.get("agent") == "analyst"
        ]
        assert len(retries) == 2 * len(anomalies)
        assert all(e["retry_in_s"] > 0 for e in retries)
        assert sorted(e["attempt"] for e in retries) == [1, 1, 2, 2]
        # The escalation reached the people with the reason.
        ids = {i.incident_id for i in escalated}
        posted = [m for m in await outbox(agents.state) if m.incident_id in ids]
        assert sorted(m.kind for m in posted) == ["escalation", "escalation"]
        assert all("agent analyst unavailable" in m.text for m in posted)
        assert brain.stop() == 0
    finally:
        await audit.close()
        brain.stop()


async def test_a_brain_killed_mid_incident_resumes_every_incident_and_acts_once(
    kafka: Kafka, own_brain: OwnBrain, agents: Agents, certs: Path, tmp_path: Path
) -> None:
    # A remediate agent of its own, frozen: incidents reach `execute` and wait there.
    state, log = tmp_path / "state", tmp_path / "remediate.log"
    remediate = listening_agent(spawn_agent("remediate", certs, state, log, grace=2, ops=True))
    remediate.proc.send_signal(signal.SIGSTOP)
    endpoints = agents.endpoints(remediate=remediate.url)
    deployment = await asyncio.to_thread(
        own_brain, "aerie.anomalies.kill", endpoints, concurrency=4, agent_timeout=60
    )
    brain, topic, store = deployment.brain, deployment.topic, deployment.store
    audit = await AuditStore.open(store, create=False)
    try:
        anomalies = [make_anomaly() for _ in range(12)]
        produce(kafka, topic, [record(a) for a in anomalies])

        async def admitted_and_executing() -> bool:
            found = await incidents_for(audit, anomalies)
            if any(i is None for i in found):
                return False
            steps = [await audit.steps(i.incident_id) for i in found if i is not None]
            return sum(1 for s in steps if [x.step for x in s][-1:] == ["review"]) == 4

        await until(admitted_and_executing, "12 admitted, 4 waiting on remediate", brains=[brain])
        assert brain.kill() == -signal.SIGKILL
        at_kill = await incidents_for(audit, anomalies)
        statuses = sorted(i.status for i in at_kill if i is not None)
        assert statuses == ["admitted"] * 8 + ["running"] * 4

        remediate.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(brain.start)  # the same command: the same stores, the same group
        assert brain.started["resumed_incidents"] == 12
        done = await until(
            lambda: all_with_status(audit, anomalies, ("executed",)),
            "every incident executed",
            brains=[brain],
        )
        assert len({i.incident_id for i in done}) == 12
        keys = {f"{i.incident_id}:execute:isolate_pod" for i in done}
        for incident in done:
            assert incident.verdict == "auto_execute"
            steps = await audit.steps(incident.incident_id)
            assert steps_of(steps) == ["detect", "analyse", "review", "execute", "notify", "feedback"]
            actions = await audit.actions(incident.incident_id)
            assert sorted(a.kind for a in actions) == ["executed", "isolate_pod"]
            # The call the restarted brain made was the key's first: the killed one's never landed.
            assert steps[3].output["first_time"] is True, steps[3]
        # The remediate agent's own records: each key exactly once, nothing else; and it was asked
        # exactly once per key over both lives of the brain.
        recorded = await remediations(tmp_path / "state")
        assert sorted(r.idempotency_key for r in recorded) == sorted(keys)
        served = await scrape(remediate.ops_port)
        assert value(served, "aerie_agent_served_total", agent="remediate", state="completed") == 12
        ids = {i.incident_id for i in done}
        posted = [m for m in await outbox(agents.state) if m.incident_id in ids]
        assert sorted(m.incident_id for m in posted) == sorted(ids)  # one "executed" notice each
        assert brain.stop() == 0
    finally:
        await audit.close()
        if remediate.proc.poll() is None:
            remediate.proc.send_signal(signal.SIGCONT)
        if brain.proc is not None and brain.proc.poll() is None:
            brain.stop()
        remediate.stop()


async def test_an_escalation_is_approved_from_another_process_and_executed_once(
    main_brain: Deployment, audit: AuditStore, kafka: Kafka, agents: Agents, certs: Path
) -> None:
    anomaly = make_anomaly(namespace="kube-system")
    produce(kafka, main_brain.topic, [record(anomaly)])
    (incident,) = await until(
        lambda: all_with_status(audit, [anomaly], ("escalated",)), "the escalation", brains=[main_brain.brain]
    )
    assert incident.verdict == "escalate"
    assert incident.reason == "namespace kube-system is on the always-escalate list"
    key = f"{incident.incident_id}:execute:isolate_pod"
    assert key not in {r.idempotency_key for r in await remediations(agents.state)}

    decide = [
        "--audit",
        main_brain.store,
        "--checkpoints",
        main_brain.store,
        "--certs",
        str(certs),
        "--agents",
        agents.endpoints(),
    ]
    approved = await asyncio.to_thread(
        aerie, "cases", "approve", incident.incident_id, "--by", "alice", *decide
    )
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{incident.incident_id}: approve by alice; status now executed"
    after = await audit.incident(incident.incident_id)
    assert after is not None
    assert (after.status, after.outcome, after.verdict) == ("executed", "executed", "escalate")
    assert [(d.decision, d.decided_by) for d in await audit.decisions(incident.incident_id)] == [
        ("approve", "alice")
    ]
    assert steps_of(await audit.steps(incident.incident_id)) == [
        "detect",
        "analyse",
        "review",
        "escalate",
        "decision",
        "execute",
        "notify",
        "feedback",
    ]
    again = await asyncio.to_thread(aerie, "cases", "approve", incident.incident_id, "--by", "bob", *decide)
    assert again.returncode == 1
    assert "not waiting for a decision" in again.stderr
    assert [r.idempotency_key for r in await remediations(agents.state)].count(key) == 1
    assert [a.kind for a in await audit.actions(incident.incident_id)].count("isolate_pod") == 1


async def test_an_undecodable_message_is_dead_lettered_and_the_partition_moves_on(
    main_brain: Deployment, audit: AuditStore, kafka: Kafka
) -> None:
    brain = main_brain.brain
    before = await brain.metrics()
    anomaly = make_anomaly()
    garbage = f"not an envelope {RUN} {uuid.uuid4()}".encode()
    # The same key: the same partition, the garbage first.
    produce(kafka, main_brain.topic, [(garbage, anomaly.partition_key, []), record(anomaly)])
    (incident,) = await until(
        lambda: all_with_status(audit, [anomaly], ("executed",)), "the valid anomaly", brains=[brain]
    )
    assert incident.verdict == "auto_execute"
    dead = await asyncio.to_thread(
        read_topic, kafka.broker, f"{main_brain.topic}.dlq", lambda m: m.value() == garbage
    )
    headers = dict(dead.headers() or [])
    assert headers[DLQ_REASON] == b"invalid_json"
    assert headers[DLQ_TOPIC] == main_brain.topic.encode()
    assert dead.key() == anomaly.partition_key

    async def counted() -> bool:
        now = await brain.metrics()
        return value(now, "aerie_dead_lettered_total", reason="invalid_json") > value(
            before, "aerie_dead_lettered_total", reason="invalid_json"
        )

    await until(counted, "the dead letter to be counted", brains=[brain])


async def test_an_agent_serves_its_metrics_and_stops_promptly_with_idle_callers(
    certs: Path, pki: dict[str, Pki], tmp_path: Path
) -> None:
    # A long grace: only requests in flight may use it; an idle pooled connection must not hold the stop.
    state, log = tmp_path / "state", tmp_path / "detect.log"
    agent = listening_agent(spawn_agent("detect", certs, state, log, grace=60, ops=True))
    try:
        async with A2AAgentCaller({"detect": agent.url}, tls=tls_of(pki["brain"])) as caller:
            anomaly = msgspec.to_builtins(make_anomaly())
            reply = await caller.call(
                "detect",
                DetectRequest(incident_id="inc-ops", anomaly=anomaly),
                traceparent=TraceContext.new().traceparent,
            )
            assert reply.state == "completed"
            ops = f"http://127.0.0.1:{agent.ops_port}"
            samples = await scrape(agent.ops_port)
            assert value(samples, "aerie_agent_served_total", agent="detect", state="completed") == 1
            assert value(samples, "aerie_agent_serve_seconds_count", agent="detect") == 1
            assert (await get(ops + "/healthz")).status_code == 200
            ready = await get(ops + "/readyz")
            assert (ready.status_code, ready.json()["detail"]) == (200, {"agent": "detect", "url": agent.url})

            # The caller keeps its connection pooled and idle while the agent stops.
            agent.proc.send_signal(signal.SIGTERM)
            # Waiting out the grace would take 60 s; the stop has to be done well before.
            rc = await asyncio.to_thread(agent.proc.wait, 30)
            assert rc == 0
    finally:
        agent.stop()


def test_a_bad_ops_port_is_refused(certs: Path) -> None:
    refused = aerie("agent", "run", "detect", "--certs", str(certs), "--port", "0", "--ops-port", "70000")
    assert refused.returncode == 2
    assert "--ops-port: 70000 is not a port number" in refused.stderr
