"""`Pipeline` + `Detector`: a real JSON-lines input, a real bundle, a real disk spool."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from aerie.brain.cli import main
from aerie.edge.detector import BatchResult, Detector
from aerie.edge.inputs import JsonLinesInput
from aerie.edge.pipeline import Pipeline
from aerie.edge.spool import AsyncSpool, Spool
from aerie.models.bundle import Bundle, load_bundle
from aerie.models.corpus import CorpusOptions, write_corpus
from aerie.models.features import FeatureExtractor
from aerie.models.scorer import OnnxScorer
from aerie.perf.bench_edge import Burst
from aerie.proto.envelope import HEADER_SCHEMA, HEADER_TRACEPARENT, decode_anomaly
from aerie.proto.event import FalcoEvent, decode_json

EVENTS = 4000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusOptions(seed=31, events=EVENTS, hours=2.0))
    return root / "events.jsonl"


@pytest.fixture(scope="module")
def bundle(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("bundles") / "b1"
    assert main(["train", "--events", str(corpus), "--out", str(out), "--quiet", "--trees", "25"]) == 0
    return load_bundle(out)


def make_detector(bundle: Bundle, *, threshold: float | None = None) -> Detector:
    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    return Detector(
        node="node-a",
        extractor=extractor,
        model=OnnxScorer(bundle.model, version=bundle.version),
        threshold=bundle.manifest.threshold if threshold is None else threshold,
    )


def reference_scores(bundle: Bundle, corpus: Path) -> tuple[list[FalcoEvent], npt.NDArray[np.float32]]:
    events = [decode_json(line) for line in corpus.read_bytes().splitlines() if line.strip()]
    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    return events, OnnxScorer(bundle.model).score(extractor.transform(events))


async def run(pipeline: Pipeline) -> None:
    await pipeline.run()
    await pipeline.spool.close()


async def test_every_event_is_scored_and_every_anomaly_spooled_as_an_envelope(
    bundle: Bundle, corpus: Path, tmp_path: Path
) -> None:
    events, scores = reference_scores(bundle, corpus)
    batches: list[tuple[BatchResult, npt.NDArray[np.int64]]] = []
    spool = await AsyncSpool.open(tmp_path / "spool", max_bytes=1 << 26, segment_bytes=1 << 22)
    pipeline = Pipeline(
        JsonLinesInput(corpus),
        make_detector(bundle),
        spool,
        max_batch=32,
        shed=False,
        on_batch=lambda result, latency, _wait, _spool: batches.append((result, latency)),
    )
    await run(pipeline)

    expected = [i for i, s in enumerate(scores) if s > bundle.manifest.threshold]
    assert pipeline.stats.scored == len(events) > 3000
    assert pipeline.stats.shed == {}
    assert pipeline.stats.anomalies == pipeline.stats.spooled == len(expected) > 0
    assert all(len(r.scores) <= 32 for r, _ in batches)
    # Batching changes nothing: the same scores as one pass over the file.
    np.testing.assert_array_equal(np.concatenate([r.scores for r, _ in batches]), scores)
    assert all((latency >= 0).all() for _, latency in batches)

    with Spool(tmp_path / "spool", max_bytes=1 << 26, segment_bytes=1 << 22) as reread:
        entries = reread.peek(10_000)
    assert [decode_anomaly(e.record.value).event_id for e in entries] == [
        events[i].event_id for i in expected
    ]
    first = entries[0].record
    anomaly = decode_anomaly(first.value)
    assert anomaly.node == "node-a"
    assert anomaly.model_version == bundle.version
    assert anomaly.threshold == bundle.manifest.threshold
    assert anomaly.score == pytest.approx(float(scores[expected[0]]))
    assert len(anomaly.features) == 17
    assert first.key == anomaly.partition_key
    assert dict(first.headers)[HEADER_SCHEMA] == b"1"
    assert dict(first.headers)[HEADER_TRACEPARENT] == anomaly.traceparent.encode()
    # A new trace per anomaly.
    traces = {decode_anomaly(e.record.value).trace.trace_id for e in entries}
    assert len(traces) == len(entries)


async def test_a_burst_beyond_the_queue_is_shed_and_counted_then_the_pipeline_keeps_up(
    bundle: Bundle, corpus: Path, tmp_path: Path
) -> None:
    events, _ = reference_scores(bundle, corpus)
    spool = await AsyncSpool.open(tmp_path / "spool", max_bytes=1 << 26, segment_bytes=1 << 22)
    pipeline = Pipeline(Burst(events), make_detector(bundle), spool, queue_size=100, max_batch=16, shed=True)
    await run(pipeline)
    stats = pipeline.stats
    assert stats.shed["queue_full"] > 0
    # Nothing is lost silently: every event was either scored or shed with a reason.
    assert stats.scored + stats.shed["queue_full"] == len(events)
    assert stats.accepted == stats.scored


async def test_blocking_mode_sheds_nothing(bundle: Bundle, corpus: Path, tmp_path: Path) -> None:
    events, _ = reference_scores(bundle, corpus)
    spool = await AsyncSpool.open(tmp_path / "spool", max_bytes=1 << 26, segment_bytes=1 << 22)
    pipeline = Pipeline(Burst(events), make_detector(bundle), spool, queue_size=100, max_batch=16, shed=False)
    await run(pipeline)
    assert pipeline.stats.scored == len(events)
    assert pipeline.stats.shed == {}


async def test_model_and_threshold_swaps_take_effect_between_batches(
    bundle: Bundle, corpus: Path, tmp_path: Path
) -> None:
    events, _ = reference_scores(bundle, corpus)
    detector = make_detector(bundle, threshold=float("inf"))
    seen: list[tuple[str, float]] = []

    class Swapped:
        version = "swapped"

        def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return np.ones(len(x), dtype=np.float32)

    def on_batch(result: BatchResult, *_: object) -> None:
        seen.append((result.model_version, result.threshold))
        if len(seen) == 3:
            detector.model = Swapped()
            detector.threshold = 0.5

    spool = await AsyncSpool.open(tmp_path / "spool", max_bytes=1 << 26, segment_bytes=1 << 22)
    pipeline = Pipeline(Burst(events[:400]), detector, spool, max_batch=50, shed=False, on_batch=on_batch)
    await run(pipeline)
    assert seen[:3] == [(bundle.version, float("inf"))] * 3
    assert set(seen[3:]) == {("swapped", 0.5)}
    # Every event after the swap scored 1.0 > 0.5: all anomalies, all spooled.
    assert pipeline.stats.anomalies == 400 - 150


def test_envelope_decodes_with_unknown_extra_fields(bundle: Bundle, corpus: Path) -> None:
    detector = make_detector(bundle, threshold=-1.0)
    events, _ = reference_scores(bundle, corpus)
    result = detector.process(events[:3])
    assert len(result.records) == 3
    raw = msgspec.json.decode(result.records[0].value)
    raw["added_in_a_later_version"] = True
    assert decode_anomaly(msgspec.json.encode(raw)).event_id == events[0].event_id
