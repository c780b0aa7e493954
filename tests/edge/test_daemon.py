"""`aerie edge run` as a real subprocess (``python -m aerie.brain edge run``), configured by a TOML file
and ``AERIE_EDGE_*`` variables, against a real Tansu broker, a real disk spool and a real bundle.

Expected anomalies are never taken from the daemon: they are the events whose score is above the
threshold when the same events, in the same order, go through the same bundle and the bundle's feature
state in this process (or through ``aerie score``). Each daemon starts from the bundle's state (no
state file), so a daemon fed a prefix of the feed scores exactly the reference scores of that prefix.

Tansu keeps everything in memory: a stopped broker loses what it had confirmed. Outage tests therefore
stop (or freeze) the broker *before* feeding the phase they prove, and read that phase from the broker
that runs afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka import Message
from kafka_testkit import read_anomalies
from process_testkit import clean_env
from prometheus_client.parser import text_string_to_metric_families

from aerie.brain.cli import main
from aerie.edge.kafka import FAILURE_REASONS
from aerie.edge.spool import Spool
from aerie.models.bundle import Bundle, load_bundle, write_bundle
from aerie.models.corpus import CorpusOptions, write_corpus
from aerie.models.features import FEATURE_NAMES, FeatureExtractor
from aerie.models.scorer import OnnxScorer
from aerie.perf.tansu import Tansu, free_port
from aerie.proto.envelope import HEADER_SCHEMA, HEADER_TRACEPARENT, Anomaly, decode_anomaly
from aerie.proto.event import decode_json

NODE = "node-t"
TOPIC = "aerie.anomalies.daemon-test"
THRESHOLD = 0.45
"""Below the calibrated threshold, so a few hundred events make dozens of anomalies."""
DRAIN_S = 1.0
BROKER_DOWN = "Kafka broker down; records wait in the spool"
BROKER_UP = "Kafka broker up; forwarding the spool"


# --- shared material: one bundle, one feed, their reference scores ---------------------------------


@dataclass(frozen=True)
class Feed:
    """Falco JSON lines never seen in training, with their ids and reference scores (one pass, in order)."""

    lines: list[bytes]
    ids: list[str]
    scores: npt.NDArray[np.float32]

    def text(self, start: int, stop: int) -> bytes:
        return b"".join(line + b"\n" for line in self.lines[start:stop])

    def anomalies(self, start: int, stop: int, threshold: float) -> list[str]:
        """Ids of events start..stop above ``threshold``, in feed order (the detector's own comparison)."""
        rows = np.flatnonzero(self.scores[start:stop] > threshold)
        return [self.ids[start + int(i)] for i in rows]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of bundles holding one, ``b1``, trained by ``aerie train``."""
    corpus = tmp_path_factory.mktemp("train-corpus")
    write_corpus(corpus, CorpusOptions(seed=31, events=4000, hours=2.0))
    root = tmp_path_factory.mktemp("models")
    argv = ["train", "--events", str(corpus / "events.jsonl"), "--out", str(root / "b1"), "--quiet"]
    assert main([*argv, "--trees", "25"]) == 0
    return root


@pytest.fixture(scope="module")
def bundle(models: Path) -> Bundle:
    return load_bundle(models / "b1")


@pytest.fixture(scope="module")
def feed(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Feed:
    root = tmp_path_factory.mktemp("feed")
    write_corpus(root, CorpusOptions(seed=32, events=4000, hours=1.0, attack_rate=0.02))
    lines = [line for line in (root / "events.jsonl").read_bytes().splitlines() if line.strip()]
    events = [decode_json(line) for line in lines]
    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    scores = OnnxScorer(bundle.model).score(extractor.transform(events))
    return Feed(lines=lines, ids=[e.event_id for e in events], scores=scores)


@dataclass(frozen=True)
class World:
    """What every test shares: the directory of bundles (``b1``), that bundle, the feed."""

    models: Path
    bundle: Bundle
    feed: Feed


@pytest.fixture(scope="module")
def world(models: Path, bundle: Bundle, feed: Feed) -> World:
    return World(models=models, bundle=bundle, feed=feed)


# --- the daemon as a subprocess ---------------------------------------------------------------------


class Metrics:
    """One scrape of ``/metrics``: sample name and labels → value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def __call__(self, name: str, **labels: str) -> float:
        """The value, 0 when the series is not there (yet)."""
        return self.get(name, **labels) or 0.0

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}


