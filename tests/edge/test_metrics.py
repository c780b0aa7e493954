"""EdgeMetrics: numpy-counted histograms against numpy's own counts, drift PSI, and the stats-backed series
read from real inputs' counters, a real spool and a real Kafka publisher."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aerie.edge.detector import BatchResult
from aerie.edge.forwarder import Forwarder
from aerie.edge.inputs.base import InputStats
from aerie.edge.kafka import FAILURE_REASONS, KafkaConfig
from aerie.edge.metrics import LATENCY_BUCKETS_S, SCORE_BUCKETS, BatchHistogram, DriftMonitor, EdgeMetrics
from aerie.edge.pipeline import PipelineStats
from aerie.edge.spool import AsyncSpool, Spool, SpoolRecord
from aerie.models.drift import Histogram, reference_histograms
from aerie.models.features import FEATURE_NAMES, N_FEATURES
from aerie.perf.tansu import Tansu
from aerie.proto.ops import OpsServer

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(metrics: EdgeMetrics) -> Series:
    return parse(generate_latest(metrics.registry).decode())


def value(series: Series, name: str, **labels: str) -> float:
    return series[name, tuple(sorted(labels.items()))]


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


async def wait_until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    """Poll with a deadline: the forwarder's counters have no change notification to wait on."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def reference_buckets(values: npt.NDArray[np.floating], bounds: tuple[float, ...]) -> list[int]:
    """Cumulative Prometheus bucket counts the slow, obvious way: finite values ``<= le``; +Inf holds all."""
    finite = values[np.isfinite(values)]
    return [int(np.count_nonzero(finite <= b)) for b in bounds] + [values.size]


def buckets_of(series: Series, name: str, **labels: str) -> list[float]:
    found = [
        (float(dict(key)["le"]), v)
        for (sample, key), v in series.items()
        if sample == f"{name}_bucket" and {k: x for k, x in key if k != "le"} == labels
    ]
    return [v for _, v in sorted(found)]


# -- BatchHistogram -------------------------------------------------------------------------------

BOUNDS = (0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5)
values_strategy = arrays(
    np.float64,
    st.integers(0, 300),
    elements=st.one_of(
        st.floats(-1.0, 4.0),
        st.sampled_from(BOUNDS),  # exactly on a bound: belongs to that bucket (le is inclusive)
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(values_strategy, min_size=1, max_size=4), st.sampled_from([np.float64, np.float32]))
def test_batch_histogram_counts_equal_numpy_reference(
    batches: list[npt.NDArray[np.float64]], dtype: type
) -> None:
    histogram = BatchHistogram(BOUNDS)
    for batch in batches:
        histogram.observe_many(batch.astype(dtype))
    seen = np.concatenate(batches).astype(dtype).astype(np.float64)
    assert [count for _, count in histogram.buckets()] == reference_buckets(seen, BOUNDS)
    assert [le for le, _ in histogram.buckets()][-1] == "+Inf"
    assert histogram.sum == pytest.approx(float(seen[np.isfinite(seen)].sum()), rel=1e-9, abs=1e-9)


@given(
    st.lists(st.tuples(st.sampled_from([*BOUNDS, 0.0, 0.3, 7.0, math.nan]), st.integers(0, 50)), max_size=8)
)
def test_weighted_observations_equal_repeated_ones(observations: list[tuple[float, int]]) -> None:
    weighted, repeated = BatchHistogram(BOUNDS), BatchHistogram(BOUNDS)
    for v, n in observations:
        weighted.observe(v, n)
        repeated.observe_many(np.full(n, v))
    assert weighted.buckets() == repeated.buckets()
    assert weighted.sum == pytest.approx(repeated.sum)


def test_histogram_bounds_are_checked() -> None:
    for bad in ([], [0.1, 0.1], [0.2, 0.1], [0.1, math.inf]):
        with pytest.raises(ValueError, match="bounds"):
            BatchHistogram(bad)


# -- record_batch ---------------------------------------------------------------------------------


def batch(
    scores: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32] | None = None,
    *,
    unscored: int = 0,
    features_ns: int = 0,
    score_ns: int = 0,
    decide_ns: int = 0,
) -> BatchResult:
    rows = features if features is not None else np.zeros((len(scores), N_FEATURES), np.float32)
    return BatchResult(
        scores=scores,
        features=rows,
        records=[],
        unscored=unscored,
        features_ns=features_ns,
        score_ns=score_ns,
        decide_ns=decide_ns,
    )


