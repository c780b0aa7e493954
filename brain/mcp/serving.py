"""One MCP server (`mcp.server.MCPServer`) served over streamable HTTP with mutual TLS, authorised by
the caller's identity, exactly as the agents are served.

Layers, outermost first:

1. **TLS** (`aerie.proto.serving`, uvicorn): the client must present a certificate that chains to
   the aerie CA, or the handshake fails; nothing above it runs.
2. **Gate** (`_Gate`, raw ASGI): answers ``/healthz``; refuses every other request with **403**
   unless the peer's SPIFFE identity is on the allow-list, before the body is read. Requests it
   lets through run inside `trace_scope` of their ``traceparent`` header.
3. **The SDK's streamable HTTP app** at ``/mcp``: stateless (every POST stands alone, so any replica
   can answer it and a restart loses nothing) with JSON responses; both the 2026-07-28 per-request
   protocol and the initialize handshake of earlier versions are served.
4. **Tool-call middleware** (`_ToolCalls`, an SDK ``ServerMiddleware``): checks a ``tools/call``'s
   arguments against the tool's *published* input schema (JSON Schema, unknown properties refused)
   before the SDK's own, laxer, argument parsing; logs every call as one JSON line with the tool,
   the caller's identity, the outcome and the duration, under the trace of ``params._meta.traceparent``
   (else the header).

Arguments are attacker-controlled text (they come from Falco events); a call whose arguments break
the schema answers a tool error (``isError``) saying which constraint failed, never a crash.

``--insecure-http`` (`McpService` with ``tls=None``) serves plain HTTP for the MCP conformance suite,
and only on a loopback address: no identity is checked then, and DNS-rebinding protection (Host and
Origin must be loopback) is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from aerie.brain.mcp.trace import inbound_trace, parse
from aerie.brain.metrics import BrainMetrics
from aerie.edge.tls import ServerTls, server_ssl_context
from aerie.proto.logs import trace_scope
from aerie.proto.serving import Running, ServeError, bind, peer_identity, refuse_identity, respond, serve

__all__ = ["HEALTH_PATH", "MCP_PATH", "McpService", "McpServiceError", "is_loopback"]

log = logging.getLogger("aerie.brain.mcp.serving")

MCP_PATH: Final = "/mcp"
HEALTH_PATH: Final = "/healthz"
_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")
MAX_BODY_BYTES: Final = 512 * 1024
"""Largest request accepted: bounded inputs fit with room to spare; more is refused (413) unread."""
_ERROR_TEXT_MAX: Final = 300

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class McpServiceError(Exception):
    """The MCP server cannot start: address in use, unreadable TLS material, bad settings."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- the gate ----------------------------------------------------------------------------------


class _Gate:
    """Health, identity allow-list, trace scope; see the module docstring."""

    def __init__(
        self, app: Asgi, *, server: str, allowed: frozenset[str] | None, metrics: BrainMetrics
    ) -> None:
        self.app = app
        self.server = server
        self.allowed = allowed  # None: plain-HTTP conformance mode, nobody has an identity
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            await respond(send, 200, b"ok\n", headers=[_TEXT])
            return
        if self.allowed is not None:
            identity = peer_identity(scope)
            if identity not in self.allowed:
                self.metrics.mcp_refused.labels(server=self.server, reason="identity").inc()
                log.warning(
                    "request refused: identity not allowed",
                    extra={"server": self.server, "peer": identity, "path": path[:200]},
                )
                await refuse_identity(send, identity, self.server)
                return
        raw = next((v for k, v in scope.get("headers") or () if k == b"traceparent"), b"")
        trace = parse(raw.decode("latin-1"))
        with trace_scope(trace.trace_id if trace is not None else None):
            await self.app(scope, receive, send)


# --- tool calls --------------------------------------------------------------------------------


