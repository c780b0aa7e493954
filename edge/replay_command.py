"""``aerie falco replay``: a Falco-compatible alert source built from a file of Falco JSON alerts.

The file is replayed to each output asked for, as Falco sends every alert to each output it has
enabled:

* ``grpc`` — Falco's gRPC outputs and version services (`aerie.edge.replay_grpc.ReplayServer`) on
  a unix socket, or on TCP with mutual TLS;
* ``http`` — one POST per alert, as Falco's ``http_output`` (`aerie.edge.replay_http.post_events`).

Each output reads the file on its own, lazily, at ``rate`` alerts per second (0: as fast as it
takes them), so a slow or absent gRPC subscriber never holds the HTTP replay back, as in Falco.
A line that is not a Falco alert is skipped and counted by reason (counted once, by the first
output's reader), never fatal.

The replay ends when every alert has been delivered on every output — written to some gRPC
subscriber's stream, answered by the HTTP receiver (a refusal counts as failed, as Falco counts it
lost) — or when ``linger_s`` seconds have passed, or on SIGINT/SIGTERM. Then subscribed gRPC streams
are ended (status OK, at each client's next request: what was written before reaches the client),
and `replay` returns a `ReplayReport`.

Failure modes: `check_settings` raises `ReplayError` (or `TlsError`, one) for settings that cannot
work, before anything starts; `replay` raises `ReplayError` when the server cannot bind or the file
cannot be read. Everything else is counted in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import msgspec

from aerie.edge.errors import ReplayError
from aerie.edge.replay import read_events
from aerie.edge.replay_grpc import ReplayServer
from aerie.edge.replay_http import PostStats, check_url, post_events
from aerie.edge.tls import ClientTls, ServerTls
from aerie.proto.event import FalcoEvent

__all__ = ["ReplayReport", "ReplaySettings", "check_settings", "replay"]

# After the last delivery: how long subscribers get to read what is in flight and see their stream
# end. A stream ends at its client's next request, which a polling client sends within its poll
# interval once it has read everything; gRPC's flow control keeps what is in flight bounded.
_END_GRACE_S: Final = 10.0
_INTERRUPT_GRACE_S: Final = 1.0


class ReplaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to replay and where. At least one of ``grpc`` and ``http``."""

    events: str
    """A file of Falco JSON alerts, one per line."""
    grpc: str | None = None
    """``unix:///path/falco.sock`` or ``host:port`` (``host:0`` picks a free port)."""
    grpc_tls: ServerTls | None = None
    """Required for a TCP ``grpc`` address, refused for a unix one; must require client certs."""
    http: str | None = None
    """Falco's ``http_output.url``."""
    http_tls: ClientTls | None = None
    """For an ``https`` URL: the CA to verify the receiver, and Falco's client certificate."""
    rate: float = 0.0
    """Alerts per second on each output; 0 as fast as they are taken."""
    linger_s: float | None = None
    """Stop after this many seconds even with alerts undelivered; None: until all are delivered."""


class ReplayReport(msgspec.Struct, kw_only=True):
    """What a replay did. ``outcome``: ``delivered`` (everything, on every output), ``linger``
    (``linger_s`` passed first) or ``interrupted`` (a signal)."""

    outcome: Literal["delivered", "linger", "interrupted"]
    read: int
    rejected: dict[str, int]
    grpc_address: str | None = None
    grpc: dict[str, Any] | None = None
    http_url: str | None = None
    http: PostStats | None = None

    @property
    def complete(self) -> bool:
        """Every alert read reached every output (bad lines aside)."""
        grpc_ok = self.grpc is None or self.grpc["delivered"] == self.read
        http_ok = self.http is None or (self.http.sent == self.read and not self.http.failed)
        return self.outcome == "delivered" and grpc_ok and http_ok

    def lines(self, events: str) -> list[str]:
        """The report, for a person."""
        bad = sum(self.rejected.values())
        out = [f"events: {self.read} read from {events}, {bad} bad lines skipped{_by_reason(self.rejected)}"]
        if self.grpc is not None:
            out.append(
                f"grpc {self.grpc_address}: {self.grpc['delivered']} delivered of {self.read}, "
                f"{self.grpc['requeued']} requeued after a failed write"
            )
        if self.http is not None:
            out.append(
                f"http {self.http_url}: {self.http.sent} sent, {self.http.failed} failed"
                f"{_by_reason(self.http.failures)}, {self.http.retries} retries"
            )
        if self.outcome == "linger":
            out.append("stopped: the linger time passed before every event was delivered")
        elif self.outcome == "interrupted":
            out.append("stopped: interrupted")
        return out


def _by_reason(counts: dict[str, int]) -> str:
    return " (" + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) + ")" if counts else ""


