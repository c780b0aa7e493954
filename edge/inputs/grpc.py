"""Falco's gRPC outputs API as a `FalcoInput` (Falco <= 0.43; later Falco removed the server).

Addresses (the same syntax as Falco's ``grpc.bind_address``, see `parse_address`):

* ``unix:///run/falco/falco.sock`` (the default) or ``unix:relative/path``: a unix socket. Insecure
  by design, as in Falco: access is controlled by the socket file's permissions.
* ``host:port`` (``127.0.0.1:5060``, ``[::1]:5060``, ``falco.falco.svc:5060``): TCP, which Falco only
  serves with mutual TLS. A TCP address without ``tls`` = `ClientTls` with ``ca``, ``cert`` and
  ``key`` is refused with `InputError` before anything connects.

On every connection the input first calls ``falco.version.service/version`` and logs Falco's
version (logger ``aerie.edge.inputs.grpc``, fields in ``extra``), then streams alerts:

* ``mode="sub"`` (default): the bidirectional ``falco.outputs.service/sub``. Falco streams the
  alerts queued when a request arrives, one after the other, and when its queue is empty waits
  for the next request. So, as Falco's own Go client does (``OutputsWatch``), the input sends a
  request when the stream opens and then again whenever it has waited ``poll_interval_s`` for an
  alert in vain — never while alerts are flowing or waiting to be read. (A request written while
  alerts sit unread in gRPC's buffer is useless, and if the server ends the stream meanwhile —
  Falco shutting down, a replay finishing — gRPC fails the call with INTERNAL and drops them.)
* ``mode="get"``: ``falco.outputs.service/get`` returns what is queued and ends; it is called
  again every ``poll_interval_s``.

Falco keeps one queue for all clients: several subscribers split the alerts between them.

Failure modes. The input never ends on its own: when Falco is down, refuses the TLS handshake, or
the stream breaks, it reconnects after a capped exponential backoff with jitter
(``initial_backoff_s`` doubling up to ``max_backoff_s``, each wait drawn from [½, 1] of that; reset
after a successful connection), counting attempts, reconnects and failures by reason in
`connection`. grpc errors never escape: they are translated into those counts and log records. A
message that does not decode is counted in ``stats.rejected`` under `DecodeError`'s reason and
skipped; the stream goes on. `close` stops it promptly (it cancels the call in flight).
Delivery is at most once, like Falco's: an alert Falco handed to a stream that then broke is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import grpc
import msgspec

from aerie.edge.inputs.base import FalcoInput, InputError
from aerie.edge.tls import ClientTls, TlsError, grpc_channel_credentials
from aerie.proto.event import DecodeError, FalcoEvent
from aerie.proto.falco import outputs_pb2, version_pb2
from aerie.proto.grpc_codec import decode_response_bytes
from aerie.proto.retry import backoff_delay

__all__ = [
    "DEFAULT_ADDRESS",
    "ConnectionStats",
    "GrpcAddress",
    "GrpcInput",
    "GrpcInputConfig",
    "parse_address",
]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS: Final = "unix:///run/falco/falco.sock"

_SUB: Final = "/falco.outputs.service/sub"
_GET: Final = "/falco.outputs.service/get"
_VERSION: Final = "/falco.version.service/version"
_REQUEST: Final = outputs_pb2.request()

# A fresh channel per connection attempt: without a local subchannel pool, gRPC would share the
# failed subchannel (and its internal backoff) with the new channel and keep failing fast.
_CHANNEL_OPTIONS: Final = (("grpc.use_local_subchannel_pool", 1),)

_HOST_PORT: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})\Z"
)


@dataclass(frozen=True)
class GrpcAddress:
    """A parsed address: ``target`` is what gRPC dials or binds."""

    kind: Literal["unix", "tcp"]
    target: str
    path: Path | None = None
    host: str = ""
    port: int = 0


def parse_address(address: str, *, allow_port_zero: bool = False) -> GrpcAddress:
    """``unix:///abs/path``, ``unix:path`` or ``host:port`` → `GrpcAddress`.

    Raises `ValueError` naming the accepted forms for anything else (``tcp://``, a missing port,
    ``unix-abstract:``). Port 0 (any free port) only where ``allow_port_zero`` (servers).
    """
    if address.startswith("unix:"):
        rest = address[len("unix:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise ValueError(
                    f"{address!r}: unix:// needs an absolute path (unix:///run/falco/falco.sock)"
                )
        if not rest:
            raise ValueError(f"{address!r}: the unix socket path is empty")
        return GrpcAddress(kind="unix", target=f"unix:{rest}", path=Path(rest))
    m = _HOST_PORT.match(address)
    if m is None:
        raise ValueError(f"{address!r} is not a gRPC address: use unix:///path/to/falco.sock or host:port")
    port = int(m["port"])
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"{address!r}: port {port} is out of range")
    host = m["v6"] or m["host"]
    target = f"[{host}]:{port}" if m["v6"] else f"{host}:{port}"
    return GrpcAddress(kind="tcp", target=target, host=host, port=port)


class GrpcInputConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of `GrpcInput`. ``tls`` (``ca``, ``cert`` and ``key``, all three) is required for TCP
    and refused for unix; its files are read at every connection, so rotated certificates are
    picked up."""

    address: str = DEFAULT_ADDRESS
    tls: ClientTls | None = None
    server_name: str | None = None
    """TLS name to check the server certificate against, when it is not the host in ``address``."""
    mode: Literal["sub", "get"] = "sub"
    poll_interval_s: float = 0.05
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    connect_timeout_s: float = 5.0


