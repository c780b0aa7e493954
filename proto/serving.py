"""Serving ASGI apps inside a running event loop: uvicorn without its own signal handling, with the
TLS peer's certificate in the scope, so apps can authorise callers by SPIFFE identity.

Shared by every HTTP server aerie runs (the edge's ``http_output`` input and its ops endpoints, the
agents' A2A services, the brain's ops endpoints). uvicorn does not hand the peer certificate to the
app; `IdentityHttpToolsProtocol` reads it once per connection and puts it where the ASGI TLS
extension says (``scope["extensions"]["tls"]["client_cert_chain"]``), and `peer_identity` reads it
back as a SPIFFE URI.

Shutdown: uvicorn's graceful stop closes each idle keep-alive connection and waits until it is gone.
Over TLS a close sends ``close_notify`` and waits for the peer's, which a client's idle pooled
connection never sends (nobody reads it), so every such connection used to hold the stop for the
whole graceful timeout. `IdentityHttpToolsProtocol` closes it the same way and aborts it
``_CLOSE_NOTIFY_WAIT_S`` later if the peer has not answered; a request in flight still gets its
response first and is then closed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aerie.proto.identity import identity_of

__all__ = [
    "EmbeddedServer",
    "IdentityHttpToolsProtocol",
    "Running",
    "ServeError",
    "bind",
    "peer_identity",
    "refuse_identity",
    "respond",
    "serve",
]

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
SslFactory = Callable[[], ssl.SSLContext]

_START_TIMEOUT_S: Final = 10.0
_CLOSE_NOTIFY_WAIT_S: Final = 0.1
"""How long a TLS connection closed at shutdown waits for the peer's close_notify before it is aborted:
a peer that is reading answers within a round trip; an idle pooled one never does."""


class ServeError(Exception):
    """A server that cannot bind, load its TLS material, or start."""


def peer_identity(scope: Scope) -> str | None:
    """The SPIFFE URI of the TLS peer, from the ASGI TLS extension `IdentityHttpToolsProtocol` fills."""
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls") if isinstance(extensions, dict) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain:
        return None
    pem = next(iter(chain), None)
    return identity_of(pem) if isinstance(pem, str) else None


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    close: bool = False,
) -> None:
    """One complete response: ``headers``, then Content-Length (none on a 204, RFC 9110 §8.6), then
    ``Connection: close`` when asked (a refusal whose body was not read closes rather than parse it)."""
    out = list(headers)
    if status != 204:
        out.append((b"content-length", str(len(body)).encode()))
    if close:
        out.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def refuse_identity(send: Send, identity: str | None, target: str) -> None:
    """403 for a TLS peer whose SPIFFE identity is not on ``target``'s allow-list; the connection closes."""
    who = identity or "a peer without a SPIFFE identity"
    body = msgspec.json.encode({"error": "forbidden", "detail": f"{who} may not call {target}"})
    await respond(send, 403, body, headers=[(b"content-type", b"application/json")], close=True)


class IdentityHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI TLS extension (``client_cert_chain``), and a
    shutdown that does not wait on idle TLS peers (see the module docstring).

    The certificate is fixed for the connection, so it is read once when the connection is made.
    """

    _peer_pem: str | None = None
    _tls = False
    _stopping = False
    _abort_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls = ssl_object is not None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._peer_pem = ssl.DER_cert_to_PEM_cert(der) if der else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_pem is not None:
            extensions = self.scope.setdefault("extensions", {})
            extensions["tls"] = {"client_cert_chain": [self._peer_pem]}

    def shutdown(self) -> None:
        # uvicorn closes an idle connection here, and one with a request in flight once its response
        # is out (on_response_complete); either way the close must not wait on the peer.
        self._stopping = True
        super().shutdown()
        if self.transport.is_closing():
            self._abort_soon()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._stopping and self.transport.is_closing():
            self._abort_soon()

    def _abort_soon(self) -> None:
        if self._tls and self._abort_handle is None:
            self._abort_handle = self.loop.call_later(_CLOSE_NOTIFY_WAIT_S, self._abort)

    def _abort(self) -> None:
        self._abort_handle = None
        if self in self.connections:  # connection_lost has not run: the peer never answered
            self.transport.abort()


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside someone else's event loop: no signal handlers of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready, non-blocking TCP socket (``port=0`` picks a free one); `ServeError` if not."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot resolve {host!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot bind {host}:{port}: {exc}") from exc
    return sock


@dataclass
class Running:
    """A started server: its socket's port, and how to stop it."""

    server: EmbeddedServer
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (uvicorn's graceful timeout), return."""
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self.task


async def serve(
    app: Callable[[Scope, Any, Any], Awaitable[None]],
    sock: socket.socket,
    *,
    ssl_factory: SslFactory | None = None,
    name: str,
    graceful_timeout_s: int = 5,
) -> Running:
    """Serve ``app`` (raw ASGI 3) on ``sock``; returns once the socket accepts connections.

    With ``ssl_factory`` the server speaks TLS, and requests carry the peer certificate (see
    `peer_identity`); the factory decides whether a client certificate is required. Raises
    `ServeError` when the TLS material cannot be loaded or the server does not start; ``sock`` is
    closed then.
    """
    ssl_options: dict[str, Any] = {}
    if ssl_factory is not None:
        factory = ssl_factory
        # uvicorn calls the factory in config.load(): the files are read at every start.
        ssl_options = {"ssl_context_factory": lambda _config, _default: factory()}
    config = uvicorn.Config(
        app,
        interface="asgi3",
        http=IdentityHttpToolsProtocol if ssl_factory is not None else HttpToolsProtocol,
        ws="none",
        lifespan="off",
        # None: uvicorn must not reconfigure the host's logging (dictConfig would reset it).
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        **ssl_options,
    )
    try:
        config.load()
    except (OSError, ssl.SSLError, ValueError) as exc:
        sock.close()
        raise ServeError(f"{name}: cannot load TLS material: {exc}") from exc
    except Exception as exc:
        # The factory's own error type (a missing file, say) says what is wrong: keep its message.
        sock.close()
        raise ServeError(f"{name}: {exc}") from exc
    server = EmbeddedServer(config)
    port = int(sock.getsockname()[1])
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{name}:{port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    # uvicorn offers no "started" notification; its start-up is one create_server call.
    while not server.started:
        problem = None
        if task.done():
            problem = f"did not start: {task.exception() if not task.cancelled() else 'cancelled'!r}"
        elif loop.time() > deadline:
            problem = "did not start in time"
        if problem is not None:
            server.should_exit = True
            sock.close()
            raise ServeError(f"{name}: server {problem}")
        await asyncio.sleep(0.005)
    return Running(server=server, task=task, port=port)