def _clip(text: str, limit: int = _ERROR_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tool_error(text: str, protocol_version: str) -> dict[str, Any]:
    """A tool-error result in wire form: what the SDK answers for a tool that failed, so a caller (an
    LLM, say) can read the reason; ``resultType`` only for the protocol versions that define it."""
    wire = CallToolResult(content=[TextContent(text=text)], is_error=True).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    if protocol_version not in MODERN_PROTOCOL_VERSIONS:
        wire.pop("resultType", None)
    return wire


class _ToolCalls:
    """Strict argument check and one log line per ``tools/call``; see the module docstring."""

    def __init__(self, server: MCPServer, metrics: BrainMetrics) -> None:
        self.server = server
        self.metrics = metrics
        self._validators: dict[str, Any] | None = None

    async def _validator(self, tool: str) -> Any:
        if self._validators is None:
            # Built from what tools/list publishes, so the check is exactly the advertised contract.
            self._validators = {
                t.name: jsonschema.Draft202012Validator(t.input_schema)
                for t in await self.server.list_tools()
            }
        return self._validators.get(tool)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = ctx.params or {}
        raw_name = params.get("name")
        tool = _clip(raw_name, 64) if isinstance(raw_name, str) else "?"
        request = ctx.request
        scope = getattr(request, "scope", None)
        caller = peer_identity(scope) if isinstance(scope, dict) else None
        headers = getattr(request, "headers", None)
        trace = inbound_trace(ctx.meta, headers if isinstance(headers, Mapping) else None)
        extra: dict[str, Any] = {"server": self.server.name, "tool": tool, "caller": caller}
        if trace is not None:
            extra["traceparent"] = trace.traceparent
        started = time.perf_counter()
        with trace_scope(trace.trace_id if trace is not None else None):
            outcome = "error"
            try:
                validator = await self._validator(tool)
                arguments = params.get("arguments", {})
                problem = None
                if validator is not None:
                    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
                    if error is not None:
                        # Names the constraint, never echoes the rejected value (the caller's text).
                        where = _clip("/".join(str(p) for p in error.absolute_path) or "arguments", 160)
                        rule = _clip(f"{error.validator}={error.validator_value!r}", 120)
                        problem = f"invalid arguments for {tool}: {where} fails {rule}"
                if problem is not None:
                    outcome = "invalid"
                    extra["reason"] = problem
                    return _tool_error(problem, ctx.protocol_version)
                result = await call_next(ctx)
                # The chain hands back the wire form (a dict, camelCase keys).
                is_error = isinstance(result, Mapping) and result.get("isError") is True
                outcome = "tool_error" if is_error else "ok"
                return result
            except MCPError as exc:
                outcome = "refused"
                extra["reason"] = _clip(exc.error.message)
                raise
            finally:
                elapsed = time.perf_counter() - started
                extra["outcome"] = outcome
                extra["duration_ms"] = round(elapsed * 1000.0, 3)
                log.info("mcp tool call", extra=extra)
                self.metrics.mcp_served.labels(server=self.server.name, tool=tool, outcome=outcome).inc()
                self.metrics.mcp_serve_latency.labels(server=self.server.name, tool=tool).observe(elapsed)


# --- the service -------------------------------------------------------------------------------


class McpService:
    """Serve ``server`` at ``https://host:port/mcp`` (mutual TLS) or, for conformance runs only,
    ``http://<loopback>:port/mcp``; see the module docstring.

    Args:
        server: the MCP server (tools with input and output schemas).
        tls: the server's certificate and the CA callers must chain to; must be mutual. None only
            with ``insecure_http`` on a loopback ``host``.
        host, port: where to listen (``port=0``: any free port).
        allowed: SPIFFE identities that may call.
        graceful_timeout_s: how long `stop` lets requests in flight finish.
    """

    def __init__(
        self,
        server: MCPServer,
        *,
        tls: ServerTls | None,
        host: str = "127.0.0.1",
        port: int = 0,
        allowed: Iterable[str] = (),
        graceful_timeout_s: int = 5,
        insecure_http: bool = False,
        metrics: BrainMetrics | None = None,
    ) -> None:
        if tls is None:
            if not insecure_http:
                raise McpServiceError("MCP servers serve mutual TLS: give TLS settings (or insecure_http)")
            if not is_loopback(host):
                raise McpServiceError(
                    f"plain HTTP is for local conformance runs only: {host} is not loopback"
                )
        elif insecure_http:
            raise McpServiceError("insecure_http and TLS settings exclude each other")
        elif not tls.mutual:
            raise McpServiceError("MCP servers serve mutual TLS only: the TLS settings need a CA")
        self.server = server
        self.name = server.name
        self.tls = tls
        self.host = host
        self.port = port
        self.allowed = frozenset(allowed)
        if tls is not None and not self.allowed:
            raise McpServiceError("the allow-list is empty: no caller could reach the server")
        self.graceful_timeout_s = graceful_timeout_s
        self._running: Running | None = None
        self._manager_task: asyncio.Task[None] | None = None
        self._manager_stop: asyncio.Event | None = None
        self._url: str | None = None
        self.metrics = metrics if metrics is not None else BrainMetrics()
        server.middleware.append(_ToolCalls(server, self.metrics))

    @property
    def url(self) -> str:
        """The MCP endpoint, ``https://host:port/mcp``, once started."""
        if self._url is None:
            raise McpServiceError(f"MCP server {self.name} is not started")
        return self._url

    def _security(self) -> TransportSecuritySettings:
        if self.tls is not None:
            # DNS rebinding is a browser's attack; no browser holds an aerie client certificate, and
            # Kubernetes callers reach the server by Service names a Host allow-list would refuse.
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )

    def build_app(self) -> tuple[Asgi, StreamableHTTPSessionManager]:
        """The ASGI app (gate around the SDK's app) and the session manager it needs running."""
        app = self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            max_request_body_size=MAX_BODY_BYTES,
            transport_security=self._security(),
            host=self.host,
        )
        gate = _Gate(
            app,
            server=self.name,
            allowed=self.allowed if self.tls is not None else None,
            metrics=self.metrics,
        )
        return gate, self.server.session_manager

    async def _run_manager(
        self, manager: StreamableHTTPSessionManager, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        # The manager holds an anyio task group: entered and left in this one task, whichever task
        # starts and stops the service.
        async with manager.run():
            ready.set()
            await stop.wait()

    async def start(self) -> str:
        """Bind, serve; returns the MCP endpoint URL. Raises `McpServiceError`."""
        if self._running is not None:
            return self.url
        try:
            sock = bind(self.host, self.port)
        except ServeError as exc:
            raise McpServiceError(f"MCP server {self.name}: {exc}") from None
        port = int(sock.getsockname()[1])
        app, manager = self.build_app()
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            self._run_manager(manager, ready, stop), name=f"aerie-mcp-{self.name}-sessions"
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            sock.close()
            raise McpServiceError(
                f"MCP server {self.name}: session manager did not start: {task.exception()!r}"
            )
        self._manager_task, self._manager_stop = task, stop
        tls = self.tls
        try:
            self._running = await serve(
                app,
                sock,
                ssl_factory=(lambda: server_ssl_context(tls)) if tls is not None else None,
                name=f"aerie-mcp-{self.name}",
                graceful_timeout_s=self.graceful_timeout_s,
            )
        except ServeError as exc:
            await self._stop_manager()
            raise McpServiceError(str(exc)) from None
        self.port = port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"{'https' if tls is not None else 'http'}://{host}:{port}{MCP_PATH}"
        return self._url

    async def _stop_manager(self) -> None:
        task, stop = self._manager_task, self._manager_stop
        self._manager_task = self._manager_stop = None
        if task is not None and stop is not None:
            stop.set()
            with contextlib.suppress(Exception):
                await task

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, stop the sessions. Safe to call twice."""
        running, self._running = self._running, None
        if running is not None:
            await running.stop()
        await self._stop_manager()

    async def __aenter__(self) -> McpService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
