"""`aerie train` / `score` / `evaluate` end to end on a small generated corpus, and the bundle checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from aerie.brain.cli import main
from aerie.models.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, load_bundle
from aerie.models.corpus import CorpusOptions, write_corpus

EVENTS = 6000


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    for seed in (11, 12):
        write_corpus(root / f"seed{seed}", CorpusOptions(seed=seed, events=EVENTS, hours=4.0))
    return {"train": root / "seed11", "eval": root / "seed12"}


@pytest.fixture(scope="module")
def bundle(corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "b1"
    args = ["train", "--events", str(corpora["train"] / "events.jsonl"), "--out", str(out), "--quiet"]
    assert main([*args, "--trees", "50"]) == 0
    return out


def test_train_writes_a_verified_bundle(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    assert len(manifest.feature_names) == 17
    assert manifest.iforest["n_estimators"] == 50
    assert 0.0 < manifest.target_alert_rate < 0.05
    assert len(manifest.reference) == 17
    assert set(manifest.files) == {"model.onnx", "state.bin"}
    assert manifest.training_rows > 1000


def test_a_tampered_bundle_is_refused_whole(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)


def test_a_bundle_for_another_feature_spec_is_refused(bundle: Path) -> None:
    with pytest.raises(BundleError, match="feature spec"):
        load_bundle(bundle, feature_spec_hash="0" * 64)


def test_a_manifest_with_unknown_fields_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["surprise"] = 1
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="surprise"):
        load_bundle(copy)


def test_score_prints_one_line_per_input_line_in_order(
    bundle: Path, corpora: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    lines = (corpora["eval"] / "events.jsonl").read_bytes().splitlines()[:300]
    lines.insert(100, b"{not json")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["score", "--bundle", str(bundle), "--events", str(events)]) == 0
    out = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert [row["line"] for row in out] == list(range(1, 302))
    assert out[100]["error"] == "invalid_json"
    scored = [row for row in out if "score" in row]
    assert len(scored) == 300
    threshold = load_bundle(bundle).manifest.threshold
    assert all(row["anomaly"] == (row["score"] > threshold) for row in scored)


def test_evaluate_writes_figures_and_plots(bundle: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--events",
                str(corpora["eval"] / "events.jsonl"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0.5 < metrics["roc_auc"] <= 1.0
    assert set(metrics["recall_at_benign_alert_rate"]) == {"0.001", "0.01", "0.05"}
    assert metrics["per_scenario"]
    assert len(metrics["drift_psi"]) == 17
    for name in ("roc.png", "scores.png", "drift.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_exclude_confirmed_attacks(
    corpora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    assert (
        main(
            [
                "train",
                "--events",
                str(corpora["train"] / "events.jsonl"),
                "--labels",
                str(corpora["train"] / "labels.jsonl"),
                "--out",
                str(out),
                "--quiet",
                "--trees",
                "20",
            ]
        )
        == 0
    )
    attacks = sum(
        1
        for line in (corpora["train"] / "labels.jsonl").read_bytes().splitlines()
        if msgspec.json.decode(line)["label"] == "attack"
    )
    assert f"excluded_malicious={attacks}" in capsys.readouterr().out


def test_a_worse_retrained_bundle_is_not_promoted_unless_forced(
    bundle: Path, corpora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "candidate"
    evaluation = [
        "--eval-events",
        str(corpora["eval"] / "events.jsonl"),
        "--eval-labels",
        str(corpora["eval"] / "labels.jsonl"),
    ]
    # Two trees on eight rows each: a deliberately poor model.
    weak = [
        "train",
        "--events",
        str(corpora["train"] / "events.jsonl"),
        "--out",
        str(out),
        "--quiet",
        "--trees",
        "2",
        "--max-samples",
        "8",
        "--current",
        str(bundle),
        *evaluation,
    ]
    assert main(weak) == 2
    assert "not promoted" in capsys.readouterr().err
    assert not out.exists()
    assert main([*weak, "--force"]) == 0
    promoted = load_bundle(out).manifest
    assert promoted.parent_version == load_bundle(bundle).version
    assert promoted.evaluation["candidate_roc_auc"] < promoted.evaluation["current_roc_auc"]


def test_an_equal_retrained_bundle_is_promoted_with_a_new_version(
    bundle: Path, corpora: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "candidate"
    args = [
        "train",
        "--events",
        str(corpora["train"] / "events.jsonl"),
        "--out",
        str(out),
        "--quiet",
        "--trees",
        "50",
        "--current",
        str(bundle),
        "--eval-events",
        str(corpora["eval"] / "events.jsonl"),
        "--eval-labels",
        str(corpora["eval"] / "labels.jsonl"),
    ]
    assert main(args) == 0
    assert load_bundle(out).version != load_bundle(bundle).version


def test_bad_inputs_exit_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--bundle", str(tmp_path / "nope"), "--events", str(tmp_path / "e.jsonl")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--events", "x", "--out", "y", "--target-alert-rate", "2"])
    assert "target alert rate" in capsys.readouterr().err
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text("")
    assert main(["train", "--events", str(tiny), "--out", str(tmp_path / "b")]) == 2
    assert "need at least" in capsys.readouterr().err
