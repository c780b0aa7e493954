"""The brain benchmark runs end to end (--quick) and prints its figures; timings decide nothing here."""

from __future__ import annotations

import pytest

from aerie.perf import bench_brain


def test_brain_benchmark_prints_latency_throughput_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_brain.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for phase in ("steady 20/s", "burst 60"):
        for caller in (bench_brain.A2A, bench_brain.BASELINE):
            assert any(line.startswith(phase) and caller in line for line in out.splitlines()), (
                phase,
                caller,
            )
    assert "incidents/s" in out
    assert "transport cost" in out
    assert "one agent call" in out
    for agent in ("detect", "analyst", "reviewer", "remediate", "notify"):
        assert any(line.startswith(agent) and "×" in line for line in out.splitlines()), agent
    assert "target: steady p50 Kafka → verdict ≤ 200 ms" in out
