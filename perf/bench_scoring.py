"""Scoring benchmark: µs per event for one IsolationForest, scored five ways, in one run.

    python -m aerie.perf.bench_scoring [--quick] [--json PATH]

On the same forest (IsolationForest, 100 trees, 17 realistic features) and the same held-out rows, at
batch 1, 16 and 256, it times: sklearn ``score_samples`` (the baseline every ratio is against); the plain
skl2onnx export (~2,700 ONNX nodes); aerie's fused export through `OnnxScorer` (one tree-ensemble node,
both the ai.onnx.ml 5 ``TreeEnsemble`` and the ai.onnx.ml 3 ``TreeEnsembleRegressor``), single-threaded
and with onnxruntime's default thread pool; the fused model through a plain ``InferenceSession.run``
(what the scorer's prebound buffers save at batch 1); and a numba walk over the same flattened trees.

Each cell reports p50 and p99 of the wall time per call, the best p50 of its rounds, the p50 per
event, the speed-up over sklearn at that batch size (p50 against p50), and the largest difference from
sklearn's ``score_samples`` on 256 held-out rows (so a fast but wrong variant shows). Cells are timed
in interleaved rounds so that other processes on a shared machine disturb all of them alike; rows are
cycled from a pool so branch predictors do not learn one row; the garbage collector is paused while
timing. The run ends with the design's targets (batch 1: fused <= 10 µs p50 and >= 500x sklearn)
marked met or missed; it exits 0 either way (timing on a shared CI machine is a measurement, not a
gate).

``--quick`` (CI smoke: ~10 s) uses a 25-tree forest and a short time budget per cell, so its numbers
are not the design's figures. The full run takes ~45 s, plus 10-30 s the first time for skl2onnx to
convert the forest (cached in the temp directory afterwards; ``--no-cache`` converts afresh).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import sklearn
from sklearn.ensemble import IsolationForest

from aerie.models.onnx_export import INPUT_NAME, OUTPUT_ANOMALY_SCORE, export_fused, flatten_forest
from aerie.models.scorer import OnnxScorer

__all__ = ["Cell", "main"]

N_FEATURES = 17
BATCHES = (1, 16, 256)
TARGET_P50_US = 10.0
TARGET_SPEEDUP = 500.0
FUSED = "fused TreeEnsemble (ml 5), OnnxScorer, 1 thread"
# One row scored over and over: the branch predictor learns its 800 tree branches, which takes ~3 µs
# off the per-event figure; shown to read other benchmarks by, never the figure we report.
REPEATED = "fused TreeEnsemble (ml 5), OnnxScorer, 1 thread, one row repeated"
BATCH_1_ONLY = (REPEATED, "fused TreeEnsemble (ml 5), InferenceSession.run, 1 thread")
SKLEARN = "sklearn score_samples"


@dataclass(frozen=True)
class Cell:
    """One variant at one batch size."""

    variant: str
    batch: int
    calls: int
    p50_us: float
    p99_us: float
    best_round_p50_us: float  # the lowest of the per-round p50s: the figure least disturbed by others
    per_event_us: float
    speedup: float  # sklearn's p50 per event / this p50 per event, same batch size
    max_abs_diff: float  # vs sklearn score_samples on 256 held-out rows, sklearn's convention


def realistic_features(n: int, seed: int) -> npt.NDArray[np.float32]:
    """n rows shaped like aerie's 17 features (models/FEATURES.md): rarities, content, flags, rates.

    Mostly benign traffic with 1 % of rows drawn from wider distributions, so the forest has
    something to isolate. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    rare = rng.random(n) < 0.01
    w = np.where(rare, 4.0, 1.0)

    def rarity() -> npt.NDArray[np.float64]:  # -log frequency of a key in a decayed table
        return np.minimum(rng.exponential(1.5 * w), 20.0)

    columns = [
        rarity(),  # rule
        rarity(),  # process name
        rarity(),  # parent -> child
        rarity(),  # executable path
        rarity(),  # file path
        rarity(),  # remote endpoint
        np.round(rng.lognormal(3.5, 0.6 * w)),  # command line length
        np.clip(rng.normal(3.8, 0.5 * w), 0.0, 8.0),  # command line entropy, bits per char
        (rng.random(n) < 0.02 * w).astype(np.float64),  # sensitive path
        (rng.random(n) < 0.3).astype(np.float64),  # user is root
        (rng.random(n) < 0.9).astype(np.float64),  # in a container
        rarity(),  # namespace
        rng.lognormal(0.5, 0.8 * w),  # events per second in the process
        rng.lognormal(0.2, 0.7 * w),  # events per second in the container
        rng.gamma(1.5, 1.0 * w),  # burst: short over long rate
        rarity(),  # event-type bigram in the process
        np.minimum(rng.poisson(0.3 * w), 10).astype(np.float64),  # novel sequences lately
    ]
    return np.stack(columns, axis=1).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _walk_rows(  # noqa: PLR0917 - numba kernels take arrays positionally
    x: Any, roots: Any, feature: Any, threshold: Any, left: Any, right: Any, value: Any, out: Any
) -> None:  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        total = 0.0
        for r in range(roots.shape[0]):
            node = roots[r]
            while left[node] != -1:
                node = left[node] if x[i, feature[node]] <= threshold[node] else right[node]
            total += value[node]
        out[i] = math.exp(total)


