"""Fused ONNX export of a fitted scikit-learn `IsolationForest`, and the parity check that guards it.

Why fused: skl2onnx exports an IsolationForest as one small sub-graph per tree (~2,700 nodes for 100
trees) and ONNX Runtime pays per-node dispatch for each one (~4 ms per event at batch 1). Here the whole
forest is ONE ``ai.onnx.ml`` tree-ensemble node followed by three elementwise nodes. The fused graph has
exactly 4 nodes for any forest size::

    X [N, F] float32
      └─ TreeEnsemble (ai.onnx.ml 5; or TreeEnsembleRegressor, ai.onnx.ml 3), aggregate SUM over
           the forest's trees: leaf value of tree t = k · h_t,  h_t = depth(leaf) + c(n_node_samples) - 1
           (h_t is sklearn's path-length contribution of tree t; k = -ln 2 / (n_trees · c(max_samples_)))
           plus one guard tree: leaf 0 for a finite row, NaN as soon as one feature is NaN or ±inf
         → log_anomaly [N, 1] = k · Σ_t h_t(x) = ln of the anomaly score
      └─ Exp                   → 2^(-mean path length / c(max_samples_))
      └─ Reshape [-1]          → ``anomaly_score`` [N]   (aerie convention: higher = more anomalous)
      └─ Neg                   → ``score_samples`` [N]   (sklearn convention: higher = more normal)

The constant k is folded into the leaves rather than applied by a Mul node: at batch 1 every extra
ONNX Runtime node costs ~0.5-1 µs of dispatch, about a tenth of the whole budget (measured with
perf/bench_scoring.py's machinery on onnxruntime 1.31).

``anomaly_score`` is the anomaly score s(x, n) of Liu et al. (2008), in (0, 1]; ``score_samples`` equals
``IsolationForest.score_samples`` (its opposite). sklearn's ``decision_function(x) = score_samples(x) -
offset_``, so sklearn's outlier rule ``decision_function < 0`` reads ``anomaly_score > -offset_`` here; the
exported model records ``offset_`` in its metadata (``aerie.sklearn_offset``) but aerie's threshold is a
policy parameter read at decision time, not a constant of the model.

Exactness, mirrored from sklearn/ensemble/_iforest.py (scikit-learn 1.9):
- sklearn sums ``depth(leaf) + c(n_node_samples) - 1`` over trees (depths from ``compute_node_depths``,
  root = 1), divides by ``n_trees · c(max_samples_)`` and returns ``-2 ** -(that)``; a zero denominator
  (``max_samples_ == 1``) makes the score -0.5, reproduced here by leaves of ``-ln 2 / n_trees``.
- A tree fitted on a feature subset (``max_features < 1.0``) indexes columns of ``X[:, features]``; its
  feature ids are mapped back through ``estimators_features_``. As in sklearn, no mapping happens when
  every tree sees all columns.
- sklearn compares the float32 input against a float64 threshold (``x <= t``). ONNX Runtime compares in
  float32, so each threshold is rounded DOWN to the largest float32 ``t32 <= t``: for any float32 ``x``,
  ``x <= t`` iff ``x <= t32``, so every row reaches the very same leaf as in sklearn.
- Non-finite input: aerie's features are finite by contract, so a NaN or ±inf is a bug upstream and
  must not turn into a plausible score (sklearn would route NaN by its missing-value rule). The guard
  tree makes both outputs NaN for such a row: per feature j, ``x_j <= FLT_MAX`` (false for NaN and +inf)
  then ``x_j <= -inf`` (true only for -inf), BRANCH_LEQ like every other node (onnxruntime keeps its
  single-mode fast loop), 2·F comparisons. Detecting it inside the fused operator costs ~0.1 µs;
  a numpy ``isfinite`` check on the row costs 0.7-1.8 µs. `aerie.models.scorer` turns NaN into an error.
- Leaf values and their sum are float32 in ONNX Runtime (float64 in sklearn); the difference this leaves
  on the score is ~1e-7, well inside the 1e-5 that `verify_parity` enforces.

Errors: `ExportError` when the forest cannot be exported (not a fitted IsolationForest, wrong feature
count, unknown operator); `ExportParityError` (a subclass) when ONNX Runtime disagrees with sklearn.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from aerie.models.onnx_io import INPUT_NAME, OUTPUT_ANOMALY_SCORE, OUTPUT_SCORE_SAMPLES

__all__ = [
    "INPUT_NAME",
    "OUTPUT_ANOMALY_SCORE",
    "OUTPUT_SCORE_SAMPLES",
    "ExportError",
    "ExportParityError",
    "FlatForest",
    "ParityReport",
    "TreeOperator",
    "average_path_length",
    "export_fused",
    "flatten_forest",
    "verify_parity",
]


TreeOperator = Literal["TreeEnsemble", "TreeEnsembleRegressor"]
"""``TreeEnsemble`` (ai.onnx.ml 5; in onnxruntime releases from late 2024 on, which map it onto the
same kernel as version 3) or the older, deprecated ``TreeEnsembleRegressor`` (ai.onnx.ml 3, for older
runtimes). Bit-identical scores and the same speed; the first is the default and 2.5x smaller."""

_ML_DOMAIN: Final = "ai.onnx.ml"
_ML_OPSET: Final[dict[str, int]] = {"TreeEnsemble": 5, "TreeEnsembleRegressor": 3}
_ONNX_OPSET: Final = 21
_TREE_LEAF: Final = -1  # sklearn.tree._tree.TREE_LEAF
_BRANCH_LEQ: Final = 0  # TreeEnsemble's nodes_modes enumeration


class ExportError(ValueError):
    """The forest cannot be exported, or the exported model is unusable."""


class ExportParityError(ExportError):
    """ONNX Runtime's scores differ from sklearn's ``score_samples`` by more than the tolerance.

    Attributes: ``max_abs_diff``, ``atol``, ``worst_row`` (index into the holdout), ``worst_features``
    (that row, float32), ``onnx_score`` and ``sklearn_score`` (both in sklearn's convention).
    """

    def __init__(
        self,
        *,
        max_abs_diff: float,
        atol: float,
        worst_row: int,
        worst_features: list[float],
        onnx_score: float,
        sklearn_score: float,
        n_rows: int,
    ) -> None:
        self.max_abs_diff = max_abs_diff
        self.atol = atol
        self.worst_row = worst_row
        self.worst_features = worst_features
        self.onnx_score = onnx_score
        self.sklearn_score = sklearn_score
        self.n_rows = n_rows
        super().__init__(
            f"fused ONNX model disagrees with sklearn score_samples: max |diff| = {max_abs_diff:.3g} > "
            f"atol {atol:.3g} over {n_rows} rows; worst row {worst_row}: onnx {onnx_score!r} vs "
            f"sklearn {sklearn_score!r}; features {worst_features!r}"
        )


class ParityReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `verify_parity` measured; worth keeping in a bundle's manifest."""

    n_rows: int
    max_abs_diff: float
    atol: float
    worst_row: int


def average_path_length(n: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n items.

    The same formula as sklearn's private ``_average_path_length``: 0 for n <= 1, 1 for n == 2, else
    ``2 (ln(n - 1) + γ) - 2 (n - 1) / n``. Evaluated in float64, in the same order, so it is bit-equal.
    """
    arr = np.asarray(n, dtype=np.float64)
    out = np.zeros(arr.shape, dtype=np.float64)
    out[arr == 2] = 1.0
    big = arr > 2
    nb = arr[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out


def _floor_float32(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The largest float32 <= each value, so that ``x <= t`` and ``x <= result`` agree on float32 x."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


class _Tree(NamedTuple):
    """One sklearn tree, with feature ids already in the forest's input space."""

    left: npt.NDArray[np.intp]
    right: npt.NDArray[np.intp]
    feature: npt.NDArray[np.int64]
    threshold: npt.NDArray[np.float32]
    leaf_value: npt.NDArray[np.float64]  # k · h_t, see the module docstring


def _forest_trees(forest: Any, n_features: int) -> list[_Tree]:
    """Flatten the forest's trees, leaves already scaled by k (see the module docstring)."""
    from sklearn.ensemble import IsolationForest

    if not isinstance(forest, IsolationForest):
        raise ExportError(f"expected a fitted sklearn IsolationForest, got {type(forest).__name__}")
    estimators = getattr(forest, "estimators_", None)
    if not estimators:
        raise ExportError("the IsolationForest is not fitted (no estimators_)")
    n_in = int(forest.n_features_in_)
    if n_features != n_in:
        raise ExportError(f"n_features={n_features} but the forest was fitted on {n_in} features")

    n_trees = len(estimators)
    c_max = float(average_path_length(forest.max_samples_))
    degenerate = c_max == 0.0  # max_samples_ == 1: sklearn defines the score as -2**-1
    k = -math.log(2.0) / n_trees if degenerate else -math.log(2.0) / (n_trees * c_max)
    trees: list[_Tree] = []
    for est, features in zip(estimators, forest.estimators_features_, strict=True):
        t = est.tree_
        feats = np.asarray(features, dtype=np.int64)
        # sklearn subsamples columns only when the trees were not fitted on all of them
        # (IsolationForest._compute_chunked_score_samples / bagging's requires_feature_indexing).
        subsample = len(feats) != n_in
        is_leaf = t.children_left == _TREE_LEAF
        raw_feature = np.where(is_leaf, 0, t.feature).astype(np.int64)
        feature = feats[raw_feature] if subsample else raw_feature
        feature[is_leaf] = 0
        if degenerate:
            leaf_value = np.full(t.node_count, k, dtype=np.float64)
        else:
            path_length = (
                t.compute_node_depths().astype(np.float64) + average_path_length(t.n_node_samples) - 1.0
            )
            leaf_value = k * path_length
        trees.append(
            _Tree(
                left=np.asarray(t.children_left, dtype=np.intp),
                right=np.asarray(t.children_right, dtype=np.intp),
                feature=feature,
                threshold=np.where(is_leaf, np.float32(0), _floor_float32(t.threshold)).astype(np.float32),
                leaf_value=leaf_value,
            )
        )
    trees.append(_guard_tree(n_features))
    return trees


def _guard_tree(n_features: int) -> _Tree:
    """A chain over every feature whose only non-NaN leaf is reached by a row of finite values."""
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    value: list[float] = []

    def node(f: int, thr: float, val: float) -> int:
        left.append(_TREE_LEAF)
        right.append(_TREE_LEAF)
        feature.append(f)
        threshold.append(thr)
        value.append(val)
        return len(left) - 1

    checks: list[tuple[int, int]] = []
    for j in range(n_features):
        a = node(j, float(np.finfo(np.float32).max), 0.0)  # x <= FLT_MAX: false for NaN and +inf
        b = node(j, -math.inf, 0.0)  # x <= -inf: true only for -inf
        left[a], right[a] = b, node(0, 0.0, math.nan)
        left[b] = node(0, 0.0, math.nan)
        checks.append((a, b))
    finite = node(0, 0.0, 0.0)
    for (_, b), nxt in zip(checks, [a for a, _ in checks[1:]] + [finite], strict=True):
        right[b] = nxt  # passed feature j: go on with feature j + 1, or reach the finite leaf
    is_leaf = np.asarray(left) == _TREE_LEAF
    return _Tree(
        left=np.asarray(left, dtype=np.intp),
        right=np.asarray(right, dtype=np.intp),
        feature=np.where(is_leaf, 0, np.asarray(feature, dtype=np.int64)),
        threshold=np.where(is_leaf, 0.0, np.asarray(threshold)).astype(np.float32),
        leaf_value=np.asarray(value, dtype=np.float64),
    )


class FlatForest(NamedTuple):
    """The exported trees (guard tree last) as concatenated arrays, for tree walkers outside ONNX.

    Node ``i`` is a leaf when ``left[i] == -1``; otherwise go to ``left[i]`` when
    ``x[feature[i]] <= threshold[i]`` (false for NaN) and to ``right[i]`` else. Indices are global.
    ``exp(Σ over roots of value[leaf reached])`` is ``anomaly_score``, the same as the ONNX graph's.
    """

    roots: npt.NDArray[np.int64]
    feature: npt.NDArray[np.int64]
    threshold: npt.NDArray[np.float32]
    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]


def flatten_forest(forest: Any, n_features: int) -> FlatForest:
    """The trees `export_fused` would emit, flattened; raises `ExportError` like `export_fused`."""
    trees = _forest_trees(forest, n_features)
    sizes = [len(t.left) for t in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def children(side: str) -> npt.NDArray[np.int64]:
        parts = [
            np.where(getattr(t, side) == _TREE_LEAF, -1, getattr(t, side) + o)
            for t, o in zip(trees, offsets, strict=True)
        ]
        return np.concatenate(parts).astype(np.int64)

    return FlatForest(
        roots=offsets,
        feature=np.concatenate([t.feature for t in trees]).astype(np.int64),
        threshold=np.concatenate([t.threshold for t in trees]).astype(np.float32),
        left=children("left"),
        right=children("right"),
        value=np.concatenate([t.leaf_value for t in trees]).astype(np.float64),
    )


def _tree_ensemble_node(trees: list[_Tree], output: str) -> onnx.NodeProto:
    """ai.onnx.ml 5 TreeEnsemble: interior nodes in ``nodes_*``, leaves in ``leaf_*``."""
    roots: list[int] = []
    feat: list[int] = []
    split: list[float] = []
    true_id: list[int] = []
    true_leaf: list[int] = []
    false_id: list[int] = []
    false_leaf: list[int] = []
    leaf_w: list[float] = []
    for tree in trees:
        is_leaf = tree.left == _TREE_LEAF
        if is_leaf[0]:
            # A one-leaf tree (every sampled row identical): one node whose branches share one leaf.
            roots.append(len(feat))
            feat.append(0)
            split.append(0.0)
            true_id.append(len(leaf_w))
            false_id.append(len(leaf_w))
            true_leaf.append(1)
            false_leaf.append(1)
            leaf_w.append(float(tree.leaf_value[0]))
            continue
        # Global positions: interior nodes and leaves are numbered separately, in sklearn's order.
        interior_pos = np.cumsum(~is_leaf) - 1 + len(feat)
        leaf_pos = np.cumsum(is_leaf) - 1 + len(leaf_w)
        pos = np.where(is_leaf, leaf_pos, interior_pos)
        roots.append(int(interior_pos[0]))
        for node in np.flatnonzero(~is_leaf):
            lc, rc = tree.left[node], tree.right[node]
            feat.append(int(tree.feature[node]))
            split.append(float(tree.threshold[node]))
            true_id.append(int(pos[lc]))
            true_leaf.append(int(is_leaf[lc]))
            false_id.append(int(pos[rc]))
            false_leaf.append(int(is_leaf[rc]))
        leaf_w.extend(float(v) for v in tree.leaf_value[is_leaf])
    return helper.make_node(
        "TreeEnsemble",
        [INPUT_NAME],
        [output],
        domain=_ML_DOMAIN,
        name="forest",
        aggregate_function=1,  # SUM
        post_transform=0,  # NONE
        n_targets=1,
        tree_roots=roots,
        nodes_featureids=feat,
        nodes_splits=numpy_helper.from_array(np.asarray(split, dtype=np.float32)),
        nodes_modes=numpy_helper.from_array(np.full(len(feat), _BRANCH_LEQ, dtype=np.uint8)),
        nodes_truenodeids=true_id,
        nodes_trueleafs=true_leaf,
        nodes_falsenodeids=false_id,
        nodes_falseleafs=false_leaf,
        leaf_targetids=[0] * len(leaf_w),
        leaf_weights=numpy_helper.from_array(np.asarray(leaf_w, dtype=np.float32)),
    )


def _tree_ensemble_regressor_node(trees: list[_Tree], output: str) -> onnx.NodeProto:
    """ai.onnx.ml 3 TreeEnsembleRegressor: every node (leaves too) in ``nodes_*``, sklearn's node ids."""
    tree_ids: list[int] = []
    node_ids: list[int] = []
    feat: list[int] = []
    modes: list[str] = []
    values: list[float] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    t_tree: list[int] = []
    t_node: list[int] = []
    t_weight: list[float] = []
    for tid, tree in enumerate(trees):
        is_leaf = tree.left == _TREE_LEAF
        n = len(tree.left)
        tree_ids.extend([tid] * n)
        node_ids.extend(range(n))
        feat.extend(int(f) for f in tree.feature)
        modes.extend("LEAF" if leaf else "BRANCH_LEQ" for leaf in is_leaf)
        values.extend(float(v) for v in tree.threshold)
        true_ids.extend(int(c) for c in np.where(is_leaf, 0, tree.left))
        false_ids.extend(int(c) for c in np.where(is_leaf, 0, tree.right))
        leaves = np.flatnonzero(is_leaf)
        t_tree.extend([tid] * len(leaves))
        t_node.extend(int(i) for i in leaves)
        t_weight.extend(float(v) for v in tree.leaf_value[leaves])
    return helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        [output],
        domain=_ML_DOMAIN,
        name="forest",
        aggregate_function="SUM",
        post_transform="NONE",
        n_targets=1,
        nodes_treeids=tree_ids,
        nodes_nodeids=node_ids,
        nodes_featureids=feat,
        nodes_modes=modes,
        nodes_values=values,
        nodes_truenodeids=true_ids,
        nodes_falsenodeids=false_ids,
        target_treeids=t_tree,
        target_nodeids=t_node,
        target_ids=[0] * len(t_node),
        target_weights=t_weight,
    )


def export_fused(forest: Any, n_features: int, *, operator: TreeOperator = "TreeEnsemble") -> onnx.ModelProto:
    """Export a fitted IsolationForest as one tree-ensemble node plus the score arithmetic (4 nodes).

    Input ``X``: float32 ``[N, n_features]``. Outputs ``anomaly_score`` (``[N]``, aerie convention,
    higher = more anomalous) and ``score_samples`` (``[N]``, sklearn's). The model passes
    ``onnx.checker.check_model``; its metadata records the tree count, ``max_samples_``, ``offset_``
    and both output conventions.

    Raises `ExportError` when ``forest`` is not a fitted IsolationForest, ``n_features`` differs from the
    fitted feature count, ``operator`` is unknown, or the built graph fails the ONNX checker.
    Run `verify_parity` on held-out rows before shipping the result.
    """
    if operator not in _ML_OPSET:
        raise ExportError(f"operator must be one of {sorted(_ML_OPSET)}, got {operator!r}")
    trees = _forest_trees(forest, n_features)
    n_trees = len(trees) - 1  # the last one is the guard
    if operator == "TreeEnsemble":
        forest_node = _tree_ensemble_node(trees, "log_anomaly")
    else:
        forest_node = _tree_ensemble_regressor_node(trees, "log_anomaly")
    nodes = [
        forest_node,
        helper.make_node("Exp", ["log_anomaly"], ["anomaly_2d"], name="exp"),
        helper.make_node("Reshape", ["anomaly_2d", "flat_shape"], [OUTPUT_ANOMALY_SCORE], name="flatten"),
        helper.make_node("Neg", [OUTPUT_ANOMALY_SCORE], [OUTPUT_SCORE_SAMPLES], name="sklearn_sign"),
    ]
    initializers = [numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "flat_shape")]
    graph = helper.make_graph(
        nodes,
        "aerie_isolation_forest",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [
            helper.make_tensor_value_info(OUTPUT_ANOMALY_SCORE, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(OUTPUT_SCORE_SAMPLES, TensorProto.FLOAT, ["N"]),
        ],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", _ONNX_OPSET), helper.make_opsetid(_ML_DOMAIN, _ML_OPSET[operator])]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="aerie",
        doc_string=(
            f"IsolationForest ({n_trees} trees and a non-finite guard) fused into one {operator} node. "
            f"{OUTPUT_ANOMALY_SCORE}: higher = more anomalous; {OUTPUT_SCORE_SAMPLES}: sklearn's "
            "score_samples, higher = more normal."
        ),
    )
    helper.set_model_props(
        model,
        {
            "aerie.n_trees": str(n_trees),
            "aerie.n_features": str(n_features),
            "aerie.max_samples": str(int(forest.max_samples_)),
            "aerie.sklearn_offset": repr(float(forest.offset_)),
            "aerie.tree_operator": operator,
            "aerie.anomaly_score": "higher = more anomalous (= -score_samples)",
            "aerie.score_samples": "sklearn convention, higher = more normal",
        },
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the fused graph fails the ONNX checker: {exc}") from exc
    return model


def verify_parity(
    model_bytes: bytes, forest: Any, X_holdout: npt.ArrayLike, atol: float = 1e-5
) -> ParityReport:
    """Score ``X_holdout`` with ONNX Runtime and with ``forest.score_samples``; demand agreement.

    Rows are cast to float32 first (sklearn does the same), so both see identical inputs. ONNX Runtime
    runs single-threaded, directly rather than through the scorer, on the ``score_samples`` output. The
    non-finite guard is checked too: the first holdout row with one feature set to NaN, +inf or -inf
    (each feature in turn) must score NaN on both outputs.

    Returns a `ParityReport`. Raises `ExportParityError` (max |diff|, the worst row and both scores)
    when any row differs by more than ``atol``; `ExportError` when ``X_holdout`` is empty, not
    ``[N, n_features]`` or not finite, when the guard lets a non-finite row through, or when ONNX
    Runtime cannot load or run the model.
    """
    import onnxruntime as ort

    x = np.ascontiguousarray(np.asarray(X_holdout, dtype=np.float32))
    n_in = int(forest.n_features_in_)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != n_in:
        raise ExportError(f"X_holdout must be a non-empty [N, {n_in}] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ExportError("X_holdout must be finite: the model answers NaN for non-finite rows by design")
    probe = np.repeat(x[:1], 3 * n_in, axis=0)
    for j in range(n_in):
        probe[3 * j : 3 * j + 3, j] = (np.nan, np.inf, -np.inf)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        (got,) = session.run([OUTPUT_SCORE_SAMPLES], {INPUT_NAME: x})
        guarded = session.run([OUTPUT_ANOMALY_SCORE, OUTPUT_SCORE_SAMPLES], {INPUT_NAME: probe})
    except Exception as exc:  # onnxruntime raises pybind11 classes derived straight from Exception
        raise ExportError(f"ONNX Runtime could not load or run the model: {exc}") from exc
    leaked = sorted({int(i) // 3 for out in guarded for i in np.flatnonzero(~np.isnan(out))})
    if leaked:
        raise ExportError(f"non-finite guard lets NaN/±inf through on features {leaked}")
    want = forest.score_samples(x)
    diff = np.abs(np.asarray(got, dtype=np.float64) - want)
    worst = int(np.argmax(diff))
    max_diff = float(diff[worst])
    if not max_diff <= atol:  # NaN-safe: a NaN difference fails too
        raise ExportParityError(
            max_abs_diff=max_diff,
            atol=atol,
            worst_row=worst,
            worst_features=[float(v) for v in x[worst]],
            onnx_score=float(got[worst]),
            sklearn_score=float(want[worst]),
            n_rows=x.shape[0],
        )
    return ParityReport(n_rows=x.shape[0], max_abs_diff=max_diff, atol=atol, worst_row=worst)
