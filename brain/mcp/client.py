"""`McpCaller`: how an agent calls MCP servers, over streamable HTTP with mutual TLS.

One SDK `mcp.Client` session per server, kept open across calls, on one shared ``httpx2`` client
that presents the calling agent's own certificate (TLS 1.2+). A session belongs to a background
task (the SDK's sessions hold anyio task groups, which must be left by the task that entered them),
so any task may call.

Each `McpCaller.call` sends ``tools/call`` with a new child span of the caller's trace, both in
``params._meta.traceparent`` (the MCP way) and as the ``traceparent`` HTTP header, and returns the
tool's structured result after the SDK has checked it against the tool's output schema. It records
``aerie_mcp_call_seconds{server,tool}`` (retries included) and logs one ``mcp call`` line with the
server, tool, outcome, attempts and duration under the caller's trace id: the "MCP calls made" log.

=============================================  =========================================================
the tool answered a structured result          that result, as a dict
the tool answered an error (``isError``), a    `McpToolError` at once: the same arguments get the same
JSON-RPC error, or a result that breaks the    answer
tool's output schema
connection refused/reset, timeout, HTTP 5xx,   the session is dropped and the call retried up to
the session lost                               ``attempts`` times with capped exponential backoff and
                                               jitter; then `McpUnavailable`
HTTP 403 (identity not allowed), a server      `McpUnavailable` at once: configuration that retrying
certificate we do not trust                    cannot fix
=============================================  =========================================================

A server that refuses *our* certificate drops the connection during the handshake, which looks
exactly like a server going away: retried, then `McpUnavailable`. Retrying is safe because aerie's
MCP tools are read-only lookups or idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, Implementation
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT, RequestParamsMeta

from aerie.brain.mcp.trace import TRACEPARENT, parent_trace, parse
from aerie.brain.metrics import BrainMetrics
from aerie.edge.errors import TlsError
from aerie.edge.tls import ClientTls, client_ssl_context
from aerie.proto.logs import trace_scope
from aerie.proto.retry import backoff_delay, tls_refusal

__all__ = ["McpCaller", "McpError", "McpToolError", "McpUnavailable"]

log = logging.getLogger("aerie.brain.mcp.client")

_REASON_MAX: Final = 300


class McpError(Exception):
    """An MCP call that gave no usable result; ``attempts`` says how many tries it took."""

    def __init__(self, server: str, tool: str, reason: str, *, attempts: int = 0) -> None:
        super().__init__(f"MCP {server}/{tool}: {reason}")
        self.server = server
        self.tool = tool
        self.reason = reason
        self.attempts = attempts


class McpUnavailable(McpError):
    """The server could not be reached or refused us (after ``attempts`` tries, or at once)."""

    def __init__(self, server: str, tool: str, attempts: int, reason: str) -> None:
        super().__init__(
            server, tool, f"unavailable after {attempts} attempt(s): {reason}", attempts=attempts
        )


class McpToolError(McpError):
    """The server answered, but not with a result: a tool error, a protocol error, a result that
    breaks the tool's output schema. Not retried."""


class _Transient(Exception):
    """Worth another attempt on a fresh session."""


class _Permanent(Exception):
    """Retrying cannot help: the server refused us or cannot be trusted."""


@dataclass
class _Outgoing:
    """What the HTTP hooks of one call need. Lives in a context variable: the SDK carries the
    caller's context into the task that sends the POST, and this object is shared, not copied."""

    traceparent: str
    statuses: list[int] = field(default_factory=list)


_OUTGOING: contextvars.ContextVar[_Outgoing | None] = contextvars.ContextVar(
    "aerie_mcp_outgoing", default=None
)


async def _stamp(request: httpx2.Request) -> None:
    outgoing = _OUTGOING.get()
    if outgoing is not None:
        request.headers[TRACEPARENT] = outgoing.traceparent


async def _note(response: httpx2.Response) -> None:
    outgoing = _OUTGOING.get()
    if outgoing is not None:
        outgoing.statuses.append(response.status_code)


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return _clip(f"{type(exc).__name__}: {exc}".rstrip(": "))


