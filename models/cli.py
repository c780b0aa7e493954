"""Model subcommands: `aerie corpus generate`, `aerie train`, `aerie score`, `aerie evaluate`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aerie.brain.cli import CliError, option

_T = TypeVar("_T", int, float)


class _BadValue(argparse.ArgumentTypeError, ValueError):
    """A bad option value. argparse prints its message for a flag; `option` for an environment
    variable (it catches ValueError)."""


# Kept in step with aerie.models.corpus.generate (not imported here: `aerie --help` must stay fast).
_DEFAULT_START = "2024-06-03T00:00:00Z"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the model's subcommands to the `aerie` command."""
    _register_corpus(sub)


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
