"""Edge benchmark: the daemon's whole hot path fed from a replayed corpus, on one core, in one run.

    python -m aerie.perf.bench_edge [--quick] [--json PATH] [--cpu N]

A corpus of one node's Falco alerts is generated (`aerie.models.corpus`); its first part trains a
bundle (`aerie.models.train`, 100 trees), the rest is replayed, in time order, through exactly what
``aerie edge run`` runs: `Pipeline` with the real `Detector` (the bundle's feature state restored, the
fused ONNX model, the bundle's threshold), a real `AsyncSpool` on disk (group commits, fsync) and
`EdgeMetrics.record_batch` as the batch hook (histograms and drift, as the daemon wires them). The
replayed events are decoded once beforehand, so the main figures run from a decoded event to its
decision, as asked; one row reads the JSON lines file through `JsonLinesInput` instead (decode
included: what one core does with a file input in production).

The process is pinned to one CPU (``os.sched_setaffinity``; ``--cpu -1`` leaves it unpinned), so
every thread of it (spool writer, onnxruntime, librdkafka) shares that core. Rates are events per
wall second of the whole run; CPU time (``time.process_time``, every thread) is shown beside them.

What it measures:

* saturation: every event handed over at once (the input never waits), nothing shed (a full queue
  makes the input wait): events/s, CPU µs per event, latency arrival → decision (queueing in the
  16,384-event queue included, so it measures the backlog, not the code), and one batch's work
  (batch start → decision);
* offered load: events arriving on a schedule (1k to 40k events/s) through asyncio sleeps, so they
  arrive in clumps of one event loop wake-up (~1 ms), as Falco's outputs deliver them: latency
  arrival → decision p50/p99/p999 (the pipeline's own per-event figure, `BatchHook`), and scheduled
  arrival → decision p99 (includes any lateness of the input, so an overloaded loop cannot hide);
* micro-batching: ``max_batch`` 1, 16, 64 (the daemon's default), 256 at saturation and at one
  offered load. The scorer never waits to fill a batch, so what batching adds to an event's latency
  is the work on the events batched with it: bounded by one batch's work, shown as its p99 and max;
* baselines, same events and state, same pipeline: sklearn ``score_samples`` scoring (a forest
  refitted on the training rows with the training parameters, checked against the ONNX scores) and
  plain-Python features (``FeatureExtractor(plain_python=True)``) with ONNX scoring; at saturation
  and at a low offered load all three keep up with; printed as ratios;
* memory: peak and current RSS of a fresh process running only the daemon's parts (``--child-rss``:
  JSON lines input, pipeline, spool, metrics, forwarder to the broker) over the replay; this
  process's own RSS is shown too, inflated by the corpus, training and sklearn;
* anomalies/s to a real broker: a spool holding real anomaly envelopes (the replayed events scored
  with threshold 0, so each one is an anomaly) forwarded by `Forwarder` to Tansu (Kafka wire
  protocol, loopback, zstd, ``acks=all``) until the spool is acknowledged to the end.

Every run is also cut into consecutive windows (0.5 s) by decision time: events/s and p99 of the
median window (the typical stretch) and of the best one (the least disturbed by other processes on a
shared machine) stand beside the whole run's, with the count of times another process or thread took
the core from the event loop (involuntary context switches). The run ends with the design's targets
(>= 50k events/s on one core, p99 <= 100 µs, RSS <= 200 MB), judged on the median window, marked met
or missed; it exits 0 either way (timing on a shared machine is a measurement, not a gate). It fails
(`BenchError`) when the pipeline did not do its job: an event not decided, a record not delivered.

``--quick`` (CI smoke, ~15 s) uses a 25-tree model, a small corpus, short phases and 0.1 s windows, so
its numbers are not the design's figures; the full run takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from aerie.edge.detector import BatchResult, Detector, ScoringModel
from aerie.edge.forwarder import Forwarder
from aerie.edge.inputs import JsonLinesInput
from aerie.edge.inputs.base import FalcoInput
from aerie.edge.kafka import KafkaConfig
from aerie.edge.metrics import EdgeMetrics
from aerie.edge.pipeline import Pipeline
from aerie.edge.spool import AsyncSpool, Spool, SpoolRecord
from aerie.models.bundle import Bundle, load_bundle
from aerie.models.features import FeatureExtractor
from aerie.models.scorer import OnnxScorer
from aerie.proto.event import FalcoEvent, decode_json

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

__all__ = [
    "TARGET_EVENTS_PER_S",
    "TARGET_P99_US",
    "TARGET_RSS_MB",
    "BenchError",
    "Burst",
    "PipelineRow",
    "Report",
    "Sizes",
    "main",
    "render",
    "run",
]

TARGET_EVENTS_PER_S: Final = 50_000
TARGET_P99_US: Final = 100.0
TARGET_RSS_MB: Final = 200.0
DEFAULT_MAX_BATCH: Final = 64  # aerie.edge.config's default
NODE: Final = "bench-node"
_SPOOL_MAX: Final = 256 * 1024 * 1024  # the daemon's defaults
_SPOOL_SEGMENT: Final = 16 * 1024 * 1024


class BenchError(RuntimeError):
    """The pipeline did not do its job (events lost, records undelivered, a child that failed)."""


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does."""

    corpus_events: int
    corpus_hours: float
    train_events: int
    trees: int
    saturation_events: int  # the main row, and the replay file
    sweep_events: int  # each max_batch at saturation
    paced_rates: tuple[int, ...]
    paced_s: float  # per offered-load run
    sweep_rate: int
    batches: tuple[int, ...]
    baseline_events: int  # each variant at saturation
    baseline_rate: int
    baseline_paced_s: float
    broker_records: int
    window_s: float  # the run is cut into windows this long for the best / median window figures


