"""`OpsServer`: the operations port every aerie process serves (Prometheus metrics, liveness, readiness).

Plain HTTP on a loopback or pod port, for the kubelet and Prometheus; nothing on it is secret, and
nothing on it changes state. The process hands in what to report; this module only serves it.

====================  =======================================================================
request               answer
====================  =======================================================================
``GET /metrics``      200, the registry in Prometheus text format (``CONTENT_TYPE_LATEST``);
                      500 with the error text when a collector raises (logged)
``GET /healthz``      liveness: 200 when ``health()`` says ok, else 503; body ``Probe`` as JSON
``GET /readyz``       readiness: 200 when ``ready()`` says ok, else 503; body ``Probe`` as JSON
``HEAD`` on those     the same status and headers, no body
other methods there   405 with ``Allow: GET, HEAD``
any other path        404
====================  =======================================================================

A probe callable may be plain or async. One that raises, returns something other than a `Probe`, or
(async) takes longer than ``probe_timeout_s`` is answered 503 with the error in ``detail.error`` and
logged; it never reaches the server. A probe flipping between ok and not ok is logged once per flip.

Everything runs on the event loop that called `OpsServer.start`: the probes and the registry's
collectors are called there, so they must be cheap and must not block (a scrape of the edge's metrics
costs 1-2 ms). The server is uvicorn embedded via `aerie.proto.serving` (no signal
handlers, no logging configuration of its own).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aerie.proto.serving import Running, ServeError, bind, respond, serve

__all__ = ["HEALTH_PATH", "METRICS_PATH", "READY_PATH", "OpsServer", "Probe", "ProbeFn", "ServeError"]

log = logging.getLogger("aerie.proto.ops")

METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """One liveness or readiness answer: ``ok`` decides the status, ``detail`` says why (JSON-able)."""

    ok: bool
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


ProbeFn = Callable[[], Probe | Awaitable[Probe]]


def _alive() -> Probe:
    # Answering at all proves the event loop runs, which is what liveness asks by default.
    return Probe(ok=True)


def _as_text(value: Any) -> str:
    return str(value)


# Details come from the process (paths, exceptions, enums): anything msgspec cannot encode is shown
# as its str() rather than failing the probe.
_ENCODER: Final = msgspec.json.Encoder(enc_hook=_as_text)
_JSON: Final = (b"content-type", b"application/json")
_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")
_METRICS_TYPE: Final = (b"content-type", CONTENT_TYPE_LATEST.encode())
_COMMON: Final = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
_ALLOW: Final = (b"allow", b"GET, HEAD")


class OpsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` (see the module docstring for every answer).

    Args:
        host, port: where to listen; ``port=0`` picks a free port, readable from `port` after `start`.
        registry: what ``/metrics`` exposes.
        health: liveness; defaults to always ok (the loop answered).
        ready: readiness; defaults to always ok.
        probe_timeout_s: how long an async probe may take before it counts as failed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        health: ProbeFn = _alive,
        ready: ProbeFn = _alive,
        probe_timeout_s: float = 2.0,
        name: str = "aerie-ops",
    ) -> None:
        if probe_timeout_s <= 0:
            raise ValueError(f"probe_timeout_s must be positive, got {probe_timeout_s}")
        self.host = host
        self._port = port
        self.registry = registry
        self.name = name
        self._probes: dict[str, tuple[str, ProbeFn]] = {
            HEALTH_PATH: ("health", health),
            READY_PATH: ("ready", ready),
        }
        self._probe_timeout_s = probe_timeout_s
        self._last_ok: dict[str, bool] = {}
        self._running: Running | None = None
        self._closed = False
        self._start_lock: asyncio.Lock | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Bind and serve; returns once the socket accepts connections. Idempotent.

        Raises `ServeError` when the address cannot be bound, or after `close`.
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._closed:
                raise ServeError(f"{self.name}: start after close")
            if self._running is not None:
                return
            self._running = await serve(self.app, bind(self.host, self._port), name=self.name)
            self._port = self._running.port

    async def close(self) -> None:
        """Stop serving (in-flight requests finish). Safe to call more than once."""
        self._closed = True
        running, self._running = self._running, None
        if running is not None:
            await running.stop()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"OpsServer({self.host!r}, {self._port}, name={self.name!r})"

    # -- the ASGI app ------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The raw ASGI application (exposed for embedding and in-process tests)."""
        if scope.get("type") != "http":
            return  # served with lifespan="off"; websockets are disabled
        path = scope.get("path", "")
        method = scope.get("method", "")
        probe = self._probes.get(path)
        if probe is None and path != METRICS_PATH:
            await _respond(send, 404, b"not found\n", _TEXT)
            return
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", _TEXT, _ALLOW)
            return
        if probe is None:
            status, body, kind = self._metrics()
        else:
            status, body = await self._probe(*probe)
            kind = _JSON
        # uvicorn leaves the body out for HEAD and keeps the GET headers, as HTTP wants.
        await _respond(send, status, body, kind)

    def _metrics(self) -> tuple[int, bytes, tuple[bytes, bytes]]:
        try:
            return 200, generate_latest(self.registry), _METRICS_TYPE
        except Exception as exc:
            log.exception("metrics collection failed", extra={"server": self.name})
            return 500, f"metrics collection failed: {_describe(exc)}\n".encode(), _TEXT

    async def _probe(self, kind: str, probe: ProbeFn) -> tuple[int, bytes]:
        try:
            answer = await self._ask(probe)
            body = _ENCODER.encode(answer)
        except Exception as exc:
            timed_out = isinstance(exc, _ProbeTimeout)
            error = str(exc) if timed_out else _describe(exc)
            log.warning("%s probe failed: %s", kind, error, exc_info=not timed_out)
            answer = Probe(ok=False, detail={"error": error})
            body = _ENCODER.encode(answer)
        if self._last_ok.get(kind) is not answer.ok:
            if kind in self._last_ok:
                level = logging.INFO if answer.ok else logging.WARNING
                state = "ok" if answer.ok else "failing"
                log.log(level, "%s is now %s", kind, state, extra={"detail": answer.detail})
            self._last_ok[kind] = answer.ok
        return (200 if answer.ok else 503), body

    async def _ask(self, probe: ProbeFn) -> Probe:
        result = probe()
        if inspect.isawaitable(result):
            try:
                async with asyncio.timeout(self._probe_timeout_s):
                    result = await result
            except TimeoutError:
                raise _ProbeTimeout(f"timed out after {self._probe_timeout_s:g}s") from None
        if not isinstance(result, Probe):
            raise TypeError(f"probe returned {type(result).__name__}, not Probe")
        return result


class _ProbeTimeout(Exception):
    """An async probe that did not answer in time (logged without a traceback: there is none to show)."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _respond(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await respond(send, status, body, headers=[*headers, *_COMMON])
