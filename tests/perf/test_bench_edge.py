"""The edge benchmark runs end to end and prints its figures (timings decide nothing here: smoke only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aerie.perf import bench_edge


def test_quick_edge_benchmark_prints_every_figure_and_loses_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    affinity = os.sched_getaffinity(0)
    report_path = tmp_path / "edge.json"
    assert bench_edge.main(["--quick", "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    for figure in (
        "decoded event → decision",
        "JSON lines file → decision (decode included)",
        "offered load",
        "micro-batching",
        "sklearn score_samples scoring",
        "plain-Python features",
        "memory, a fresh process running only the daemon's parts",
        "anomalies/s",
        "target  >= 50,000 events/s on one core",
        "target  p99 <= 100 µs",
        "target  RSS <= 200 MB",
    ):
        assert figure in out
    assert "pinned to CPU" in out
    # Pinning is undone: the rest of the test session keeps every CPU.
    assert os.sched_getaffinity(0) == affinity

    report = json.loads(report_path.read_text())
    replayed = report["context"]["replay_events"]
    # Counts, not timings: every replayed event reached a decision on both paths, anomalies included.
    assert [row["events"] for row in report["saturation"]] == [replayed, replayed]
    assert report["saturation"][0]["anomalies"] == report["saturation"][1]["anomalies"] > 0
    assert [row["max_batch"] for row in report["sweep_saturation"]] == [1, 16, 64, 256]
    assert all(row["mean_batch"] <= row["max_batch"] for row in report["sweep_saturation"])
    # The baselines score the same events with the same model and features (up to float rounding,
    # which may move a score sitting on the threshold).
    assert [row["events"] for row in report["baselines"]] == [bench_edge.QUICK.baseline_events] * 3
    anomalies = [row["anomalies"] for row in report["baselines"]]
    assert max(anomalies) - min(anomalies) <= 1
    assert report["context"]["sklearn_max_abs_diff"] < 1e-4
    # Every anomaly reached the broker, from the child process and from the spool.
    child = report["child"]
    assert child["events"] == replayed
    assert child["delivered"] == child["anomalies"] > 0
    broker = report["broker"]
    assert broker["records"] == bench_edge.QUICK.broker_records
    assert broker["delivered"] >= broker["records"]
    assert child["peak_rss_mb"] >= child["rss_at_rest_mb"] > 0