def test_record_batch_exports_histograms_matching_numpy() -> None:
    rng = np.random.default_rng(7)
    metrics = EdgeMetrics("worker-1", process_metrics=False)
    scores = [rng.uniform(0.05, 1.0, n).astype(np.float32) for n in (256, 100, 3)]
    latency = [rng.integers(1_000, 50_000_000, len(s)) for s in scores]
    waits = [rng.integers(0, 2_000_000, len(s)) for s in scores]
    spool_ns = (0, 4_000_000, 1_000)
    for s, lat, wait, features_ns, spooled in zip(
        scores, latency, waits, (100_000, 300_000, 300_000), spool_ns, strict=True
    ):
        metrics.record_batch(
            batch(s, features_ns=features_ns, score_ns=20_000, decide_ns=1_000), lat, wait, spooled
        )
    metrics.record_batch(batch(np.zeros(0, np.float32)), np.zeros(0, np.int64), np.zeros(0, np.int64))

    series = scrape(metrics)
    all_scores = np.concatenate(scores).astype(np.float64)
    assert buckets_of(series, "aerie_edge_score") == reference_buckets(all_scores, SCORE_BUCKETS)
    assert value(series, "aerie_edge_score_count") == 359
    assert value(series, "aerie_edge_score_sum") == pytest.approx(float(all_scores.sum()), rel=1e-6)

    seconds = np.concatenate(latency) * 1e-9
    assert buckets_of(series, "aerie_edge_stage_seconds", stage="end_to_end") == reference_buckets(
        seconds, LATENCY_BUCKETS_S
    )
    assert value(series, "aerie_edge_stage_seconds_sum", stage="end_to_end") == pytest.approx(seconds.sum())
    assert buckets_of(series, "aerie_edge_stage_seconds", stage="queue_wait") == reference_buckets(
        np.concatenate(waits) * 1e-9, LATENCY_BUCKETS_S
    )
    # A batch's stage time counts once per event of the batch; 100 µs sits exactly on a bound (le is
    # inclusive: the nanosecond bounds must not be off by the division's rounding).
    features = dict(
        zip(LATENCY_BUCKETS_S, buckets_of(series, "aerie_edge_stage_seconds", stage="features"), strict=False)
    )
    assert (features[5e-5], features[1e-4], features[2e-4], features[5e-4]) == (0, 256, 256, 359)
    assert value(series, "aerie_edge_stage_seconds_sum", stage="features") == pytest.approx(
        256e-4 + 103 * 3e-4
    )
    assert value(series, "aerie_edge_stage_seconds_count", stage="score") == 359
    assert value(series, "aerie_edge_stage_seconds_count", stage="decide") == 359
    # One observation per reported group commit; 0 means none happened.
    assert buckets_of(series, "aerie_edge_spool_write_seconds") == reference_buckets(
        np.array([4e-3, 1e-6]), LATENCY_BUCKETS_S
    )


def test_rows_the_model_refused_are_neither_scores_nor_drift_samples() -> None:
    rng = np.random.default_rng(1)
    metrics = EdgeMetrics("n", process_metrics=False)
    metrics.set_model("v1", reference_histograms(rng.normal(size=(1000, N_FEATURES))))
    scores = np.array([0.4, -np.inf, 0.7, -np.inf], np.float32)
    rows = rng.normal(size=(4, N_FEATURES)).astype(np.float32)
    rows[[1, 3], 5] = np.nan
    metrics.record_batch(
        batch(scores, rows, unscored=2, score_ns=10_000), np.full(4, 50_000), np.zeros(4, np.int64)
    )
    series = scrape(metrics)
    assert value(series, "aerie_edge_score_count") == 2
    assert value(series, "aerie_edge_score_sum") == pytest.approx(1.1)
    assert value(series, "aerie_edge_stage_seconds_count", stage="score") == 4  # they did go through scoring
    assert metrics.drift is not None
    kept = metrics.drift.recent()
    assert np.array_equal(kept, rows[[0, 2]])


