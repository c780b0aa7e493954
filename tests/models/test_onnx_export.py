"""The fused IsolationForest export: exact parity with sklearn, one tree-ensemble node, a guard for
non-finite rows, and a parity check that catches a corrupted model."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.ensemble import IsolationForest

from aerie.models.onnx_export import (
    OUTPUT_ANOMALY_SCORE,
    OUTPUT_SCORE_SAMPLES,
    ExportError,
    ExportParityError,
    TreeOperator,
    average_path_length,
    export_fused,
    flatten_forest,
    verify_parity,
)

OPERATORS: tuple[TreeOperator, ...] = ("TreeEnsemble", "TreeEnsembleRegressor")
F32_MAX = float(np.finfo(np.float32).max)


def features(n: int, n_features: int, seed: int) -> npt.NDArray[np.float32]:
    """Feature-like columns: heavy-tailed counts, flags, bounded ratios, small integers, a constant."""
    rng = np.random.default_rng(seed)
    cols = []
    for j in range(n_features):
        kind = j % 5
        if kind == 0:
            cols.append(rng.lognormal(1.0, 1.5, n))
        elif kind == 1:
            cols.append((rng.random(n) < 0.1).astype(np.float64))
        elif kind == 2:
            cols.append(rng.beta(2.0, 5.0, n) * 8.0)
        elif kind == 3:
            cols.append(rng.poisson(3.0, n).astype(np.float64))
        else:
            cols.append(np.full(n, 1.0))
    return np.stack(cols, axis=1).astype(np.float32)


def holdout(x_train: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    """Unseen rows, rows far outside the training range, and the extremes of float32."""
    n_features = x_train.shape[1]
    rng = np.random.default_rng(seed)
    fresh = features(400, n_features, seed + 1)
    scaled = x_train[rng.integers(0, len(x_train), 100)] * rng.choice([-1e6, 1e6, 1e30], (100, 1))
    extremes = np.array(
        [[F32_MAX] * n_features, [-F32_MAX] * n_features, [0.0] * n_features, [1e-38] * n_features],
        dtype=np.float32,
    )
    return np.concatenate([fresh, scaled.astype(np.float32), extremes])


def on_thresholds(forest: Any, x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    """Rows whose features sit exactly on split thresholds, and one float32 step either side.

    sklearn compares float32 x with a float64 threshold; these rows catch any rounding of thresholds
    that is not "largest float32 <= t"."""
    rng = np.random.default_rng(seed)
    rows = []
    for est, feats in zip(forest.estimators_[:10], forest.estimators_features_[:10], strict=True):
        t = est.tree_
        cols = np.asarray(feats) if len(feats) != x.shape[1] else np.arange(x.shape[1])
        for node in np.flatnonzero(t.children_left != -1)[:20]:
            thr = t.threshold[node]
            nearest = np.float32(thr)
            for value in (nearest, np.nextafter(nearest, np.float32(np.inf)), np.nextafter(nearest, -np.inf)):
                row = x[rng.integers(0, len(x))].copy()
                row[cols[t.feature[node]]] = value
                rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def onnx_scores(model: onnx.ModelProto, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: list[npt.NDArray[np.float32]] = session.run([OUTPUT_ANOMALY_SCORE, OUTPUT_SCORE_SAMPLES], {"X": x})
    return out


FORESTS: dict[str, tuple[dict[str, Any], int]] = {
    "default-100-trees": ({"n_estimators": 100}, 17),
    "int-max-samples-feature-subset-contamination": (
        {"n_estimators": 37, "max_samples": 64, "max_features": 0.5, "contamination": 0.1},
        17,
    ),
    "float-max-samples-int-max-features-bootstrap": (
        {"n_estimators": 20, "max_samples": 0.3, "max_features": 4, "bootstrap": True},
        9,
    ),
    "auto-over-small-data": ({"n_estimators": 15, "max_samples": "auto", "contamination": 0.02}, 3),
}


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("case", sorted(FORESTS))
def test_scores_equal_sklearn_on_held_out_rows(case: str, operator: TreeOperator) -> None:
    params, n_features = FORESTS[case]
    x = features(1500, n_features, seed=1)
    forest = IsolationForest(random_state=3, **params).fit(x)
    model = export_fused(forest, n_features, operator=operator)
    rows = np.concatenate([holdout(x, seed=5), on_thresholds(forest, x, seed=7)])

    report = verify_parity(model.SerializeToString(), forest, rows, atol=1e-5)

    assert report.n_rows == len(rows)
    assert report.max_abs_diff <= 1e-5
    anomaly, samples = onnx_scores(model, rows)
    want = forest.score_samples(rows)
    np.testing.assert_allclose(samples, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(anomaly, -want, rtol=0, atol=1e-5)
    assert np.array_equal(anomaly, -samples)


def test_duplicates_and_constant_columns() -> None:
    x = features(600, 8, seed=2)
    x[:, [0, 3]] = 4.0  # constant columns, never split on
    x = np.concatenate([x, np.repeat(x[:5], 100, axis=0)])  # heavy duplicates: leaves with n > 1
    forest = IsolationForest(n_estimators=25, max_samples=300, random_state=0).fit(x)
    verify_parity(export_fused(forest, 8).SerializeToString(), forest, holdout(x, seed=4))


@pytest.mark.parametrize("operator", OPERATORS)
def test_all_rows_identical_gives_one_leaf_trees(operator: TreeOperator) -> None:
    x = np.ones((50, 4), dtype=np.float32)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(x)
    assert all(est.tree_.node_count == 1 for est in forest.estimators_)
    model = export_fused(forest, 4, operator=operator)
    verify_parity(model.SerializeToString(), forest, holdout(features(50, 4, 0), seed=1))


@pytest.mark.parametrize("operator", OPERATORS)
def test_max_samples_one_scores_minus_half_like_sklearn(operator: TreeOperator) -> None:
    x = features(100, 5, seed=0)
    forest = IsolationForest(n_estimators=7, max_samples=1, random_state=0).fit(x)
    model = export_fused(forest, 5, operator=operator)
    verify_parity(model.SerializeToString(), forest, x)
    _, samples = onnx_scores(model, x[:3])
    np.testing.assert_array_equal(samples, np.float32(-0.5))


@pytest.mark.parametrize("operator", OPERATORS)
def test_graph_is_one_tree_ensemble_plus_arithmetic(operator: TreeOperator) -> None:
    x = features(500, 17, seed=0)
    forest = IsolationForest(n_estimators=30, random_state=0).fit(x)
    model = export_fused(forest, 17, operator=operator)

    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert [op for op in ops if op.startswith("TreeEnsemble")] == [operator]
    assert ops == [operator, "Exp", "Reshape", "Neg"]
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets["ai.onnx.ml"] == (5 if operator == "TreeEnsemble" else 3)
    assert [o.name for o in model.graph.output] == [OUTPUT_ANOMALY_SCORE, OUTPUT_SCORE_SAMPLES]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["aerie.n_trees"] == "30"
    assert float(props["aerie.sklearn_offset"]) == forest.offset_


def test_operators_agree_bit_for_bit() -> None:
    x = features(800, 17, seed=0)
    forest = IsolationForest(n_estimators=50, max_features=0.7, random_state=1).fit(x)
    rows = holdout(x, seed=3)
    new, _ = onnx_scores(export_fused(forest, 17, operator="TreeEnsemble"), rows)
    old, _ = onnx_scores(export_fused(forest, 17, operator="TreeEnsembleRegressor"), rows)
    np.testing.assert_array_equal(new, old)


def test_sklearn_outlier_rule_reads_anomaly_above_minus_offset() -> None:
    x = features(1000, 6, seed=0)
    forest = IsolationForest(n_estimators=40, contamination=0.05, random_state=0).fit(x)
    rows = holdout(x, seed=1)
    anomaly, _ = onnx_scores(export_fused(forest, 6), rows)
    margin = np.abs(anomaly + forest.offset_) > 1e-5  # rows on the threshold may round either way
    outlier = forest.predict(rows) == -1
    np.testing.assert_array_equal((anomaly > -forest.offset_)[margin], outlier[margin])
    assert outlier.any()
    assert (~outlier).any()


@pytest.mark.parametrize("operator", OPERATORS)
def test_non_finite_features_give_nan_on_both_outputs(operator: TreeOperator) -> None:
    x = features(300, 5, seed=0)
    forest = IsolationForest(n_estimators=10, random_state=0).fit(x)
    model = export_fused(forest, 5, operator=operator)
    rows = np.repeat(x[:1], 16, axis=0)
    for j in range(5):
        rows[3 * j : 3 * j + 3, j] = (np.nan, np.inf, -np.inf)
    anomaly, samples = onnx_scores(model, rows)
    assert np.isnan(anomaly[:15]).all()
    assert np.isnan(samples[:15]).all()
    assert np.isfinite(anomaly[15])  # the untouched row


def test_flat_forest_walk_matches_onnx() -> None:
    x = features(500, 7, seed=0)
    forest = IsolationForest(n_estimators=12, max_features=0.6, random_state=0).fit(x)
    flat = flatten_forest(forest, 7)
    rows = holdout(x, seed=2)[:50]

    def walk(row: npt.NDArray[np.float32]) -> float:
        total = 0.0
        for root in flat.roots:
            node = root
            while flat.left[node] != -1:
                goes_left = row[flat.feature[node]] <= flat.threshold[node]
                node = flat.left[node] if goes_left else flat.right[node]
            total += flat.value[node]
        return float(np.exp(total))

    walked = np.array([walk(r) for r in rows])
    anomaly, _ = onnx_scores(export_fused(forest, 7), rows)
    np.testing.assert_allclose(walked, anomaly, rtol=0, atol=1e-6)
    np.testing.assert_allclose(walked, -forest.score_samples(rows), rtol=0, atol=1e-6)


def test_average_path_length_is_sklearns() -> None:
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 4, 7, 64, 255, 256, 100_000])
    assert np.array_equal(average_path_length(n), _average_path_length(n))


def _leaf_reached(forest: Any, row: npt.NDArray[np.float32]) -> int:
    """Position in TreeEnsemble's leaf_weights of the leaf that ``row`` reaches in tree 0."""
    flat = flatten_forest(forest, forest.n_features_in_)
    node = int(flat.roots[0])
    while flat.left[node] != -1:
        node = int(flat.left[node] if row[flat.feature[node]] <= flat.threshold[node] else flat.right[node])
    return int(np.cumsum(flat.left == -1)[node] - 1)


