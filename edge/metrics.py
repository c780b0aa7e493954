"""Everything the edge daemon exports to Prometheus (prefix ``aerie_edge_``), cheap enough for the hot path.

The pipeline records once per micro-batch, never per event: histogram buckets are counted with numpy
(`BatchHistogram`) under one lock per call, so a batch of 256 events costs about 20 µs (~75 ns per
event) and a lone event about 5 µs; ``prometheus_client.Histogram.observe`` costs ~0.8 µs per event
per histogram. Counters other parts already keep (input, pipeline, spool, forwarder and publisher)
are read from their snapshots at scrape time, never counted twice.

Wiring (the daemon)::

    metrics = EdgeMetrics(node="worker-1")
    metrics.set_model(model.version, model.reference)    # at start and on every hot swap
    metrics.attach(input_stats=source.stats, pipeline=pipeline.stats, spool=spool, forwarder=forwarder)
    pipeline = Pipeline(..., on_batch=metrics.record_batch)  # record_batch *is* a `BatchHook`
    threshold = LiveThreshold(..., on_change=lambda old, new, origin:
                              metrics.set_threshold(new, origin, changed=old is not None))
    watcher = ModelWatcher(..., on_refused=lambda path, reason: metrics.model_refused())
    ops = OpsServer(host, port, metrics.registry, health=..., ready=...)

Every call is optional and may come at any time: a scrape before `EdgeMetrics.attach` leaves those
series out, and `attach` may be called again (a reopened spool, another input; the keywords given
replace their source, inputs are added by name).

Series (``aerie_edge_`` prefix left out; labels in braces):

* input (`InputStats.snapshot`): ``events_received_total{input}``, ``events_decoded_total{input}``,
  ``events_rejected_total{input,reason}``
* pipeline (``PipelineStats.snapshot``): ``events_accepted_total``, ``events_scored_total``,
  ``anomalies_total``, ``anomalies_spooled_total``, ``batches_total``, ``events_shed_total{reason}``
* `record_batch`: ``score`` (histogram of every finite score), ``stage_seconds{stage}`` (histogram,
  one observation per event: ``queue_wait`` arrival → batch start, ``features``/``score``/``decide``
  the batch's time in that stage, which each of its events waited through, ``end_to_end`` arrival →
  decision), ``spool_write_seconds`` (histogram, one observation per reported group commit)
* Kafka (``ForwarderStats`` of the forwarder, cumulative across publisher replacements):
  ``kafka_sent_total``, ``kafka_delivered_total``, ``kafka_delivery_errors_total{reason}`` (every
  `FAILURE_REASONS` value, zeros included), ``kafka_resent_total``, ``kafka_dropped_total{reason}``
  (records that can never be produced, acknowledged undelivered), ``kafka_backpressure_total``,
  ``kafka_rewinds_total``, ``kafka_publisher_replacements_total``, ``kafka_broker_up`` (0/1),
  ``kafka_in_flight``, ``kafka_window``, ``kafka_backlog`` (once known); and from the current
  `KafkaPublisher`: ``kafka_outstanding``, ``kafka_producer_rebuilds_total``,
  ``kafka_hook_errors_total`` (these restart at zero with a replaced publisher)
* spool (`Spool.stats`): ``spool_queued_records``, ``spool_queued_bytes``, ``spool_disk_bytes``,
  ``spool_segments``, ``spool_appended_total``, ``spool_acked_total``,
  ``spool_dropped_records_total{reason="oldest"|"oversize"}``, ``spool_dropped_bytes_total`` (oldest
  only: the spool does not count oversize bytes), ``spool_damaged_total{kind="torn_tail"|"corrupt"|
  "undecodable"}``, ``spool_corrupt_bytes_total`` (counted since the spool was opened)
* model: ``model_info{node,version}`` (1, current version only), ``model_swaps_total``,
  ``model_bundles_refused_total`` (no reason label: reasons are free text), ``threshold``,
  ``threshold_changes_total{origin}``
* drift: ``feature_drift_psi{feature}`` (PSI of the last ``drift_window`` feature rows against the
  model's reference; left out until `DriftMonitor.min_rows` rows were seen; > 0.25 is drifted),
  ``feature_drift_window_rows``
* ``scrape_errors_total{source}``: a source that raised at scrape time (logged; its series are left
  out of that scrape, every other series is still served). Plus ``process_*``, ``python_gc_*`` and
  ``python_info`` unless ``process_metrics=False``.

Threads: `record_batch` and the setters may run on any thread, scrapes on another (one lock guards the
state kept here; the sources are thread-safe themselves). `record_batch` raises only on a caller bug
(latency arrays whose length is not the batch's).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from aerie.edge.forwarder import ForwarderStats
from aerie.edge.inputs.base import InputStats
from aerie.edge.kafka import FAILURE_REASONS, KafkaPublisher
from aerie.models.drift import Histogram, psi
from aerie.models.features import FEATURE_NAMES

__all__ = [
    "LATENCY_BUCKETS_S",
    "SCORE_BUCKETS",
    "STAGES",
    "BatchHistogram",
    "DriftMonitor",
    "EdgeMetrics",
    "KafkaSource",
    "ScoredBatch",
    "Stage",
    "SupportsSnapshot",
    "SupportsStats",
]

log = logging.getLogger("aerie.edge.metrics")

Stage = Literal["queue_wait", "features", "score", "decide", "end_to_end"]

#: Stages with a per-event latency histogram (``aerie_edge_stage_seconds{stage}``).
STAGES: Final[tuple[Stage, ...]] = ("queue_wait", "features", "score", "decide", "end_to_end")

#: 1-2-5 steps from 1 µs (one event's scoring) to 10 s (a backed-up queue).
LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    *(float(f"{m}e{e}") for e in range(-6, 1) for m in (1, 2, 5)),
    10.0,
)

#: anomaly_score is in (0, 1]; benign traffic sits around 0.35-0.5 and thresholds around 0.5-0.7, so the
#: buckets are finest there.
SCORE_BUCKETS: Final[tuple[float, ...]] = (
    0.1,
    0.2,
    0.3,
    *(round(0.3 + 0.025 * i, 3) for i in range(1, 21)),
    0.9,
    1.0,
)

_NS: Final = 1e-9
_SMALL_BATCH: Final = 8

FloatArray = npt.NDArray[np.floating]
NsArray = npt.NDArray[np.integer]


class ScoredBatch(Protocol):
    """What `record_batch` reads of a batch (`aerie.edge.detector.BatchResult` is one)."""

    @property
    def scores(self) -> npt.NDArray[np.float32]:
        """One per event; rows the model refused score -inf and are left out of the histogram."""
        ...

    @property
    def features(self) -> npt.NDArray[np.float32]: ...
    @property
    def unscored(self) -> int: ...
    @property
    def features_ns(self) -> int: ...
    @property
    def score_ns(self) -> int: ...
    @property
    def decide_ns(self) -> int: ...


class SupportsSnapshot(Protocol):
    """`InputStats`, ``PipelineStats``: counters as a dict, read at scrape time."""

    def snapshot(self) -> dict[str, object]: ...


class SupportsStats(Protocol):
    """`Spool`, `AsyncSpool`."""

    def stats(self) -> dict[str, int]: ...


class KafkaSource(Protocol):
    """``aerie.edge.forwarder.Forwarder``: its counters and its current publisher."""

    @property
    def stats(self) -> ForwarderStats: ...
    @property
    def publisher(self) -> KafkaPublisher: ...


class BatchHistogram:
    """A Prometheus histogram whose observations arrive in numpy batches (not thread-safe by itself).

    ``bounds`` are in the exported unit; observations are in ``unit`` of it (``unit=1e-9``: observe
    nanoseconds, export seconds), so integer nanosecond arrays are counted without converting them.
    Bucket ``le=b`` counts values ``<= b`` (Prometheus semantics). Non-finite values land in the
    ``+Inf`` bucket and stay out of the sum, so one NaN cannot poison ``_sum`` for good.
    """

    def __init__(self, bounds: Sequence[float], *, unit: float = 1.0) -> None:
        exported = np.asarray(bounds, dtype=np.float64)
        if exported.ndim != 1 or exported.size == 0 or not np.all(np.isfinite(exported)):
            raise ValueError("histogram bounds must be a non-empty sequence of finite numbers")
        if np.any(np.diff(exported) <= 0):
            raise ValueError("histogram bounds must be strictly increasing")
        if not unit > 0:
            raise ValueError(f"unit must be positive, got {unit}")
        self.unit = unit
        # 1e-6 / 1e-9 is 999.9999999999999: round away the division's error, or a value of exactly
        # 1000 ns would miss the 1 µs bucket.
        self.bounds = np.array([float(f"{b / unit:.12g}") for b in exported.tolist()])
        self._bounds_list = self.bounds.tolist()
        # The same `le` spelling prometheus_client's own histograms use (Go's float formatting).
        self._labels = [*(floatToGoString(b) for b in exported.tolist()), "+Inf"]  # type: ignore[no-untyped-call]
        self.counts = np.zeros(exported.size + 1, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0  # in observed units

    @property
    def sum(self) -> float:
        """Sum of the finite observations, in the exported unit."""
        return self._sum * self.unit

    def observe_many(self, values: FloatArray | NsArray) -> None:
        """One observation per element of ``values`` (any shape)."""
        flat = values if values.ndim == 1 else values.reshape(-1)
        if flat.size <= _SMALL_BATCH:
            # A lone event (a quiet node) would pay numpy's fixed cost of a few µs per call.
            for value in flat.tolist():
                self.observe(value)
            return
        # At 256 values numpy's per-call overhead is most of the cost: method calls, no temporaries.
        if flat.dtype.kind in "iu":  # nanosecond counters: always finite, summed exactly
            total = float(flat.sum())
        else:
            # inf + -inf must not warn; the non-finite case is handled below.
            with np.errstate(invalid="ignore", over="ignore"):
                total = float(np.add.reduce(flat, dtype=np.float64))
        index = self.bounds.searchsorted(flat)
        if not math.isfinite(total):
            finite = np.isfinite(flat)
            index[~finite] = self.bounds.size
            total = float(np.add.reduce(flat[finite], dtype=np.float64))
        self.counts += np.bincount(index, minlength=self.counts.size)
        self._sum += total

    def observe(self, value: float, n: int = 1) -> None:
        """``n`` observations of the same ``value``."""
        if n <= 0:
            return
        if math.isfinite(value):
            self.counts[bisect.bisect_left(self._bounds_list, value)] += n
            self._sum += value * n
        else:
            self.counts[-1] += n

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, as `HistogramMetricFamily` wants."""
        return list(zip(self._labels, np.cumsum(self.counts).tolist(), strict=True))


