"""The fused model's interface: its input and output names, shared by the exporter and the scorer.

Kept apart from `aerie.models.onnx_export` so that serving (`aerie.models.scorer`) does not import the
``onnx`` package (about 12 MB of the edge's resident memory) just to know three names.
"""

from __future__ import annotations

from typing import Final

__all__ = ["INPUT_NAME", "OUTPUT_ANOMALY_SCORE", "OUTPUT_SCORE_SAMPLES"]

INPUT_NAME: Final = "X"
OUTPUT_ANOMALY_SCORE: Final = "anomaly_score"
"""aerie convention: higher = more anomalous; equals ``-IsolationForest.score_samples``, in (0, 1]."""
OUTPUT_SCORE_SAMPLES: Final = "score_samples"
"""sklearn convention: higher = more normal; equals ``IsolationForest.score_samples``."""