FULL: Final = Sizes(
    corpus_events=240_000,
    corpus_hours=12.0,
    train_events=40_000,
    trees=100,
    saturation_events=200_000,
    sweep_events=60_000,
    paced_rates=(1_000, 5_000, 20_000, 40_000),
    paced_s=3.0,
    sweep_rate=20_000,
    batches=(1, 16, 64, 256),
    baseline_events=10_000,
    baseline_rate=1_000,
    baseline_paced_s=4.0,
    broker_records=50_000,
    window_s=0.5,
)
QUICK: Final = Sizes(
    corpus_events=16_000,
    corpus_hours=2.0,
    train_events=6_000,
    trees=25,
    saturation_events=10_000,
    sweep_events=4_000,
    paced_rates=(5_000, 20_000),
    paced_s=0.4,
    sweep_rate=20_000,
    batches=(1, 16, 64, 256),
    baseline_events=300,
    baseline_rate=1_000,
    baseline_paced_s=0.3,
    broker_records=2_000,
    window_s=0.1,
)


@dataclass(frozen=True)
class PipelineRow:
    """One pipeline run. Latencies in µs; ``offered_per_s`` None means saturation."""

    name: str
    max_batch: int
    offered_per_s: float | None
    events: int
    wall_s: float
    cpu_s: float
    events_per_s: float
    cpu_us_per_event: float
    mean_batch: float
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    work_p99_us: float  # one batch's processing, batch start → decision
    work_max_us: float
    scheduled_p99_us: float | None  # scheduled arrival → decision, offered load only
    anomalies: int
    stage_us_per_event: dict[str, float]  # features / score / decide (wall), from `BatchResult`
    preempted: int  # involuntary context switches of the event loop's thread during the run
    # The run cut into consecutive windows by decision time (the last, partial one left out): the
    # median window is the typical stretch, the best one the least disturbed by other processes.
    windows: int
    events_per_s_median_window: float
    events_per_s_best_window: float
    p99_us_median_window: float
    p99_us_best_window: float


@dataclass
class Report:
    context: dict[str, Any]
    saturation: list[PipelineRow] = field(default_factory=list)
    paced: list[PipelineRow] = field(default_factory=list)
    sweep_saturation: list[PipelineRow] = field(default_factory=list)
    sweep_paced: list[PipelineRow] = field(default_factory=list)
    baselines: list[PipelineRow] = field(default_factory=list)
    baselines_paced: list[PipelineRow] = field(default_factory=list)
    child: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)


# -- inputs ---------------------------------------------------------------------------------------


class Burst(FalcoInput):
    """Decoded events handed over as fast as the pipeline takes them (a Falco that outruns us)."""

    name = "replay-burst"

    def __init__(self, events: Sequence[FalcoEvent]) -> None:
        super().__init__()
        self._events = events

    async def events(self) -> AsyncIterator[FalcoEvent]:
        stats = self.stats
        for event in self._events:
            # A real input counts every record twice (received, decoded): so does this one.
            stats.record_received()
            stats.record_decoded()
            yield event


class _Paced(FalcoInput):
    """Decoded events on a schedule of ``rate`` per second; ``due`` keeps each one's scheduled time.

    Sleeps until the next event is due; the event loop wakes with millisecond granularity, so events
    arrive in clumps of about ``rate / 1000``, as a Falco output stream delivers them.
    """

    name = "replay-paced"

    def __init__(self, events: Sequence[FalcoEvent], rate: float) -> None:
        super().__init__()
        self._events = events
        self._interval_ns = 1e9 / rate
        self.due: deque[int] = deque()

    async def events(self) -> AsyncIterator[FalcoEvent]:
        clock, stats, due_times = time.perf_counter_ns, self.stats, self.due
        start = clock()
        for i, event in enumerate(self._events):
            due = start + int(i * self._interval_ns)
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            due_times.append(due)
            stats.record_received()
            stats.record_decoded()
            yield event


# -- models -------------------------------------------------------------------------------------


class _SklearnModel:
    """The baseline scorer: sklearn's ``score_samples`` in aerie's convention (higher = more anomalous)."""

    def __init__(self, forest: IsolationForest, version: str) -> None:
        self._forest = forest
        self._version = version

    @property
    def version(self) -> str:
        return self._version

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        scores: npt.NDArray[np.float32] = (-self._forest.score_samples(x)).astype(np.float32)
        return scores


# -- set-up -------------------------------------------------------------------------------------


@dataclass
class _Setup:
    workdir: Path
    bundle: Bundle
    replay_path: Path  # the first ``saturation_events`` replayed lines, as Falco wrote them
    events: list[FalcoEvent]  # the same, decoded
    forest: IsolationForest
    sklearn_max_abs_diff: float
    anomaly_rate: float
    context: dict[str, Any]


