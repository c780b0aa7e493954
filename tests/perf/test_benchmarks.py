"""The benchmarks run and print their ratios (timings decide nothing here: smoke only)."""

from __future__ import annotations

import pytest

from aerie.perf import bench_decode, bench_model


def test_model_benchmark_prints_edge_cost_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_model.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "per event at the edge" in out
    assert "sklearn score_samples" in out
    assert "numba transform_one" in out


def test_decode_benchmark_prints_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_decode.main(["--events", "200", "--repeat", "1", "--min-time", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "decode_json" in out
    assert "×" in out
