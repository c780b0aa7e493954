"""Model cost per event, all in one run: feature kernels and every scoring variant.

Runs `aerie.perf.bench_features` and `aerie.perf.bench_scoring` in one process on one machine state,
prints both tables, and the figure the edge pays per event — features (``transform_one``) plus the
fused ONNX score at batch 1 — against the naive path (plain-Python features plus sklearn
``score_samples``), as a ratio.

    python -m aerie.perf.bench_model [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aerie.perf import bench_features, bench_scoring


def _feature_row(report: dict[str, object], name: str) -> float:
    results = report["results"]
    assert isinstance(results, list)
    return float(next(r["us_per_event"] for r in results if r["name"] == name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aerie.perf.bench_model", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI smoke: small streams, 25 trees")
    args = parser.parse_args(argv)
    features = bench_features.run(
        events=2_000 if args.quick else 20_000,
        repeat=1 if args.quick else 3,
        baseline_events=200 if args.quick else 1_000,
    )
    cells, context = bench_scoring.run(quick=args.quick)
    print(bench_scoring.render(cells, context))
    print(f"\n{'features (CPU time)':<42}{'µs/event':>10}{'vs plain Python':>17}")
    for row in features["results"]:
        print(f"{row['name']:<42}{row['us_per_event']:>10.2f}{row['ratio']:>16.1f}×")
    fused = next(c for c in cells if c.batch == 1 and c.variant == bench_scoring.FUSED)
    sklearn = next(c for c in cells if c.batch == 1 and c.variant == bench_scoring.SKLEARN)
    edge = _feature_row(features, "numba transform_one") + fused.p50_us
    naive = _feature_row(features, "plain Python transform_one (baseline)") + sklearn.p50_us
    print(
        f"\nper event at the edge: features + fused score = {edge:.1f} µs; "
        f"plain-Python features + sklearn = {naive:.0f} µs; ratio {naive / edge:.0f}×"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
