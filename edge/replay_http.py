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

Failure modes: `ReplayError` for a URL that is not http(s) (`check_url`), and `TlsError` (a
`ReplayError`) for TLS files that cannot be loaded; nothing was sent then. Per-event failures are
counted in `PostStats`, never raised; an event that cannot be written as Falco JSON at all is
counted as ``unencodable``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterable, Iterable
from typing import Final

import httpx
import msgspec

from aerie.edge.replay import ReplayError, paced
from aerie.edge.tls import ClientTls, client_ssl_context
from aerie.proto.event import FalcoEvent

__all__ = ["FALCO_USER_AGENT", "PostStats", "check_url", "post_events"]

FALCO_USER_AGENT: Final = "falcosecurity/falco"

_ENCODER: Final = msgspec.json.Encoder()
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


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


def check_url(url: str) -> httpx.URL:
    """``url`` parsed; raises `ReplayError` unless it is ``http://`` or ``https://`` with a host."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ReplayError(f"bad URL {url!r}: {exc}") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise ReplayError(f"URL must be http:// or https:// with a host, got {url!r}")
    return target


def _reason(exc: httpx.RequestError) -> str:
    """``httpx.ConnectError`` → ``connect_error``: a stable label for counters."""
    return _CAMEL.sub("_", type(exc).__name__).lower()


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
    stats: PostStats | None = None,
) -> PostStats:
    """POST every event to ``url`` like Falco's ``http_output``; see the module docstring.

    Args:
        events: the events, in order (a list, a generator, or an async iterable such as
            ``JsonLinesInput(path).events()``).
        url: Falco's ``http_output.url``, e.g. ``https://edge:2801/``.
        rate: POST starts per second; ``0`` for as fast as the receiver answers.
        tls: CA and optional client certificate for ``https`` URLs (Falco's ``ca_cert``,
            ``client_cert``, ``client_key``); None verifies against certifi's CA bundle.
        concurrency: connections / requests in flight (Falco: 1).
        request_timeout: seconds per attempt (connect, write, read each).
        max_consecutive_timeouts: extra attempts after a timeout, per event.
        stats: where to count, as it happens (so that a caller who cancels the replay still has
            the counts); a new `PostStats` when None.

    Returns the counts; raises `ReplayError` only before anything is sent.
    """
    if rate < 0 or concurrency < 1 or max_consecutive_timeouts < 0:
        raise ReplayError("rate must be >= 0, concurrency >= 1, max_consecutive_timeouts >= 0")
    target = check_url(url)
    # No tls: httpx's default verification (certifi's CA bundle).
    verify = client_ssl_context(tls) if tls is not None else True
    headers = {"user-agent": user_agent, "accept": "*/*", "content-type": "application/json"}
    stats = stats if stats is not None else PostStats()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    try:
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

            async for event in paced(events, rate):
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
    finally:
        stats.elapsed_s = time.perf_counter() - started
    return stats