@numba.njit(cache=True, nogil=True)
def _walk_row(  # noqa: PLR0917 - numba kernels take arrays positionally
    row: Any, roots: Any, feature: Any, threshold: Any, left: Any, right: Any, value: Any
) -> float:  # pragma: no cover - compiled
    total = 0.0
    for r in range(roots.shape[0]):
        node = roots[r]
        while left[node] != -1:
            node = left[node] if row[feature[node]] <= threshold[node] else right[node]
        total += value[node]
    return math.exp(total)


class _Job:
    """One cell being timed: a callable, the inputs it cycles through, the times so far (µs)."""

    def __init__(self, fn: Callable[[Any], object], inputs: Sequence[Any]) -> None:
        self.fn = fn
        self.inputs = inputs
        self.times: list[float] = []
        self.round_p50: list[float] = []
        self._next = 0

    def run_slice(self, budget_s: float, min_calls: int, max_calls: int) -> None:
        """Time calls until the slice's budget is spent (at least min_calls, at most max_calls)."""
        clock = time.perf_counter_ns
        deadline = clock() + int(budget_s * 1e9)
        fn, inputs, n_inputs = self.fn, self.inputs, len(self.inputs)
        times: list[int] = []
        i = self._next
        while len(times) < max_calls and (len(times) < min_calls or clock() < deadline):
            item = inputs[i % n_inputs]
            t0 = clock()
            fn(item)
            times.append(clock() - t0)
            i += 1
        self._next = i
        us = [t / 1e3 for t in times]
        self.times.extend(us)
        self.round_p50.append(float(np.percentile(us, 50)))


