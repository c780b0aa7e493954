"""The model catches the attack scenarios on a corpus seed it was not trained on.

Trained on a benign-only corpus (a known-clean period), evaluated on another seed with attacks, both
of the default size (100k events a day: smaller corpora give the per-workload tables too little
history). The issue's bar is ≥ 95 % of attack events at ≤ 1 % benign alert rate; the test asks for
90 % so it fails on real regressions, not on seed noise. Every scenario, including the one built
only from individually ordinary events, must be detected.
"""

from __future__ import annotations

import pytest

from aerie.models.bundle import Bundle
from aerie.models.corpus import CorpusOptions, write_corpus
from aerie.models.dataset import read_events, read_labels
from aerie.models.evaluate import evaluate
from aerie.models.train import train


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("quality")
    write_corpus(root / "train", CorpusOptions(seed=21, attack_rate=0.0))
    write_corpus(root / "eval", CorpusOptions(seed=22))
    result = train(read_events(root / "train" / "events.jsonl"))
    bundle = Bundle(path=root / "bundle", manifest=result.manifest, model=result.model, state=result.state)
    figures, _, _ = evaluate(
        bundle, read_events(root / "eval" / "events.jsonl"), read_labels(root / "eval" / "labels.jsonl")
    )
    return figures


def test_attack_events_recalled_at_one_percent_benign_alert_rate(metrics: dict[str, object]) -> None:
    at_rate = metrics["recall_at_benign_alert_rate"]
    assert isinstance(at_rate, dict)
    assert at_rate["0.01"]["recall"] >= 0.90
    assert metrics["roc_auc"] >= 0.97  # type: ignore[operator]


def test_calibrated_threshold_keeps_benign_alerts_under_one_percent(metrics: dict[str, object]) -> None:
    at_threshold = metrics["at_bundle_threshold"]
    assert isinstance(at_threshold, dict)
    assert at_threshold["benign_alert_rate"] <= 0.01
    assert at_threshold["recall"] >= 0.85


def test_every_scenario_is_detected(metrics: dict[str, object]) -> None:
    scenarios = metrics["per_scenario"]
    assert isinstance(scenarios, dict)
    assert "staged_payload" in scenarios  # made only of individually ordinary events
    missed = [name for name, figures in scenarios.items() if figures["detected_at_1pct"] < 1.0]
    assert not missed
