"""A Falco-compatible gRPC source: replays `FalcoEvent`s through Falco's own gRPC API.

Serves ``falco.outputs.service`` (``sub`` and ``get``) and ``falco.version.service`` the way
Falco <= 0.43 does, so a Falco gRPC client (Falco's Go/Python/Rust client libraries,
falco-exporter, aerie's `GrpcInput`) can consume it:

* one queue for all clients: each event goes to exactly one of the subscribers that compete for it;
* ``sub``: each request a client sends makes the server stream what is queued at that moment; when
  the queue is empty it waits for that client's next request (clients poll, as they do with Falco);
* ``get``: stream what is queued now, then end the stream;
* ``version``: a Falco-like version (default ``0.43.0``, the last Falco with the gRPC server).

Addresses (as Falco's ``grpc.bind_address``): ``unix:///path/falco.sock`` (no TLS: the socket's
file permissions are the access control) or ``host:port`` with ``tls`` = `aerie.edge.tls.ServerTls`
with a ``ca`` (mutual TLS: the server presents ``cert``/``key`` and requires a client certificate
signed by ``ca``). Plain TCP, or TLS without client certificates, is refused, as Falco refuses it.
``host:0`` binds a free port; `ReplayServer.address` tells which.

Feeding: `ReplayServer.feed` takes an iterable or async iterable of `FalcoEvent` (encoded with
`encode_response`, as Falco fills responses), of ready ``falco.outputs.response`` messages, or of
raw ``bytes`` sent as they are (tests use the last two to send malformed alerts). ``rate`` is the
pace in events per second (0: as fast as the clients take them). `aerie.edge.replay.read_events`
turns a JSON-lines file of Falco alerts into `FalcoEvent`s.

Usage, as ``aerie falco replay --events FILE --grpc ADDR --rate EPS`` wires it::

    server = await serve_grpc(read_events(path), "unix:///tmp/falco.sock", rate=100.0)
    try:
        await server.wait_delivered()      # every event handed to some client
    finally:
        await server.stop()

Failure modes: configuration and bind problems raise `ReplayError` from `ReplayServer.start`
(`serve_grpc`). A failing event source (the iterable raises) or a stop before everything was
delivered makes `wait_delivered` raise `ReplayError`. "Delivered" means written to a client's
stream; an event whose write fails because the client went away goes back to the front of the
queue for the next client, so delivery is at least once across client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import stat
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Final

import grpc

from aerie.edge.inputs.grpc import GrpcAddress, parse_address
from aerie.edge.replay import ReplayError, paced
from aerie.edge.tls import ServerTls, grpc_server_credentials
from aerie.proto.event import FalcoEvent
from aerie.proto.falco import outputs_pb2, version_pb2
from aerie.proto.grpc_codec import encode_response_bytes

__all__ = [
    "DEFAULT_FALCO_VERSION",
    "ReplayServer",
    "ReplayStats",
    "Replayable",
    "serve_grpc",
]

log = logging.getLogger(__name__)

DEFAULT_FALCO_VERSION: Final = "0.43.0"
Replayable = FalcoEvent | outputs_pb2.response | bytes

_SEMVER: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?\Z")


class ReplayStats:
    """What the server did: events queued, delivered, put back after a failed write, and the
    streams open now. Read it from the event loop's thread."""

    def __init__(self) -> None:
        self.queued = 0
        self.delivered = 0
        self.requeued = 0
        self.subscribers = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "queued": self.queued,
            "delivered": self.delivered,
            "requeued": self.requeued,
            "subscribers": self.subscribers,
        }

    def __repr__(self) -> str:
        return f"ReplayStats({self.snapshot()!r})"


def _version_response(version: str, engine_version: str) -> bytes:
    m = _SEMVER.match(version)
    if m is None:
        raise ReplayError(f"Falco version {version!r} is not semver (MAJOR.MINOR.PATCH[-pre][+build])")
    engine = _SEMVER.match(engine_version) if engine_version else None
    if engine_version and engine is None:
        raise ReplayError(f"engine version {engine_version!r} is not semver")
    response = version_pb2.response(
        version=version,
        major=int(m[1]),
        minor=int(m[2]),
        patch=int(m[3]),
        prerelease=m[4] or "",
        build=m[5] or "",
        engine_version=engine_version,
    )
    if engine is not None:
        response.engine_major, response.engine_minor, response.engine_patch = map(int, engine.groups()[:3])
    return response.SerializeToString()