def _prepare(workdir: Path, sizes: Sizes) -> _Setup:
    """Corpus → train part and replay part → bundle; the replay decoded; sklearn's forest refitted."""
    from sklearn.ensemble import IsolationForest

    from aerie.models.bundle import write_bundle
    from aerie.models.corpus import CorpusOptions, write_corpus
    from aerie.models.dataset import read_events
    from aerie.models.train import TrainConfig, train

    t0 = time.perf_counter()
    corpus_dir = workdir / "corpus"
    # One node: one edge daemon sees one node's alerts.
    write_corpus(
        corpus_dir, CorpusOptions(seed=7, events=sizes.corpus_events, nodes=1, hours=sizes.corpus_hours)
    )
    lines = [line for line in (corpus_dir / "events.jsonl").read_bytes().splitlines() if line.strip()]
    replay_lines = lines[sizes.train_events :][: sizes.saturation_events]
    if len(replay_lines) < sizes.saturation_events * 0.9:
        raise BenchError(f"corpus too small: {len(lines)} events for {sizes.train_events} + replay")
    train_path, replay_path = workdir / "train.jsonl", workdir / "replay.jsonl"
    train_path.write_bytes(b"\n".join(lines[: sizes.train_events]) + b"\n")
    replay_path.write_bytes(b"\n".join(replay_lines) + b"\n")
    del lines
    corpus_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    training = read_events(train_path)
    config = TrainConfig(n_estimators=sizes.trees)
    result = train(training, config=config)
    bundle_path = write_bundle(workdir / "bundle", result.manifest, model=result.model, state=result.state)
    bundle = load_bundle(bundle_path)
    train_s = time.perf_counter() - t0

    # The fitted forest is not kept in a bundle: refit one exactly as `train` does (same rows, same
    # parameters, same seed; no labels, so no refit for false positives) for the sklearn baseline.
    x = FeatureExtractor().transform(training.events)
    warmup = int(len(x) * config.warmup_fraction)
    every = max(2, round(1.0 / config.calibration_fraction))
    after = np.arange(warmup, len(x))
    held_out = (after - warmup) % every == every - 1
    forest = IsolationForest(
        n_estimators=config.n_estimators,
        max_samples=min(config.max_samples, int((~held_out).sum())),
        max_features=config.max_features,
        random_state=config.seed,
    ).fit(x[after[~held_out]])
    check = x[after[held_out]]
    onnx_scores = OnnxScorer(bundle.model).score(check)
    max_abs_diff = float(np.max(np.abs(-forest.score_samples(check) - onnx_scores)))
    if max_abs_diff > 1e-4:
        raise BenchError(f"refitted sklearn forest does not match the bundle: max |Δ| = {max_abs_diff:.2g}")

    events = [decode_json(line) for line in replay_lines]
    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    replay_scores = OnnxScorer(bundle.model).score(extractor.transform(events))
    anomaly_rate = float(np.mean(replay_scores > bundle.manifest.threshold))
    context = {
        "corpus_events": len(training.events) + len(events),
        "train_events": len(training.events),
        "replay_events": len(events),
        "replay_mb": replay_path.stat().st_size / 1e6,
        "trees": sizes.trees,
        "threshold": bundle.manifest.threshold,
        "replay_anomaly_rate": anomaly_rate,
        "sklearn_max_abs_diff": max_abs_diff,
        "corpus_s": corpus_s,
        "train_s": train_s,
    }
    return _Setup(
        workdir=workdir,
        bundle=bundle,
        replay_path=replay_path,
        events=events,
        forest=forest,
        sklearn_max_abs_diff=max_abs_diff,
        anomaly_rate=anomaly_rate,
        context=context,
    )


def _detector(setup: _Setup, *, variant: str = "fused", threshold: float | None = None) -> Detector:
    """A detector as the daemon builds it, from the bundle's state: ``fused``, ``sklearn`` or ``plain``."""
    bundle = setup.bundle
    extractor = FeatureExtractor(plain_python=variant == "plain")
    extractor.restore(bundle.state)
    model: ScoringModel = (
        _SklearnModel(setup.forest, bundle.version)
        if variant == "sklearn"
        else OnnxScorer(bundle.model, version=bundle.version)
    )
    return Detector(
        node=NODE,
        extractor=extractor,
        model=model,
        threshold=bundle.manifest.threshold if threshold is None else threshold,
    )


# -- one pipeline run ---------------------------------------------------------------------------


def _pct_us(values: npt.NDArray[np.int64], q: float) -> float:
    return float(np.percentile(values, q)) / 1e3 if values.size else float("nan")