def test_caller_bugs_raise() -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    result = batch(np.full(4, 0.5, np.float32))
    with pytest.raises(ValueError, match="latencies for 4 events"):
        metrics.record_batch(result, np.zeros(3, np.int64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="3 reference histograms for 17 features"):
        metrics.set_model("v1", reference_histograms(np.zeros((10, 3))))


# -- series read from other parts' counters --------------------------------------------------------


def test_scrape_before_anything_is_attached_leaves_those_series_out() -> None:
    series = scrape(EdgeMetrics("n", process_metrics=False))
    present = names(series)
    assert "aerie_edge_score_count" in present
    assert "aerie_edge_model_swaps_total" in present
    absent = (
        "aerie_edge_events_",
        "aerie_edge_anomalies",
        "aerie_edge_kafka_",
        "aerie_edge_spool_queued",
        "aerie_edge_model_info",
        "aerie_edge_feature_drift",
    )
    assert not [n for n in present if n.startswith(absent)]
    assert "aerie_edge_threshold" not in present
    assert value(series, "aerie_edge_scrape_errors_total", source="kafka") == 0


def test_input_and_pipeline_series_are_read_from_their_stats_at_scrape_time() -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    grpc, http = InputStats("grpc"), InputStats("http")
    pipeline = PipelineStats()
    metrics.attach(input_stats=grpc, pipeline=pipeline)
    metrics.attach(input_stats=http)  # a second input is added, the pipeline stays
    grpc.record_received(10)
    grpc.record_decoded(8)
    grpc.record_rejected("schema")
    grpc.record_rejected("schema")
    http.record_received(3)
    http.record_decoded(2)
    http.record_rejected("too_large")
    # PipelineStats is a plain counter holder the pipeline increments in place, as here.
    pipeline.accepted, pipeline.scored, pipeline.anomalies, pipeline.spooled, pipeline.batches = 9, 7, 2, 2, 3
    pipeline.shed.update({"queue_full": 1, "non_finite": 1})

    series = scrape(metrics)
    assert value(series, "aerie_edge_events_received_total", input="grpc") == 10
    assert value(series, "aerie_edge_events_decoded_total", input="grpc") == 8
    assert value(series, "aerie_edge_events_rejected_total", input="grpc", reason="schema") == 2
    assert value(series, "aerie_edge_events_received_total", input="http") == 3
    assert value(series, "aerie_edge_events_rejected_total", input="http", reason="too_large") == 1
    assert value(series, "aerie_edge_events_accepted_total") == 9
    assert value(series, "aerie_edge_events_scored_total") == 7
    assert value(series, "aerie_edge_anomalies_total") == 2
    assert value(series, "aerie_edge_anomalies_spooled_total") == 2
    assert value(series, "aerie_edge_batches_total") == 3
    assert value(series, "aerie_edge_events_shed_total", reason="queue_full") == 1
    assert value(series, "aerie_edge_events_shed_total", reason="non_finite") == 1

    grpc.record_received(5)  # nothing is copied at attach time: the next scrape sees the live counters
    pipeline.scored += 100
    series = scrape(metrics)
    assert value(series, "aerie_edge_events_received_total", input="grpc") == 15
    assert value(series, "aerie_edge_events_scored_total") == 107


SPOOL_SERIES = {
    "aerie_edge_spool_queued_records": ("queued_records", {}),
    "aerie_edge_spool_queued_bytes": ("queued_bytes", {}),
    "aerie_edge_spool_disk_bytes": ("disk_bytes", {}),
    "aerie_edge_spool_segments": ("segments", {}),
    "aerie_edge_spool_appended_total": ("appended", {}),
    "aerie_edge_spool_acked_total": ("acked", {}),
    "aerie_edge_spool_dropped_records_total": ("dropped_records", {"reason": "oldest"}),
    "aerie_edge_spool_dropped_bytes_total": ("dropped_bytes", {}),
    "aerie_edge_spool_corrupt_bytes_total": ("corrupt_bytes", {}),
}


def assert_spool_series(series: Series, stats: Mapping[str, int]) -> None:
    for name, (key, labels) in SPOOL_SERIES.items():
        assert value(series, name, **labels) == stats[key], name
    assert (
        value(series, "aerie_edge_spool_dropped_records_total", reason="oversize")
        == stats["dropped_oversize"]
    )
    for kind in ("torn_tail", "corrupt", "undecodable"):
        assert value(series, "aerie_edge_spool_damaged_total", kind=kind) == stats[kind]


def test_spool_series_reflect_a_real_spool(tmp_path: Path) -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    directory = tmp_path / "spool"
    with Spool(directory, max_bytes=1024, segment_bytes=512) as spool:
        metrics.attach(spool=spool)
        spool.append_many([SpoolRecord(value=bytes([i]) * 100, key=b"k") for i in range(20)])
        assert spool.append(SpoolRecord(value=b"x" * 2000)) is None  # larger than the whole spool
        spool.ack(spool.peek(2)[-1].seq)
        stats = spool.stats()
        assert stats["dropped_records"] > 0
        assert stats["dropped_oversize"] == 1
        assert stats["acked"] == 2
        assert_spool_series(scrape(metrics), stats)

    newest = max(directory.glob("*.seg"))
    with newest.open("ab") as f:
        f.write(b"\xaeSPL\x07")  # a crash in the middle of the next frame's header
    with Spool(directory, max_bytes=1024, segment_bytes=512) as reopened:
        metrics.attach(spool=AsyncSpool(reopened))  # the reopened spool replaces the closed one
        stats = reopened.stats()
        assert stats["torn_tail"] == 1
        assert_spool_series(scrape(metrics), stats)


def kafka_config(bootstrap: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap, topic="aerie.anomalies.metrics-test", stats_interval_ms=200
    )


def assert_kafka_series(series: Series, forwarder: Forwarder) -> None:
    stats = forwarder.stats
    assert value(series, "aerie_edge_kafka_sent_total") == stats.sent
    assert value(series, "aerie_edge_kafka_delivered_total") == stats.delivered
    assert value(series, "aerie_edge_kafka_resent_total") == stats.resent
    assert value(series, "aerie_edge_kafka_backpressure_total") == stats.backpressure
    assert value(series, "aerie_edge_kafka_in_flight") == stats.in_flight
    assert value(series, "aerie_edge_kafka_window") == stats.window
    assert value(series, "aerie_edge_kafka_broker_up") == int(stats.broker_up)
    for reason in FAILURE_REASONS:  # every reason is exported, zeros included
        assert value(series, "aerie_edge_kafka_delivery_errors_total", reason=reason) == stats.failed.get(
            reason, 0
        )
    own = forwarder.publisher.stats
    assert value(series, "aerie_edge_kafka_producer_rebuilds_total") == own.rebuilds
    assert value(series, "aerie_edge_kafka_hook_errors_total") == own.hook_errors


async def test_kafka_series_while_the_broker_is_unreachable(tmp_path: Path, closed_port: int) -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    with Spool(tmp_path / "spool") as spool:
        spool.append_many([SpoolRecord(value=b"anomaly %d" % i, key=b"c1") for i in range(5)])
        forwarder = Forwarder(spool, kafka_config(f"127.0.0.1:{closed_port}"), ack_interval_s=0)
        metrics.attach(spool=spool, forwarder=forwarder)
        before = scrape(metrics)
        assert "aerie_edge_kafka_backlog" not in names(before)  # unknown until the first read
        assert_kafka_series(before, forwarder)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: forwarder.stats.sent == 5)
        waiting = scrape(metrics)
        assert_kafka_series(waiting, forwarder)
        assert value(waiting, "aerie_edge_kafka_sent_total") == 5
        assert value(waiting, "aerie_edge_kafka_in_flight") == 5
        assert value(waiting, "aerie_edge_kafka_backlog") == 5
        assert value(waiting, "aerie_edge_kafka_outstanding") >= 5  # librdkafka counts requests too
        assert value(waiting, "aerie_edge_kafka_broker_up") == 0
        assert value(waiting, "aerie_edge_spool_queued_records") == 5
        assert await forwarder.stop(drain_timeout_s=0) == 5
        await task
        stopped = scrape(metrics)
        assert_kafka_series(stopped, forwarder)
        assert value(stopped, "aerie_edge_kafka_delivered_total") == 0
        assert value(stopped, "aerie_edge_spool_queued_records") == 5  # kept for the next start


