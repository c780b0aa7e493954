"""Deciding whether a retrained bundle may replace the current one.

Both bundles score the same labelled evaluation file, each from its own saved feature state. The
candidate is refused when it is worse on any deciding figure by more than ``tolerance``: recall at a
1 % benign alert rate, PR AUC, ROC AUC. A person may force it (the refusal says what got worse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aerie.models.bundle import Bundle
from aerie.models.dataset import EventFile, Labels
from aerie.models.evaluate import evaluate

__all__ = ["DECIDING", "Comparison", "compare"]

DECIDING = ("recall_at_1pct", "pr_auc", "roc_auc")


def _figures(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        "recall_at_1pct": float(metrics["recall_at_benign_alert_rate"]["0.01"]["recall"]),
        "pr_auc": float(metrics.get("pr_auc", float("nan"))),
        "roc_auc": float(metrics.get("roc_auc", float("nan"))),
    }


@dataclass(frozen=True)
class Comparison:
    candidate: dict[str, float]
    current: dict[str, float]
    worse: tuple[str, ...]

    @property
    def better_or_equal(self) -> bool:
        return not self.worse

    def describe(self) -> str:
        rows = [
            f"  {name:<15} current {self.current[name]:.4f}  candidate {self.candidate[name]:.4f}"
            + ("  WORSE" if name in self.worse else "")
            for name in DECIDING
        ]
        return "\n".join(rows)


def compare(
    candidate: Bundle, current: Bundle, events: EventFile, labels: Labels, tolerance: float = 0.002
) -> Comparison:
    """Score ``events`` with both bundles and list the deciding figures on which the candidate is worse."""
    new = _figures(evaluate(candidate, events, labels)[0])
    old = _figures(evaluate(current, events, labels)[0])
    worse = tuple(name for name in DECIDING if new[name] < old[name] - tolerance)
    return Comparison(candidate=new, current=old, worse=worse)