class _Session:
    """One open `mcp.Client` owned by a background task (see the module docstring)."""

    def __init__(self, name: str, url: str, http: httpx2.AsyncClient, timeout_s: float) -> None:
        self.name = name
        self.url = url
        self._http = http
        self._timeout_s = timeout_s
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def open(self) -> Client:
        """Connect (discover or initialize); raises what connecting raised."""
        opened: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(opened), name=f"aerie-mcp-session-{self.name}")
        try:
            self._client = await opened
        except BaseException:
            await self.close()
            raise
        return self._client

    async def _own(self, opened: asyncio.Future[Client]) -> None:
        client = Client(
            streamable_http_client(self.url, http_client=self._http),
            read_timeout_seconds=self._timeout_s,
            client_info=Implementation(name="aerie", version="1"),
            cache=None,
        )
        try:
            async with client:
                opened.set_result(client)
                await self._closing.wait()
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            elif not isinstance(exc, asyncio.CancelledError):
                # The connection died under an open session: the next call reopens it.
                log.debug("mcp session ended", extra={"server": self.name, "reason": _describe(exc)})
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def close(self) -> None:
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            except asyncio.CancelledError:
                task.cancel()  # our caller is cancelled: do not leave the session behind, do not wait
                raise
            except Exception:  # the session died; nothing left to release
                log.debug("mcp session close failed", extra={"server": self.name}, exc_info=True)

    @property
    def alive(self) -> bool:
        return self._client is not None and self._task is not None and not self._task.done()


