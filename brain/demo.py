"""`aerie demo`: the system on one machine, on embedded defaults.

Today it runs the edge side end to end: it trains a model bundle on a day of benign cluster traffic,
generates a labelled scenario with attacks, replays it the three ways Falco delivers alerts — Falco's
gRPC outputs service on a unix socket, ``http_output`` POSTs over mutual TLS, a JSON-lines file —
receives each through aerie's inputs, checks that every event arrived unchanged, then scores what
arrived and prints the anomalies against the scenario's labels. Later issues grow it into the whole
pipeline (Kafka, brain, agents, policy).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from aerie.edge.inputs.base import FalcoInput
from aerie.proto.event import FalcoEvent

if TYPE_CHECKING:
    from aerie.models.bundle import Bundle
    from aerie.models.dataset import EventFile, Labels

__all__ = ["run_demo"]


async def _collect(source: FalcoInput, expected: int, timeout_s: float) -> tuple[list[FalcoEvent], float]:
    """Up to ``expected`` events from ``source`` (fewer if it ends or ``timeout_s`` passes)."""
    received: list[FalcoEvent] = []
    started = time.perf_counter()

    async def drain(stream: AsyncIterator[FalcoEvent]) -> None:
        async for event in stream:
            received.append(event)
            if len(received) >= expected:
                return

    try:
        await asyncio.wait_for(drain(source.events()), timeout_s)
    except TimeoutError:
        pass
    finally:
        await source.close()
    return received, time.perf_counter() - started


def _comparable(events: list[FalcoEvent]) -> list[FalcoEvent]:
    return sorted((msgspec.structs.replace(e, uuid="") for e in events), key=lambda e: e.event_id)


async def _run(workdir: Path, seed: int, events: int) -> int:
    from aerie.brain.certs import init_pki
    from aerie.edge.inputs.grpc import GrpcInput, GrpcInputConfig
    from aerie.edge.inputs.http import HttpInput
    from aerie.edge.inputs.jsonlines import JsonLinesInput
    from aerie.edge.replay_grpc import ReplayServer
    from aerie.edge.replay_http import post_events
    from aerie.edge.tls import ClientTls, ServerTls
    from aerie.models.corpus import CorpusOptions, write_corpus
    from aerie.models.dataset import read_events, read_labels

    bundle = _train_bundle(workdir, seed)
    corpus = workdir / "corpus"
    # The same density as the training day (~4k alerts an hour), so rates mean the same.
    summary = write_corpus(corpus, CorpusOptions(seed=seed, events=events, hours=max(1.0, events / 4000)))
    source = read_events(corpus / "events.jsonl")
    originals = source.events
    labels = read_labels(corpus / "labels.jsonl")
    pki = init_pki(workdir / "pki", ["edge", "falco"])
    print(f"scenario: {len(originals)} Falco alerts from {len(summary['nodes'])} nodes, seed {seed}")

    # Falco <= 0.43: gRPC outputs service on a unix socket.
    socket = f"unix://{workdir / 'falco.sock'}"
    replay = ReplayServer(socket)
    await replay.start()
    replay.feed(originals)
    grpc_input = GrpcInput(GrpcInputConfig(address=socket))

    # Falco >= 0.44: http_output POSTs to the edge over mutual TLS.
    http_input = HttpInput(
        tls=ServerTls(cert=str(pki["edge"].cert), key=str(pki["edge"].key), ca=str(pki["edge"].ca))
    )
    await http_input.start()
    client_tls = ClientTls(ca=str(pki["falco"].ca), cert=str(pki["falco"].cert), key=str(pki["falco"].key))
    poster = asyncio.create_task(post_events(originals, http_input.url, tls=client_tls, concurrency=4))

    # Replay and tests: JSON lines from a file.
    lines_input = JsonLinesInput(corpus / "events.jsonl")

    expected = len(originals)
    results = await asyncio.gather(
        _collect(grpc_input, expected, 120.0),
        _collect(http_input, expected, 120.0),
        _collect(lines_input, expected, 120.0),
    )
    posted = await poster
    await replay.stop()

    # gRPC carries every field as text, so numeric-looking strings come back as numbers ("0" → 0):
    # compare gRPC's delivery with the originals as gRPC itself would carry them.
    from aerie.proto.grpc_codec import decode_response, encode_response

    as_grpc = [decode_response(encode_response(e)) for e in originals]
    ok = True
    print(f"\n{'input':<26}{'received':>9}{'decoded':>9}{'rejected':>9}{'events/s':>10}  unchanged")
    for name, source_input, sent, (got, seconds) in zip(
        ("gRPC unix socket", "http_output over mTLS", "JSON lines file"),
        (grpc_input, http_input, lines_input),
        (as_grpc, originals, originals),
        results,
        strict=True,
    ):
        snap = source_input.stats.snapshot()
        rejected = sum(snap["rejected"].values()) if isinstance(snap["rejected"], dict) else 0
        # gRPC has no uuid (a Falcosidekick addition), and concurrent POSTs may arrive in any order.
        same = _comparable(got) == _comparable(sent)
        ok &= same
        print(
            f"{name:<26}{snap['received']!s:>9}{snap['decoded']!s:>9}{rejected:>9}"
            f"{len(got) / max(seconds, 1e-9):>10.0f}  {'yes' if same else 'NO'}"
        )
    if posted.failed:
        ok = False
        print(f"http_output POST failures: {posted.failures}")

    attacks = Counter(
        lab.scenario for event, lab in source.labelled(labels) if lab is not None and lab.malicious
    )
    print("\nrules (top 8):")
    for rule, count in Counter(e.rule for e in originals).most_common(8):
        print(f"  {count:>6}  {rule}")
    print(
        "priorities: "
        + ", ".join(f"{p.falco_name} {n}" for p, n in sorted(Counter(e.priority for e in originals).items()))
    )
    print(
        f"labelled attack events: {sum(attacks.values())} in {len(attacks)} scenarios: "
        + ", ".join(f"{name} {n}" for name, n in sorted(attacks.items()))
    )
    print("\nevery input delivered every event unchanged" if ok else "\nSOME EVENTS DID NOT ARRIVE UNCHANGED")
    _score(bundle, results[0][0], source, labels)
    return 0 if ok else 1


def _train_bundle(workdir: Path, seed: int) -> Bundle:
    """A bundle trained on a benign day of the same simulated cluster (another seed)."""
    from aerie.models.bundle import Bundle
    from aerie.models.corpus import CorpusOptions, write_corpus
    from aerie.models.dataset import read_events
    from aerie.models.train import train

    started = time.perf_counter()
    baseline = workdir / "baseline"
    write_corpus(baseline, CorpusOptions(seed=seed + 1, attack_rate=0.0))
    result = train(read_events(baseline / "events.jsonl"))
    print(
        f"model: bundle {result.manifest.model_version} trained on {result.counts['events']} benign alerts, "
        f"threshold {result.manifest.threshold:.4f} (calibrated for "
        f"{result.manifest.target_alert_rate:.0%} benign alerts) in {time.perf_counter() - started:.0f}s"
    )
    return Bundle(path=workdir / "bundle", manifest=result.manifest, model=result.model, state=result.state)


def _score(bundle: Bundle, received: list[FalcoEvent], source: EventFile, labels: Labels) -> None:
    """Features → score for what the gRPC input delivered, and the anomalies against the labels."""
    from aerie.models.features import FeatureExtractor
    from aerie.models.scorer import OnnxScorer

    extractor = FeatureExtractor()
    extractor.restore(bundle.state)
    scorer = OnnxScorer(bundle.model)
    started = time.perf_counter()
    scores = [scorer.score_one(extractor.transform_one(event)) for event in received]
    per_event_us = (time.perf_counter() - started) / max(1, len(received)) * 1e6
    truth = {event.event_id: label for event, label in source.labelled(labels)}
    flagged = [(s, e) for s, e in zip(scores, received, strict=True) if s > bundle.manifest.threshold]
    attack_ids = {i for i, lab in truth.items() if lab is not None and lab.malicious}
    caught = sum(1 for _, e in flagged if e.event_id in attack_ids)
    benign = len(received) - len(attack_ids)
    print(
        f"\nscored {len(received)} events at {per_event_us:.0f} µs each (features + ONNX, one at a time): "
        f"{len(flagged)} anomalies, {caught} of {len(attack_ids)} attack events "
        f"({caught / max(1, len(attack_ids)):.0%}), {len(flagged) - caught} benign "
        f"({(len(flagged) - caught) / max(1, benign):.2%} of benign traffic)"
    )
    by_scenario: dict[str, list[bool]] = {}
    flagged_ids = {e.event_id for _, e in flagged}
    for event_id in attack_ids:
        label = truth[event_id]
        assert label is not None
        by_scenario.setdefault(label.scenario or "?", []).append(event_id in flagged_ids)
    for name, hits in sorted(by_scenario.items()):
        print(f"  {name:<20} {sum(hits):>4}/{len(hits):<4} events flagged")
    print("top anomalies:")
    for score, event in sorted(flagged, key=lambda pair: -pair[0])[:5]:
        label = truth.get(event.event_id)
        verdict = label.scenario if label is not None and label.malicious else "benign"
        print(f"  {score:.3f}  {event.rule:<40} {event.field_str('proc.cmdline')[:48]:<48} [{verdict}]")


def run_demo(*, seed: int, events: int, workdir: Path | None) -> int:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(workdir, seed, events))
    # A short path: unix socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="aerie-demo-", dir="/tmp") as tmp:
        return asyncio.run(_run(Path(tmp), seed, events))
