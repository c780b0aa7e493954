"""Helpers for the MCP tests: real server processes, their JSON logs, SDK clients over mutual TLS."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from aerie.brain.certs import Pki
from aerie.edge.tls import ClientTls, client_ssl_context
from aerie.proto.agents import Asset, Detection
from aerie.proto.envelope import Anomaly, TraceContext
from aerie.proto.event import FalcoEvent, Priority
from aerie.proto.logs import JsonFormatter


@dataclass
class Proc:
    """A real aerie process (``python -m ...``) whose stderr, JSON lines, goes to ``log``."""

    label: str
    proc: subprocess.Popen[str]
    log: Path
    url: str = ""

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def lines(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("msg") == msg]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc


def spawn(label: str, module: str, args: list[str], log: Path) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AERIE_")}
    with log.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    return Proc(label=label, proc=proc, log=log)


def listening(p: Proc, prefix: str) -> Proc:
    """Wait for the one line the process prints once its socket accepts connections."""
    assert p.proc.stdout is not None
    line = p.proc.stdout.readline()
    if not line.startswith(prefix):
        p.stop()
        pytest.fail(f"{p.label} did not start: {line!r}\n{p.log.read_text()}")
    p.url = line.removeprefix(prefix).strip()
    return p


def spawn_attack(certs: Path | None, log: Path, *extra: str) -> Proc:
    args = ["mcp", "run", "attack", "--port", "0", "--grace", "1", *extra]
    if certs is not None:
        args += ["--certs", str(certs)]
    return listening(spawn("mcp attack", "aerie.brain.mcp_cli", args, log), "aerie mcp attack listening on ")


def tls_of(p: Pki) -> ClientTls:
    return ClientTls(ca=str(p.ca), cert=str(p.cert), key=str(p.key))


@contextlib.asynccontextmanager
async def sdk_client(
    url: str, tls: ClientTls | None, headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """The MCP SDK's own client over ``tls`` (None: plain HTTP), for what `McpCaller` does not expose."""
    verify = client_ssl_context(tls) if tls is not None else True
    async with (
        httpx2.AsyncClient(verify=verify, headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as client,
    ):
        yield client


@contextlib.contextmanager
def json_log(logger: str) -> Iterator[StringIO]:
    """Capture ``logger``'s records as aerie's JSON lines (trace_id included) into a buffer."""
    buffer = StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("test"))
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


def parsed(buffer: StringIO, msg: str) -> list[dict[str, Any]]:
    return [r for r in (json.loads(x) for x in buffer.getvalue().splitlines() if x) if r["msg"] == msg]


TRACE = TraceContext.new()


def anomaly(
    *,
    rule: str = "Terminal shell in container",
    tags: tuple[str, ...] = ("container", "shell", "mitre_execution", "T1059"),
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A real `Anomaly` envelope as the coordinator hands it over: plain data."""
    output_fields: dict[str, Any] = {
        "k8s.ns.name": "shop",
        "k8s.pod.name": "cart-7d9f",
        "container.id": "3f2a9c1b7e4d",
        "proc.cmdline": "bash -i",
        "proc.pid": 4242,
    }
    output_fields.update(fields or {})
    event = FalcoEvent(
        time_ns=1_700_000_000_000_000_000,
        priority=Priority.WARNING,
        rule=rule,
        output="A shell was spawned",
        hostname="node-a",
        tags=tags,
        output_fields=output_fields,
    )
    envelope = Anomaly(
        event_id=event.event_id,
        traceparent=TRACE.traceparent,
        node="node-a",
        model_version="m1",
        feature_spec_hash="h",
        score=0.7,
        threshold=0.62,
        features=[0.0] * 17,
        detected_at_ns=1,
        event=event,
    )
    data: dict[str, Any] = msgspec.to_builtins(envelope)
    return data


def detection(rule: str = "Terminal shell in container") -> Detection:
    return Detection(
        summary=f"{rule} in pod shop/cart-7d9f",
        severity="medium",
        asset=Asset(node="node-a", namespace="shop", pod="cart-7d9f", container_id="3f2a9c1b7e4d"),
        rule=rule,
        related_event_ids=[],
    )