async def _run_pipeline(
    name: str,
    setup: _Setup,
    source: FalcoInput,
    *,
    variant: str = "fused",
    max_batch: int = DEFAULT_MAX_BATCH,
    offered: float | None = None,
    window_s: float = 0.5,
) -> PipelineRow:
    """Run the daemon's pipeline over ``source`` to its end; the row of figures."""
    detector = _detector(setup, variant=variant)
    metrics = EdgeMetrics(node=NODE)
    metrics.set_model(setup.bundle.version, setup.bundle.manifest.reference)
    metrics.set_threshold(detector.threshold, "bundle", changed=False)
    latencies: list[npt.NDArray[np.int64]] = []
    works: list[int] = []
    decided_at: list[int] = []
    scheduled: list[npt.NDArray[np.int64]] = []
    stages = {"features": 0, "score": 0, "decide": 0}
    due = source.due if isinstance(source, _Paced) else None
    record_batch, clock = metrics.record_batch, time.perf_counter_ns

    def on_batch(
        result: BatchResult, latency_ns: npt.NDArray[np.int64], wait_ns: npt.NDArray[np.int64], spool_ns: int
    ) -> None:
        record_batch(result, latency_ns, wait_ns, spool_ns)  # the daemon's hook, first
        n = latency_ns.size
        if due is not None:
            now = clock()
            # FIFO and nothing shed: the batch's events are the oldest scheduled ones not yet seen.
            scheduled.append(now - np.fromiter((due.popleft() for _ in range(n)), np.int64, n))
        latencies.append(latency_ns)
        decided_at.append(clock())
        works.append(int(latency_ns[0] - wait_ns[0]))  # every event of a batch shares its work
        stages["features"] += result.features_ns
        stages["score"] += result.score_ns
        stages["decide"] += result.decide_ns

    spool_dir = Path(tempfile.mkdtemp(prefix="spool-", dir=setup.workdir))
    spool = await AsyncSpool.open(spool_dir, max_bytes=_SPOOL_MAX, segment_bytes=_SPOOL_SEGMENT)
    # shed=False: a full queue makes the input wait, so every event is scored and the figures are
    # for all of them (a live input would shed and count instead).
    pipeline = Pipeline(source, detector, spool, max_batch=max_batch, shed=False, on_batch=on_batch)
    metrics.attach(input_stats=source.stats, pipeline=pipeline.stats, spool=spool.spool)
    switches = _preemptions()
    started_ns = time.perf_counter_ns()
    t0, c0 = time.perf_counter(), time.process_time()
    await pipeline.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    switches = _preemptions() - switches
    await spool.close()
    shutil.rmtree(spool_dir, ignore_errors=True)

    stats = pipeline.stats
    received = source.stats.snapshot()["decoded"]
    if stats.scored != received or stats.shed or stats.spooled != stats.anomalies:
        raise BenchError(f"{name}: {received} events in, pipeline {stats.snapshot()}")
    if due:
        raise BenchError(f"{name}: {len(due)} scheduled events never reached a decision")
    n = stats.scored
    latency = np.concatenate(latencies) if latencies else np.zeros(0, np.int64)
    work = np.asarray(works, dtype=np.int64)
    sched = np.concatenate(scheduled) if scheduled else None
    windows = _windows(latencies, decided_at, started_ns, window_s)
    return PipelineRow(
        name=name,
        max_batch=max_batch,
        offered_per_s=offered,
        events=n,
        wall_s=wall,
        cpu_s=cpu,
        events_per_s=n / wall,
        cpu_us_per_event=cpu / n * 1e6,
        mean_batch=n / max(stats.batches, 1),
        p50_us=_pct_us(latency, 50),
        p99_us=_pct_us(latency, 99),
        p999_us=_pct_us(latency, 99.9),
        max_us=float(latency.max()) / 1e3 if latency.size else float("nan"),
        work_p99_us=_pct_us(work, 99),
        work_max_us=float(work.max()) / 1e3 if work.size else float("nan"),
        scheduled_p99_us=_pct_us(sched, 99) if sched is not None else None,
        anomalies=stats.anomalies,
        stage_us_per_event={k: v / n / 1e3 for k, v in stages.items()},
        preempted=switches,
        **windows,
    )


def _windows(
    latencies: list[npt.NDArray[np.int64]], decided_at: list[int], started_ns: int, window_s: float
) -> dict[str, Any]:
    """Events/s and latency p99 per window of ``window_s`` by decision time: median and best."""
    window_ns = int(window_s * 1e9)
    batch_window = (np.asarray(decided_at, dtype=np.int64) - started_ns) // window_ns
    sizes = np.asarray([lat.size for lat in latencies], dtype=np.int64)
    full = int(batch_window.max()) if batch_window.size else 0  # the last window is partial
    if full < 1:
        nan = float("nan")
        return {
            "windows": 0,
            "events_per_s_median_window": nan,
            "events_per_s_best_window": nan,
            "p99_us_median_window": nan,
            "p99_us_best_window": nan,
        }
    counts = np.bincount(batch_window, weights=sizes, minlength=full + 1)[:full]
    rates = counts / window_s
    # Batches are decided in order, so each window's events are one slice of the concatenation.
    bounds = np.searchsorted(np.repeat(batch_window, sizes), np.arange(full + 1))
    latency = np.concatenate(latencies)
    # A window needs 100 events for its p99 to be more than its single slowest event.
    p99s = [_pct_us(latency[lo:hi], 99) for lo, hi in itertools.pairwise(bounds) if hi - lo >= 100]
    return {
        "windows": full,
        "events_per_s_median_window": float(np.median(rates)),
        "events_per_s_best_window": float(rates.max()),
        "p99_us_median_window": float(np.median(p99s)) if p99s else float("nan"),
        "p99_us_best_window": float(min(p99s)) if p99s else float("nan"),
    }


