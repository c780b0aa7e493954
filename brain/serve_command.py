"""Running one brain service (an agent, an MCP server) as a process until SIGTERM or SIGINT.

The shared end of `aerie agent run` and `aerie mcp run`: start the service, optionally its ops
endpoints, say where it listens (a JSON log line, and one plain line on stdout that scripts wait
for), wait for the signal, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from typing import Any, Protocol

from aerie.brain.metrics import BrainMetrics
from aerie.proto.ops import OpsServer, Probe
from aerie.proto.serving import ServeError

__all__ = ["Service", "serve_until_signalled"]


class Service(Protocol):
    name: str
    host: str
    metrics: BrainMetrics

    async def start(self) -> str:
        """Start serving; the URL callers use."""
        ...

    async def stop(self) -> None: ...


async def serve_until_signalled(
    service: Service,
    *,
    kind: str,
    key: str,
    label: str,
    ops_port: int | None,
    details: Mapping[str, Any],
    logger: logging.Logger,
) -> None:
    """Serve until SIGTERM/SIGINT. ``kind`` names the service in log messages (``agent``, ``mcp
    server``), ``key`` is the log field carrying its name, ``label`` goes in the stdout line
    (``aerie LABEL listening on URL``). With ``ops_port`` (0: any free port) /metrics, /healthz and
    /readyz are served on the service's host. Raises `ServeError` when the ops port cannot be bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    url = await service.start()
    ops: OpsServer | None = None
    try:
        if ops_port is not None:

            def ready() -> Probe:
                # Not ready from SIGTERM on: the kubelet stops routing work here while requests in
                # flight finish.
                return Probe(ok=not stop.is_set(), detail={key: service.name, "url": url})

            ops = OpsServer(
                service.host,
                ops_port,
                service.metrics.registry,
                ready=ready,
                name=f"aerie-{label.replace(' ', '-')}-ops",
            )
            try:
                await ops.start()
            except ServeError as exc:
                raise ServeError(f"--ops-port: {exc}") from None
        logger.info(
            f"{kind} listening",
            extra={
                key: service.name,
                "url": url,
                **details,
                "ops_port": ops.port if ops is not None else None,
            },
        )
        print(f"aerie {label} listening on {url}", flush=True)
        await stop.wait()
    finally:
        logger.info(f"{kind} stopping", extra={key: service.name})
        await service.stop()
        if ops is not None:
            with contextlib.suppress(Exception):
                await ops.close()
    logger.info(f"{kind} stopped", extra={key: service.name})