def _measure(jobs: Sequence[_Job], rounds: int, budget_s: float, min_calls: int, max_calls: int) -> None:
    """Time every job in ``rounds`` interleaved slices, garbage collector paused.

    Interleaving spreads any disturbance from other processes over all cells alike, so the ratios
    stay fair on a shared machine; each cell also keeps its p50 per round (its best round shows what
    the code does when nothing else runs).
    """
    for job in jobs:
        for item in job.inputs[:3]:
            job.fn(item)  # warm-up: first-call allocations, lazy initialisation
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for job in jobs:
                job.run_slice(budget_s / rounds, -(-min_calls // rounds), max(1, max_calls // rounds))
    finally:
        if gc_was_enabled:
            gc.enable()


def _session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _skl2onnx(forest: IsolationForest, fused_bytes: bytes, use_cache: bool) -> tuple[bytes, int, str]:
    """The plain skl2onnx export, its node count, and how it was obtained.

    skl2onnx needs 10-30 s for 100 trees (quadratic graph bookkeeping), half the run's budget, so the
    result is cached in the temp directory under a key of the forest (its fused export is a
    deterministic function of it) and the converter's version; ``use_cache=False`` converts afresh.
    """
    import onnx
    import skl2onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    opsets = {"": 17, "ai.onnx.ml": 3}
    key = hashlib.sha256(
        fused_bytes + f"{skl2onnx.__version__} {onnx.__version__} {sorted(opsets.items())}".encode()
    ).hexdigest()[:24]
    cached = Path(tempfile.gettempdir()) / "aerie-bench" / f"skl2onnx-{key}.onnx"
    if use_cache and cached.is_file():
        model = onnx.load_from_string(cached.read_bytes())
        return model.SerializeToString(), len(model.graph.node), "cached"
    t0 = time.perf_counter()
    # IsolationForest converts with TreeEnsembleRegressor from ai.onnx.ml 3 plus ~27 nodes per tree.
    model = convert_sklearn(
        forest, initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))], target_opset=opsets
    )
    how = f"convert {time.perf_counter() - t0:.1f} s"
    data = model.SerializeToString()
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(data)
        partial.replace(cached)  # atomic: a concurrent run never reads half a file
    return data, len(model.graph.node), how