def _with_leaf_weights(model: onnx.ModelProto, change: Any) -> bytes:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for attr in broken.graph.node[0].attribute:
        if attr.name == "leaf_weights":
            weights = numpy_helper.to_array(attr.t).copy()
            change(weights)
            attr.t.CopyFrom(numpy_helper.from_array(weights))
    return broken.SerializeToString()


def test_verify_parity_catches_a_perturbed_leaf() -> None:
    x = features(800, 17, seed=0)
    forest = IsolationForest(n_estimators=20, random_state=0).fit(x)
    model = export_fused(forest, 17)
    rows = holdout(x, seed=1)
    leaf = _leaf_reached(forest, rows[7])

    def perturb(w: npt.NDArray[np.float32]) -> None:
        w[leaf] *= 1.05  # one tree's path length off by 5 % for the rows reaching this leaf

    with pytest.raises(ExportParityError) as caught:
        verify_parity(_with_leaf_weights(model, perturb), forest, rows)
    err = caught.value
    assert err.max_abs_diff > 1e-5
    assert err.atol == 1e-5
    assert 0 <= err.worst_row < len(rows)
    assert abs(err.onnx_score - err.sklearn_score) == pytest.approx(err.max_abs_diff, rel=1e-6)
    assert err.worst_features == [float(v) for v in rows[err.worst_row]]
    assert "worst row" in str(err)
    # ... while the untouched model passes on the very same rows.
    verify_parity(model.SerializeToString(), forest, rows)