class McpCaller:
    """Calls tools on MCP servers over streamable HTTP with mutual TLS.

    Args:
        servers: server name (the metric label, e.g. ``attack``) → endpoint URL
            (``https://host:port/mcp``).
        tls: the caller's certificate and key and the CA the servers' certificates chain to (all
            three required; `TlsError` otherwise).
        metrics: where to record ``aerie_mcp_call_seconds`` (a private one if None).
        timeout_s: limit of each request of an attempt; an attempt that first opens the session
            (discover, list the tools for their output schemas) is cut at twice that.
        attempts: tries per call, the first included (at least 1).
        backoff_s, backoff_cap_s: pause before retry *n* is drawn from ``[d/2, d]`` with
            ``d = min(backoff_cap_s, backoff_s * 2**(n-1))``.

    Use as ``async with`` or call `aclose`.
    """

    def __init__(
        self,
        servers: Mapping[str, str],
        *,
        tls: ClientTls,
        metrics: BrainMetrics | None = None,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.1,
        backoff_cap_s: float = 2.0,
        max_connections: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        missing = tls.missing_for_mutual_tls()
        if missing:
            raise TlsError(f"MCP calls need mutual TLS; missing: {', '.join(missing)}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for name, url in servers.items():
            if not url.startswith("https://"):
                raise ValueError(f"MCP server {name}: {url!r} is not an https:// URL (mutual TLS only)")
        self.servers = dict(servers)
        self.metrics = metrics if metrics is not None else BrainMetrics()
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng if rng is not None else random.Random()
        self._http = httpx2.AsyncClient(
            verify=client_ssl_context(tls),
            timeout=httpx2.Timeout(timeout_s),
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            event_hooks={"request": [_stamp], "response": [_note]},
        )
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    @classmethod
    def from_certs(
        cls, certs: Path, *, component: str, servers: Mapping[str, str], **options: Any
    ) -> McpCaller:
        """A caller using ``certs/<component>.crt`` (``aerie certs init`` layout). Raises `TlsError`."""
        tls = ClientTls(
            ca=str(certs / "ca.crt"),
            cert=str(certs / f"{component}.crt"),
            key=str(certs / f"{component}.key"),
        )
        return cls(servers, tls=tls, **options)

    async def _client(self, server: str, url: str) -> Client:
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:  # one session per server, even when calls race to open it
            session = self._sessions.get(server)
            if session is not None and session.alive and session._client is not None:
                return session._client
            if session is not None:
                await session.close()
            session = _Session(server, url, self._http, self.timeout_s)
            client = await session.open()
            self._sessions[server] = session
            return client

    async def _drop(self, server: str) -> None:
        session = self._sessions.pop(server, None)
        if session is not None:
            await session.close()

    async def call(
        self, server: str, tool: str, arguments: Mapping[str, Any], *, traceparent: str | None = None
    ) -> dict[str, Any]:
        """Call ``tool`` on ``server`` and return its structured result; see the module docstring.

        ``traceparent`` is the caller's span (default: the request being served, see
        `aerie.brain.mcp.trace.parent_trace`). Raises `McpUnavailable` and `McpToolError`.
        """
        if self._closed:
            raise McpUnavailable(server, tool, 0, "the caller is closed")
        parent = parent_trace(traceparent)
        with trace_scope(parent.trace_id):
            url = self.servers.get(server)
            if url is None:
                raise McpUnavailable(server, tool, 0, "no endpoint configured")
            started = time.perf_counter()
            outcome, attempts = "ok", 0
            try:
                result, attempts = await self._call(server, url, tool, dict(arguments), parent.traceparent)
                return result
            except McpError as exc:
                outcome = "unavailable" if isinstance(exc, McpUnavailable) else "tool_error"
                attempts = exc.attempts
                raise
            finally:
                duration = time.perf_counter() - started
                self.metrics.mcp_latency.labels(server, tool).observe(duration)
                log.info(
                    "mcp call",
                    extra={
                        "server": server,
                        "tool": tool,
                        "outcome": outcome,
                        "attempts": attempts,
                        "duration_ms": round(duration * 1000.0, 3),
                    },
                )

    async def _call(
        self, server: str, url: str, tool: str, arguments: dict[str, Any], parent: str
    ) -> tuple[dict[str, Any], int]:
        reason = ""
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._attempt(server, url, tool, arguments, parent), attempt
            except McpToolError as exc:
                exc.attempts = attempt
                raise
            except _Permanent as exc:
                await self._drop(server)
                log.warning("mcp server refused the call", extra={"server": server, "reason": str(exc)})
                raise McpUnavailable(server, tool, attempt, str(exc)) from None
            except _Transient as exc:
                await self._drop(server)
                reason = str(exc)
                if attempt == self.attempts:
                    break
                delay = self._backoff(attempt)
                log.warning(
                    "mcp call failed, retrying",
                    extra={
                        "server": server,
                        "tool": tool,
                        "attempt": attempt,
                        "reason": reason,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
        log.warning(
            "mcp server unavailable", extra={"server": server, "attempts": self.attempts, "reason": reason}
        )
        raise McpUnavailable(server, tool, self.attempts, reason)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_s, self.backoff_cap_s, self._rng)

    async def _attempt(
        self, server: str, url: str, tool: str, arguments: dict[str, Any], parent: str
    ) -> dict[str, Any]:
        # Every attempt is its own request, so its own span.
        span = parse(parent)
        traceparent = span.child().traceparent if span is not None else parent
        outgoing = _Outgoing(traceparent)
        token = _OUTGOING.set(outgoing)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                client = await self._client(server, url)
                meta = cast(RequestParamsMeta, {TRACEPARENT: traceparent})  # an open map; mypy lacks PEP 728
                result = await client.call_tool(tool, arguments, meta=meta)
        except MCPError as exc:
            raise self._classify(server, tool, exc, outgoing.statuses) from None
        except RuntimeError as exc:
            if "structured content" not in str(exc):
                raise _Transient(_describe(exc)) from None
            # The SDK's output-schema check: the server answered something its tool does not promise.
            raise McpToolError(server, tool, _clip(str(exc))) from None
        except TimeoutError:
            raise _Transient(f"timed out after {self.timeout_s * 2:g}s") from None
        except Exception as exc:
            refusal = tls_refusal(exc, "server")
            if refusal is not None:
                raise _Permanent(refusal) from None
            if 403 in outgoing.statuses:
                raise _Permanent("HTTP 403: identity not allowed") from None
            raise _Transient(_describe(exc)) from None
        finally:
            _OUTGOING.reset(token)
        return self._structured(server, tool, result)

    def _classify(self, server: str, tool: str, exc: MCPError, statuses: list[int]) -> Exception:
        if 403 in statuses:
            return _Permanent("HTTP 403: identity not allowed")
        if exc.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT) or (
            exc.code == INTERNAL_ERROR and any(s >= 500 for s in statuses)
        ):
            return _Transient(_clip(f"MCP error {exc.code}: {exc.message}"))
        if any(400 <= s < 500 for s in statuses) and exc.code == INTERNAL_ERROR:
            return _Permanent(_clip(f"HTTP {max(statuses)}: {exc.message}"))
        return McpToolError(server, tool, _clip(f"MCP error {exc.code}: {exc.message}"))

    @staticmethod
    def _structured(server: str, tool: str, result: CallToolResult) -> dict[str, Any]:
        if result.is_error:
            text = " ".join(getattr(block, "text", "") for block in result.content).strip()
            raise McpToolError(server, tool, _clip(text or "the tool reported an error"))
        content = result.structured_content
        if not isinstance(content, dict):
            raise McpToolError(server, tool, "the tool answered no structured result")
        return content

    async def aclose(self) -> None:
        """Close every session and the pooled connections. Safe to call twice."""
        self._closed = True
        for server in list(self._sessions):
            await self._drop(server)
        await self._http.aclose()

    async def __aenter__(self) -> McpCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