async def test_kafka_series_with_a_real_broker(tansu: Tansu, tmp_path: Path) -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    with Spool(tmp_path / "spool") as spool:
        spool.append_many([SpoolRecord(value=b"anomaly %d" % i, key=b"c%d" % (i % 3)) for i in range(20)])
        forwarder = Forwarder(spool, kafka_config(tansu.bootstrap), ack_interval_s=0)
        metrics.attach(spool=spool, forwarder=forwarder)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: forwarder.stats.acked_seq == 20 and forwarder.broker_up, within_s=30)
        series = scrape(metrics)
        assert_kafka_series(series, forwarder)
        assert value(series, "aerie_edge_kafka_delivered_total") == 20
        assert value(series, "aerie_edge_kafka_broker_up") == 1
        assert value(series, "aerie_edge_kafka_backlog") == 0
        assert value(series, "aerie_edge_spool_acked_total") == 20
        assert value(series, "aerie_edge_spool_queued_records") == 0
        assert await forwarder.stop(drain_timeout_s=5) == 0
        await task


def test_a_source_that_raises_is_left_out_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = EdgeMetrics("n", process_metrics=False)
    stats = InputStats("grpc")
    stats.record_received(4)

    class VanishedSpool:
        def stats(self) -> dict[str, int]:
            raise OSError("spool disk gone")

    metrics.attach(input_stats=stats, spool=VanishedSpool())
    with caplog.at_level(logging.ERROR, logger="aerie.edge.metrics"):
        first = scrape(metrics)
        second = scrape(metrics)
    assert not [n for n in names(first) if n.startswith("aerie_edge_spool_queued")]
    assert value(first, "aerie_edge_events_received_total", input="grpc") == 4  # the others still served
    assert value(first, "aerie_edge_scrape_errors_total", source="spool") == 1
    assert value(second, "aerie_edge_scrape_errors_total", source="spool") == 2
    assert value(second, "aerie_edge_scrape_errors_total", source="inputs") == 0
    logged = [r for r in caplog.records if r.getMessage() == "metrics source failed at scrape time"]
    assert len(logged) == 2
    assert getattr(logged[0], "source", None) == "spool"