def _to_wire(item: object) -> bytes:
    if isinstance(item, FalcoEvent):
        return encode_response_bytes(item)
    if isinstance(item, outputs_pb2.response):
        return item.SerializeToString()
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise ReplayError(f"cannot replay a {type(item).__name__}: expected FalcoEvent, response or bytes")


class _DeliveryQueue:
    """Falco's one queue, shared by every stream. Single event loop: no locks."""

    def __init__(self, maxsize: int, stats: ReplayStats) -> None:
        self._items: deque[bytes] = deque()
        self._maxsize = maxsize
        self._stats = stats
        self._room = asyncio.Event()
        self._room.set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._inflight = 0
        self.feeding = False

    def _update(self) -> None:
        if len(self._items) < self._maxsize:
            self._room.set()
        else:
            self._room.clear()
        if not self.feeding and not self._items and not self._inflight:
            self._settled.set()
        else:
            self._settled.clear()

    def start_feeding(self) -> None:
        self.feeding = True
        self._update()

    def stop_feeding(self) -> None:
        self.feeding = False
        self._update()

    async def put(self, item: bytes) -> None:
        while len(self._items) >= self._maxsize:
            await self._room.wait()
        self._items.append(item)
        self._stats.queued += 1
        self._update()

    def take(self) -> bytes | None:
        """The next item for a stream, or None when the queue is empty (Falco's try_pop)."""
        if not self._items:
            return None
        self._inflight += 1
        item = self._items.popleft()
        self._update()
        return item

    def done(self, item: bytes, *, delivered: bool) -> None:
        self._inflight -= 1
        if delivered:
            self._stats.delivered += 1
        else:
            self._items.appendleft(item)
            self._stats.requeued += 1
        self._update()

    def pending(self) -> int:
        return len(self._items) + self._inflight

    async def settled(self) -> None:
        await self._settled.wait()

    def wake_waiters(self) -> None:
        self._settled.set()