def _preemptions() -> int:
    """Involuntary context switches of this thread so far: how often another process took the core."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return int(resource.getrusage(who).ru_nivcsw)


def _paced_events(setup: _Setup, rate: float, seconds: float) -> list[FalcoEvent]:
    return setup.events[: max(1, min(len(setup.events), int(rate * seconds)))]


async def _pipelines(setup: _Setup, sizes: Sizes, report: Report) -> None:
    events = setup.events

    async def measure(name: str, source: FalcoInput, **options: Any) -> PipelineRow:
        return await _run_pipeline(name, setup, source, window_s=sizes.window_s, **options)

    # Warm-up, not reported: first calls into numba, onnxruntime, the spool and the thread pool.
    warm = events[:2_000]
    await measure("warm-up", Burst(warm))
    await measure("warm-up", _Paced(warm[:200], 2_000), offered=2_000)
    report.saturation.append(await measure("decoded event → decision", Burst(events)))
    report.saturation.append(
        await measure("JSON lines file → decision (decode included)", JsonLinesInput(setup.replay_path))
    )
    for rate in sizes.paced_rates:
        paced = _paced_events(setup, rate, sizes.paced_s)
        report.paced.append(await measure(f"offered {rate:,}/s", _Paced(paced, rate), offered=rate))
    sweep = events[: sizes.sweep_events]
    paced = _paced_events(setup, sizes.sweep_rate, sizes.paced_s)
    for batch in sizes.batches:
        report.sweep_saturation.append(await measure(f"max_batch {batch}", Burst(sweep), max_batch=batch))
        report.sweep_paced.append(
            await measure(
                f"max_batch {batch}",
                _Paced(paced, sizes.sweep_rate),
                max_batch=batch,
                offered=sizes.sweep_rate,
            )
        )
    subset = events[: sizes.baseline_events]
    paced = _paced_events(setup, sizes.baseline_rate, sizes.baseline_paced_s)
    for variant, label in _VARIANTS:
        report.baselines.append(await measure(label, Burst(subset), variant=variant))
        report.baselines_paced.append(
            await measure(
                label, _Paced(paced, sizes.baseline_rate), variant=variant, offered=sizes.baseline_rate
            )
        )


_VARIANTS: Final = (
    ("fused", "aerie: numba features + fused ONNX"),
    ("sklearn", "sklearn score_samples scoring"),
    ("plain", "plain-Python features"),
)


# -- the broker ---------------------------------------------------------------------------------


async def _broker(setup: _Setup, bootstrap: str, n: int) -> dict[str, Any]:
    """Anomalies/s from a spool of ``n`` real envelopes to the broker, until acknowledged to the end."""
    detector = _detector(setup, threshold=0.0)  # scores are in (0, 1]: every event is an anomaly
    records: list[SpoolRecord] = []
    source = setup.events[:n]
    for start in range(0, len(source), 256):
        records.extend(detector.process(source[start : start + 256]).records)
    spool = Spool(setup.workdir / "broker-spool", max_bytes=1 << 30, segment_bytes=_SPOOL_SEGMENT)
    try:
        seqs = [s for i in range(0, len(records), 1024) for s in spool.append_many(records[i : i + 1024])]
        if None in seqs or len(seqs) != len(records):
            raise BenchError("the spool dropped records")
        last = max(s for s in seqs if s is not None)
        value_bytes = sum(len(r.value) for r in records)
        topic = f"aerie.bench-edge.{os.getpid()}.{time.time_ns()}"
        forwarder = Forwarder(spool, KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
        t0 = time.perf_counter()
        task = asyncio.create_task(forwarder.run())
        first: float | None = None
        delivered_all: float | None = None
        deadline = t0 + 120.0
        while forwarder.stats.acked_seq < last:
            if task.done():
                task.result()
                raise BenchError("the forwarder stopped before the spool was acknowledged")
            if time.perf_counter() > deadline:
                raise BenchError(f"spool not acknowledged in 120 s: {forwarder.stats}")
            stats = forwarder.stats
            if first is None and stats.delivered:
                first = time.perf_counter()
            if delivered_all is None and stats.delivered >= len(records):
                delivered_all = time.perf_counter()
            await asyncio.sleep(0.002)
        acked = time.perf_counter()
        stats = forwarder.stats
        await forwarder.stop()
        await task
    finally:
        spool.close()
    if stats.dropped or stats.delivered < len(records):
        raise BenchError(f"{len(records)} records spooled, forwarder {stats}")
    elapsed = acked - t0
    return {
        "records": len(records),
        "value_bytes_mean": value_bytes / len(records),
        "seconds_to_acked": elapsed,
        "records_per_s": len(records) / elapsed,
        "mb_per_s": value_bytes / elapsed / 1e6,
        "first_delivery_ms": ((first or acked) - t0) * 1e3,
        "seconds_to_delivered": (delivered_all or acked) - t0,
        "records_per_s_after_first_delivery": len(records) / max(acked - (first or t0), 1e-9),
        "delivered": stats.delivered,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "sent": stats.sent,
    }


# -- memory -------------------------------------------------------------------------------------


def _proc_status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), None elsewhere.

    ``VmHWM`` rather than ``ru_maxrss`` for the peak: after fork + exec, ``ru_maxrss`` also counts the
    parent's peak, which would charge this benchmark's corpus to the child.
    """
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


def _rss() -> dict[str, float | None]:
    peak = _proc_status_mb("VmHWM")
    if peak is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        scale = 1.0 if sys.platform == "darwin" else 1024.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6
    return {"rss_mb": _proc_status_mb("VmRSS"), "peak_rss_mb": peak}


