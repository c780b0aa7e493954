"""Model subcommands: `aerie corpus generate`, `aerie train`, `aerie score`, `aerie evaluate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aerie.brain.cli import CliError, flag, option

if TYPE_CHECKING:
    from aerie.models.bundle import Bundle
    from aerie.models.dataset import EventFile, Labels

_T = TypeVar("_T", int, float)


class _BadValue(argparse.ArgumentTypeError, ValueError):
    """A bad option value. argparse prints its message for a flag; `option` for an environment
    variable (it catches ValueError)."""


# Kept in step with aerie.models.corpus.generate (not imported here: `aerie --help` must stay fast).
_DEFAULT_START = "2024-06-03T00:00:00Z"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the model's subcommands to the `aerie` command."""
    _register_corpus(sub)
    _register_model(sub)


# ---------------------------------------------------------------------------------------------
# aerie corpus generate


def _bounded(kind: Callable[[str], _T], lo: _T, hi: _T, what: str) -> Callable[[str], _T]:
    def parse(text: str) -> _T:
        try:
            value = kind(text)
        except ValueError:
            raise _BadValue(f"{what} must be a number between {lo} and {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise _BadValue(f"{what} must be between {lo} and {hi}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _start(text: str) -> str:
    from aerie.proto.event import DecodeError, parse_time

    try:
        parse_time(text)
    except DecodeError:
        raise _BadValue(f"start must be an RFC 3339 time such as {_DEFAULT_START}, got {text!r}") from None
    return text


def _register_corpus(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    corpus = sub.add_parser(
        "corpus",
        help="labelled Falco event corpora",
        description="Labelled Falco event corpora for training and evaluating the anomaly model.",
    )
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    gen = corpus_sub.add_parser(
        "generate",
        help="simulate a cluster and write its Falco events with labels",
        description=(
            "Simulate a Kubernetes cluster (web, data, batch, CI, monitoring and system workloads, rare but "
            "legitimate maintenance, and labelled attack scenarios) and write DIR/events.jsonl (Falco JSON "
            "alerts), DIR/labels.jsonl (one label per event, same order) and DIR/scenarios.json (counts). "
            "The same options always produce the same bytes."
        ),
    )
    option(
        gen,
        "--out",
        env="AERIE_CORPUS_OUT",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory to write events.jsonl, labels.jsonl and scenarios.json into (created if missing)",
    )
    option(
        gen,
        "--seed",
        env="AERIE_CORPUS_SEED",
        type=_bounded(int, 0, 2**63 - 1, "seed"),
        default=0,
        help="random seed: which workloads are hit, when, addresses, names",
    )
    option(
        gen,
        "--events",
        env="AERIE_CORPUS_EVENTS",
        type=_bounded(int, 200, 5_000_000, "events"),
        default=100_000,
        help="approximate number of events to write",
    )
    option(
        gen,
        "--nodes",
        env="AERIE_CORPUS_NODES",
        type=_bounded(int, 1, 64, "nodes"),
        default=5,
        help="number of worker nodes (hostnames)",
    )
    option(
        gen,
        "--attack-rate",
        env="AERIE_CORPUS_ATTACK_RATE",
        type=_bounded(float, 0.0, 0.2, "attack rate"),
        default=0.01,
        help="target fraction of attack events (0 for a benign-only corpus)",
    )
    option(
        gen,
        "--start",
        env="AERIE_CORPUS_START",
        type=_start,
        default=_DEFAULT_START,
        help="start of the simulated window, RFC 3339",
    )
    option(
        gen,
        "--hours",
        env="AERIE_CORPUS_HOURS",
        type=_bounded(float, 1.0, 336.0, "hours"),
        default=24.0,
        help="length of the simulated window in hours",
    )
    gen.set_defaults(handler=_corpus_generate)


def _corpus_generate(args: argparse.Namespace) -> int:
    from aerie.models.corpus import CorpusOptions, write_corpus

    options = CorpusOptions(
        seed=args.seed,
        events=args.events,
        nodes=args.nodes,
        attack_rate=args.attack_rate,
        start=args.start,
        hours=args.hours,
    )
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    try:
        summary = write_corpus(out, options)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write the corpus: {exc.strerror or exc}") from None
    timing = summary["timing_s"]
    seconds = sum(timing.values())
    labels = summary["labels"]
    print(
        f"wrote {summary['events']} events ({labels['attack']} attack in "
        f"{sum(1 for s in summary['scenarios'].values() if s['instances'])} scenarios, "
        f"{summary['benign_kinds'].get('rare', 0)} rare benign) on {len(summary['nodes'])} nodes to {out} "
        f"in {seconds:.1f}s"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# aerie train / score / evaluate


def _register_model(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train",
        help="features → IsolationForest → fused ONNX bundle with manifest and calibrated threshold",
        description="Train a model bundle from Falco JSON lines. With --labels, confirmed malicious events "
        "are left out and confirmed false positives weigh more; with --current, the new bundle is compared "
        "with the current one on --eval-events and refused if worse, unless --force.",
    )
    option(train, "--events", env="AERIE_TRAIN_EVENTS", type=Path, required=True, help="Falco JSON lines")
    option(train, "--out", env="AERIE_TRAIN_OUT", type=Path, required=True, help="bundle directory to write")
    option(
        train,
        "--labels",
        env="AERIE_TRAIN_LABELS",
        type=Path,
        help="analyst labels, JSON lines {event_id|uuid|line, label: benign|malicious}",
    )
    option(train, "--current", env="AERIE_TRAIN_CURRENT", type=Path, help="the bundle in service now")
    option(
        train,
        "--eval-events",
        env="AERIE_TRAIN_EVAL_EVENTS",
        type=Path,
        help="labelled events both bundles are compared on (needs --eval-labels)",
    )
    option(train, "--eval-labels", env="AERIE_TRAIN_EVAL_LABELS", type=Path, help="labels of --eval-events")
    option(
        train,
        "--target-alert-rate",
        env="AERIE_TRAIN_TARGET_ALERT_RATE",
        type=_bounded(float, 1e-6, 0.5, "target alert rate"),
        help="benign alert rate the threshold is calibrated for (default 0.01)",
    )
    option(
        train,
        "--trees",
        env="AERIE_TRAIN_TREES",
        type=_bounded(int, 1, 10_000, "trees"),
        help="IsolationForest trees (default 100)",
    )
    option(
        train,
        "--max-samples",
        env="AERIE_TRAIN_MAX_SAMPLES",
        type=_bounded(int, 2, 1_000_000, "max samples"),
        help="rows per tree (default 256)",
    )
    option(train, "--seed", env="AERIE_TRAIN_SEED", type=int, help="random seed (default 0)")
    flag(
        train,
        "--force",
        env="AERIE_TRAIN_FORCE",
        help="promote even if worse than --current, or overwrite --out",
    )
    flag(train, "--quiet", env="AERIE_TRAIN_QUIET", help="no progress bar")
    train.set_defaults(handler=_train)

    score = sub.add_parser(
        "score",
        help="one JSON line per input event with score and anomaly",
        description="Score Falco JSON lines with a bundle: one JSON line per input line, in input order, "
        'with "score" (higher = more anomalous) and "anomaly"; a line that does not decode gets "error".',
    )
    option(score, "--bundle", env="AERIE_BUNDLE", type=Path, required=True, help="model bundle directory")
    option(score, "--events", env="AERIE_SCORE_EVENTS", type=Path, required=True, help="Falco JSON lines")
    option(
        score,
        "--threshold",
        env="AERIE_THRESHOLD",
        type=float,
        help="override the bundle's calibrated threshold",
    )
    flag(score, "--features", env="AERIE_SCORE_FEATURES", help="include the feature vector in each line")
    score.set_defaults(handler=_score)

    evaluate = sub.add_parser(
        "evaluate",
        help="quality figures as JSON plus plots",
        description="Score labelled events and write metrics.json (ROC AUC, PR AUC, recall at 0.1/1/5 % "
        "benign alert rates, per-scenario detection, per-feature drift) and roc.png, scores.png, drift.png.",
    )
    option(evaluate, "--bundle", env="AERIE_BUNDLE", type=Path, required=True, help="model bundle directory")
    option(
        evaluate, "--events", env="AERIE_EVALUATE_EVENTS", type=Path, required=True, help="Falco JSON lines"
    )
    option(
        evaluate,
        "--labels",
        env="AERIE_EVALUATE_LABELS",
        type=Path,
        help="labels (default: labels.jsonl beside --events)",
    )
    option(
        evaluate, "--report", env="AERIE_EVALUATE_REPORT", type=Path, required=True, help="report directory"
    )
    evaluate.set_defaults(handler=_evaluate)


def _load(path: Path) -> Bundle:
    from aerie.models.bundle import BundleError, load_bundle

    try:
        return load_bundle(path)
    except BundleError as exc:
        raise CliError(str(exc)) from None


def _read(path: Path) -> EventFile:
    from aerie.models.dataset import read_events

    try:
        return read_events(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _labels(path: Path) -> Labels:
    from aerie.models.dataset import LabelError, read_labels

    try:
        return read_labels(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except LabelError as exc:
        raise CliError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from aerie.models.bundle import Bundle, BundleError, write_bundle
    from aerie.models.promote import compare
    from aerie.models.train import TrainConfig, TrainError, train

    if args.current is not None and (args.eval_events is None or args.eval_labels is None):
        raise CliError("--current needs --eval-events and --eval-labels to compare the bundles on")
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise CliError(f"{args.out} exists and is not empty; pass --force to replace it")
    current = _load(args.current) if args.current is not None else None
    events = _read(args.events)
    labels = _labels(args.labels) if args.labels is not None else None
    given = {
        "target_alert_rate": args.target_alert_rate,
        "n_estimators": args.trees,
        "max_samples": args.max_samples,
        "seed": args.seed,
    }
    # Defaults live in TrainConfig alone; only what was given overrides them.
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    with tqdm(
        total=len(events.events), unit="ev", disable=args.quiet, desc="features", file=sys.stderr
    ) as bar:

        def progress(stage: str, n: int) -> None:
            bar.set_description(stage)
            if stage == "features":
                bar.update(n)

        try:
            result = train(
                events, labels, config, parent_version=current.version if current else None, progress=progress
            )
        except TrainError as exc:
            raise CliError(str(exc)) from None
    manifest = result.manifest
    if current is not None:
        candidate = Bundle(path=args.out, manifest=manifest, model=result.model, state=result.state)
        comparison = compare(candidate, current, _read(args.eval_events), _labels(args.eval_labels))
        print(
            f"candidate {manifest.model_version} vs current {current.version}:\n{comparison.describe()}",
            file=sys.stderr,
        )
        if not comparison.better_or_equal and not args.force:
            raise CliError(
                f"candidate is worse on {', '.join(comparison.worse)}; not promoted (--force to override)"
            )
        import msgspec

        manifest = msgspec.structs.replace(
            manifest,
            evaluation={f"candidate_{k}": v for k, v in comparison.candidate.items()}
            | {f"current_{k}": v for k, v in comparison.current.items()},
        )
    try:
        write_bundle(args.out, manifest, model=result.model, state=result.state, overwrite=args.force)
    except BundleError as exc:
        raise CliError(str(exc)) from None
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    print(
        f"bundle {manifest.model_version} → {args.out} (threshold {manifest.threshold:.6f} at "
        f"{manifest.target_alert_rate:g} benign alert rate; {counts})"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    import msgspec

    from aerie.models.dataset import Rejected
    from aerie.models.evaluate import score_events

    bundle = _load(args.bundle)
    events = _read(args.events)
    threshold = bundle.manifest.threshold if args.threshold is None else args.threshold
    scored = score_events(bundle, events)
    encoder = msgspec.json.Encoder()
    out = sys.stdout.buffer
    row = 0
    for record, line in zip(events.records, events.line_numbers, strict=True):
        if isinstance(record, Rejected):
            item: dict[str, object] = {"line": line, "error": record.reason, "detail": record.detail}
        else:
            score = float(scored.scores[row])
            item = {"line": line, "event_id": record.event_id, "score": score, "anomaly": score > threshold}
            if args.features:
                item["features"] = scored.features[row].tolist()
            row += 1
        out.write(encoder.encode(item) + b"\n")
    out.flush()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from aerie.models.evaluate import evaluate, write_report

    bundle = _load(args.bundle)
    labels_path = args.labels if args.labels is not None else args.events.parent / "labels.jsonl"
    metrics, scored, attack = evaluate(bundle, _read(args.events), _labels(labels_path))
    written = write_report(args.report, bundle, metrics, scored, attack)
    at1 = metrics["recall_at_benign_alert_rate"]["0.01"]["recall"]
    roc, pr = metrics.get("roc_auc", float("nan")), metrics.get("pr_auc", float("nan"))
    print(f"ROC AUC {roc:.4f}  PR AUC {pr:.4f}  recall@1% {at1:.4f}  → {', '.join(str(p) for p in written)}")
    return 0
