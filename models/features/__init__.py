"""Per-event features for the anomaly model: 17 floats from numba kernels over bounded per-node state.

The same code serves training (`FeatureExtractor.transform` over a time-ordered event file) and the
edge daemon (`FeatureExtractor.transform_one`, one event at a time). models/FEATURES.md documents each
feature; `SPEC_HASH` identifies the definitions and parameters a model bundle was trained with.
"""

from __future__ import annotations

from aerie.models.features.extractor import FeatureExtractor
from aerie.models.features.spec import (
    FEATURE_NAMES,
    FEATURE_RANGES,
    N_FEATURES,
    FeatureParams,
    spec_hash,
)
from aerie.models.features.state import SnapshotError, SpecMismatchError

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_RANGES",
    "N_FEATURES",
    "SPEC_HASH",
    "FeatureExtractor",
    "FeatureParams",
    "SnapshotError",
    "SpecMismatchError",
    "spec_hash",
]

#: Spec hash of the default parameters: what a model bundle's manifest records.
SPEC_HASH: str = spec_hash(FeatureParams())