def test_verify_parity_catches_a_disabled_guard() -> None:
    x = features(300, 4, seed=0)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(x)
    model = export_fused(forest, 4)
    broken = _with_leaf_weights(model, lambda w: np.nan_to_num(w, copy=False, nan=0.0))
    with pytest.raises(ExportError, match="guard"):
        verify_parity(broken, forest, x[:20])


def test_verify_parity_rejects_bad_holdout_and_bad_bytes() -> None:
    x = features(300, 4, seed=0)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(x)
    good = export_fused(forest, 4).SerializeToString()
    with pytest.raises(ExportError, match="non-empty"):
        verify_parity(good, forest, x[:, :3])
    with pytest.raises(ExportError, match="non-empty"):
        verify_parity(good, forest, x[:0])
    nan_rows = x[:5].copy()
    nan_rows[2, 1] = np.nan
    with pytest.raises(ExportError, match="finite"):
        verify_parity(good, forest, nan_rows)
    with pytest.raises(ExportError, match="ONNX Runtime"):
        verify_parity(b"not a model", forest, x)


def test_export_rejects_what_it_cannot_export() -> None:
    x = features(200, 4, seed=0)
    with pytest.raises(ExportError, match="not fitted"):
        export_fused(IsolationForest(), 4)
    with pytest.raises(ExportError, match="IsolationForest"):
        export_fused(object(), 4)
    forest = IsolationForest(n_estimators=3, random_state=0).fit(x)
    with pytest.raises(ExportError, match="fitted on 4"):
        export_fused(forest, 17)
    with pytest.raises(ExportError, match="operator"):
        export_fused(forest, 4, operator="TreeEnsembleClassifier")  # type: ignore[arg-type]
