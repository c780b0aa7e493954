"""Corpus generation: options, the run, rendering and the three output files.

`generate` builds the world, runs the generators in a fixed order (rollouts and restarts first, as
they change which pods exist; then attacks and the other rare activity; then routine sources fill
the remaining budget), assigns pids, sorts every syscall by time, renders each through the rule
engine, and returns the events with their labels. `write_corpus` writes them.

Determinism: every random choice comes from a stream seeded by the corpus seed and the name of the
generator that makes it; nothing reads the clock or iterates a hash-ordered set. The same options
give the same bytes.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random
from typing import Any, Final

import msgspec

from aerie.proto.event import FalcoEvent, format_time, parse_time

from .activity import Sink
from .behaviour import Ctx
from .maintenance import RARE
from .model import NS_PER_S, Sys
from .rules import RuleEngine, time_prefix
from .scenarios import SCENARIOS, Attack, run_scenario
from .timeline import build_profiles
from .workloads import BASELINE_SHARES, SOURCES, web_traffic
from .world import build_world

__all__ = [
    "DEFAULT_START",
    "GENERATOR_VERSION",
    "Corpus",
    "CorpusLabel",
    "CorpusOptions",
    "generate",
    "write_corpus",
]

GENERATOR_VERSION: Final = "1.0.0"
DEFAULT_START: Final = "2024-06-03T00:00:00Z"  # a Monday; fixed so output never depends on the clock
MIN_EVENTS: Final = 200
MAX_EVENTS: Final = 5_000_000
MAX_NODES: Final = 64
MAX_ATTACK_RATE: Final = 0.2
MAX_HOURS: Final = 24 * 14


@dataclass(frozen=True, slots=True)
class CorpusOptions:
    """What to generate. `validate` states the accepted ranges."""

    seed: int = 0
    events: int = 100_000
    nodes: int = 5
    attack_rate: float = 0.01
    start: str = DEFAULT_START
    hours: float = 24.0

    def validate(self) -> None:
        """Raise `ValueError` naming the first option out of range."""
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not MIN_EVENTS <= self.events <= MAX_EVENTS:
            raise ValueError(f"events must be between {MIN_EVENTS} and {MAX_EVENTS}, got {self.events}")
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, got {self.nodes}")
        if not 0.0 <= self.attack_rate <= MAX_ATTACK_RATE:
            raise ValueError(f"attack rate must be between 0 and {MAX_ATTACK_RATE}, got {self.attack_rate}")
        if not 1.0 <= self.hours <= MAX_HOURS:
            raise ValueError(f"hours must be between 1 and {MAX_HOURS}, got {self.hours}")
        self.start_ns  # noqa: B018 - parses, raising ValueError on a bad timestamp

    @property
    def start_ns(self) -> int:
        try:
            return parse_time(self.start)
        except ValueError as exc:
            raise ValueError(f"start must be an RFC 3339 time such as {DEFAULT_START}: {exc}") from None


class CorpusLabel(msgspec.Struct, frozen=True, kw_only=True):
    """Ground truth for one event, written beside it (never inside it) in labels.jsonl.

    ``line`` is the 1-based line of the event in events.jsonl; ``uuid`` is the event's ``uuid``.
    ``label`` is ``"benign"`` or ``"attack"``. Attacks name their ``scenario``, the ``instance``
    (which intrusion of that scenario) and the MITRE ATT&CK ``tactic``/``technique`` of their step.
    Benign events say whether they are routine (``benign_kind="baseline"``) or rare-but-legitimate
    (``"rare"``: rollouts, backups, debugging sessions...). ``activity`` names the generator.
    """

    line: int
    uuid: str
    label: str
    scenario: str | None
    instance: int | None
    tactic: str | None
    technique: str | None
    benign_kind: str | None
    activity: str


@dataclass(slots=True)
class Corpus:
    events: list[FalcoEvent]
    labels: list[CorpusLabel]
    summary: dict[str, Any]


def _uuid4(rng: Random) -> str:
    value = rng.getrandbits(128)
    value = (value & ~(0xF << 76)) | (4 << 76)  # version 4
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class _Simulation:
    records: list[Sys]
    attacks: list[Attack]
    t0: int
    t1: int
    seconds: float


def _simulate(options: CorpusOptions) -> _Simulation:
    options.validate()
    started = time.perf_counter()
    seed = options.seed
    t0 = options.start_ns
    t1 = t0 + int(options.hours * 3600 * NS_PER_S)
    world = build_world(Random(f"aerie-corpus/{seed}/world"), options.nodes, t0, t1)
    profiles = build_profiles(Random(f"aerie-corpus/{seed}/profiles"), t0, t1)
    sink = Sink()
    ctx = Ctx(seed, world, sink, profiles)
    scale = options.events / 100_000

    def rare(name: str) -> None:
        fn, per_100k = RARE[name]
        fn(ctx, 0 if per_100k == 0 else max(1, round(per_100k * scale)))

    # Pods first: rollouts and restarts decide which pods exist when.
    rare("rollouts")
    rare("container_restarts")
    attacks = _run_attacks(ctx, round(options.attack_rate * options.events))
    for name in RARE:
        if name not in ("rollouts", "container_restarts"):
            rare(name)
    budget = max(0, options.events - len(sink.records))
    for name, share in BASELINE_SHARES.items():
        SOURCES[name](ctx, int(budget * share))
    # Periodic sources cannot always stretch to their share (cron keeps a minimum period): more
    # requests make up the difference.
    shortfall = options.events - len(sink.records)
    if shortfall > options.events // 100:
        web_traffic(ctx, shortfall, stream="web_traffic/top-up")
    pid_rng = Random(f"aerie-corpus/{seed}/pids")
    for node in world.nodes:
        node.assign_pids(pid_rng, pid_rng.randint(180, 420))
    sink.records.sort(key=lambda s: (s.t, s.seq))
    return _Simulation(sink.records, attacks, t0, t1, time.perf_counter() - started)


def generate(options: CorpusOptions) -> Corpus:
    """Simulate the cluster and return its Falco events, labels and summary.

    Raises `ValueError` for options out of range (see `CorpusOptions.validate`).
    """
    sim = _simulate(options)
    started = time.perf_counter()
    events: list[FalcoEvent] = []
    labels: list[CorpusLabel] = []
    tally = _Tally()
    for event, label in _render(sim.records, sim.t0, sim.t1, Random(f"aerie-corpus/{options.seed}/uuid")):
        events.append(event)
        labels.append(label)
        tally.add(event, label)
    summary = tally.summary(options, sim)
    summary["timing_s"] = {
        "simulate": round(sim.seconds, 3),
        "render": round(time.perf_counter() - started, 3),
    }
    return Corpus(events, labels, summary)


def _run_attacks(ctx: Ctx, target: int) -> list[Attack]:
    """Scenario instances until their events reach ``target``: every scenario once, then at random."""
    if target <= 0:
        return []
    rng = ctx.rng("attack-schedule")
    order = list(SCENARIOS)
    rng.shuffle(order)
    attacks: list[Attack] = []
    counts: Counter[str] = Counter()
    produced = 0
    lo, hi = ctx.t0 + 10 * 60 * NS_PER_S, ctx.t1 - 45 * 60 * NS_PER_S
    while produced < target and len(attacks) < target:
        scenario = order[len(attacks)] if len(attacks) < len(order) else rng.choice(SCENARIOS)
        # Intrusions happen at any hour, with some bias towards busy hours when they hide better.
        t = ctx.profiles["web"].sample(rng) if rng.random() < 0.5 else rng.randrange(lo, max(lo + 1, hi))
        t = min(max(t, lo), hi)
        attack = run_scenario(ctx, scenario, counts[scenario.name], t)
        attacks.append(attack)
        produced += attack.act.count
        counts[scenario.name] += 1
    return attacks


def _render(
    records: list[Sys], t0: int, t1: int, uuid_rng: Random
) -> Iterator[tuple[FalcoEvent, CorpusLabel]]:
    """Each time-ordered syscall that raises an alert inside the window, as an event and its label."""
    engine = RuleEngine()
    line = 0
    for s in records:
        if not t0 <= s.t < t1:
            continue
        rendered = engine.render(s)
        if rendered is None:
            continue
        rule = rendered.rule
        uuid = _uuid4(uuid_rng)
        line += 1
        event = FalcoEvent(
            time_ns=s.t,
            priority=rule.priority,
            rule=rule.name,
            output=time_prefix(s.t, rule.priority) + rendered.text,
            source=rule.source,
            hostname=s.proc.node.hostname,
            tags=rule.tags,
            output_fields=rendered.fields,
            uuid=uuid,
        )
        lab = s.label
        yield (
            event,
            CorpusLabel(
                line=line,
                uuid=uuid,
                label=lab.label,
                scenario=lab.scenario,
                instance=lab.instance,
                tactic=lab.tactic,
                technique=lab.technique,
                benign_kind=lab.benign_kind,
                activity=lab.activity,
            ),
        )


class _Tally:
    """Counts for scenarios.json, kept while events stream past."""

    def __init__(self) -> None:
        self.total = 0
        self.labels: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.activities: Counter[str] = Counter()
        self.nodes: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self.priorities: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.attack_rules: Counter[str] = Counter()
        self.scenario_events: Counter[str] = Counter()
        self.scenario_nodes: dict[str, Counter[str]] = {}
        self.scenario_steps: dict[str, Counter[str]] = {}
        self.instance_events: Counter[tuple[str, int]] = Counter()

    def add(self, event: FalcoEvent, label: CorpusLabel) -> None:
        self.total += 1
        self.labels[label.label] += 1
        self.activities[label.activity] += 1
        self.nodes[event.hostname] += 1
        self.rules[event.rule] += 1
        self.priorities[event.priority.falco_name] += 1
        self.sources[event.source] += 1
        if label.benign_kind:
            self.kinds[label.benign_kind] += 1
        if label.scenario is not None:
            self.scenario_events[label.scenario] += 1
            self.scenario_nodes.setdefault(label.scenario, Counter())[event.hostname] += 1
            self.scenario_steps.setdefault(label.scenario, Counter())[
                f"{label.tactic}/{label.technique}"
            ] += 1
            self.attack_rules[event.rule] += 1
            self.instance_events[(label.scenario, label.instance or 0)] += 1

    def summary(self, options: CorpusOptions, sim: _Simulation) -> dict[str, Any]:
        scenarios: dict[str, Any] = {}
        for scenario in SCENARIOS:
            name = scenario.name
            scenarios[name] = {
                "tactic": scenario.tactic,
                "technique": scenario.technique,
                "events": self.scenario_events.get(name, 0),
                "instances": sum(1 for a in sim.attacks if a.scenario is scenario),
                "nodes": dict(sorted(self.scenario_nodes.get(name, Counter()).items())),
                "steps": dict(sorted(self.scenario_steps.get(name, Counter()).items())),
            }
        instances = [
            {
                "scenario": a.scenario.name,
                "instance": a.instance,
                "victim": a.victim_name,
                "namespace": a.pod.workload.ns,
                "pod": a.pod.name,
                "node": a.node,
                "start": format_time(a.start),
                "events": self.instance_events.get((a.scenario.name, a.instance), 0),
            }
            for a in sim.attacks
        ]
        attacks = self.labels.get("attack", 0)
        return {
            "generator": "aerie.models.corpus",
            "version": GENERATOR_VERSION,
            "seed": options.seed,
            "options": asdict(options),
            "window": {"start": format_time(sim.t0), "end": format_time(sim.t1)},
            "events": self.total,
            "labels": {"benign": self.labels.get("benign", 0), "attack": attacks},
            "attack_fraction": round(attacks / self.total, 6) if self.total else 0.0,
            "benign_kinds": dict(sorted(self.kinds.items())),
            "activities": dict(sorted(self.activities.items())),
            "scenarios": scenarios,
            "instances": instances,
            "nodes": dict(sorted(self.nodes.items())),
            "sources": dict(sorted(self.sources.items())),
            "priorities": dict(sorted(self.priorities.items())),
            "rules": dict(sorted(self.rules.items())),
            "attack_rules": dict(sorted(self.attack_rules.items())),
        }


_ENCODER: Final = msgspec.json.Encoder()


_FLUSH_BYTES: Final = 1 << 22


def write_corpus(out: Path, options: CorpusOptions) -> dict[str, Any]:
    """Generate and write ``events.jsonl``, ``labels.jsonl`` and ``scenarios.json`` below ``out``.

    Events stream to disk as they are rendered. Existing files of those names are replaced: each is
    written under a temporary name first, then renamed, so a failed run never leaves a half-written
    corpus under the final names. Raises `ValueError` for bad options and `OSError` when the
    directory cannot be written.
    """
    sim = _simulate(options)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tmp_events, tmp_labels = out / ".events.jsonl.tmp", out / ".labels.jsonl.tmp"
    tally = _Tally()
    encode_into = _ENCODER.encode_into
    try:
        with tmp_events.open("wb") as events_file, tmp_labels.open("wb") as labels_file:
            events_buf, labels_buf = bytearray(), bytearray()
            uuid_rng = Random(f"aerie-corpus/{options.seed}/uuid")
            for event, label in _render(sim.records, sim.t0, sim.t1, uuid_rng):
                tally.add(event, label)
                encode_into(event.to_falco_json(), events_buf, -1)
                events_buf += b"\n"
                encode_into(label, labels_buf, -1)
                labels_buf += b"\n"
                if len(events_buf) > _FLUSH_BYTES:
                    events_file.write(events_buf)
                    labels_file.write(labels_buf)
                    events_buf.clear()
                    labels_buf.clear()
            events_file.write(events_buf)
            labels_file.write(labels_buf)
        summary = tally.summary(options, sim)
        tmp_summary = out / ".scenarios.json.tmp"
        tmp_summary.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_events, out / "events.jsonl")
        os.replace(tmp_labels, out / "labels.jsonl")
        os.replace(tmp_summary, out / "scenarios.json")
    finally:
        for leftover in (tmp_events, tmp_labels, out / ".scenarios.json.tmp"):
            leftover.unlink(missing_ok=True)
    summary["timing_s"] = {
        "simulate": round(sim.seconds, 3),
        "render_and_write": round(time.perf_counter() - started, 3),
    }
    return summary
