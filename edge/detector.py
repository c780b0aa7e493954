"""The edge's decision, synchronous and allocation-light: events → features → score → threshold → records.

`Detector.process` takes one micro-batch of decoded events and returns their scores and, for the
events above the threshold, the spool records to publish (the anomaly envelope from
`aerie.proto.envelope`, keyed by node/container, with the schema-version header and a new W3C
``traceparent``: a trace starts here, one per anomaly).

The model and the threshold are plain attributes, replaced whole by the daemon when a new bundle is
swapped in or the policy changes the threshold; `process` reads each once per batch, so a swap takes
effect between batches and never inside one. The feature state is the node's own history and is never
replaced by a swap.

Kept free of asyncio so the benchmark can drive exactly the code the daemon runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from aerie.edge.spool import SpoolRecord
from aerie.models.features import FeatureExtractor
from aerie.models.scorer import ScorerError
from aerie.proto.envelope import Anomaly, TraceContext, encode_anomaly
from aerie.proto.event import FalcoEvent

__all__ = ["BatchResult", "Detector", "ScoringModel"]


class ScoringModel(Protocol):
    """What the detector needs of a model: `aerie.models.scorer.OnnxScorer` is the one served."""

    @property
    def version(self) -> str: ...

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Scores [N] of rows [N, F]; higher = more anomalous."""
        ...


@dataclass
class BatchResult:
    """One processed micro-batch: what was decided and what each stage cost."""

    scores: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]
    records: list[SpoolRecord]
    unscored: int = 0
    """Events whose features the model refused (non-finite): counted, never published."""
    features_ns: int = 0
    score_ns: int = 0
    decide_ns: int = 0
    model_version: str = ""
    threshold: float = 0.0
    anomaly_rows: list[int] = field(default_factory=list)


class Detector:
    """Features, score and threshold for one node (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        *,
        node: str,
        extractor: FeatureExtractor,
        model: ScoringModel,
        threshold: float,
    ) -> None:
        self.node = node
        self.extractor = extractor
        self.model = model
        self.threshold = threshold

    def process(self, events: list[FalcoEvent]) -> BatchResult:
        model, threshold = self.model, self.threshold
        t0 = time.perf_counter_ns()
        x = self.extractor.transform(events)
        t1 = time.perf_counter_ns()
        scores, unscored = _score(model, x)
        t2 = time.perf_counter_ns()
        rows = np.flatnonzero(scores > threshold).tolist()
        records: list[SpoolRecord] = []
        if rows:
            now_ns = time.time_ns()
            spec = self.extractor.spec_hash
            for i in rows:
                anomaly = Anomaly(
                    event_id=events[i].event_id,
                    traceparent=TraceContext.new().traceparent,
                    node=self.node,
                    model_version=model.version,
                    feature_spec_hash=spec,
                    score=float(scores[i]),
                    threshold=threshold,
                    features=x[i].tolist(),
                    detected_at_ns=now_ns,
                    event=events[i],
                )
                records.append(
                    SpoolRecord(
                        value=encode_anomaly(anomaly),
                        key=anomaly.partition_key,
                        headers=tuple(anomaly.headers()),
                    )
                )
        t3 = time.perf_counter_ns()
        return BatchResult(
            scores=scores,
            features=x,
            records=records,
            unscored=unscored,
            features_ns=t1 - t0,
            score_ns=t2 - t1,
            decide_ns=t3 - t2,
            model_version=model.version,
            threshold=threshold,
            anomaly_rows=rows,
        )


def _score(model: ScoringModel, x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int]:
    """Scores of every row; rows the model refuses score -inf (never above a threshold) and are counted."""
    try:
        return model.score(x), 0
    except ScorerError as exc:
        if exc.reason != "non_finite" or not exc.rows:
            raise
        refused = list(exc.rows)
    bad = np.zeros(len(x), dtype=bool)
    bad[refused] = True
    scores = np.full(len(x), -np.inf, dtype=np.float32)
    if (~bad).any():
        scores[~bad] = model.score(np.ascontiguousarray(x[~bad]))
    return scores, int(bad.sum())