class DriftMonitor:
    """PSI of recent feature rows against a model's reference histograms.

    ``observe`` copies rows into a bounded ring buffer (O(rows), no allocation); `psi` bins the
    buffer at scrape time and caches the answer for ``cache_s``. Thread-safe.
    """

    def __init__(
        self,
        reference: Sequence[Histogram],
        window: int = 4096,
        *,
        names: Sequence[str] = FEATURE_NAMES,
        min_rows: int | None = None,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.names = tuple(names)
        self.window = window
        self.min_rows = min(256, window) if min_rows is None else min_rows
        if not 1 <= self.min_rows <= window:
            raise ValueError(f"min_rows must be within 1..{window}, got {self.min_rows}")
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rows = np.zeros((window, len(self.names)), dtype=np.float32)
        self._next = 0
        self._filled = 0
        self._reference: tuple[Histogram, ...] = ()
        self._cached: tuple[float, dict[str, float]] | None = None
        self.set_reference(reference)

    def set_reference(self, reference: Sequence[Histogram]) -> None:
        """Compare against ``reference`` from now on (a model swap); the rows seen so far are kept."""
        if len(reference) != len(self.names):
            raise ValueError(f"{len(reference)} reference histograms for {len(self.names)} features")
        with self._lock:
            self._reference = tuple(reference)
            self._cached = None

    @property
    def rows(self) -> int:
        """Rows in the window now."""
        return self._filled

    def observe(self, rows: FloatArray) -> None:
        """Add feature rows ``[n, features]``; only the newest ``window`` rows are kept."""
        if rows.ndim != 2 or rows.shape[1] != len(self.names):
            raise ValueError(f"feature rows must be [n, {len(self.names)}], got {list(rows.shape)}")
        n = rows.shape[0]
        if n == 0:
            return
        window = self.window
        with self._lock:
            if n >= window:
                self._rows[:] = rows[n - window :]
                self._next = 0
            else:
                start = self._next
                end = start + n
                if end <= window:
                    self._rows[start:end] = rows
                else:
                    split = window - start
                    self._rows[start:] = rows[:split]
                    self._rows[: n - split] = rows[split:]
                self._next = end % window
            self._filled = min(window, self._filled + n)

    def recent(self) -> npt.NDArray[np.float32]:
        """A copy of the rows in the window (oldest first is not guaranteed: PSI ignores order)."""
        with self._lock:
            return self._rows[: self._filled].copy()

    def psi(self) -> dict[str, float] | None:
        """PSI per feature name, or None while fewer than ``min_rows`` rows were seen."""
        now = self._clock()
        with self._lock:
            cached = self._cached
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
            if self._filled < self.min_rows:
                return None
            rows = self._rows[: self._filled].copy()
            reference = self._reference
        # Binning runs outside the lock: observe() must never wait for a scrape.
        values = {
            name: psi(ref, rows[:, i])
            for i, (name, ref) in enumerate(zip(self.names, reference, strict=True))
        }
        with self._lock:
            if self._reference is reference:
                self._cached = (now, values)
        return values


class EdgeMetrics:
    """Owns `registry` with every ``aerie_edge_*`` series (see the module docstring for the list).

    Args:
        node: the Kubernetes node name, put on ``aerie_edge_model_info`` only (Prometheus adds the
            pod's own labels to every series).
        drift_window: feature rows kept for drift (`DriftMonitor`).
        process_metrics: also export ``process_*``, ``python_gc_*`` and ``python_info``.
    """

    def __init__(
        self,
        node: str,
        *,
        drift_window: int = 4096,
        latency_buckets_s: Sequence[float] = LATENCY_BUCKETS_S,
        score_buckets: Sequence[float] = SCORE_BUCKETS,
        process_metrics: bool = True,
    ) -> None:
        self.node = node
        self.drift_window = drift_window
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._stages = {stage: BatchHistogram(latency_buckets_s, unit=_NS) for stage in STAGES}
        self._spool_write = BatchHistogram(latency_buckets_s, unit=_NS)
        self._scores = BatchHistogram(score_buckets)
        self._model_version: str | None = None
        self._swaps = 0
        self._refused = 0
        self._threshold: float | None = None
        self._threshold_changes: Counter[str] = Counter()
        self._drift: DriftMonitor | None = None
        self._inputs: dict[str, SupportsSnapshot] = {}
        self._pipeline: SupportsSnapshot | None = None
        self._spool: SupportsStats | None = None
        self._kafka: KafkaSource | None = None
        self._scrape_errors: Counter[str] = Counter()
        self.registry.register(_EdgeCollector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def __repr__(self) -> str:
        return f"EdgeMetrics(node={self.node!r}, model={self._model_version!r})"

    def attach(
        self,
        *,
        input_stats: InputStats | None = None,
        pipeline: SupportsSnapshot | None = None,
        spool: SupportsStats | None = None,
        forwarder: KafkaSource | None = None,
    ) -> None:
        """Sources read at every scrape. Each keyword given replaces its source (a reopened spool, a
        new forwarder); ``input_stats`` adds an input (the same ``stats.name`` replaces it)."""
        with self._lock:
            if input_stats is not None:
                self._inputs[input_stats.name] = input_stats
            if pipeline is not None:
                self._pipeline = pipeline
            if spool is not None:
                self._spool = spool
            if forwarder is not None:
                self._kafka = forwarder

    # -- model and threshold -------------------------------------------------------------------

    def set_model(self, version: str, reference: Sequence[Histogram] | None = None) -> None:
        """The model now scoring; counts a swap when one was loaded before. ``reference`` (the bundle's
        per-feature histograms) replaces the drift reference; None stops drift reporting.

        Raises `ValueError` when ``reference`` does not hold one histogram per feature.
        """
        monitor = self._drift
        if reference is None:
            monitor = None
        elif monitor is None:
            monitor = DriftMonitor(reference, self.drift_window)
        else:
            monitor.set_reference(reference)
        with self._lock:
            if self._model_version is not None:
                self._swaps += 1
            self._model_version = version
            self._drift = monitor

    def model_refused(self) -> None:
        """A model bundle the edge would not load (failed verification, another feature spec, ...)."""
        with self._lock:
            self._refused += 1

    def set_threshold(self, value: float, origin: str, *, changed: bool = True) -> None:
        """The threshold decisions use now, and where it came from (``bundle``, ``policy``,
        ``override``, ...). ``changed=False`` for the first value, which is not a change."""
        with self._lock:
            if changed:
                self._threshold_changes[origin] += 1
            self._threshold = value

    @property
    def drift(self) -> DriftMonitor | None:
        """The drift monitor of the current model's reference (None before `set_model`)."""
        return self._drift

    # -- the hot path -------------------------------------------------------------------------

    def record_batch(
        self,
        result: ScoredBatch,
        latency_ns: NsArray,
        queue_wait_ns: NsArray,
        spool_ns: int = 0,
    ) -> None:
        """One scored micro-batch (the pipeline's ``on_batch`` hook): its scores and features, the
        per-event arrival → decision (``latency_ns``) and arrival → batch start (``queue_wait_ns``)
        times, and the duration of the spool group commit since the last batch (0: none)."""
        scores = result.scores
        n = len(scores)
        if latency_ns.size != n or queue_wait_ns.size != n:
            raise ValueError(f"{latency_ns.size} / {queue_wait_ns.size} latencies for {n} events")
        features = result.features
        if result.unscored:
            # Refused rows carry -inf scores and non-finite features: neither a score nor a sample.
            scored = np.isfinite(scores)
            scores, features = scores[scored], features[scored]
        stages = self._stages
        with self._lock:
            if n:
                self._scores.observe_many(scores)
                stages["queue_wait"].observe_many(queue_wait_ns)
                stages["features"].observe(result.features_ns, n)
                stages["score"].observe(result.score_ns, n)
                stages["decide"].observe(result.decide_ns, n)
                stages["end_to_end"].observe_many(latency_ns)
            if spool_ns > 0:
                self._spool_write.observe(spool_ns)
        drift = self._drift
        if drift is not None and len(features):
            drift.observe(features)


class _EdgeCollector:
    """Builds every ``aerie_edge_*`` family at scrape time; a failing source is left out and counted."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        sections: tuple[tuple[str, Callable[[], list[Metric]]], ...] = (
            ("latency", self._latency),
            ("inputs", self._inputs),
            ("pipeline", self._pipeline),
            ("kafka", self._kafka),
            ("spool", self._spool),
            ("model", self._model),
            ("drift", self._drift),
        )
        for source, build in sections:
            try:
                families = build()
            except Exception:
                log.exception("metrics source failed at scrape time", extra={"source": source})
                with m._lock:
                    m._scrape_errors[source] += 1
                continue
            yield from families
        errors = _counters("aerie_edge_scrape_errors", "Metric sources that raised at scrape time.", "source")
        with m._lock:
            failed = dict(m._scrape_errors)
        for source, _ in sections:
            errors.add_metric([source], failed.get(source, 0))
        yield errors

    def _latency(self) -> list[Metric]:
        m = self._m
        with m._lock:
            score = (m._scores.buckets(), m._scores.sum)
            stages = {name: (h.buckets(), h.sum) for name, h in m._stages.items()}
            spool_write = (m._spool_write.buckets(), m._spool_write.sum)
        scores = HistogramMetricFamily("aerie_edge_score", "Anomaly score of every scored event.")
        scores.add_metric([], *score)
        latency = HistogramMetricFamily(
            "aerie_edge_stage_seconds",
            "Time each event spent in a pipeline stage (end_to_end: arrival to decision).",
            labels=["stage"],
        )
        for name, (buckets, total) in stages.items():
            latency.add_metric([name], buckets, total)
        writes = HistogramMetricFamily(
            "aerie_edge_spool_write_seconds", "Duration of spool group commits (write and fsync)."
        )
        writes.add_metric([], *spool_write)
        return [scores, latency, writes]

    def _inputs(self) -> list[Metric]:
        with self._m._lock:
            inputs = list(self._m._inputs.values())
        if not inputs:
            return []
        received = _counters("aerie_edge_events_received", "Records an input received.", "input")
        decoded = _counters("aerie_edge_events_decoded", "Records an input decoded into events.", "input")
        rejected = CounterMetricFamily(
            "aerie_edge_events_rejected", "Records an input refused, by reason.", labels=["input", "reason"]
        )
        for stats in inputs:
            snap = stats.snapshot()
            name = str(snap["input"])
            received.add_metric([name], _number(snap["received"]))
            decoded.add_metric([name], _number(snap["decoded"]))
            for reason, count in _counts(snap["rejected"]).items():
                rejected.add_metric([name, reason], count)
        return [received, decoded, rejected]

    def _pipeline(self) -> list[Metric]:
        with self._m._lock:
            source = self._m._pipeline
        if source is None:
            return []
        snap = source.snapshot()
        return [
            _counter("aerie_edge_events_accepted", "Events queued for scoring.", _number(snap["accepted"])),
            _counter("aerie_edge_events_scored", "Events scored by the model.", _number(snap["scored"])),
            _counter(
                "aerie_edge_anomalies", "Scored events above the threshold.", _number(snap["anomalies"])
            ),
            _counter(
                "aerie_edge_anomalies_spooled", "Anomalies written to the spool.", _number(snap["spooled"])
            ),
            _counter("aerie_edge_batches", "Micro-batches scored.", _number(snap["batches"])),
            _labelled(
                _counters("aerie_edge_events_shed", "Events dropped unscored, by reason.", "reason"),
                _counts(snap["shed"]),
            ),
        ]

    def _kafka(self) -> list[Metric]:
        with self._m._lock:
            source = self._m._kafka
        if source is None:
            return []
        stats = source.stats
        publisher = source.publisher
        own = publisher.stats.snapshot()
        families: list[Metric] = [
            _counter(
                "aerie_edge_kafka_sent", "Records handed to the producer, resends included.", stats.sent
            ),
            _counter("aerie_edge_kafka_delivered", "Records the broker acknowledged.", stats.delivered),
            _labelled(
                _counters("aerie_edge_kafka_delivery_errors", "Failed deliveries, by reason.", "reason"),
                dict.fromkeys(sorted(FAILURE_REASONS), 0) | stats.failed,
            ),
            _counter("aerie_edge_kafka_resent", "Sends of records whose earlier send failed.", stats.resent),
            _labelled(
                _counters(
                    "aerie_edge_kafka_dropped", "Records that can never be produced, dropped.", "reason"
                ),
                stats.dropped,
            ),
            _counter(
                "aerie_edge_kafka_backpressure",
                "Publishes refused because the producer's local queue was full.",
                stats.backpressure,
            ),
            _counter("aerie_edge_kafka_rewinds", "Times failed records were scheduled again.", stats.rewinds),
            _counter(
                "aerie_edge_kafka_publisher_replacements",
                "Publishers replaced after a fatal producer error.",
                stats.publisher_rebuilds,
            ),
            _counter(
                "aerie_edge_kafka_producer_rebuilds",
                "Producers rebuilt after the broker lost their state (current publisher).",
                _number(own["rebuilds"]),
            ),
            _counter(
                "aerie_edge_kafka_hook_errors",
                "Delivery callbacks that raised (current publisher).",
                _number(own["hook_errors"]),
            ),
            _gauge(
                "aerie_edge_kafka_broker_up", "1 while a broker connection is up.", int(publisher.broker_up)
            ),
            _gauge("aerie_edge_kafka_in_flight", "Records sent and not yet reported on.", stats.in_flight),
            _gauge(
                "aerie_edge_kafka_window", "Records read from the spool, not yet acknowledged.", stats.window
            ),
            _gauge(
                "aerie_edge_kafka_outstanding",
                "Records in the producer's queue or in flight (librdkafka's count).",
                publisher.outstanding(),
            ),
        ]
        if stats.backlog is not None:
            families.append(
                _gauge("aerie_edge_kafka_backlog", "Unacknowledged records in the spool.", stats.backlog)
            )
        return families

    def _spool(self) -> list[Metric]:
        with self._m._lock:
            source = self._m._spool
        if source is None:
            return []
        s = source.stats()
        return [
            _gauge(
                "aerie_edge_spool_queued_records",
                "Records on disk not yet acknowledged.",
                s["queued_records"],
            ),
            _gauge("aerie_edge_spool_queued_bytes", "Bytes on disk not yet acknowledged.", s["queued_bytes"]),
            _gauge("aerie_edge_spool_disk_bytes", "Bytes of all spool segments.", s["disk_bytes"]),
            _gauge("aerie_edge_spool_segments", "Spool segment files.", s["segments"]),
            _counter("aerie_edge_spool_appended", "Records written to the spool.", s["appended"]),
            _counter("aerie_edge_spool_acked", "Records acknowledged (delivered).", s["acked"]),
            _labelled(
                _counters(
                    "aerie_edge_spool_dropped_records", "Unacknowledged records the spool dropped.", "reason"
                ),
                {"oldest": s["dropped_records"], "oversize": s["dropped_oversize"]},
            ),
            _counter(
                "aerie_edge_spool_dropped_bytes",
                "Bytes of oldest records dropped to stay bounded.",
                s["dropped_bytes"],
            ),
            _labelled(
                _counters("aerie_edge_spool_damaged", "Damaged spool regions skipped.", "kind"),
                {"torn_tail": s["torn_tail"], "corrupt": s["corrupt"], "undecodable": s["undecodable"]},
            ),
            _counter("aerie_edge_spool_corrupt_bytes", "Bytes in corrupt spool regions.", s["corrupt_bytes"]),
        ]

    def _model(self) -> list[Metric]:
        m = self._m
        with m._lock:
            version, swaps, refused = m._model_version, m._swaps, m._refused
            threshold, changes = m._threshold, dict(m._threshold_changes)
        families: list[Metric] = []
        if version is not None:
            info = InfoMetricFamily("aerie_edge_model", "The model version scoring now.", labels=["node"])
            info.add_metric([m.node], {"version": version})
            families.append(info)
        families += [
            _counter("aerie_edge_model_swaps", "Model bundles hot-swapped in.", swaps),
            _counter("aerie_edge_model_bundles_refused", "Model bundles refused.", refused),
            _labelled(
                _counters("aerie_edge_threshold_changes", "Threshold changes, by origin.", "origin"), changes
            ),
        ]
        if threshold is not None:
            families.append(
                _gauge("aerie_edge_threshold", "Score above which an event is an anomaly.", threshold)
            )
        return families

    def _drift(self) -> list[Metric]:
        monitor = self._m._drift
        if monitor is None:
            return []
        families: list[Metric] = [
            _gauge(
                "aerie_edge_feature_drift_window_rows",
                "Feature rows the drift PSI is computed over.",
                monitor.rows,
            )
        ]
        values = monitor.psi()
        if values is not None:
            gauge = GaugeMetricFamily(
                "aerie_edge_feature_drift_psi",
                "PSI of recent feature values against the model's reference (> 0.25: drifted).",
                labels=["feature"],
            )
            for name, value in values.items():
                gauge.add_metric([name], value)
            families.append(gauge)
        return families


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counters(name: str, documentation: str, label: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=[label])


def _labelled(family: CounterMetricFamily, values: Mapping[str, float]) -> CounterMetricFamily:
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in a stats snapshot, got {value!r}")
    return value


def _counts(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected reason counts in a stats snapshot, got {value!r}")
    return {str(reason): _number(count) for reason, count in value.items()}
