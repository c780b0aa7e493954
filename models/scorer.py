"""Score feature vectors with the fused IsolationForest in ONNX Runtime, in microseconds.

Convention: `OnnxScorer.score` and `OnnxScorer.score_one` return aerie's ``anomaly_score``, where
HIGHER = MORE ANOMALOUS (in (0, 1]; it equals ``-IsolationForest.score_samples``). Only
`OnnxScorer.score_samples` speaks sklearn's convention (higher = more normal); it exists for parity checks.
See `aerie.models.onnx_export` for the graph.

Errors: everything raised here is a `ScorerError` whose ``reason`` is one of a few stable strings, so a
caller can count failures per reason::

    ScorerError (RuntimeError)
      reason "load"        ONNX Runtime cannot load the model bytes, the graph lacks X [N, F] /
                           anomaly_score, or it scores a non-finite row (no non-finite guard)
      reason "dtype"       input is not a float32 numpy array (no silent casts: a float64 row would be
                           rounded differently than the model was verified with)
      reason "shape"       input is not [N, F] (`score`) or [F] (`score_one`)
      reason "non_finite"  a NaN or ±inf in the input; ``rows`` lists the offending row indices and
                           nothing is returned for the batch. aerie's feature kernels never produce
                           them, so one here is a bug upstream; sklearn would route NaN by its
                           missing-value rule, which is not a meaningful score. The fused model itself
                           answers NaN for such a row (its guard tree, see onnx_export), which is how
                           this is detected at no cost on the fast path; a model without that guard is
                           refused at load.
      reason "runtime"     ONNX Runtime failed while running

ONNX Runtime's own exceptions (pybind11 classes such as ``Fail`` or ``InvalidArgument``) never leave this
module.

Hot reload: a scorer is immutable after construction (assigning an attribute raises), so the edge builds
a new one off the hot path and swaps a single reference between events; an in-flight call finishes on the
old one. The one-row fast path reuses prebound input/output buffers under a lock, so a scorer is safe to
share between threads (calls are serialised) but gains nothing from it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from aerie.models.onnx_io import INPUT_NAME, OUTPUT_ANOMALY_SCORE, OUTPUT_SCORE_SAMPLES

__all__ = ["OnnxScorer", "ScorerError"]

_F32: Final = np.dtype(np.float32)

# onnxruntime raises pybind11 exception classes that derive straight from Exception, plus ValueError /
# TypeError / RuntimeError from its Python wrapper; all of them are translated to ScorerError here.
_ORT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    *(
        cls
        for name in dir(_ort_state)
        if isinstance(cls := getattr(_ort_state, name), type) and issubclass(cls, Exception)
    ),
    RuntimeError,
    ValueError,
    TypeError,
)

# ... and AttributeError for private onnxruntime attributes that a release renamed or removed.
_ORT_ERRORS_OR_MISSING: Final[tuple[type[BaseException], ...]] = (*_ORT_ERRORS, AttributeError)


class ScorerError(RuntimeError):
    """The scorer could not load a model or score an input; ``reason`` is a stable counter label."""

    def __init__(self, reason: str, message: str, *, rows: tuple[int, ...] = ()) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.rows = rows


def _bound_runner(session: Any, binding: Any, out_buf: npt.NDArray[np.float32]) -> Callable[[], None]:
    """The cheapest call that runs ``session`` on ``binding``'s prebound buffers.

    ``InferenceSession.run_with_iobinding`` wraps the pybind11 method with Python-level checks for
    WebGPU graph capture (~0.4 µs per call, 5 % of the budget at batch 1). The underlying method is
    private API, so it is used only when it exists and, run once here, writes the same score as the
    public path; otherwise the public path is used.
    """
    public = functools.partial(session.run_with_iobinding, binding)
    try:
        raw = functools.partial(session._sess.run_with_iobinding, binding._iobinding, None)
        public()
        expected = out_buf.copy()
        out_buf[...] = np.nan
        raw()
    except _ORT_ERRORS_OR_MISSING:
        return public
    return raw if np.array_equal(out_buf, expected) else public


class OnnxScorer:
    """One loaded fused IsolationForest; immutable, cheap to build (a few ms), fast to call.

    ONNX Runtime runs single-threaded by default (``intra_op_num_threads=1``, ``inter_op_num_threads=1``,
    sequential execution, all graph optimisations): at batch 1 a thread pool only adds hand-off latency,
    and the edge runs one scorer per core. Single-threaded, a row's score is bit-identical at any batch
    size. ``intra_op_num_threads=0`` leaves ONNX Runtime's default (one thread per core; for comparison
    in perf/bench_scoring.py): per-thread partial sums over trees are then added in another order, and
    scores may differ in the last float32 bits (~1e-7).

    Raises `ScorerError` (reason "load") when the bytes are not a loadable model with input ``X``
    float32 [N, F] (F fixed) and output ``anomaly_score``.
    """

    __slots__ = (
        "_in_row",
        "_lock",
        "_metadata",
        "_n_features",
        "_out_buf",
        "_row_shape",
        "_run_bound",
        "_session",
        "_values",
        "_version",
    )

    _version: str
    _n_features: int
    _session: Any
    _run_bound: Callable[[], None]
    _values: tuple[Any, ...]
    _in_row: npt.NDArray[np.float32]
    _out_buf: npt.NDArray[np.float32]
    _lock: threading.Lock
    _row_shape: tuple[int]
    _metadata: Mapping[str, str]

    def __init__(self, model_bytes: bytes, *, version: str = "", intra_op_num_threads: int = 1) -> None:
        if not isinstance(model_bytes, bytes | bytearray | memoryview):
            raise ScorerError("load", f"model must be bytes, got {type(model_bytes).__name__}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: warnings would go to the daemon's stderr
        try:
            session = ort.InferenceSession(bytes(model_bytes), options, providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as exc:
            raise ScorerError("load", f"ONNX Runtime cannot load the model: {exc}") from exc
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        x = inputs.get(INPUT_NAME)
        y = outputs.get(OUTPUT_ANOMALY_SCORE)
        if (
            x is None
            or x.type != "tensor(float)"
            or len(x.shape) != 2
            or not isinstance(x.shape[1], int)
            or y is None
            or y.type != "tensor(float)"
            or len(y.shape) != 1
        ):
            described = [(v.name, v.type, v.shape) for v in (*inputs.values(), *outputs.values())]
            raise ScorerError(
                "load",
                f"model must take {INPUT_NAME} float32 [N, F] and give {OUTPUT_ANOMALY_SCORE} float32 [N]; "
                f"it has {described}",
            )
        n_features = int(x.shape[1])
        probe = np.zeros((3 * n_features, n_features), dtype=np.float32)
        for j in range(n_features):
            probe[3 * j : 3 * j + 3, j] = (np.nan, np.inf, -np.inf)
        try:
            (probed,) = session.run([OUTPUT_ANOMALY_SCORE], {INPUT_NAME: probe})
        except _ORT_ERRORS as exc:
            raise ScorerError("load", f"ONNX Runtime cannot run the model: {exc}") from exc
        if not np.isnan(probed).all():
            raise ScorerError(
                "load", "the model scores NaN/±inf features instead of answering NaN (no guard)"
            )
        # The one-row fast path: ONNX Runtime reads and writes these numpy buffers in place through
        # OrtValues bound once, so a call allocates nothing. Measured at batch 1 (onnxruntime 1.31, 100
        # trees, one row repeated): run_with_iobinding ~7.5 µs, run() ~13 µs, run_with_ort_values()
        # ~57 µs (it allocates its outputs).
        in_buf = np.zeros((1, n_features), dtype=np.float32)
        out_buf = np.zeros(1, dtype=np.float32)
        in_value = ort.OrtValue.ortvalue_from_numpy(in_buf)
        out_value = ort.OrtValue.ortvalue_from_numpy(out_buf)
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, in_value)
        binding.bind_ortvalue_output(OUTPUT_ANOMALY_SCORE, out_value)
        run_bound = _bound_runner(session, binding, out_buf)
        meta = session.get_modelmeta().custom_metadata_map
        init = object.__setattr__
        init(self, "_session", session)
        init(self, "_run_bound", run_bound)
        init(self, "_values", (binding, in_value, out_value))  # alive as long as the bound runner
        init(self, "_in_row", in_buf[0])
        init(self, "_out_buf", out_buf)
        init(self, "_row_shape", (n_features,))
        init(self, "_lock", threading.Lock())
        init(self, "_n_features", n_features)
        init(self, "_metadata", MappingProxyType(dict(meta)))
        init(self, "_version", version)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"OnnxScorer is immutable; build a new one to change {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"OnnxScorer is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"OnnxScorer(version={self.version!r}, n_features={self._n_features})"

    @property
    def version(self) -> str:
        """The model version given at construction (the bundle's), for the anomaly envelope."""
        return self._version

    @property
    def n_features(self) -> int:
        """F, the width every input row must have."""
        return self._n_features

    @property
    def metadata(self) -> Mapping[str, str]:
        """The model's metadata properties (read-only), e.g. ``aerie.n_trees``, ``aerie.sklearn_offset``."""
        return self._metadata

    def score_one(self, row: npt.NDArray[np.float32]) -> float:
        """Anomaly score of one float32 row of shape [F] (higher = more anomalous).

        The fast path: no allocation besides the returned float. Raises `ScorerError` with reason
        "dtype", "shape", "non_finite" or "runtime".
        """
        # Every check here is paid per event: each costs ~0.1 µs, a numpy call would cost ~1 µs.
        if not isinstance(row, np.ndarray):
            raise ScorerError("dtype", f"expected a float32 numpy array, got {type(row).__name__}")
        dtype = row.dtype
        if dtype is not _F32 and dtype != _F32:
            raise ScorerError("dtype", f"expected float32, got {dtype}")
        if row.shape != self._row_shape:
            raise ScorerError("shape", f"expected one row of shape ({self._n_features},), got {row.shape}")
        with self._lock:
            self._in_row[...] = row  # the fastest of the numpy copies into a bound buffer (~0.4 µs)
            try:
                self._run_bound()
            except _ORT_ERRORS as exc:
                raise ScorerError("runtime", f"ONNX Runtime failed: {exc}") from exc
            score: float = self._out_buf.item()
        if math.isnan(score):  # NaN: the model's guard saw a NaN or ±inf feature
            raise ScorerError("non_finite", "NaN or infinite feature value", rows=(0,))
        return score

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Anomaly scores, shape [N], of a float32 batch of shape [N, F] (higher = more anomalous).

        Equal, row for row, whatever the batch size (one row goes through the `score_one` path). An
        empty batch gives an empty result. Raises `ScorerError` with reason "dtype", "shape",
        "non_finite" (``rows`` holds the offending indices; nothing is scored) or "runtime".
        """
        x = self._check_batch(x)
        n = x.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if n == 1:
            return np.array([self.score_one(x[0])], dtype=np.float32)
        return self._run(OUTPUT_ANOMALY_SCORE, x)

    def score_samples(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """sklearn's convention, shape [N]: ``IsolationForest.score_samples`` (higher = more NORMAL).

        For parity checks and debugging, not the hot path. Same validation and errors as `score`.
        """
        x = self._check_batch(x)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        return self._run(OUTPUT_SCORE_SAMPLES, x)

    def _check_batch(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if not isinstance(x, np.ndarray):
            raise ScorerError("dtype", f"expected a float32 numpy array, got {type(x).__name__}")
        if x.dtype != _F32:
            raise ScorerError("dtype", f"expected float32, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise ScorerError("shape", f"expected shape (N, {self._n_features}), got {x.shape}")
        return np.ascontiguousarray(x)

    def _run(self, output: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            (out,) = self._session.run([output], {INPUT_NAME: x})
        except _ORT_ERRORS as exc:
            raise ScorerError("runtime", f"ONNX Runtime failed: {exc}") from exc
        result: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)
        nan = np.isnan(result)  # N checks on the output instead of N·F on the input
        if nan.any():
            bad = tuple(int(i) for i in np.flatnonzero(nan))
            raise ScorerError("non_finite", f"NaN or infinite feature value in rows {bad[:10]}", rows=bad)
        return result