# -- model, threshold, drift ----------------------------------------------------------------------


def training_rows(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    """Continuous columns plus a 0/1 flag column, like the real features (sensitive_path, is_root)."""
    rows = rng.normal(size=(n, N_FEATURES))
    rows[:, 8] = rng.random(n) < 0.1
    return rows.astype(np.float32)


def record_rows(metrics: EdgeMetrics, rows: npt.NDArray[np.float32]) -> None:
    n = len(rows)
    metrics.record_batch(
        batch(np.full(n, 0.4, np.float32), rows), np.zeros(n, np.int64), np.zeros(n, np.int64)
    )


def test_model_version_swaps_refusals_and_threshold_changes() -> None:
    metrics = EdgeMetrics("worker-7", process_metrics=False)
    metrics.set_model("20250101-a")
    metrics.set_threshold(0.61, "bundle", changed=False)  # the first value is not a change
    metrics.set_threshold(0.64, "policy")
    series = scrape(metrics)
    assert value(series, "aerie_edge_model_info", node="worker-7", version="20250101-a") == 1
    assert value(series, "aerie_edge_model_swaps_total") == 0
    assert value(series, "aerie_edge_threshold") == 0.64
    assert value(series, "aerie_edge_threshold_changes_total", origin="policy") == 1

    metrics.set_model("20250102-b")
    metrics.model_refused()
    metrics.model_refused()
    metrics.set_threshold(0.58, "bundle")
    series = scrape(metrics)
    info = [(dict(labels), v) for (name, labels), v in series.items() if name == "aerie_edge_model_info"]
    assert info == [({"node": "worker-7", "version": "20250102-b"}, 1.0)]  # only the current one
    assert value(series, "aerie_edge_model_swaps_total") == 1
    assert value(series, "aerie_edge_model_bundles_refused_total") == 2
    assert value(series, "aerie_edge_threshold") == 0.58
    assert value(series, "aerie_edge_threshold_changes_total", origin="bundle") == 1


def test_drift_psi_is_near_zero_for_reference_rows_and_large_for_shifted_ones() -> None:
    rng = np.random.default_rng(11)
    reference = reference_histograms(training_rows(rng, 20_000))
    metrics = EdgeMetrics("n", process_metrics=False)
    metrics.set_model("v1", reference)

    record_rows(metrics, training_rows(rng, 10))
    series = scrape(metrics)
    assert value(series, "aerie_edge_feature_drift_window_rows") == 10
    assert "aerie_edge_feature_drift_psi" not in names(series)  # too few rows to say anything yet

    for _ in range(16):
        rows = training_rows(rng, 256)
        record_rows(metrics, rows)
    stable = scrape(metrics)
    assert value(stable, "aerie_edge_feature_drift_window_rows") == 4096
    for name in FEATURE_NAMES:
        assert value(stable, "aerie_edge_feature_drift_psi", feature=name) < 0.02, name

    shifted_columns = {0: 1.0, 12: -0.8}
    drifted = DriftMonitor(reference, window=4096)
    for _ in range(16):
        rows = training_rows(rng, 256)
        for column, shift in shifted_columns.items():
            rows[:, column] += shift
        rows[:, 8] = 1.0  # a flag that is suddenly always set
        drifted.observe(rows)
    psi = drifted.psi()
    assert psi is not None
    for i, name in enumerate(FEATURE_NAMES):
        if i in shifted_columns or i == 8:
            assert psi[name] > 0.25, name
        else:
            assert psi[name] < 0.02, name


def test_a_model_swap_replaces_the_drift_reference() -> None:
    rng = np.random.default_rng(3)
    old = training_rows(rng, 20_000)
    metrics = EdgeMetrics("n", process_metrics=False)
    metrics.set_model("v1", reference_histograms(old))
    live = training_rows(rng, 2048)
    record_rows(metrics, live)
    assert value(scrape(metrics), "aerie_edge_feature_drift_psi", feature="rule_rarity") < 0.02

    retrained_on = old.copy()
    retrained_on[:, 0] += 2.0  # the new bundle saw a different rule_rarity distribution
    metrics.set_model("v2", reference_histograms(retrained_on))
    series = scrape(metrics)  # within the PSI cache period: the swap must not serve the old answer
    assert value(series, "aerie_edge_feature_drift_psi", feature="rule_rarity") > 0.25
    assert value(series, "aerie_edge_feature_drift_window_rows") == 2048  # the rows themselves are kept

    metrics.set_model("v3", None)  # a model without a reference: no drift series rather than wrong ones
    assert not [n for n in names(scrape(metrics)) if n.startswith("aerie_edge_feature_drift")]


def test_drift_window_keeps_exactly_the_newest_rows() -> None:
    reference = [Histogram(edges=[0.0, 1e6], fractions=[1.0])] * 2
    monitor = DriftMonitor(reference, window=100, names=("a", "b"), min_rows=1)

    def counting(start: int, n: int) -> npt.NDArray[np.float32]:
        column = np.arange(start, start + n, dtype=np.float32)
        return np.stack([column, -column], axis=1)

    start = 0
    for n in (30, 30, 30, 30, 0, 77, 1):
        monitor.observe(counting(start, n))
        start += n
        kept = monitor.recent()
        assert monitor.rows == len(kept) == min(start, 100)
        assert sorted(kept[:, 0].tolist()) == list(range(max(0, start - 100), start))
        assert np.array_equal(kept[:, 1], -kept[:, 0])
    monitor.observe(counting(start, 250))  # one batch larger than the window
    assert sorted(monitor.recent()[:, 0].tolist()) == list(range(start + 150, start + 250))


def test_drift_psi_is_cached_until_the_period_passes() -> None:
    rng = np.random.default_rng(5)
    reference = reference_histograms(rng.normal(size=(10_000, 2)))
    now = [100.0]
    monitor = DriftMonitor(reference, window=1000, names=("a", "b"), cache_s=5.0, clock=lambda: now[0])
    with pytest.raises(ValueError, match="1 reference histograms for 2 features"):
        monitor.set_reference(reference[:1])
    monitor.observe(rng.normal(size=(1000, 2)).astype(np.float32))
    first = monitor.psi()
    assert first is not None
    assert max(first.values()) < 0.05
    monitor.observe((rng.normal(size=(1000, 2)) + 3.0).astype(np.float32))
    now[0] += 4.9
    assert monitor.psi() == first
    now[0] += 0.2
    later = monitor.psi()
    assert later is not None
    assert min(later.values()) > 0.25


# -- served over HTTP -----------------------------------------------------------------------------


async def test_ops_server_serves_edge_metrics() -> None:
    metrics = EdgeMetrics("worker-1")
    stats = InputStats("jsonlines")
    stats.record_received(2)
    pipeline = PipelineStats()
    pipeline.anomalies = 1
    metrics.attach(input_stats=stats, pipeline=pipeline)
    metrics.record_batch(batch(np.array([0.25, 0.9], np.float32)), np.full(2, 10_000), np.zeros(2, np.int64))
    async with (
        OpsServer("127.0.0.1", 0, metrics.registry) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/metrics")
    assert response.status_code == 200
    series = parse(response.text)
    assert value(series, "aerie_edge_events_received_total", input="jsonlines") == 2
    assert value(series, "aerie_edge_anomalies_total") == 1
    assert value(series, "aerie_edge_score_bucket", le="0.3") == 1
    assert "process_cpu_seconds_total" in names(series)
