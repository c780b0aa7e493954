"""Per-feature reference histograms and the population stability index (PSI) against them.

Training stores one histogram per feature in the bundle manifest; the edge and `aerie evaluate`
compare live feature values with it. PSI is the usual reading: < 0.1 stable, 0.1-0.25 moving,
> 0.25 drifted.
"""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["EPSILON", "Histogram", "psi", "reference_histograms"]

# Empty bins would make PSI infinite; a small floor keeps it finite and comparable.
EPSILON = 1e-4


class Histogram(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bin edges (len = bins + 1, strictly increasing) and the fraction of rows in each bin."""

    edges: list[float]
    fractions: list[float]

    def fractions_of(self, values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Fractions of ``values`` per bin; values outside the edges count in the end bins."""
        inner = np.asarray(self.edges[1:-1], dtype=np.float64)
        index = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
        counts = np.bincount(index, minlength=len(self.fractions)).astype(np.float64)
        total: float = max(1.0, float(counts.sum()))
        return counts / total


def reference_histograms(x: npt.NDArray[np.floating], bins: int = 10) -> list[Histogram]:
    """One histogram per column of ``x`` with quantile edges (so each bin holds ~1/bins of the rows).

    A column with at most ``bins`` distinct values (a flag, a small count) gets one bin per value
    instead, or its quantiles would collapse into a single bin that can never drift.
    """
    histograms: list[Histogram] = []
    for column in np.asarray(x, dtype=np.float64).T:
        distinct = np.unique(column)
        if len(distinct) <= bins:
            middles = (distinct[1:] + distinct[:-1]) / 2.0
            edges = np.concatenate([[distinct[0] - 0.5], middles, [distinct[-1] + 0.5]])
        else:
            edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, bins + 1)))
        hist = Histogram(edges=edges.tolist(), fractions=[])
        fractions = hist.fractions_of(column)
        histograms.append(Histogram(edges=edges.tolist(), fractions=fractions.tolist()))
    return histograms


def psi(reference: Histogram, values: npt.NDArray[np.floating]) -> float:
    """Population stability index of ``values`` against ``reference``."""
    expected = np.maximum(np.asarray(reference.fractions, dtype=np.float64), EPSILON)
    actual = np.maximum(reference.fractions_of(values), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