class ReplayServer:
    """A Falco-compatible gRPC server over one shared event queue (see the module docstring)."""

    def __init__(
        self,
        address: str,
        *,
        tls: ServerTls | None = None,
        version: str = DEFAULT_FALCO_VERSION,
        engine_version: str = "",
        queue_size: int = 10_000,
        grace_s: float = 1.0,
    ) -> None:
        try:
            self._address: GrpcAddress = parse_address(address, allow_port_zero=True)
        except ValueError as exc:
            raise ReplayError(str(exc)) from None
        if self._address.kind == "tcp" and (tls is None or not tls.mutual):
            raise ReplayError(
                f"{address} is TCP, which Falco serves only with mutual TLS: give the server's "
                "certificate and key and the CA client certificates must chain to, or use a unix "
                "socket (unix:///path/falco.sock)"
            )
        if self._address.kind == "unix" and tls is not None:
            raise ReplayError(f"{address} is a unix socket, which Falco serves without TLS")
        if queue_size < 1:
            raise ReplayError("queue_size must be >= 1")
        self._requested = address
        self._tls = tls
        self._version = _version_response(version, engine_version)
        self._grace_s = grace_s
        self.stats = ReplayStats()
        self._queue = _DeliveryQueue(queue_size, self.stats)
        self._server: Any = None
        self._bound = address
        self._feeder: asyncio.Task[None] | None = None
        self._feed_error: BaseException | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """The address clients dial: as given, with the real port when ``host:0`` was asked."""
        return self._bound

    async def __aenter__(self) -> ReplayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_socket_path(self) -> None:
        path = self._address.path
        assert path is not None
        if not path.parent.is_dir():
            raise ReplayError(f"cannot serve on {self._requested}: folder {path.parent} does not exist")
        # gRPC unlinks whatever is at the path before binding; never let that be a regular file.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ReplayError(f"cannot serve on {self._requested}: {path} exists and is not a socket")

    async def start(self) -> None:
        """Bind and start serving. Raises `ReplayError` on bad TLS files or when binding fails."""
        if self._server is not None:
            return
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "falco.outputs.service",
                    {
                        "sub": grpc.stream_stream_rpc_method_handler(self._sub),
                        "get": grpc.unary_stream_rpc_method_handler(self._get),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "falco.version.service",
                    {"version": grpc.unary_unary_rpc_method_handler(self._version_rpc)},
                ),
            )
        )
        try:
            if self._address.kind == "unix":
                self._check_socket_path()
                server.add_insecure_port(self._address.target)
            else:
                assert self._tls is not None  # the constructor refuses TCP without TLS
                port = server.add_secure_port(self._address.target, grpc_server_credentials(self._tls))
                host = self._address.host
                self._bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except ReplayError:  # ours (socket path, TLS files), already saying what is wrong
            raise
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            raise ReplayError(f"cannot serve on {self._requested}: {exc}") from None
        await server.start()
        self._server = server
        log.info(
            "serving Falco gRPC replay at %s",
            self._bound,
            extra={"address": self._bound, "tls": self._tls is not None},
        )

    def feed(self, events: Iterable[Replayable] | AsyncIterable[Replayable], *, rate: float = 0.0) -> None:
        """Queue ``events`` in the background at ``rate`` events/s (0: as fast as they are taken).

        One feed at a time; `wait_delivered` waits for it. Raises `ReplayError` if a feed is running
        or the rate is negative.
        """
        if rate < 0:
            raise ReplayError(f"rate must be >= 0 events/s, got {rate}")
        if self._feeder is not None and not self._feeder.done():
            raise ReplayError("a feed is already running")
        self._feed_error = None
        self._queue.start_feeding()
        self._feeder = asyncio.create_task(self._feed(events, rate), name="falco-replay-feed")

    async def _feed(self, events: Iterable[Replayable] | AsyncIterable[Replayable], rate: float) -> None:
        n = 0
        try:
            async for item in paced(events, rate):
                await self._queue.put(_to_wire(item))
                n += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._feed_error = exc
            log.error("replay feed failed after %d events: %s", n, exc, extra={"queued": n})
        finally:
            self._queue.stop_feeding()

    async def wait_delivered(self) -> None:
        """Wait until the feed has ended and every queued event was written to some client.

        Raises `ReplayError` when the feed failed or the server stopped first. Bound the wait with
        ``asyncio.timeout`` where no client may come.
        """
        await self._queue.settled()
        if self._feed_error is not None:
            raise ReplayError(f"the event source failed: {self._feed_error}") from self._feed_error
        if self._queue.pending():
            raise ReplayError(f"server stopped with {self._queue.pending()} events undelivered")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop feeding and serving; removes the unix socket.

        Subscribed streams end (status OK, as Falco's do when it shuts down) at their client's next
        request; whatever is still open after ``grace_s`` seconds is cancelled.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self._server is not None:
            await self._server.stop(self._grace_s if grace_s is None else grace_s)
        if self._address.kind == "unix" and self._address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self._address.path.lstat().st_mode):
                    self._address.path.unlink()
        self._queue.wake_waiters()
        log.info("stopped Falco gRPC replay at %s", self._bound, extra=self.stats.snapshot())

    # --- RPCs --------------------------------------------------------------------------------

    async def _drain(self, context: Any) -> None:
        """Write what is queued now to this stream (Falco: try_pop until empty)."""
        while (item := self._queue.take()) is not None:
            delivered = False
            try:
                await context.write(item)
                delivered = True
            finally:
                self._queue.done(item, delivered=delivered)

    async def _sub(self, requests: AsyncIterator[bytes], context: Any) -> None:
        self.stats.subscribers += 1
        log.debug("subscriber connected: %s", context.peer(), extra={"peer": context.peer()})
        try:
            async for _ in requests:
                if self._stopped:
                    return  # as Falco does when it shuts down: end the stream with OK
                await self._drain(context)
        finally:
            self.stats.subscribers -= 1

    async def _get(self, request: bytes, context: Any) -> None:
        self.stats.subscribers += 1
        try:
            await self._drain(context)
        finally:
            self.stats.subscribers -= 1

    async def _version_rpc(self, request: bytes, context: Any) -> bytes:
        return self._version


async def serve_grpc(
    events: Iterable[Replayable] | AsyncIterable[Replayable],
    address: str,
    *,
    rate: float = 0.0,
    tls: ServerTls | None = None,
    version: str = DEFAULT_FALCO_VERSION,
    queue_size: int = 10_000,
) -> ReplayServer:
    """Start a `ReplayServer` on ``address`` and feed it ``events`` at ``rate`` events/s.

    Returns the running server: ``await server.wait_delivered()`` then ``await server.stop()``.
    Raises `ReplayError` when the server cannot start.
    """
    server = ReplayServer(address, tls=tls, version=version, queue_size=queue_size)
    await server.start()
    server.feed(events, rate=rate)
    return server