async def _child_run(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's parts only, wired as `aerie.edge.daemon` wires them, over the replay file."""
    import aerie.edge.daemon  # noqa: F401 - the daemon's imports, every input and the ops server included

    steps = {"imports": _rss()["rss_mb"]}
    bundle = load_bundle(Path(args.bundle))
    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    steps["feature extractor (numba kernels, state tables)"] = _rss()["rss_mb"]
    model = OnnxScorer(bundle.model, version=bundle.version)
    steps["model"] = _rss()["rss_mb"]
    detector = Detector(node=NODE, extractor=extractor, model=model, threshold=bundle.manifest.threshold)
    metrics = EdgeMetrics(node=NODE)
    metrics.set_model(bundle.version, bundle.manifest.reference)
    metrics.set_threshold(detector.threshold, "bundle", changed=False)
    spool = await AsyncSpool.open(args.spool, max_bytes=_SPOOL_MAX, segment_bytes=_SPOOL_SEGMENT)
    forwarder = Forwarder(spool.spool, KafkaConfig(bootstrap_servers=args.bootstrap, topic=args.topic))
    source = JsonLinesInput(args.events)
    pipeline = Pipeline(
        source, detector, spool, shed=False, on_batch=metrics.record_batch, on_spooled=forwarder.wake
    )
    metrics.attach(input_stats=source.stats, pipeline=pipeline.stats, spool=spool.spool, forwarder=forwarder)
    forwarding = asyncio.create_task(forwarder.run())
    gc.collect()
    at_rest = _rss()
    steps["spool, metrics, forwarder: ready"] = at_rest["rss_mb"]
    t0, c0 = time.perf_counter(), time.process_time()
    await pipeline.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for _ in range(6_000):  # up to 60 s for the broker to confirm what was spooled
        if forwarder.stats.delivered >= pipeline.stats.spooled:
            break
        await asyncio.sleep(0.01)
    metrics.registry.collect()  # one scrape, as Prometheus would
    await forwarder.stop()
    await forwarding
    await spool.close()
    after = _rss()
    return {
        "rss_steps_mb": steps,
        "feature_state_mb": extractor.state_nbytes / 1e6,
        "rss_at_rest_mb": at_rest["rss_mb"],
        "peak_rss_mb": after["peak_rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "events": pipeline.stats.scored,
        "wall_s": wall,
        "cpu_s": cpu,
        "events_per_s": pipeline.stats.scored / wall,
        "anomalies": pipeline.stats.anomalies,
        "delivered": forwarder.stats.delivered,
    }


def _child_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_child_run(args))
    print(json.dumps(result))
    return 0


def _child(setup: _Setup, bootstrap: str) -> dict[str, Any]:
    """Run the daemon's parts in a fresh interpreter (inheriting this one's CPU pinning)."""
    spool_dir = setup.workdir / "child-spool"
    command = [
        sys.executable,
        "-m",
        "aerie.perf.bench_edge",
        "--child-rss",
        "--bundle",
        str(setup.bundle.path),
        "--events",
        str(setup.replay_path),
        "--spool",
        str(spool_dir),
        "--bootstrap",
        bootstrap,
        "--topic",
        f"aerie.bench-edge-child.{os.getpid()}.{time.time_ns()}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BenchError(f"--child-rss exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["delivered"] != result["anomalies"]:
        raise BenchError(f"--child-rss: {result['anomalies']} anomalies, {result['delivered']} delivered")
    return result


# -- the run ------------------------------------------------------------------------------------


def _pin(cpu: int | None) -> tuple[str, set[int] | None]:
    """Pin this thread (and every thread and process started from it later) to one CPU; returns a
    description and the CPUs allowed before (None: not pinned), to restore."""
    if cpu is not None and cpu < 0:
        return "not pinned (--cpu -1)", None
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)", None
    allowed = os.sched_getaffinity(0)
    chosen = max(allowed) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} of {len(allowed)} allowed", set(allowed)