def settings_env(**settings: object) -> dict[str, str]:
    """This process's environment without ``AERIE_*``, plus ``AERIE_EDGE_<KEY>`` for each setting."""
    env = clean_env()
    for key, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"AERIE_EDGE_{key.upper()}"] = text
    return env


def base_settings(tmp_path: Path, models: Path, bootstrap: str, events: Path) -> dict[str, object]:
    """Short intervals everywhere, so every change shows within a fraction of a second."""
    return {
        "node": NODE,
        "input_kind": "jsonlines",
        "input_jsonlines_path": events,
        "input_jsonlines_follow": True,
        "model_dir": models,
        "model_poll_s": 0.2,
        "threshold_refresh_s": 0.2,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topic": TOPIC,
        "kafka_stats_interval_ms": 200,
        "kafka_reconnect_backoff_max_ms": 500,
        "spool_dir": tmp_path / "spool",
        "pipeline_drain_timeout_s": DRAIN_S,
        "ops_host": "127.0.0.1",
        "ops_port": 0,
    }


class Edge:
    """One ``aerie edge run`` process; its stderr (JSON log lines) goes to ``<name>.log``."""

    def __init__(self, directory: Path, env: dict[str, str], name: str) -> None:
        self.env = env
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started: dict[str, Any] = {}

    def start(self, within: float = 60.0) -> Edge:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aerie.brain", "edge", "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started = self.wait_line("edge started", within=within)
        self.port = int(self.started["ops_port"])
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (a line still being written is left out)."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def lines(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("msg") == msg]

    def wait_line(self, msg: str, *, after: int = 0, within: float = 20.0) -> dict[str, Any]:
        """The log line saying ``msg`` that follows the first ``after`` such lines."""
        deadline = time.monotonic() + within
        while len(found := self.lines(msg)) <= after:
            self.alive()
            assert time.monotonic() < deadline, f"timed out waiting for {msg!r}:\n{self.log_text()[-4000:]}"
            time.sleep(0.05)
        return found[after]

    def alive(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, (
            f"edge exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
        )

    def wait_log(
        self, match: Callable[[dict[str, Any]], bool], what: str, within: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            found = [r for r in self.records() if match(r)]
            if found:
                return found[-1]
            self.alive()
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.log_text()[-4000:]}"
            time.sleep(0.05)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10.0)

    def metrics(self) -> Metrics:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return Metrics(response.text)

    def wait_metrics(self, condition: Callable[[Metrics], bool], what: str, within: float = 30.0) -> Metrics:
        deadline = time.monotonic() + within
        while True:
            self.alive()
            metrics = self.metrics()
            if condition(metrics):
                return metrics
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.log_text()[-3000:]}"
            time.sleep(0.05)

    def wait_ready(self, kafka: str, within: float = 20.0) -> dict[str, Any]:
        """Wait for /readyz 200 whose kafka detail starts with ``kafka``; the detail."""
        deadline = time.monotonic() + within
        while True:
            self.alive()
            response = self.get("/readyz")
            detail = response.json().get("detail", {})
            if response.status_code == 200 and str(detail.get("kafka", "")).startswith(kafka):
                return dict(detail)
            assert time.monotonic() < deadline, f"/readyz never said kafka {kafka!r}: {response.text}"
            time.sleep(0.05)

    def terminate(self, within: float = 30.0) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=within)
        return status, time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)


StartEdge = Callable[..., Edge]


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[StartEdge]:
    """``start_edge(settings, name="edge")``: a started daemon; every one is killed at teardown."""
    edges: list[Edge] = []

    def start(settings: dict[str, object], name: str = "edge", *, env: dict[str, str] | None = None) -> Edge:
        edge = Edge(tmp_path, env if env is not None else settings_env(**settings), name)
        edges.append(edge)
        return edge.start()

    yield start
    for edge in edges:
        edge.kill()


# --- Kafka and spool readers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    key: bytes | None
    headers: dict[str, bytes]
    anomaly: Anomaly


def consume(bootstrap: str, want: set[str]) -> dict[str, list[Received]]:
    """Every copy by event id until each id in ``want`` was seen (delivery is at least once)."""
    seen = read_anomalies(bootstrap, TOPIC, want)
    return {event_id: [received(m) for m in copies] for event_id, copies in seen.items()}


def received(message: Message) -> Received:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {name: data for name, data in pairs if isinstance(data, bytes)}
    return Received(message.key(), headers, decode_anomaly(message.value() or b""))


