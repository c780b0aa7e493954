"""OnnxScorer: aerie's sign convention, identical scores at every batch size, errors translated to
ScorerError with stable reasons, immutability, and a fast path that is safe across threads."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import IsolationForest

from aerie.models.onnx_export import export_fused
from aerie.models.scorer import OnnxScorer, ScorerError

N_FEATURES = 17


def _rows(n: int, seed: int, scale: float = 1.0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.lognormal(0.0, 1.0, (n, N_FEATURES)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def forest() -> IsolationForest:
    return IsolationForest(n_estimators=60, max_features=0.8, random_state=0).fit(_rows(2000, 0))


@pytest.fixture(scope="module")
def model_bytes(forest: IsolationForest) -> bytes:
    return export_fused(forest, N_FEATURES).SerializeToString()


@pytest.fixture
def scorer(model_bytes: bytes) -> OnnxScorer:
    return OnnxScorer(model_bytes, version="test-1")


def test_higher_is_more_anomalous_and_equals_minus_score_samples(
    scorer: OnnxScorer, forest: IsolationForest
) -> None:
    x = np.concatenate([_rows(300, 1), _rows(20, 2, scale=1e4)])
    want = forest.score_samples(x)

    got = scorer.score(x)

    assert got.dtype == np.float32
    assert got.shape == (320,)
    np.testing.assert_allclose(got, -want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.score_samples(x), want, rtol=0, atol=1e-5)
    # The far-away rows are the anomalies, and score higher.
    assert got[300:].min() > np.median(got[:300])


def test_batch_sizes_1_16_256_give_identical_scores(scorer: OnnxScorer) -> None:
    x = _rows(256, 3)
    whole = scorer.score(x)
    by_16 = np.concatenate([scorer.score(x[i : i + 16]) for i in range(0, 256, 16)])
    one_by_one = np.array([scorer.score_one(row) for row in x], dtype=np.float32)
    as_batches_of_1 = np.concatenate([scorer.score(x[i : i + 1]) for i in range(256)])
    np.testing.assert_array_equal(whole, by_16)
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(whole, as_batches_of_1)


def test_layout_of_the_input_does_not_matter(scorer: OnnxScorer) -> None:
    x = _rows(64, 4)
    fortran = np.asfortranarray(x)
    wide = np.zeros((64, 2 * N_FEATURES), dtype=np.float32)
    wide[:, ::2] = x
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(scorer.score(fortran), scorer.score(x))
    np.testing.assert_array_equal(scorer.score(strided), scorer.score(x))
    assert scorer.score_one(strided[5]) == scorer.score(x)[5]


def test_empty_batch(scorer: OnnxScorer) -> None:
    assert scorer.score(np.empty((0, N_FEATURES), dtype=np.float32)).shape == (0,)
    assert scorer.score_samples(np.empty((0, N_FEATURES), dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, N_FEATURES), dtype=np.float64),
        np.zeros((2, N_FEATURES), dtype=np.int32),
        np.zeros((2, N_FEATURES), dtype=">f4"),
        [[0.0] * N_FEATURES],
    ],
    ids=["float64", "int32", "big-endian", "list"],
)
def test_wrong_dtype(scorer: OnnxScorer, bad: Any) -> None:
    with pytest.raises(ScorerError) as batch:
        scorer.score(bad)
    assert batch.value.reason == "dtype"
    with pytest.raises(ScorerError) as single:
        scorer.score_one(bad[0])
    assert single.value.reason == "dtype"


@pytest.mark.parametrize(
    "shape", [(N_FEATURES,), (3, N_FEATURES - 1), (3, N_FEATURES + 1), (1, 3, N_FEATURES)]
)
def test_wrong_batch_shape(scorer: OnnxScorer, shape: tuple[int, ...]) -> None:
    with pytest.raises(ScorerError) as caught:
        scorer.score(np.zeros(shape, dtype=np.float32))
    assert caught.value.reason == "shape"
    assert str(N_FEATURES) in str(caught.value)


@pytest.mark.parametrize("shape", [(1, N_FEATURES), (N_FEATURES - 1,), (N_FEATURES + 1,), ()])
def test_wrong_row_shape(scorer: OnnxScorer, shape: tuple[int, ...]) -> None:
    with pytest.raises(ScorerError) as caught:
        scorer.score_one(np.zeros(shape, dtype=np.float32))
    assert caught.value.reason == "shape"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", [0, 8, N_FEATURES - 1])
def test_non_finite_row_is_refused(scorer: OnnxScorer, value: float, column: int) -> None:
    row = _rows(1, 5)[0]
    row[column] = value
    with pytest.raises(ScorerError) as caught:
        scorer.score_one(row)
    assert caught.value.reason == "non_finite"
    assert caught.value.rows == (0,)
    # The scorer is still usable afterwards.
    row[column] = 1.0
    assert 0.0 < scorer.score_one(row) <= 1.0


def test_non_finite_rows_of_a_batch_are_named(scorer: OnnxScorer) -> None:
    x = _rows(40, 6)
    x[3, 2] = np.nan
    x[17, 0] = np.inf
    x[39, 16] = -np.inf
    for method in (scorer.score, scorer.score_samples):
        with pytest.raises(ScorerError) as caught:
            method(x)
        assert caught.value.reason == "non_finite"
        assert caught.value.rows == (3, 17, 39)


def test_extreme_finite_values_are_scored(scorer: OnnxScorer, forest: IsolationForest) -> None:
    fmax = np.finfo(np.float32).max
    x = np.array([[fmax] * N_FEATURES, [-fmax] * N_FEATURES, [1e-45] * N_FEATURES], dtype=np.float32)
    np.testing.assert_allclose(scorer.score(x), -forest.score_samples(x), rtol=0, atol=1e-5)


def test_is_immutable_and_describes_itself(scorer: OnnxScorer) -> None:
    with pytest.raises(AttributeError, match="immutable"):
        scorer.version = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del scorer.version
    with pytest.raises(AttributeError):
        scorer.anything = 1
    with pytest.raises(TypeError):
        scorer.metadata["aerie.n_trees"] = "1"  # type: ignore[index]
    assert scorer.n_features == N_FEATURES
    assert scorer.metadata["aerie.n_trees"] == "60"
    assert repr(scorer) == "OnnxScorer(version='test-1', n_features=17)"


def test_hot_swap_between_calls(model_bytes: bytes) -> None:
    other = IsolationForest(n_estimators=10, random_state=9).fit(_rows(500, 9))
    current = OnnxScorer(model_bytes, version="a")
    row = _rows(1, 10)[0]
    before = current.score_one(row)
    current = OnnxScorer(export_fused(other, N_FEATURES).SerializeToString(), version="b")
    after = current.score_one(row)
    assert current.version == "b"
    assert after == pytest.approx(-other.score_samples(row[None, :])[0], abs=1e-5)
    assert after != before


def test_fast_path_is_safe_across_threads(scorer: OnnxScorer) -> None:
    x = _rows(200, 11)
    want = scorer.score(x)
    results: dict[int, list[float]] = {}

    def worker(k: int) -> None:
        order = np.random.default_rng(k).permutation(len(x))
        got = [0.0] * len(x)
        for _ in range(3):
            for i in order:
                got[i] = scorer.score_one(x[i])
        results[k] = got

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1, 2, 3]
    for got in results.values():
        np.testing.assert_array_equal(np.array(got, dtype=np.float32), want)


def test_default_thread_pool_scores_the_same_up_to_summation_order(
    model_bytes: bytes, scorer: OnnxScorer
) -> None:
    pooled = OnnxScorer(model_bytes, intra_op_num_threads=0)
    x = _rows(256, 12)
    # Partial sums over trees from several threads are added in another order: float32 rounding only.
    np.testing.assert_allclose(pooled.score(x), scorer.score(x), rtol=0, atol=1e-6)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list[Any]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _const(name: str, values: Any, dtype: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def test_load_errors() -> None:
    with pytest.raises(ScorerError) as garbage:
        OnnxScorer(b"definitely not onnx")
    assert garbage.value.reason == "load"
    assert "cannot load" in str(garbage.value)
    with pytest.raises(ScorerError) as not_bytes:
        OnnxScorer("model.onnx")  # type: ignore[arg-type]
    assert not_bytes.value.reason == "load"
    # [N, 1] instead of [N]: refused at load, not on the first event.
    two_d = _model(
        [helper.make_node("ReduceSum", ["X", "axes"], ["anomaly_score"], keepdims=1)],
        [_const("axes", [1], np.int64)],
        ["N", 1],
    )
    with pytest.raises(ScorerError, match=r"float32 \[N\]") as wrong_rank:
        OnnxScorer(two_d)
    assert wrong_rank.value.reason == "load"


def test_a_model_without_non_finite_guard_is_refused() -> None:
    # A plain sum answers ±inf, not NaN, for an infinite feature: it would score garbage.
    unguarded = _model(
        [helper.make_node("ReduceSum", ["X", "axes"], ["anomaly_score"], keepdims=0)],
        [_const("axes", [1], np.int64)],
        ["N"],
    )
    with pytest.raises(ScorerError, match="guard") as caught:
        OnnxScorer(unguarded)
    assert caught.value.reason == "load"


def test_runtime_failure_is_translated() -> None:
    # Loads and passes the guard probe, but fails inside onnxruntime when feature 0 is 5:
    # Gather with an index out of its one-element table.
    nodes = [
        helper.make_node("Gather", ["X", "zero_i"], ["x0"], axis=1),
        helper.make_node("IsNaN", ["x0"], ["is_nan"]),
        helper.make_node("IsInf", ["x0"], ["is_inf"]),
        helper.make_node("Or", ["is_nan", "is_inf"], ["bad"]),
        helper.make_node("Where", ["bad", "zero_f", "x0"], ["clean"]),
        helper.make_node("Cast", ["clean"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
        helper.make_node("Mul", ["X", "zero_f"], ["zeros"]),
        helper.make_node("ReduceSum", ["zeros", "axes"], ["nan_if_bad"], keepdims=0),
        helper.make_node("Add", ["nan_if_bad", "looked_up"], ["anomaly_score"]),
    ]
    inits = [
        _const("zero_i", 0, np.int64),
        _const("zero_f", 0.0, np.float32),
        _const("table", [0.25], np.float32),
        _const("axes", [1], np.int64),
    ]
    scorer = OnnxScorer(_model(nodes, inits, ["N"]))
    assert scorer.score_one(np.zeros(4, dtype=np.float32)) == 0.25
    out_of_table = np.array([5.0, 0.0, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(ScorerError) as one:
        scorer.score_one(out_of_table)
    assert one.value.reason == "runtime"
    assert isinstance(one.value.__cause__, Exception)
    with pytest.raises(ScorerError) as batch:
        scorer.score(np.stack([out_of_table, out_of_table]))
    assert batch.value.reason == "runtime"
    assert scorer.score_one(np.zeros(4, dtype=np.float32)) == 0.25  # still usable