def run(quick: bool, *, cpu: int | None = None, workdir: Path | None = None) -> Report:
    """Everything, in one process (plus the broker and one child); the report."""
    import numba
    import onnxruntime
    import sklearn

    from aerie.perf.tansu import Tansu

    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="aerie-bench-edge-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    # The broker first, before pinning: it is not the edge's work and must not share its core.
    broker = Tansu(root)
    broker.start()
    pinning, unpinned = "not pinned", None
    try:
        pinning, unpinned = _pin(cpu)
        setup = _prepare(root, sizes)
        # The daemon holds no corpus: freezing it keeps collections from walking 100k+ replayed
        # events, which would charge the pipeline for this benchmark's own heap.
        gc.collect()
        gc.freeze()
        report = Report(
            context={
                "quick": quick,
                "pinning": pinning,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "versions": {
                    "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__,
                    "sklearn": sklearn.__version__,
                    "numba": numba.__version__,
                    "numpy": np.__version__,
                },
                "sizes": asdict(sizes),
                **setup.context,
            }
        )
        asyncio.run(_pipelines(setup, sizes, report))
        report.broker = asyncio.run(_broker(setup, broker.bootstrap, sizes.broker_records))
        report.child = _child(setup, broker.bootstrap)
        report.rss = _rss()
    finally:
        gc.unfreeze()
        if unpinned is not None:
            os.sched_setaffinity(0, unpinned)
        broker.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    report.context["wall_s"] = time.perf_counter() - started
    report.context["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    return report


# -- output -------------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 0) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:,.{digits}f}"


def _us(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:,.1f}×"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(r)))

    return [fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def render(report: Report) -> str:
    """The tables a person reads, then the targets."""
    c = report.context
    main_row, decode_row = report.saturation[0], report.saturation[1]
    window = f"{c['sizes']['window_s']:g} s"
    lines = [
        f"edge benchmark: {c['trees']} trees, {c['train_events']:,} events trained, "
        f"{c['replay_events']:,} replayed ({c['replay_mb']:.0f} MB of JSON lines), one node; "
        f"threshold {c['threshold']:.3f} flags {c['replay_anomaly_rate']:.2%} of the replay; "
        f"{c['pinning']}; {c['cpus']} CPUs on the machine; onnxruntime {c['versions']['onnxruntime']}"
        + ("  [--quick: not the design's figures]" if c["quick"] else ""),
        "pipeline: the daemon's Pipeline + Detector + disk AsyncSpool (fsync per group commit) + "
        "EdgeMetrics.record_batch; nothing shed (a full queue makes the input wait)",
        f"windows: each run is cut into {window} windows by decision time; 'median window' is the typical "
        "stretch, 'best window' the one least disturbed by other processes. preempted: involuntary "
        "context switches of the event loop's thread (another process or thread took the core).",
        "",
        "saturation (every event handed over at once; latency includes the queue's backlog):",
    ]
    lines += _table(
        (
            "path",
            "events",
            "events/s",
            "median window",
            "best window",
            "CPU µs/event",
            "mean batch",
            "batch work p99 µs",
            "latency p50 µs",
            "p99",
            "preempted",
        ),
        [
            (
                r.name,
                f"{r.events:,}",
                _num(r.events_per_s),
                _num(r.events_per_s_median_window),
                _num(r.events_per_s_best_window),
                f"{r.cpu_us_per_event:.2f}",
                f"{r.mean_batch:.1f}",
                _us(r.work_p99_us),
                _us(r.p50_us),
                _us(r.p99_us),
                f"{r.preempted:,}",
            )
            for r in report.saturation
        ],
    )
    st = main_row.stage_us_per_event
    per_event = 1e6 / main_row.events_per_s
    lines.append(
        f"one event's {per_event:.2f} µs (decoded, max_batch {main_row.max_batch}, wall): features "
        f"{st['features']:.2f}, score {st['score']:.2f}, threshold + envelopes {st['decide']:.2f}, the rest "
        f"(input, queue, metrics, spool, event loop) {per_event - sum(st.values()):.2f}; reading and "
        f"decoding the JSON line adds {decode_row.cpu_us_per_event - main_row.cpu_us_per_event:.2f} µs "
        f"of CPU"
    )

    lines += [
        "",
        f"offered load (max_batch {DEFAULT_MAX_BATCH}; latency arrival → decision; the detector's "
        "stages in wall µs per event):",
    ]
    lines += _table(
        (
            "offered",
            "events",
            "mean batch",
            "CPU busy",
            "features µs/ev",
            "score µs/ev",
            "p50 µs",
            "p99 µs",
            "p999 µs",
            "p99 median window",
            "p99 best window",
            "batch work p99 µs",
            "scheduled→decision p99 µs",
            "preempted",
        ),
        [
            (
                f"{r.offered_per_s or 0:,.0f}/s",
                f"{r.events:,}",
                f"{r.mean_batch:.1f}",
                f"{r.cpu_s / r.wall_s:.0%}",
                f"{r.stage_us_per_event['features']:.1f}",
                f"{r.stage_us_per_event['score']:.1f}",
                _us(r.p50_us),
                _us(r.p99_us),
                _us(r.p999_us),
                _us(r.p99_us_median_window),
                _us(r.p99_us_best_window),
                _us(r.work_p99_us),
                _us(r.scheduled_p99_us),
                f"{r.preempted:,}",
            )
            for r in report.paced
        ],
    )
    lines.append(
        "scheduled→decision adds the input's own lateness: an idle event loop wakes at 1 ms granularity, "
        "so up to ~1 ms there is the pacer; more is a stall."
    )

    rate = report.sweep_paced[0].offered_per_s or 0
    lines += [
        "",
        f"micro-batching (saturation on {report.sweep_saturation[0].events:,} events; offered "
        f"{rate:,.0f}/s): the scorer never waits to fill a batch, so batching adds at most the work on "
        "an event's batch-mates, bounded by one batch's work",
    ]
    lines += _table(
        (
            "max_batch",
            "sat. events/s",
            "median window",
            "CPU µs/event",
            "sat. batch work p99 µs",
            "offered: mean batch",
            "p50 µs",
            "p99 µs",
            "p99 median window",
            "batch work p99 µs",
            "batch work max µs",
        ),
        [
            (
                str(s.max_batch),
                _num(s.events_per_s),
                _num(s.events_per_s_median_window),
                f"{s.cpu_us_per_event:.2f}",
                _us(s.work_p99_us),
                f"{p.mean_batch:.1f}",
                _us(p.p50_us),
                _us(p.p99_us),
                _us(p.p99_us_median_window),
                _us(p.work_p99_us),
                _us(p.work_max_us),
            )
            for s, p in zip(report.sweep_saturation, report.sweep_paced, strict=True)
        ],
    )
    by_batch = {r.max_batch: r for r in report.sweep_saturation}
    if 1 in by_batch and len(by_batch) > 1:
        largest = by_batch[max(by_batch)]
        lines.append(
            f"fixed CPU per batch (µs/event at max_batch 1 less at {largest.max_batch}): "
            f"{by_batch[1].cpu_us_per_event - largest.cpu_us_per_event:.1f} µs; marginal CPU per event "
            f"about {largest.cpu_us_per_event:.1f} µs"
        )

    fused, fused_paced = report.baselines[0], report.baselines_paced[0]
    lines += [
        "",
        f"baselines: the same pipeline and events (saturation on {fused.events:,} events; offered "
        f"{fused_paced.offered_per_s or 0:,.0f}/s on {fused_paced.events:,}); sklearn scores match the "
        f"ONNX scores to {c['sklearn_max_abs_diff']:.1e}",
    ]
    lines += _table(
        (
            "variant",
            "events/s",
            "CPU µs/event",
            "CPU × aerie",
            "offered: p50 µs",
            "p50 × aerie",
            "p99 µs",
            "p99 median window",
            "× aerie",
            "mean batch",
        ),
        [
            (
                s.name,
                _num(s.events_per_s),
                f"{s.cpu_us_per_event:,.1f}",
                _ratio(s.cpu_us_per_event, fused.cpu_us_per_event),
                _us(p.p50_us),
                _ratio(p.p50_us, fused_paced.p50_us),
                _us(p.p99_us),
                _us(p.p99_us_median_window),
                _ratio(p.p99_us_median_window, fused_paced.p99_us_median_window),
                f"{p.mean_batch:.1f}",
            )
            for s, p in zip(report.baselines, report.baselines_paced, strict=True)
        ],
    )

    child, rss, broker = report.child, report.rss, report.broker
    steps = ", ".join(f"{k} {_num(v)}" for k, v in child["rss_steps_mb"].items())
    lines += [
        "",
        "memory, a fresh process running only the daemon's parts (its imports; JSON lines input, pipeline, "
        "spool, metrics, forwarder to the broker) over the replay:",
        f"  RSS after: {steps} MB (feature state {child['feature_state_mb']:.1f} MB)",
        f"  peak {_num(child['peak_rss_mb'])} MB, {_num(child['rss_after_mb'])} MB after "
        f"{child['events']:,} events at saturation, so with the 16,384-event queue full "
        f"({_num(child['events_per_s'])} events/s decode and forwarding included, "
        f"{child['anomalies']:,} anomalies delivered to the broker)",
        f"memory, this process (corpus, training, sklearn, {c['replay_events']:,} decoded events held): "
        f"peak {_num(rss['peak_rss_mb'])} MB, now {_num(rss['rss_mb'])} MB",
        "",
        f"anomalies to a real broker (Tansu on loopback; Forwarder, zstd, acks=all): "
        f"{broker['records']:,} envelopes of {broker['value_bytes_mean']:,.0f} bytes spooled, "
        f"acknowledged to the end in {broker['seconds_to_acked']:.2f} s: "
        f"{broker['records_per_s']:,.0f} anomalies/s ({broker['mb_per_s']:.1f} MB/s; "
        f"{broker['records_per_s_after_first_delivery']:,.0f}/s after the first delivery at "
        f"{broker['first_delivery_ms']:.0f} ms)",
    ]

    # Judged on the median window: the whole run's figure carries every other process's bursts on a
    # shared machine, the best window is a lucky one; both are shown.
    eps = main_row.events_per_s_median_window
    met_eps = eps >= TARGET_EVENTS_PER_S
    met_rss = child["peak_rss_mb"] is not None and child["peak_rss_mb"] <= TARGET_RSS_MB
    p99s = "; ".join(
        f"{r.offered_per_s or 0:,.0f}/s {_us(r.p99_us_median_window)} µs (whole run {_us(r.p99_us)}, best "
        f"{_us(r.p99_us_best_window)}) {'MET' if r.p99_us_median_window <= TARGET_P99_US else 'MISSED'}"
        for r in report.paced
    )
    lines += [
        "",
        f"targets, judged on the median {window} window:",
        f"target  >= {TARGET_EVENTS_PER_S:,} events/s on one core (decoded event → decision, max_batch "
        f"{main_row.max_batch}): {_num(eps)}/s (whole run {_num(main_row.events_per_s)}, best window "
        f"{_num(main_row.events_per_s_best_window)}, {1e6 / main_row.cpu_us_per_event:,.0f} per "
        f"CPU-second; decode included {_num(decode_row.events_per_s_median_window)}/s)  "
        f"{'MET' if met_eps else 'MISSED'}",
        f"target  p99 <= {TARGET_P99_US:g} µs decoded event → decision, by offered load: {p99s}",
        f"target  RSS <= {TARGET_RSS_MB:g} MB (the daemon's parts, peak): {_num(child['peak_rss_mb'])} MB  "
        f"{'MET' if met_rss else 'MISSED'}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables; write JSON when asked. Exit status 0 unless it failed."""
    parser = argparse.ArgumentParser(
        prog="python -m aerie.perf.bench_edge", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: small corpus, 25 trees (~30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every row and the context as JSON")
    parser.add_argument(
        "--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed; -1: no pinning)"
    )
    # The memory child: the daemon's parts over a replay file (internal).
    parser.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    for name in ("--bundle", "--events", "--spool", "--bootstrap", "--topic"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rss:
        return _child_main(args)
    report = run(quick=args.quick, cpu=args.cpu)
    print(render(report))
    before, after = report.context["load_avg_1m"]
    print(
        f"\n(wall {report.context['wall_s']:.0f} s; 1-minute load average {before:.1f} before, "
        f"{after:.1f} after; other processes on the machine slow every row alike)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in asdict(report).items()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