class ConnectionStats:
    """Connection counters of one `GrpcInput` (thread-safe, like `InputStats`).

    ``attempts``: connections tried; ``connects``: attempts Falco answered (version call
    succeeded); ``reconnects``: attempts after the first, each after a backoff; ``failures``:
    failed attempts and broken streams by reason (the gRPC status name, ``stream_ended``,
    ``tls_files``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts = 0
        self.connects = 0
        self.reconnects = 0
        self.failures: Counter[str] = Counter()
        self.falco_version = ""

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "attempts": self.attempts,
                "connects": self.connects,
                "reconnects": self.reconnects,
                "failures": dict(self.failures),
                "falco_version": self.falco_version,
            }

    def __repr__(self) -> str:
        return f"ConnectionStats({self.snapshot()!r})"


def _validate(config: GrpcInputConfig) -> GrpcAddress:
    try:
        address = parse_address(config.address)
    except ValueError as exc:
        raise InputError(f"grpc input: address: {exc}") from None
    # The files themselves were checked when the ClientTls was made.
    tls = config.tls
    if address.kind == "tcp":
        missing = tls.missing_for_mutual_tls() if tls is not None else ["ca", "cert", "key"]
        if missing:
            raise InputError(
                f"grpc input: {config.address} is TCP, which Falco serves only with mutual TLS; "
                f"set tls with ca, cert and key (missing: {', '.join(missing)}), or use Falco's "
                f"unix socket (e.g. {DEFAULT_ADDRESS})"
            )
    elif tls is not None or config.server_name:
        raise InputError(
            f"grpc input: {config.address} is a unix socket, which Falco serves without TLS; "
            "remove tls/server_name or use a host:port address"
        )
    if config.poll_interval_s <= 0 or config.connect_timeout_s <= 0:
        raise InputError("grpc input: poll_interval_s and connect_timeout_s must be > 0")
    if not 0 < config.initial_backoff_s <= config.max_backoff_s:
        raise InputError("grpc input: need 0 < initial_backoff_s <= max_backoff_s")
    return address


class GrpcInput(FalcoInput):
    """Alerts from Falco's gRPC server (see the module docstring for the whole contract)."""

    name = "grpc"

    def __init__(self, config: GrpcInputConfig | None = None) -> None:
        super().__init__()
        self.config = config or GrpcInputConfig()
        self.address = _validate(self.config)
        self.connection = ConnectionStats()
        self._closed = False
        self._wake = asyncio.Event()
        self._call: Any = None  # the gRPC call in flight, cancelled by close()
        # When the reader began waiting for the next alert (None while it is not waiting): the
        # sub stream asks Falco for more only after a whole poll interval of waiting.
        self._waiting_since: float | None = None

    def closed(self) -> bool:
        """True once `close` was called. (A method: it changes across awaits.)"""
        return self._closed

    def __repr__(self) -> str:
        return f"GrpcInput({self.config.address!r}, mode={self.config.mode!r})"

    def _channel(self) -> Any:
        if self.address.kind == "unix":
            return grpc.aio.insecure_channel(self.address.target, options=_CHANNEL_OPTIONS)
        assert self.config.tls is not None  # _validate: TCP has tls
        try:
            credentials = grpc_channel_credentials(self.config.tls)
        except TlsError as exc:  # mid-rotation, say: counted, and tried again after a backoff
            raise _ConnectFailed("tls_files", str(exc)) from None
        options: tuple[tuple[str, Any], ...] = _CHANNEL_OPTIONS
        if self.config.server_name:
            options += (("grpc.ssl_target_name_override", self.config.server_name),)
        return grpc.aio.secure_channel(self.address.target, credentials, options=options)

    async def events(self) -> AsyncIterator[FalcoEvent]:
        failures_in_a_row = 0
        while not self.closed():
            with self.connection._lock:
                self.connection.attempts += 1
                if self.connection.attempts > 1:
                    self.connection.reconnects += 1
            try:
                channel = self._channel()
            except _ConnectFailed as exc:
                self._record_failure(exc.reason, exc.detail, connected=False)
            else:
                connected = False
                try:
                    async with channel:
                        await self._hello(channel)
                        connected = True
                        failures_in_a_row = 0
                        async for event in self._stream(channel):
                            yield event
                        if self.closed():
                            return
                        self._record_failure("stream_ended", "Falco ended the stream", connected=True)
                except grpc.aio.AioRpcError as exc:
                    self._record_failure(exc.code().name, exc.details() or "", connected=connected)
                except asyncio.CancelledError:
                    # close() cancels the call in flight; a cancellation of our own task still propagates.
                    task = asyncio.current_task()
                    if self.closed() and (task is None or task.cancelling() == 0):
                        return
                    raise
                finally:
                    self._call = None
            if self.closed():
                return
            await self._backoff(failures_in_a_row)
            failures_in_a_row += 1

    async def _hello(self, channel: Any) -> None:
        ask = channel.unary_unary(
            _VERSION,
            request_serializer=version_pb2.request.SerializeToString,
            response_deserializer=version_pb2.response.FromString,
        )
        self._call = ask(version_pb2.request(), timeout=self.config.connect_timeout_s)
        version = await self._call
        with self.connection._lock:
            self.connection.connects += 1
            self.connection.falco_version = version.version
        log.info(
            "connected to Falco %s at %s",
            version.version,
            self.config.address,
            extra={
                "falco_version": version.version,
                "falco_engine_version": version.engine_version,
                "address": self.config.address,
                "mode": self.config.mode,
                "reconnects": self.connection.reconnects,
            },
        )

    async def _requests(self) -> AsyncIterator[outputs_pb2.request]:
        """One request now, then one each time the reader has waited a poll interval in vain."""
        loop = asyncio.get_running_loop()
        poll = self.config.poll_interval_s
        while True:
            yield _REQUEST
            await asyncio.sleep(poll)
            # A timestamp checked once a poll interval, not an Event: setting an Event per alert
            # would put a task wake-up on the hot path.
            while (since := self._waiting_since) is None or (waited := loop.time() - since) < poll:  # noqa: ASYNC110
                await asyncio.sleep(poll if since is None else poll - waited)

    async def _stream(self, channel: Any) -> AsyncIterator[FalcoEvent]:
        # Responses arrive as raw bytes (no deserializer): a message that does not parse must be
        # counted and skipped here, not fail the whole call inside gRPC.
        if self.config.mode == "sub":
            sub = channel.stream_stream(_SUB, request_serializer=outputs_pb2.request.SerializeToString)
            self._call = sub(self._requests())
            async for event in self._read(self._call):
                yield event
            return
        get = channel.unary_stream(_GET, request_serializer=outputs_pb2.request.SerializeToString)
        while not self.closed():
            self._call = get(_REQUEST)
            async for event in self._read(self._call):
                yield event
            await self._sleep(self.config.poll_interval_s)

    async def _read(self, call: Any) -> AsyncIterator[FalcoEvent]:
        stats = self.stats
        loop = asyncio.get_running_loop()
        while not self.closed():
            self._waiting_since = loop.time()
            try:
                raw = await call.read()
            finally:
                self._waiting_since = None
            if raw is grpc.aio.EOF:
                return
            stats.record_received()
            try:
                event = decode_response_bytes(raw)
            except DecodeError as exc:
                stats.record_rejected(exc.reason)
                log.debug("rejected a Falco gRPC message: %s", exc, extra={"reason": exc.reason})
                continue
            stats.record_decoded()
            yield event

    def _record_failure(self, reason: str, detail: str, *, connected: bool) -> None:
        self.connection._fail(reason)
        log.warning(
            "Falco gRPC %s at %s: %s: %s",
            "stream lost" if connected else "connection failed",
            self.config.address,
            reason,
            detail,
            extra={"address": self.config.address, "reason": reason, "connected": connected},
        )

    async def _backoff(self, failures_in_a_row: int) -> None:
        await self._sleep(
            backoff_delay(failures_in_a_row + 1, self.config.initial_backoff_s, self.config.max_backoff_s)
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep that `close` cuts short."""
        if self.closed():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def close(self) -> None:
        """Stop: cancels the call in flight; `events` returns soon after. Idempotent."""
        self._closed = True
        self._wake.set()
        call = self._call
        if call is not None:
            call.cancel()


class _ConnectFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
