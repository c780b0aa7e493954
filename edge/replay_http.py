"""POST `FalcoEvent`s to an ``http_output`` URL the way Falco itself does (``aerie falco replay --http``).

What Falco's ``http_output`` sends (``userspace/falco/outputs_http.cpp``, libcurl), and what this
module sends too:

* one alert per POST, the body being Falco's JSON object (`FalcoEvent.to_falco_json`, compact);
* ``Content-Type: application/json`` (Falco's ``json_output: true``), ``User-Agent:
  falcosecurity/falco`` (the ``user_agent`` default), ``Accept: */*``, a Content-Length;
* over one kept-alive HTTP/1.1 connection, one request at a time, in order;
* optional TLS with a CA file (``ca_cert``) and a client certificate (``mtls``, ``client_cert``,
  ``client_key``).

Retries, as Falco: the response status is *not* acted upon (a 4xx/5xx is not retried; it is
counted here as failed with reason ``http_<status>``), and only a timeout is retried, up to
``max_consecutive_timeouts`` more attempts (Falco's option of that name, default 5). Other transport
errors (connection refused, reset, TLS refusal) fail that event, counted by reason, and the next
event is tried. Replaying faithfully matters more than delivering: a 503 from an overloaded
receiver must show up as loss, as it would with Falco.

Beyond Falco: ``rate`` paces the starts of the POSTs (events per second, ``0`` as fast as
possible), and ``concurrency`` > 1 uses several pooled connections for load tests (order across
connections is then not kept).

Failure modes: `ReplayError` for a URL that is not http(s) or TLS files that cannot be loaded
(nothing was sent). Per-event failures are counted in `PostStats`, never raised; an event that
cannot be written as Falco JSON at all is counted as ``unencodable``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Final

import httpx
import msgspec

from aerie.proto.event import FalcoEvent

__all__ = ["FALCO_USER_AGENT", "ClientTls", "PostStats", "ReplayError", "post_events"]

FALCO_USER_AGENT: Final = "falcosecurity/falco"

_ENCODER: Final = msgspec.json.Encoder()
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


class ReplayError(RuntimeError):
    """The replay cannot start (bad URL, unreadable TLS material)."""


class ClientTls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Client-side TLS, Falco's ``ca_cert`` / ``client_cert`` / ``client_key``. Paths are PEM files.

    ``ca`` None trusts the system store. ``cert`` and ``key`` together present a client
    certificate (mutual TLS).
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class PostStats(msgspec.Struct, kw_only=True):
    """Outcome of one replay. ``sent`` counts 2xx answers; every other event is in ``failures``."""

    sent: int = 0
    failed: int = 0
    failures: dict[str, int] = msgspec.field(default_factory=dict)
    retries: int = 0
    elapsed_s: float = 0.0

    def record_failure(self, reason: str) -> None:
        self.failed += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1


def _ssl_context(tls: ClientTls | None) -> ssl.SSLContext | bool:
    if tls is None:
        return True
    if (tls.cert is None) != (tls.key is None):
        raise ReplayError("client TLS needs both cert and key, or neither")
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ReplayError(f"cannot load client TLS material: {exc}") from exc
    return context


def _reason(exc: httpx.RequestError) -> str:
    """``httpx.ConnectError`` → ``connect_error``: a stable label for counters."""
    return _CAMEL.sub("_", type(exc).__name__).lower()


async def _aiter(events: Iterable[FalcoEvent] | AsyncIterable[FalcoEvent]) -> AsyncIterator[FalcoEvent]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event


async def post_events(
    events: Iterable[FalcoEvent] | AsyncIterable[FalcoEvent],
    url: str,
    *,
    rate: float = 0.0,
    tls: ClientTls | None = None,
    user_agent: str = FALCO_USER_AGENT,
    concurrency: int = 1,
    request_timeout: float = 10.0,
    max_consecutive_timeouts: int = 5,
) -> PostStats:
    """POST every event to ``url`` like Falco's ``http_output``; see the module docstring.

    Args:
        events: the events, in order (a list, a generator, or an async iterable such as
            ``JsonLinesInput(path).events()``).
        url: Falco's ``http_output.url``, e.g. ``https://edge:2801/``.
        rate: POST starts per second; ``0`` for as fast as the receiver answers.
        tls: CA and optional client certificate for ``https`` URLs.
        concurrency: connections / requests in flight (Falco: 1).
        request_timeout: seconds per attempt (connect, write, read each).
        max_consecutive_timeouts: extra attempts after a timeout, per event.

    Returns the counts; raises `ReplayError` only before anything is sent.
    """
    if rate < 0 or concurrency < 1 or max_consecutive_timeouts < 0:
        raise ReplayError("rate must be >= 0, concurrency >= 1, max_consecutive_timeouts >= 0")
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ReplayError(f"bad URL {url!r}: {exc}") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise ReplayError(f"URL must be http:// or https:// with a host, got {url!r}")
    verify = _ssl_context(tls)
    headers = {"user-agent": user_agent, "accept": "*/*", "content-type": "application/json"}
    stats = PostStats()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()

    async with httpx.AsyncClient(
        verify=verify, headers=headers, timeout=request_timeout, limits=limits, trust_env=False
    ) as client:

        async def post(body: bytes) -> None:
            attempts = 0
            while True:
                try:
                    response = await client.post(target, content=body)
                except httpx.TimeoutException as exc:
                    if attempts < max_consecutive_timeouts:
                        attempts += 1
                        stats.retries += 1
                        continue
                    stats.record_failure(_reason(exc))
                    return
                except httpx.RequestError as exc:  # transport, protocol, response decoding
                    stats.record_failure(_reason(exc))
                    return
                if 200 <= response.status_code < 300:
                    stats.sent += 1
                else:
                    stats.record_failure(f"http_{response.status_code}")
                return

        slots = asyncio.Semaphore(concurrency)
        in_flight: set[asyncio.Task[None]] = set()

        async def post_in_slot(body: bytes) -> None:
            try:
                await post(body)
            finally:
                slots.release()

        first = loop.time()
        index = 0
        async for event in _aiter(events):
            if rate > 0:
                delay = first + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            index += 1
            try:
                body = _ENCODER.encode(event.to_falco_json())
            except (ValueError, OverflowError, TypeError, msgspec.EncodeError):
                # A time outside what RFC 3339 can write, for one: that event fails, not the replay.
                stats.record_failure("unencodable")
                continue
            if concurrency == 1:
                await post(body)
                continue
            await slots.acquire()
            task = asyncio.create_task(post_in_slot(body))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    stats.elapsed_s = time.perf_counter() - started
    return stats