def spooled(directory: Path) -> list[Anomaly]:
    """The unacknowledged anomalies in a spool directory (its daemon must be gone), oldest first."""
    with Spool(directory) as spool:
        return [decode_anomaly(entry.record.value) for entry in spool.peek(1_000_000)]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


# --- 1. every anomaly arrives, as `aerie score` flags it ---------------------------------------------


def test_every_anomaly_of_a_followed_file_arrives_in_kafka_as_aerie_score_flags_it(
    tansu: Tansu, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, bundle, feed = world.models, world.bundle, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 500))
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
node = "{NODE}"

[input]
kind = "jsonlines"

[input.jsonlines]
path = "{events}"
follow = true

[model]
dir = "{models}"

[threshold]
override = {THRESHOLD}

[kafka]
bootstrap_servers = "{tansu.bootstrap}"
topic = "not-this-one"
stats_interval_ms = 200

[spool]
dir = "{tmp_path / "spool"}"

[pipeline]
drain_timeout_s = {DRAIN_S}

[ops]
host = "127.0.0.1"
port = 0
"""
    )
    # The file holds most settings; a variable wins over it (the topic).
    env = settings_env(config=config, kafka_topic=TOPIC)
    edge = start_edge({}, env=env)
    assert edge.started["threshold"] == THRESHOLD
    assert edge.started["model_version"] == bundle.version

    # Appended while the daemon runs, each part once the previous one was read.
    edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 500, "the first 500 events")
    append(events, feed.text(500, 1000) + b"this line is not a Falco alert\n")
    edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 1000, "1000 events")
    append(events, feed.text(1000, 1500))

    command = [
        "score",
        "--bundle",
        str(models / "b1"),
        "--events",
        str(events),
        "--threshold",
        str(THRESHOLD),
    ]
    scored = subprocess.run(
        [sys.executable, "-m", "aerie.brain", *command],
        env=settings_env(),
        capture_output=True,
        check=True,
    )
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert sum(1 for row in rows if "error" in row) == 1
    flagged = {row["event_id"]: row["score"] for row in rows if row.get("anomaly")}
    # `aerie score` and the in-test reference agree, and there is something to prove.
    assert set(flagged) == set(feed.anomalies(0, 1500, THRESHOLD))
    assert 50 < len(flagged) < 1500

    n = len(flagged)
    metrics = edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 1500
            and m("aerie_edge_kafka_delivered_total") == n
            and m("aerie_edge_spool_queued_records") == 0
        ),
        "every anomaly delivered and acknowledged",
    )
    assert metrics("aerie_edge_anomalies_total") == n
    assert metrics("aerie_edge_events_rejected_total", input="jsonlines", reason="invalid_json") == 1

    seen = consume(tansu.bootstrap, set(flagged))
    assert seen.keys() == set(flagged)
    # Nothing failed on the way, so the idempotent producer wrote each anomaly once.
    assert all(len(copies) == 1 for copies in seen.values())
    traces = set()
    for event_id, (message,) in seen.items():
        anomaly = message.anomaly
        container = anomaly.event.field_str("container.id") or "host"
        assert message.key == f"{NODE}/{container}".encode()
        assert message.headers[HEADER_SCHEMA] == b"1"
        assert message.headers[HEADER_TRACEPARENT] == anomaly.traceparent.encode()
        assert (anomaly.node, anomaly.model_version, anomaly.threshold) == (NODE, bundle.version, THRESHOLD)
        assert anomaly.score == flagged[event_id] > THRESHOLD
        assert anomaly.event.event_id == event_id
        traces.add(anomaly.trace.trace_id)
    assert len(traces) == n  # a new trace per anomaly

    status, _ = edge.terminate()
    assert status == 0


# --- 2. broker stopped mid-stream ----------------------------------------------------------------------


def test_broker_stopped_mid_stream_every_anomaly_fed_while_it_was_down_arrives_after_it_is_back(
    tansu: Tansu, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, feed = world.models, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 800))
    settings = base_settings(tmp_path, models, tansu.bootstrap, events) | {"threshold_override": THRESHOLD}
    edge = start_edge(settings)
    phase_a = feed.anomalies(0, 800, THRESHOLD)
    phase_b = feed.anomalies(800, 1600, THRESHOLD)
    phase_c = feed.anomalies(1600, 2400, THRESHOLD)
    assert min(len(phase_a), len(phase_b), len(phase_c)) > 10

    # A: confirmed by the first broker (acknowledged in the spool).
    edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 800
            and m("aerie_edge_kafka_delivered_total") == len(phase_a)
            and m("aerie_edge_spool_queued_records") == 0
        ),
        "phase A delivered",
    )
    edge.wait_ready("up")

    # B: fed while no broker runs, so none of it can have reached the broker that is gone.
    downs, ups = len(edge.lines(BROKER_DOWN)), len(edge.lines(BROKER_UP))
    tansu.stop()
    edge.wait_ready("unreachable")
    down = edge.wait_line(BROKER_DOWN, after=downs)
    assert (down["level"], down["logger"]) == ("warning", "aerie.edge.forwarder")
    append(events, feed.text(800, 1600))
    metrics = edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 1600
            and m("aerie_edge_anomalies_spooled_total") == len(phase_a) + len(phase_b)
        ),
        "phase B scored and spooled",
    )
    # Everything of B waits in the spool, unacknowledged; readiness stays up, saying why.
    assert metrics("aerie_edge_spool_queued_records") == len(phase_b)
    assert metrics("aerie_edge_kafka_delivered_total") == len(phase_a)
    assert metrics("aerie_edge_kafka_broker_up") == 0
    assert edge.wait_ready("unreachable")["kafka"] == "unreachable: spooling anomalies until it answers"

    tansu.start()
    edge.wait_line(BROKER_UP, after=ups)
    edge.wait_metrics(lambda m: m("aerie_edge_spool_queued_records") == 0, "the spool drained")
    edge.wait_ready("up")

    # C: after the restart, through the same daemon.
    append(events, feed.text(1600, 2400))
    edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 2400
            and m("aerie_edge_anomalies_spooled_total") == len(phase_a) + len(phase_b) + len(phase_c)
            and m("aerie_edge_spool_queued_records") == 0
        ),
        "phase C delivered",
    )

    want = set(phase_b) | set(phase_c)
    seen = consume(tansu.bootstrap, want)
    assert want <= seen.keys()
    assert seen.keys() <= want  # A went to the broker that is gone; nothing else was ever sent
    status, _ = edge.terminate()
    assert status == 0


# --- 3. no Kafka at all, then a broker on the next start ------------------------------------------------


def test_without_kafka_it_starts_ready_spools_stops_at_once_and_the_next_start_publishes_the_spool(
    tansu: Tansu, closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, feed = world.models, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 1000))
    settings = base_settings(tmp_path, models, f"127.0.0.1:{closed_port}", events)
    settings["threshold_override"] = THRESHOLD
    expected = feed.anomalies(0, 1000, THRESHOLD)
    edge = start_edge(settings)

    health = edge.get("/healthz")
    assert (health.status_code, health.json()["ok"]) == (200, True)
    assert edge.wait_ready("unreachable")["kafka"] == "unreachable: spooling anomalies until it answers"
    metrics = edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 1000
            and m("aerie_edge_spool_queued_records") == len(expected)
        ),
        "every anomaly spooled",
    )
    assert (
        metrics("aerie_edge_spool_appended_total")
        == metrics("aerie_edge_anomalies_spooled_total")
        == len(expected)
    )
    assert metrics("aerie_edge_spool_queued_bytes") > 0
    assert metrics("aerie_edge_spool_acked_total") == metrics("aerie_edge_kafka_delivered_total") == 0
    assert metrics("aerie_edge_kafka_broker_up") == 0
    edge.wait_line(BROKER_DOWN)

    status, seconds = edge.terminate()
    print(f"SIGTERM with {len(expected)} anomalies spooled and no broker: exit {status} in {seconds:.2f} s")
    assert status == 0
    assert seconds < DRAIN_S + 5
    stopped = edge.wait_line("edge stopped")
    assert stopped["left_in_spool"] == len(expected)
    assert [a.event_id for a in spooled(tmp_path / "spool")] == expected

    # The next start, with a broker and nothing new to read: the spool is what it publishes.
    empty = tmp_path / "nothing.jsonl"
    empty.touch()
    settings |= {"kafka_bootstrap_servers": tansu.bootstrap, "input_jsonlines_path": empty}
    again = start_edge(settings, "edge-2")
    assert again.started["spooled_backlog"] == len(expected)
    metrics = again.wait_metrics(
        lambda m: (
            m("aerie_edge_kafka_delivered_total") == len(expected)
            and m("aerie_edge_spool_queued_records") == 0
        ),
        "the spool published",
    )
    assert metrics("aerie_edge_anomalies_total") == 0
    seen = consume(tansu.bootstrap, set(expected))
    assert seen.keys() == set(expected)
    status, _ = again.terminate()
    assert status == 0


# --- 4. SIGKILL mid-stream ------------------------------------------------------------------------------


def test_sigkill_mid_stream_loses_no_spooled_anomaly(
    tansu: Tansu, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, feed = world.models, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 500))
    settings = base_settings(tmp_path, models, tansu.bootstrap, events) | {"threshold_override": THRESHOLD}
    edge = start_edge(settings)
    edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 500
            and m("aerie_edge_kafka_delivered_total") == len(feed.anomalies(0, 500, THRESHOLD))
            and m("aerie_edge_spool_queued_records") == 0
        ),
        "the first part delivered",
    )

    # Frozen, the broker confirms nothing more: whatever is spooled from now on stays unacknowledged.
    assert tansu._process is not None
    os.kill(tansu._process.pid, signal.SIGSTOP)
    stop_feeding = threading.Event()

    def feeding() -> None:
        for start in range(500, 3500, 100):
            if stop_feeding.is_set():
                return
            append(events, feed.text(start, start + 100))
            stop_feeding.wait(0.05)  # a steady stream, not a synchronisation

    feeder = threading.Thread(target=feeding)
    feeder.start()
    try:
        before = edge.wait_metrics(
            lambda m: m("aerie_edge_spool_queued_records") >= 30, "records in the spool"
        )
        edge.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert edge.process.wait(timeout=10) == -signal.SIGKILL  # type: ignore[union-attr]
    finally:
        stop_feeding.set()
        feeder.join()
    print(f"killed after {before('aerie_edge_events_scored_total'):.0f} of 3500 events scored")

    # What the spool holds is a prefix of what came after the first part, in order, nothing skipped.
    survivors = [a.event_id for a in spooled(tmp_path / "spool")]
    later = feed.anomalies(500, 3500, THRESHOLD)
    assert len(survivors) >= 30
    assert survivors == later[: len(survivors)]

    tansu.stop()
    tansu.start()
    empty = tmp_path / "nothing.jsonl"
    empty.touch()
    again = start_edge(settings | {"input_jsonlines_path": empty}, "edge-2")
    assert again.started["spooled_backlog"] == len(survivors)
    again.wait_metrics(lambda m: m("aerie_edge_spool_queued_records") == 0, "the spool published")
    seen = consume(tansu.bootstrap, set(survivors))
    assert set(survivors) <= seen.keys()
    status, _ = again.terminate()
    assert status == 0


# --- 5. hot model reload ---------------------------------------------------------------------------------


def newer(bundle: Bundle, version: str, hours: int, **changes: object) -> Any:
    created = dt.datetime.fromisoformat(bundle.manifest.created_at) + dt.timedelta(hours=hours)
    return msgspec.structs.replace(
        bundle.manifest,
        model_version=version,
        parent_version=bundle.version,
        created_at=created.isoformat(),
        **changes,
    )


def test_a_new_bundle_is_swapped_in_and_a_tampered_one_refused_without_a_restart(
    closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, bundle, feed = world.models, world.bundle, world.feed
    served = tmp_path / "models"
    shutil.copytree(models / "b1", served / "b1")
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 300))
    edge = start_edge(base_settings(tmp_path, served, f"127.0.0.1:{closed_port}", events))
    metrics = edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 300, "300 events")
    assert metrics.get("aerie_edge_model_info", node=NODE, version=bundle.version) == 1
    assert metrics("aerie_edge_threshold") == pytest.approx(bundle.manifest.threshold)

    # Same model, a new version with its own calibrated threshold: written as `aerie train` writes.
    v2, v2_threshold = f"{bundle.version}-v2", 0.47
    write_bundle(
        served / "b2", newer(bundle, v2, 1, threshold=v2_threshold), model=bundle.model, state=bundle.state
    )
    swapped = edge.wait_line("model swapped")
    assert (swapped["old"], swapped["new"]) == (bundle.version, v2)
    metrics = edge.wait_metrics(
        lambda m: m.get("aerie_edge_model_info", node=NODE, version=v2) == 1, "v2 serving"
    )
    assert metrics.get("aerie_edge_model_info", node=NODE, version=bundle.version) is None
    assert metrics("aerie_edge_model_swaps_total") == 1
    assert metrics("aerie_edge_threshold") == v2_threshold
    assert metrics("aerie_edge_threshold_changes_total", origin="bundle") == 1
    append(events, feed.text(300, 600))
    edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 600, "600 events")

    # Newer still, but altered after it was written: staged under a hidden name, moved in whole.
    staging = served / ".b3-staging"
    write_bundle(staging, newer(bundle, f"{bundle.version}-v3", 2), model=bundle.model, state=bundle.state)
    model_file = staging / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    os.rename(staging, served / "b3")
    refused = edge.wait_log(lambda r: r.get("msg", "").startswith("model bundle refused"), "the refusal")
    assert refused["level"] == "warning"
    assert refused["path"] == str(served / "b3")
    assert "sha256 does not match" in refused["reason"]
    assert refused["serving"] == v2
    metrics = edge.wait_metrics(
        lambda m: m("aerie_edge_model_bundles_refused_total") == 1, "the refusal counted"
    )
    assert metrics.get("aerie_edge_model_info", node=NODE, version=v2) == 1
    assert metrics("aerie_edge_model_swaps_total") == 1
    append(events, feed.text(600, 900))
    edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 900, "900 events")

    # One process all along.
    assert [r["pid"] for r in edge.records() if r.get("msg") == "edge started"] == [edge.pid]
    status, _ = edge.terminate()
    assert status == 0

    # Nothing left the node (no broker): the spool shows which model and threshold decided each event.
    # The swap kept the live feature state, so the scores are still the reference ones.
    decided = {a.event_id: (a.model_version, a.threshold) for a in spooled(tmp_path / "spool")}
    before = feed.anomalies(0, 300, bundle.manifest.threshold)
    after = feed.anomalies(300, 900, v2_threshold)
    assert after
    assert decided == {i: (bundle.version, bundle.manifest.threshold) for i in before} | {
        i: (v2, v2_threshold) for i in after
    }


# --- 6. live threshold ---------------------------------------------------------------------------------


def policy(version: str, threshold: float, nodes: dict[str, float] | None = None) -> bytes:
    edge: dict[str, object] = {"threshold": threshold}
    if nodes:
        edge["nodes"] = nodes
    return json.dumps({"version": version, "edge": edge}).encode()


def test_a_policy_change_moves_the_threshold_live_and_later_anomalies_carry_it(
    closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, feed = world.models, world.feed
    source = tmp_path / "threshold.json"
    write_atomically(source, policy("p1", 0.55))
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 600))
    settings = base_settings(tmp_path, models, f"127.0.0.1:{closed_port}", events)
    edge = start_edge(settings | {"threshold_source": source})
    metrics = edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 600, "600 events")
    assert metrics("aerie_edge_threshold") == 0.55

    # This node's own value wins over the cluster-wide one.
    write_atomically(source, policy("p2", 0.55, {NODE: 0.47, "another-node": 0.9}))
    metrics = edge.wait_metrics(lambda m: m("aerie_edge_threshold") == 0.47, "the new threshold")
    assert metrics("aerie_edge_threshold_changes_total", origin="policy") == 2  # bundle → p1 → p2
    line = edge.wait_log(lambda r: r.get("new") == 0.47, "the threshold log line")
    assert (line["old"], line["origin"], line["policy_version"], line["node"]) == (0.55, "policy", "p2", NODE)
    assert line["msg"].startswith("threshold 0.550000 → 0.470000")
    append(events, feed.text(600, 1200))
    edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 1200, "1200 events")
    status, _ = edge.terminate()
    assert status == 0

    decided = {a.event_id: a.threshold for a in spooled(tmp_path / "spool")}
    before, after = feed.anomalies(0, 600, 0.55), feed.anomalies(600, 1200, 0.47)
    assert min(len(before), len(after)) > 10
    assert decided == dict.fromkeys(before, 0.55) | dict.fromkeys(after, 0.47)


class SlowPolicyServer:
    """Serves one threshold policy over HTTP, each answer ``delay_s`` late (a brain under load)."""

    def __init__(self, document: bytes, delay_s: float) -> None:
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/policy.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowPolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_the_policy_in_force_at_start_decides_from_the_first_event(
    closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    """Events are waiting when the daemon starts and the brain answers slowly: none of them may be
    judged by the bundle's threshold while the policy's first fetch is on its way."""
    models, bundle, feed = world.models, world.bundle, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 600))
    assert bundle.manifest.threshold > 0.5
    with SlowPolicyServer(policy("p1", 0.5), delay_s=0.3) as server:
        settings = base_settings(tmp_path, models, f"127.0.0.1:{closed_port}", events)
        edge = start_edge(settings | {"threshold_source": server.url, "threshold_refresh_s": 30})
        assert (edge.started["threshold"], edge.started["threshold_origin"]) == (0.5, "policy")
        edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") == 600, "600 events")
        status, _ = edge.terminate()
        assert status == 0
    decided = {a.event_id: a.threshold for a in spooled(tmp_path / "spool")}
    assert decided == dict.fromkeys(feed.anomalies(0, 600, 0.5), 0.5)


# --- 7. the metrics --------------------------------------------------------------------------------------


def test_metrics_expose_every_named_series(
    closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, bundle, feed = world.models, world.bundle, world.feed
    events = tmp_path / "events.jsonl"
    events.write_bytes(feed.text(0, 600) + b"{not json\n" + b'{"rule": "no output, no time"}\n')
    settings = base_settings(tmp_path, models, f"127.0.0.1:{closed_port}", events)
    edge = start_edge(settings | {"threshold_override": THRESHOLD})
    anomalies = len(feed.anomalies(0, 600, THRESHOLD))
    m = edge.wait_metrics(
        lambda m: (
            m("aerie_edge_events_scored_total") == 600
            and m("aerie_edge_spool_queued_records") == anomalies
            and m.get("aerie_edge_feature_drift_psi", feature=FEATURE_NAMES[0]) is not None
        ),
        "every event scored and spooled",
    )
    # Events in per input, rejected per reason (one invalid JSON, one missing fields).
    assert m("aerie_edge_events_received_total", input="jsonlines") == 602
    assert m("aerie_edge_events_decoded_total", input="jsonlines") == 600
    rejected = {
        dict(labels)["reason"]: v for labels, v in m.labelled("aerie_edge_events_rejected_total").items()
    }
    assert sum(rejected.values()) == 2, rejected
    assert "invalid_json" in rejected, rejected
    assert m("aerie_edge_anomalies_total") == anomalies
    # The score histogram and a latency histogram per stage, one observation per scored event.
    assert m("aerie_edge_score_count") == 600
    assert m("aerie_edge_score_bucket", le="+Inf") == 600
    for stage in ("queue_wait", "features", "score", "decide", "end_to_end"):
        assert m("aerie_edge_stage_seconds_count", stage=stage) == 600, stage
        assert m("aerie_edge_stage_seconds_sum", stage=stage) > 0, stage
    # Kafka delivery errors by every reason (zero here: nothing was sent to a broker, nothing failed).
    errors = {
        dict(labels)["reason"]: v
        for labels, v in m.labelled("aerie_edge_kafka_delivery_errors_total").items()
    }
    assert errors.keys() == FAILURE_REASONS
    # Spool size, model version, threshold, drift per feature.
    assert m("aerie_edge_spool_queued_bytes") > 0
    assert m("aerie_edge_spool_disk_bytes") >= m("aerie_edge_spool_queued_bytes")
    assert m.get("aerie_edge_model_info", node=NODE, version=bundle.version) == 1
    assert m("aerie_edge_threshold") == THRESHOLD
    psi = {dict(labels)["feature"]: v for labels, v in m.labelled("aerie_edge_feature_drift_psi").items()}
    assert psi.keys() == set(FEATURE_NAMES)
    assert all(np.isfinite(v) and v >= 0 for v in psi.values())
    status, _ = edge.terminate()
    assert status == 0


# --- 8. overload ---------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


async def pipelined(port: int, bodies: list[bytes]) -> list[int]:
    """POST every body on one connection, all written at once (HTTP/1.1 pipelining): a sender far
    faster than any Python HTTP client. The response statuses, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"".join(
                b"POST / HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
                + b"content-length: %d\r\n\r\n%s" % (len(body), body)
                for body in bodies
            )
        )
        await writer.drain()
        received = b""
        while len(_STATUS.findall(received)) < len(bodies):
            chunk = await reader.read(1 << 16)
            assert chunk, f"connection closed after {len(_STATUS.findall(received))} responses"
            received += chunk
        return [int(status) for status in _STATUS.findall(received)]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_http_flood_is_shed_and_counted_memory_stays_bounded_and_it_keeps_up_after(
    closed_port: int, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    models, feed = world.models, world.feed
    port = free_port()
    settings = base_settings(tmp_path, models, f"127.0.0.1:{closed_port}", tmp_path / "unused")
    settings |= {
        "input_kind": "http",
        "input_http_port": port,
        "input_queue_size": 8,
        "pipeline_max_batch": 4,
        "threshold_override": 0.6,
    }
    edge = await asyncio.to_thread(start_edge, settings)
    baseline = rss_kib(edge.pid)
    peak = baseline
    statuses: Counter[int] = Counter()
    connections, per_connection, rounds = 64, 50, 3
    flood = connections * per_connection * rounds

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib(edge.pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        for r in range(rounds):
            sent = r * connections * per_connection
            answers = await asyncio.gather(
                *(
                    pipelined(
                        port,
                        [
                            feed.lines[(sent + c * per_connection + i) % len(feed.lines)]
                            for i in range(per_connection)
                        ],
                    )
                    for c in range(connections)
                )
            )
            statuses.update(status for answer in answers for status in answer)
    finally:
        sampler.cancel()
    peak = max(peak, rss_kib(edge.pid))

    assert sum(statuses.values()) == flood, statuses
    assert set(statuses) <= {204, 503}, statuses
    settled = await asyncio.to_thread(
        edge.wait_metrics,
        lambda m: m("aerie_edge_events_scored_total") == m("aerie_edge_events_accepted_total"),
        "the flood scored",
    )
    shed = settled("aerie_edge_events_shed_total", reason="queue_full")
    overloaded = settled("aerie_edge_events_rejected_total", input="http", reason="overloaded")
    rss = f"RSS {baseline / 1024:.0f} → {peak / 1024:.0f} MiB"
    print(f"flood of {flood}: {dict(statuses)}, shed {shed:.0f}, {rss}")
    # Visibly shed, and every POST is accounted for: scored, shed for a full queue, or refused 503.
    assert shed + overloaded > 0
    assert overloaded == statuses[503]
    assert settled("aerie_edge_events_received_total", input="http") == flood
    decoded = settled("aerie_edge_events_decoded_total", input="http")
    assert decoded == statuses[204] == settled("aerie_edge_events_accepted_total") + shed
    assert peak - baseline < 256 * 1024, (baseline, peak)

    # Afterwards, at the pace of one Falco (one request at a time), every event is scored.
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i in range(200):
            response = await client.post(
                f"http://127.0.0.1:{port}/",
                content=feed.lines[i],
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 204
    later = await asyncio.to_thread(
        edge.wait_metrics,
        lambda m: m("aerie_edge_events_scored_total") == settled("aerie_edge_events_scored_total") + 200,
        "the later events scored",
    )
    assert later("aerie_edge_events_shed_total", reason="queue_full") == shed
    status, _ = await asyncio.to_thread(edge.terminate)
    assert status == 0


# --- 9. Falco's gRPC API (Falco <= 0.43) as the input -----------------------------------------------


def test_the_grpc_input_takes_every_alert_from_falcos_outputs_service(
    tansu: Tansu, world: World, tmp_path: Path, start_edge: StartEdge
) -> None:
    """`aerie falco replay` serves Falco's outputs service on a unix socket; the daemon subscribes."""
    feed, threshold = world.feed, world.bundle.manifest.threshold
    events = tmp_path / "alerts.jsonl"
    events.write_bytes(feed.text(0, 1500))
    socket_path = tmp_path / "falco.sock"
    replay = ["falco", "replay", "--events", str(events), "--grpc", f"unix://{socket_path}"]
    falco = subprocess.Popen(
        [sys.executable, "-m", "aerie.brain", *replay],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        settings = base_settings(tmp_path, world.models, tansu.bootstrap, events)
        settings |= {"input_kind": "grpc", "input_grpc_address": f"unix://{socket_path}"}
        del settings["input_jsonlines_path"], settings["input_jsonlines_follow"]
        edge = start_edge(settings)
        edge.wait_metrics(lambda m: m("aerie_edge_events_scored_total") >= 1500, "every alert scored")
        output, _ = falco.communicate(timeout=60)
        assert falco.returncode == 0, output.decode(errors="replace")
    finally:
        if falco.poll() is None:
            falco.kill()
    metrics = edge.metrics()
    assert metrics("aerie_edge_events_received_total", input="grpc") == 1500
    assert metrics("aerie_edge_events_decoded_total", input="grpc") == 1500
    # The same decisions as from the JSON lines: the transport changes nothing.
    expected = set(feed.anomalies(0, 1500, threshold))
    assert expected
    assert set(consume(tansu.bootstrap, expected)) == expected