def check_settings(settings: ReplaySettings, names: Mapping[str, str] | None = None) -> None:
    """Refuse settings that cannot work, before anything binds or sends. Raises `ReplayError`.

    Messages name each setting by its field (``events``, ``grpc_tls``) or by ``names[field]``
    (a command line passes its flags).
    """

    def name(field: str) -> str:
        return (names or {}).get(field, field)

    if settings.grpc is None and settings.http is None:
        raise ReplayError(f"nothing to replay to: give {name('grpc')}, {name('http')}, or both")
    if not Path(settings.events).is_file():
        raise ReplayError(f"{name('events')}: {settings.events!r} does not exist or is not a file")
    if settings.rate < 0:
        raise ReplayError(f"{name('rate')} must be >= 0 events/s, got {settings.rate}")
    if settings.linger_s is not None and settings.linger_s <= 0:
        raise ReplayError(f"{name('linger_s')} must be > 0 seconds, got {settings.linger_s}")
    if settings.grpc is not None:
        try:
            ReplayServer(settings.grpc, tls=settings.grpc_tls)  # checks address and TLS, binds nothing
        except ReplayError as exc:
            raise ReplayError(f"{name('grpc')}: {exc}") from None
    elif settings.grpc_tls is not None:
        raise ReplayError(f"{name('grpc_tls')} without {name('grpc')}")
    if settings.http is not None:
        try:
            scheme = check_url(settings.http).scheme
        except ReplayError as exc:
            raise ReplayError(f"{name('http')}: {exc}") from None
        if scheme == "http" and settings.http_tls is not None:
            raise ReplayError(f"{name('http_tls')} needs an https:// URL, got {settings.http!r}")
    elif settings.http_tls is not None:
        raise ReplayError(f"{name('http_tls')} without {name('http')}")


async def replay(
    settings: ReplaySettings, *, status: TextIO | None = None, names: Mapping[str, str] | None = None
) -> ReplayReport:
    """Run the replay (see the module docstring). ``status`` gets a line once the gRPC server
    listens (with the real port for ``host:0``).

    Raises `ReplayError` for settings `check_settings` refuses (naming them as ``names`` says),
    when the server cannot bind, and when the events file cannot be read.
    """
    check_settings(settings, names)
    path = Path(settings.events)
    rejected: Counter[str] = Counter()
    read = 0

    def counted() -> Iterator[FalcoEvent]:
        nonlocal read
        for event in read_events(path, rejected):
            read += 1
            yield event

    readers = iter([counted(), read_events(path, log_skipped=False)])
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, interrupted.set)
            handled.append(sig)

    server: ReplayServer | None = None
    post_stats = PostStats() if settings.http is not None else None
    outcome: Literal["delivered", "linger", "interrupted"] = "interrupted"
    tasks: list[asyncio.Task[Any]] = []
    try:
        if settings.grpc is not None:
            server = ReplayServer(settings.grpc, tls=settings.grpc_tls)
            await server.start()
            if status is not None:
                print(f"aerie: serving Falco gRPC outputs at {server.address}", file=status, flush=True)
            server.feed(next(readers), rate=settings.rate)
            tasks.append(asyncio.create_task(server.wait_delivered(), name="replay-grpc"))
        if settings.http is not None:
            tasks.append(
                asyncio.create_task(
                    post_events(
                        next(readers),
                        settings.http,
                        rate=settings.rate,
                        tls=settings.http_tls,
                        stats=post_stats,
                    ),
                    name="replay-http",
                )
            )
        outcome = await _until_done(tasks, interrupted, settings.linger_s)
    finally:
        for task in tasks:
            task.cancel()
        # A task's error, if any, is already on its way out of _until_done.
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.stop(_END_GRACE_S if outcome == "delivered" else _INTERRUPT_GRACE_S)
        for sig in handled:
            loop.remove_signal_handler(sig)
    return ReplayReport(
        outcome=outcome,
        read=read,
        rejected=dict(rejected),
        grpc_address=server.address if server is not None else None,
        grpc=server.stats.snapshot() if server is not None else None,
        http_url=settings.http,
        http=post_stats,
    )


async def _until_done(
    tasks: list[asyncio.Task[Any]], interrupted: asyncio.Event, linger_s: float | None
) -> Literal["delivered", "linger", "interrupted"]:
    """Wait for every task, a signal, or ``linger_s``; a task's error ends the wait at once."""
    signalled = asyncio.create_task(interrupted.wait())
    pending: set[asyncio.Task[Any]] = set(tasks)
    try:
        async with asyncio.timeout(linger_s):
            while pending:
                done, _ = await asyncio.wait(pending | {signalled}, return_when=asyncio.FIRST_COMPLETED)
                if signalled in done:
                    return "interrupted"
                for task in done:
                    task.result()  # a failed output ends the replay with its error
                pending -= done
    except TimeoutError:
        return "linger"
    finally:
        signalled.cancel()
    return "delivered"