def run(quick: bool, use_cache: bool = True) -> tuple[list[Cell], dict[str, Any]]:
    """Build the forest and every variant, time each at each batch size; return cells and context."""
    n_trees = 25 if quick else 100
    # Per cell, over all rounds: time budget, least and most calls.
    rounds, budget_s, min_calls, max_calls = (2, 0.12, 8, 3_000) if quick else (6, 0.9, 40, 30_000)
    x_train = realistic_features(5_000 if quick else 20_000, seed=1)
    pool = realistic_features(4_096, seed=2)
    t0 = time.perf_counter()
    forest = IsolationForest(n_estimators=n_trees, random_state=0).fit(x_train)
    fit_s = time.perf_counter() - t0
    offset = float(forest.offset_)
    check_rows = pool[:256]
    want = forest.score_samples(check_rows)

    t0 = time.perf_counter()
    fused5 = export_fused(forest, N_FEATURES, operator="TreeEnsemble")
    export_s = time.perf_counter() - t0
    fused3 = export_fused(forest, N_FEATURES, operator="TreeEnsembleRegressor")
    fused5_bytes, fused3_bytes = fused5.SerializeToString(), fused3.SerializeToString()
    plain_bytes, plain_nodes, plain_how = _skl2onnx(forest, fused5_bytes, use_cache)
    plain = _session(plain_bytes, threads=1)
    (plain_out,) = [o.name for o in plain.get_outputs() if o.name == "scores"]
    fused_run = _session(fused5_bytes, threads=1)
    scorers = {
        FUSED: OnnxScorer(fused5_bytes),
        "fused TreeEnsembleRegressor (ml 3), OnnxScorer, 1 thread": OnnxScorer(fused3_bytes),
        "fused TreeEnsemble (ml 5), OnnxScorer, default threads": OnnxScorer(
            fused5_bytes, intra_op_num_threads=0
        ),
    }
    flat = flatten_forest(forest, N_FEATURES)
    arrays = (
        flat.roots.astype(np.int32),
        flat.feature.astype(np.int32),
        flat.threshold,
        flat.left.astype(np.int32),
        flat.right.astype(np.int32),
        flat.value,
    )
    t0 = time.perf_counter()
    numba_out = np.empty(256, dtype=np.float64)
    _walk_rows(pool[:1], *arrays, numba_out)  # compiles, or loads numba's cache
    _walk_row(pool[0], *arrays)
    numba_compile_s = time.perf_counter() - t0

    def walk_batch(xb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        out = np.empty(xb.shape[0], dtype=np.float64)
        _walk_rows(xb, *arrays, out)
        return out

    # variant -> (batch -> callable on one prepared input; sklearn-convention scores of check_rows)
    variants: dict[str, tuple[Callable[[int], Callable[[Any], object]], npt.NDArray[np.float64]]] = {}
    variants[SKLEARN] = (lambda b: forest.score_samples, want)
    plain_scores = plain.run([plain_out], {INPUT_NAME: check_rows})[0].ravel() + offset
    variants["plain skl2onnx export, 1 thread"] = (
        lambda b: lambda xb: plain.run([plain_out], {INPUT_NAME: xb}),
        plain_scores.astype(np.float64),
    )

    def scorer_calls(scorer: OnnxScorer) -> Callable[[int], Callable[[Any], object]]:
        return lambda b: scorer.score_one if b == 1 else scorer.score  # the edge's fast path at 1

    for name, scorer in scorers.items():
        variants[name] = (scorer_calls(scorer), -scorer.score(check_rows).astype(np.float64))
    fused_scores = variants[FUSED][1]
    variants[REPEATED] = (scorer_calls(scorers[FUSED]), fused_scores)
    run_scores = fused_run.run([OUTPUT_ANOMALY_SCORE], {INPUT_NAME: check_rows})[0]
    variants["fused TreeEnsemble (ml 5), InferenceSession.run, 1 thread"] = (
        lambda b: lambda xb: fused_run.run([OUTPUT_ANOMALY_SCORE], {INPUT_NAME: xb}),
        -run_scores.astype(np.float64),
    )
    variants["numba walk of the flattened trees"] = (
        lambda b: (lambda row: _walk_row(row, *arrays)) if b == 1 else walk_batch,
        -walk_batch(check_rows),
    )

    inputs: dict[int, list[npt.NDArray[np.float32]]] = {
        1: [pool[i] for i in range(len(pool))],
        **{b: [np.ascontiguousarray(pool[i : i + b]) for i in range(0, len(pool), b)] for b in BATCHES[1:]},
    }
    jobs: list[tuple[str, int, float, _Job]] = []
    for name, (make, scores) in variants.items():
        diff = float(np.max(np.abs(scores - want)))
        for batch in BATCHES:
            if name in BATCH_1_ONLY and batch != 1:
                continue  # the same call as OnnxScorer.score there
            batch_inputs: Sequence[Any] = inputs[batch]
            if name == REPEATED:
                batch_inputs = inputs[1][:1]
            elif batch == 1 and name == SKLEARN:
                batch_inputs = [row[None, :] for row in inputs[1][:512]]
            elif batch == 1 and name.startswith(("plain", "fused TreeEnsemble (ml 5), InferenceSession")):
                batch_inputs = [row[None, :] for row in inputs[1]]
            jobs.append((name, batch, diff, _Job(make(batch), batch_inputs)))
    _measure([job for *_, job in jobs], rounds, budget_s, min_calls, max_calls)

    sklearn_p50 = {b: float(np.percentile(job.times, 50)) for name, b, _, job in jobs if name == SKLEARN}
    cells: list[Cell] = []
    for name, batch, diff, job in jobs:
        p50 = float(np.percentile(job.times, 50))
        cells.append(
            Cell(
                variant=name,
                batch=batch,
                calls=len(job.times),
                p50_us=p50,
                p99_us=float(np.percentile(job.times, 99)),
                best_round_p50_us=min(job.round_p50),
                per_event_us=p50 / batch,
                speedup=sklearn_p50[batch] / p50,
                max_abs_diff=diff,
            )
        )
    context = {
        "forest": f"IsolationForest(n_estimators={n_trees}, max_samples={forest.max_samples_})",
        "n_features": N_FEATURES,
        "train_rows": len(x_train),
        "quick": quick,
        "fit_s": fit_s,
        "fused_export_s": export_s,
        "fused_nodes": len(fused5.graph.node),
        "fused_bytes": {"TreeEnsemble": len(fused5_bytes), "TreeEnsembleRegressor": len(fused3_bytes)},
        "skl2onnx_nodes": plain_nodes,
        "skl2onnx_bytes": len(plain_bytes),
        "skl2onnx_obtained": plain_how,
        "numba_compile_or_cache_load_s": numba_compile_s,
        "versions": {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "sklearn": sklearn.__version__,
            "numba": numba.__version__,
            "numpy": np.__version__,
        },
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    return cells, context


def _fmt_us(v: float) -> str:
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def render(cells: list[Cell], context: dict[str, Any]) -> str:
    """The table a person reads, then the targets."""
    lines = [
        f"scoring benchmark: {context['forest']}, {context['n_features']} features, "
        f"{context['cpus']} CPUs, onnxruntime {context['versions']['onnxruntime']}, "
        f"sklearn {context['versions']['sklearn']}"
        + ("  [--quick: not the design's figures]" if context["quick"] else ""),
        f"models: fused {context['fused_nodes']} ONNX nodes "
        f"({context['fused_bytes']['TreeEnsemble'] / 1024:,.0f} KiB ml 5, "
        f"{context['fused_bytes']['TreeEnsembleRegressor'] / 1024:,.0f} KiB ml 3, "
        f"export {context['fused_export_s'] * 1e3:,.0f} ms); "
        f"skl2onnx {context['skl2onnx_nodes']:,} nodes ({context['skl2onnx_bytes'] / 1024:,.0f} KiB, "
        f"{context['skl2onnx_obtained']})",
        "",
    ]
    head = (
        "variant",
        "batch",
        "p50 µs/call",
        "p99 µs/call",
        "best-round p50",
        "µs/event",
        "× sklearn",
        "max|Δ| vs sklearn",
        "calls",
    )
    rows = [
        (
            c.variant,
            str(c.batch),
            _fmt_us(c.p50_us),
            _fmt_us(c.p99_us),
            _fmt_us(c.best_round_p50_us),
            f"{c.per_event_us:,.2f}",
            f"{c.speedup:,.1f}×",
            f"{c.max_abs_diff:.1e}",
            f"{c.calls:,}",
        )
        for c in cells
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(r)))

    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    previous = None
    for c, r in zip(cells, rows, strict=True):
        if previous is not None and c.variant != previous:
            lines.append("")
        previous = c.variant
        lines.append(fmt(r))
    fused1 = next(c for c in cells if c.variant == FUSED and c.batch == 1)
    met_p50 = fused1.p50_us <= TARGET_P50_US
    met_ratio = fused1.speedup >= TARGET_SPEEDUP
    lines += [
        "",
        f"target  fused batch 1 p50 <= {TARGET_P50_US:g} µs: {fused1.p50_us:.1f} µs "
        f"(best round {fused1.best_round_p50_us:.1f} µs)  {'MET' if met_p50 else 'MISSED'}",
        f"target  fused batch 1 >= {TARGET_SPEEDUP:g}× sklearn: {fused1.speedup:,.0f}×  "
        f"{'MET' if met_ratio else 'MISSED'}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table; write JSON when asked. Exit status 0 unless it crashed."""
    parser = argparse.ArgumentParser(
        prog="python -m aerie.perf.bench_scoring", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: 25 trees, short budgets (~10 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every cell and the context as JSON")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="convert with skl2onnx afresh instead of reusing a cached export",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    cells, context = run(quick=args.quick, use_cache=not args.no_cache)
    context["wall_s"] = time.perf_counter() - t0
    # Other processes on the machine inflate every figure alike; the ratios suffer least.
    context["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    print(render(cells, context))
    before, after = context["load_avg_1m"]
    print(f"\n(wall {context['wall_s']:.0f} s; 1-minute load average {before:.1f} before, {after:.1f} after)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"context": context, "cells": [asdict(c) for c in cells]}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
