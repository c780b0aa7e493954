"""Falco events and anomaly envelopes for tests, built one way everywhere: what a test does not care
about has a default, what it does is a keyword."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from aerie.proto.envelope import Anomaly, TraceContext
from aerie.proto.event import FalcoEvent, Priority

T0_NS = 1_700_000_000_000_000_000
"""When test events happen (2023-11-14), a nanosecond apart where a test numbers them."""

SHELL_RULE = "Terminal shell in container"
SHELL_TAGS = ("container", "shell", "mitre_execution", "T1059")
POD_FIELDS: Mapping[str, Any] = {
    "k8s.ns.name": "shop",
    "k8s.pod.name": "cart-7d9f",
    "container.id": "3f2a9c1b7e4d",
    "container.image.repository": "ghcr.io/acme/cart",
    "proc.cmdline": "bash -i",
}
"""A shell in a web pod: what the agents read to find the asset and map the technique."""


def pod_shell_event(
    *,
    time_ns: int = T0_NS,
    priority: Priority = Priority.NOTICE,
    rule: str = SHELL_RULE,
    output: str = "A shell was spawned",
    hostname: str = "node-a",
    tags: tuple[str, ...] = SHELL_TAGS,
    fields: Mapping[str, Any] | None = None,
) -> FalcoEvent:
    """A shell in pod shop/cart-7d9f (`POD_FIELDS`, ``fields`` added over them) on ``hostname``."""
    return FalcoEvent(
        time_ns=time_ns,
        priority=priority,
        rule=rule,
        output=output,
        hostname=hostname,
        tags=tags,
        output_fields={**POD_FIELDS, **(fields or {})},
    )


def anomaly_of(
    event: FalcoEvent,
    *,
    traceparent: str | None = None,
    model_version: str = "test-1",
    feature_spec_hash: str = "f" * 16,
    score: float = 0.9,
    threshold: float = 0.5,
    features: list[float] | None = None,
    detected_at_ns: int | None = None,
) -> Anomaly:
    """The envelope an edge on ``event.hostname`` sends for ``event``: a new trace unless
    ``traceparent`` is given, detected when it happened unless ``detected_at_ns`` is given."""
    return Anomaly(
        event_id=event.event_id,
        traceparent=traceparent or TraceContext.new().traceparent,
        node=event.hostname,
        model_version=model_version,
        feature_spec_hash=feature_spec_hash,
        score=score,
        threshold=threshold,
        features=[0.5] * 17 if features is None else features,
        detected_at_ns=event.time_ns if detected_at_ns is None else detected_at_ns,
        event=event,
    )


def agent_input(
    event: FalcoEvent | None = None,
    *,
    score: float = 0.70,
    threshold: float = 0.62,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """``event`` (a `pod_shell_event` by default) in its envelope as the coordinator hands it to an
    agent: plain data."""
    envelope = anomaly_of(
        event or pod_shell_event(),
        traceparent=traceparent,
        model_version="m1",
        feature_spec_hash="h",
        score=score,
        threshold=threshold,
        features=[0.0] * 17,
        detected_at_ns=1,
    )
    data: dict[str, Any] = msgspec.to_builtins(envelope)
    return data


def shell_anomaly(
    i: int,
    *,
    node: str = "node-a",
    container: str | None = None,
    run: str = "",
    fields: Mapping[str, Any] | None = None,
    traceparent: str | None = None,
) -> Anomaly:
    """The ``i``-th anomaly of a stream, as the edge publishes them: each its own event (a new event
    id; ``run`` tells streams apart), keyed by ``node`` and ``container`` (``c{i % 3}`` by default)."""
    tag = f"run={run} " if run else ""
    event = FalcoEvent(
        time_ns=T0_NS + i,
        priority=Priority.WARNING,
        rule=SHELL_RULE,
        output=f"A shell was spawned in a container with an attached terminal ({tag}n={i})",
        hostname=node,
        output_fields={
            "container.id": container or f"c{i % 3}",
            "proc.name": "bash",
            **({"user.name": "root"} if fields is None else fields),
        },
    )
    return anomaly_of(event, traceparent=traceparent, features=[i / 10.0] * 17)


def varied_events(n: int, *, json_only: bool = False) -> list[FalcoEvent]:
    """``n`` events unlike each other: every priority, both sources, typed field values, tags, text
    beyond ASCII. ``json_only``: also what only Falco's JSON carries, not gRPC: a list value and
    Falcosidekick's ``uuid`` on some."""
    return [
        FalcoEvent(
            time_ns=1_714_564_800_000_000_000 + i * 1_000_003,
            priority=Priority(i % 8),
            rule=f"rule {i % 5}",
            output=f"event {i} — ünïcode ✓",
            source="syscall" if i % 3 else "k8s_audit",
            hostname=f"node-{i % 2}",
            tags=tuple(f"t{j}" for j in range(i % 4)),
            output_fields={
                "proc.pid": i,
                "proc.name": f"p{i}",
                "evt.ratio": i / 7,
                "fd.name": None,
                "container.privileged": bool(i % 2),
                **({"proc.aname": ["a", None, 3]} if json_only else {}),
            },
            uuid=f"uuid-{i}" if json_only and i % 4 == 0 else "",
        )
        for i in range(n)
    ]
