"""Training: events → features → IsolationForest → fused ONNX → calibrated, verified bundle.

The event stream is fed through the feature extractor in file order (the same code the edge runs), so
the rows the forest sees are exactly what serving computes. The first rows are a warm-up: every key is
new to a cold extractor, which says nothing about the events. After the warm-up, every k-th row
(never seen by the forest) calibrates the threshold at the target benign alert rate and proves ONNX
parity, and the rest fit the forest.

Analyst feedback (`aerie.models.dataset.read_labels`) changes what is fitted: events confirmed
malicious are left out of fitting and calibration; confirmed false positives (labelled benign and
flagged by a first fit) are repeated (``fp_weight`` times) and the forest refitted, so it learns
them as normal. IsolationForest ignores sample weights when it scores (leaf depth uses unweighted
counts), hence repetition rather than weights.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from aerie.models.bundle import Manifest, sha256_hex
from aerie.models.dataset import EventFile, Labels
from aerie.models.drift import reference_histograms

__all__ = ["TrainConfig", "TrainError", "TrainResult", "train"]

Progress = Callable[[str, int], None]


class TrainError(Exception):
    """Training cannot produce a usable bundle (too little data, parity failure)."""


@dataclass(frozen=True)
class TrainConfig:
    # 100 trees of 256 rows (sklearn's defaults) keep batch-1 scoring near 10 µs; more trees cost
    # latency linearly for little quality (measured with perf/bench_scoring and aerie evaluate).
    n_estimators: int = 100
    max_samples: int = 256
    max_features: float = 1.0
    target_alert_rate: float = 0.01
    warmup_fraction: float = 0.05
    calibration_fraction: float = 0.2
    fp_weight: int = 20
    seed: int = 0
    min_rows: int = 200


@dataclass
class TrainResult:
    manifest: Manifest
    model: bytes
    state: bytes
    counts: dict[str, int] = field(default_factory=dict)


def _features(events: EventFile, progress: Progress | None) -> tuple[npt.NDArray[np.float32], bytes]:
    from aerie.models.features import FeatureExtractor

    extractor = FeatureExtractor()
    decoded = events.events
    chunk = 20_000
    parts = []
    for start in range(0, len(decoded), chunk):
        parts.append(extractor.transform(decoded[start : start + chunk]))
        if progress is not None:
            progress("features", min(chunk, len(decoded) - start))
    x = np.concatenate(parts) if parts else np.zeros((0, 17), dtype=np.float32)
    return x, extractor.snapshot()


def _fit(x: npt.NDArray[np.float32], config: TrainConfig) -> IsolationForest:
    forest = IsolationForest(
        n_estimators=config.n_estimators,
        max_samples=min(config.max_samples, len(x)),
        max_features=config.max_features,
        random_state=config.seed,
    )
    return forest.fit(x)


def train(
    events: EventFile,
    labels: Labels | None = None,
    config: TrainConfig = TrainConfig(),
    *,
    parent_version: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Fit, export, verify and calibrate; returns the bundle's contents (not yet written)."""
    from aerie.models.features import FEATURE_NAMES, SPEC_HASH
    from aerie.models.onnx_export import ExportError, export_fused, verify_parity
    from aerie.models.scorer import OnnxScorer

    x, state = _features(events, progress)
    n = len(x)
    labelled = events.labelled(labels) if labels is not None else [(e, None) for e in events.events]
    malicious = np.array([lab is not None and lab.malicious for _, lab in labelled], dtype=bool)
    confirmed_benign = np.array([lab is not None and not lab.malicious for _, lab in labelled], dtype=bool)

    warmup = int(n * config.warmup_fraction)
    # Every k-th row after the warm-up calibrates, the rest fit: both span the whole period, so the
    # threshold sees the same daily rhythm as the forest (a time-ordered tail would be all night).
    every = max(2, round(1.0 / config.calibration_fraction))
    after_warmup = np.arange(warmup, n)
    held_out = (after_warmup - warmup) % every == every - 1
    fit_index = after_warmup[~held_out & ~malicious[after_warmup]]
    calibration_index = after_warmup[held_out & ~malicious[after_warmup]]
    if len(fit_index) < config.min_rows or len(calibration_index) < config.min_rows:
        raise TrainError(
            f"{events.path}: {n} usable events leave {len(fit_index)} rows to fit and "
            f"{len(calibration_index)} to calibrate; need at least {config.min_rows} each"
        )
    forest = _fit(x[fit_index], config)
    # A false positive is a benign verdict on an event the model flags. Labelled-benign rows the first
    # forest flags at the target rate join the fit again, repeated so they weigh, and the forest is
    # refitted; benign labels on events the model already finds normal change nothing.
    cut = np.quantile(-forest.score_samples(x[calibration_index]), 1.0 - config.target_alert_rate)
    candidates = np.flatnonzero(confirmed_benign)
    false_positives = (
        candidates[-forest.score_samples(x[candidates]) > cut] if len(candidates) else candidates
    )
    x_fit = x[np.concatenate([fit_index, np.repeat(false_positives, config.fp_weight)])]
    if len(false_positives):
        forest = _fit(x_fit, config)
    if progress is not None:
        progress("fit", len(x_fit))

    model = export_fused(forest, x.shape[1]).SerializeToString()
    x_calibration = x[calibration_index]
    try:
        verify_parity(model, forest, x_calibration, atol=1e-5)
    except ExportError as exc:
        raise TrainError(f"fused ONNX export does not match scikit-learn: {exc}") from None
    scores = OnnxScorer(model).score(x_calibration)
    threshold = float(np.quantile(scores, 1.0 - config.target_alert_rate, method="higher"))
    if progress is not None:
        progress("calibrate", len(x_calibration))

    digest = sha256_hex(
        events.digest.encode() + (repr(sorted(_label_key(labels))).encode() if labels else b"")
    )
    created = dt.datetime.now(dt.UTC)
    manifest = Manifest(
        model_version=f"{created:%Y%m%dT%H%M%SZ}-{sha256_hex(model)[:10]}",
        parent_version=parent_version,
        created_at=created.isoformat(timespec="seconds"),
        feature_names=list(FEATURE_NAMES),
        feature_spec_hash=SPEC_HASH,
        iforest={
            "n_estimators": config.n_estimators,
            "max_samples": int(forest.max_samples_),
            "max_features": config.max_features,
            "random_state": config.seed,
            "contamination": "auto",
        },
        threshold=threshold,
        target_alert_rate=config.target_alert_rate,
        calibration_rows=len(x_calibration),
        training_rows=len(x_fit),
        training_data_digest=digest,
        reference=reference_histograms(x[fit_index]),
    )
    counts = {
        "events": n,
        "rejected_lines": sum(events.rejected.values()),
        "warmup": warmup,
        "fit_rows": len(x_fit),
        "calibration_rows": len(x_calibration),
        "excluded_malicious": int(malicious.sum()),
        "false_positives_added": len(false_positives),
    }
    return TrainResult(manifest=manifest, model=model, state=state, counts=counts)


def _label_key(labels: Labels | None) -> list[tuple[str, str]]:
    if labels is None:
        return []
    return [(k, v.label) for k, v in labels.by_id.items()] + [
        (str(k), v.label) for k, v in labels.by_line.items()
    ]
