"""Helpers for the MCP tests: the aerie-attack server as a real process, SDK clients over mutual TLS,
captured JSON logs, the analyst's input."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx2
from falco_testkit import SHELL_RULE, SHELL_TAGS, agent_input, pod_shell_event
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from process_testkit import Proc, listening, spawn

from aerie.edge.tls import ClientTls, client_ssl_context
from aerie.proto.agents import Asset, Detection
from aerie.proto.envelope import TraceContext
from aerie.proto.event import Priority
from aerie.proto.logs import JsonFormatter


def spawn_attack(certs: Path | None, log: Path, *extra: str) -> Proc:
    args = ["mcp", "run", "attack", "--port", "0", "--grace", "1", *extra]
    if certs is not None:
        args += ["--certs", str(certs)]
    return listening(spawn("mcp attack", "aerie.brain", args, log), "aerie mcp attack listening on ")


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
    *, rule: str = SHELL_RULE, tags: tuple[str, ...] = SHELL_TAGS, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A real `Anomaly` envelope as the coordinator hands it over: plain data."""
    event = pod_shell_event(
        priority=Priority.WARNING, rule=rule, tags=tags, fields={"proc.pid": 4242, **(fields or {})}
    )
    return agent_input(event, traceparent=TRACE.traceparent)


def detection(rule: str = "Terminal shell in container") -> Detection:
    return Detection(
        summary=f"{rule} in pod shop/cart-7d9f",
        severity="medium",
        asset=Asset(node="node-a", namespace="shop", pod="cart-7d9f", container_id="3f2a9c1b7e4d"),
        rule=rule,
        related_event_ids=[],
    )
