"""Scoring a labelled event file with a bundle, the quality figures, and the plots.

Scoring restores the bundle's feature state and runs the events through it in order, exactly as the
edge would after loading the bundle.

Figures (``metrics.json``): ROC AUC and PR AUC; recall at 0.1 %, 1 % and 5 % benign alert rates (the
threshold for each is the benign score quantile of this file); the benign alert rate and recall at the
bundle's calibrated threshold; per-scenario event recall and whether any event of the scenario was
flagged, at the 1 % rate and at the bundle threshold; PSI of every feature against the bundle's
reference histograms.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aerie.models.bundle import Bundle
from aerie.models.dataset import EventFile, Labels
from aerie.models.drift import psi

__all__ = ["ALERT_RATES", "Scored", "evaluate", "score_events", "write_report"]

ALERT_RATES = (0.001, 0.01, 0.05)


@dataclass
class Scored:
    features: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float64]


def score_events(bundle: Bundle, events: EventFile, batch: int = 4096) -> Scored:
    """Features and scores (higher = more anomalous) of every decoded event, in file order."""
    from aerie.models.features import FeatureExtractor

    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    scorer = bundle.scorer
    decoded = events.events
    features = [extractor.transform(decoded[i : i + batch]) for i in range(0, len(decoded), batch)]
    x = (
        np.concatenate(features)
        if features
        else np.zeros((0, len(bundle.manifest.feature_names)), np.float32)
    )
    scores = scorer.score(x).astype(np.float64) if len(x) else np.zeros(0)
    return Scored(features=x, scores=scores)


def _recall_at(
    scores: npt.NDArray[np.float64], attack: npt.NDArray[np.bool_], rate: float
) -> tuple[float, float]:
    benign = scores[~attack]
    threshold = float(np.quantile(benign, 1.0 - rate, method="higher")) if len(benign) else float("inf")
    return threshold, float(np.mean(scores[attack] > threshold)) if attack.any() else float("nan")


def evaluate(bundle: Bundle, events: EventFile, labels: Labels) -> tuple[dict[str, Any], Scored, np.ndarray]:
    """The figures for ``events`` under ``bundle``; also returns the scores and the attack mask."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scored = score_events(bundle, events)
    pairs = events.labelled(labels)
    attack = np.array([lab is not None and lab.malicious for _, lab in pairs], dtype=bool)
    scenario = [lab.scenario if lab is not None and lab.malicious else None for _, lab in pairs]
    scores = scored.scores
    metrics: dict[str, Any] = {
        "bundle": bundle.version,
        "events": len(scores),
        "attack_events": int(attack.sum()),
        "unlabelled_events": sum(1 for _, lab in pairs if lab is None),
    }
    if attack.any() and (~attack).any():
        metrics["roc_auc"] = float(roc_auc_score(attack, scores))
        metrics["pr_auc"] = float(average_precision_score(attack, scores))
    at_rate: dict[str, dict[str, float]] = {}
    thresholds: dict[str, float] = {}
    for rate in ALERT_RATES:
        threshold, recall = _recall_at(scores, attack, rate)
        at_rate[f"{rate:g}"] = {"threshold": threshold, "recall": recall}
        thresholds[f"{rate:g}"] = threshold
    metrics["recall_at_benign_alert_rate"] = at_rate
    flagged = scores > bundle.manifest.threshold
    metrics["at_bundle_threshold"] = {
        "threshold": bundle.manifest.threshold,
        "benign_alert_rate": float(flagged[~attack].mean()) if (~attack).any() else float("nan"),
        "recall": float(flagged[attack].mean()) if attack.any() else float("nan"),
    }
    per_scenario: dict[str, dict[str, float]] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(scenario):
        if name is not None:
            groups[name].append(index)
    one_percent = thresholds["0.01"]
    for name, rows in sorted(groups.items()):
        s = scores[rows]
        per_scenario[name] = {
            "events": len(rows),
            "recall_at_1pct": float(np.mean(s > one_percent)),
            "detected_at_1pct": float(np.any(s > one_percent)),
            "recall_at_bundle_threshold": float(np.mean(s > bundle.manifest.threshold)),
            "max_score": float(s.max()),
        }
    metrics["per_scenario"] = per_scenario
    metrics["drift_psi"] = (
        {
            name: psi(ref, scored.features[:, i])
            for i, (name, ref) in enumerate(
                zip(bundle.manifest.feature_names, bundle.manifest.reference, strict=True)
            )
        }
        if len(scores)
        else {}
    )
    return metrics, scored, attack


def write_report(
    directory: Path, bundle: Bundle, metrics: dict[str, Any], scored: Scored, attack: npt.NDArray[np.bool_]
) -> list[Path]:
    """``metrics.json`` and the plots ``roc.png``, ``scores.png``, ``drift.png`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "metrics.json"]
    written[0].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    scores = scored.scores

    if attack.any() and (~attack).any():
        fpr, tpr, _ = roc_curve(attack, scores)
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.plot(fpr, tpr, label=f"ROC AUC {metrics.get('roc_auc', float('nan')):.4f}")
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
        for rate in ALERT_RATES:
            ax.axvline(rate, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("benign alert rate (false positive rate, log)")
        ax.set_ylabel("attack events recalled")
        ax.set_title(f"ROC — bundle {bundle.version}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(directory / "roc.png", dpi=110)
        plt.close(fig)
        written.append(directory / "roc.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    low, high = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    bins = np.linspace(low, max(high, low + 1e-6), 80).tolist()
    ax.hist(scores[~attack], bins=bins, alpha=0.6, label=f"benign ({(~attack).sum()})", density=True)
    if attack.any():
        ax.hist(scores[attack], bins=bins, alpha=0.6, label=f"attack ({attack.sum()})", density=True)
    ax.axvline(bundle.manifest.threshold, color="red", linestyle="--", label="bundle threshold")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("density (log)")
    ax.set_title("Score distributions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "scores.png", dpi=110)
    plt.close(fig)
    written.append(directory / "scores.png")

    drift: dict[str, float] = metrics.get("drift_psi", {})
    if drift:
        names = list(drift)
        values = [drift[n] for n in names]
        fig, ax = plt.subplots(figsize=(7, 5.5))
        colours = ["tab:red" if v > 0.25 else "tab:orange" if v > 0.1 else "tab:green" for v in values]
        ax.barh(names, values, color=colours)
        ax.axvline(0.1, color="grey", linestyle=":")
        ax.axvline(0.25, color="grey", linestyle="--")
        ax.invert_yaxis()
        ax.set_xlabel("PSI against the bundle's training reference (0.1 moving, 0.25 drifted)")
        ax.set_title("Per-feature drift")
        fig.tight_layout()
        fig.savefig(directory / "drift.png", dpi=110)
        plt.close(fig)
        written.append(directory / "drift.png")
    return written
