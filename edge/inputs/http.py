"""`HttpInput`: receive Falco's ``http_output`` (Falco >= 0.44) and Falcosidekick-style webhooks.

Falco's ``http_output`` POSTs one JSON alert per request with ``Content-Type: application/json``
(``json_output: true``; with ``json_output: false`` it sends ``text/plain`` lines we cannot decode).
It reuses one libcurl handle, so requests arrive one at a time per Falco, on a kept-alive
connection, and Falco ignores the response status entirely: an alert we refuse is gone. Falcosidekick's
webhook output POSTs the same object, possibly with extra keys (``uuid``, ``outputs``), which the
decoder ignores or keeps (``uuid``).

The server is uvicorn (httptools parser) serving a small raw ASGI app, started inside the running
event loop. It never installs signal handlers (the host process owns SIGINT/SIGTERM) and never
touches logging configuration.

Responses (the complete list; the app never answers anything else):

====  ==========================  ===========================================================
code  rejection reason            when
====  ==========================  ===========================================================
204   (accepted)                  the body decoded into a `FalcoEvent` and was queued
200   (not counted)               ``GET``/``HEAD`` on the health path (default ``/healthz``)
400   DecodeError.reason          ``invalid_json``, ``schema``, ``bad_time``, ``bad_priority``
400   ``bad_content_length``      a Content-Length that is not a number, or several that disagree
403   ``forbidden_identity``      mTLS peer whose SPIFFE identity is not in ``allowed_identities``
404   ``not_found``               a path other than the configured one (only when ``path`` is set)
405   ``method_not_allowed``      anything but POST on the alert path (``Allow: POST``)
413   ``too_large``               Content-Length, or the bytes actually streamed, exceed ``max_body``
415   ``unsupported_media_type``  a Content-Type that is not JSON (``application/json``, ``*/*+json``)
415   ``unsupported_encoding``    a Content-Encoding other than ``identity`` (Falco never compresses)
503   ``overloaded``              the event queue is full (``Retry-After: 1``); shed, never buffered
503   ``closing``                 `close` has begun
====  ==========================  ===========================================================

A client that disconnects mid-body gets no response and is counted as ``client_disconnect``. Every
request other than a health check is counted in ``stats.received``, and exactly once more either
as ``decoded`` or as one rejection, so ``received == decoded + sum(rejected)`` always holds (a bug
in the app itself is counted as ``internal_error`` and re-raised so uvicorn answers 500).

Choices:

* **Content type**: a *missing* Content-Type is accepted (the body is still parsed strictly, so
  leniency costs nothing and helps hand-rolled senders such as ``curl --data-binary``); a *wrong*
  one is refused with 415, which tells an operator running ``json_output: false`` what is wrong.
* **Path**: ``path=None`` (default) accepts POSTs on any path, because Falco's ``url`` is free-form
  (``http://edge:2801/``, ``.../falco?token=...``) and Falcosidekick listens on ``/``. Setting
  ``path`` accepts exactly that path and answers 404 elsewhere. The query string is ignored.
* Early refusals whose body was not read are answered with ``Connection: close`` so an unread,
  possibly large body is not parsed just to be discarded.
* Malformed HTTP (unparseable request line or headers) is answered 400 by uvicorn's parser before
  the app sees a request; such requests carry no alert and are not counted. TLS handshake refusals
  (no client certificate, unknown CA) likewise happen below the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any, Final

from aerie.edge.inputs.base import FalcoInput, InputError
from aerie.edge.tls import ServerTls, server_ssl_context
from aerie.proto.event import DecodeError, FalcoEvent, decode_json
from aerie.proto.serving import Running, ServeError, bind, peer_identity, respond, serve

__all__ = ["DOCUMENTED_STATUSES", "HttpInput"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DOCUMENTED_STATUSES: Final = frozenset({200, 204, 400, 403, 404, 405, 413, 415, 503})
"""Every status the ASGI app can answer (uvicorn itself may add 400 for unparseable HTTP)."""

_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")
_NOSNIFF: Final = (b"x-content-type-options", b"nosniff")


class _Closed:
    """Queue sentinel: everything before it was accepted and must still be yielded."""


_CLOSED: Final = _Closed()


class HttpInput(FalcoInput):
    """Falco ``http_output`` / Falcosidekick webhook receiver. See the module docstring for statuses.

    Args:
        host, port: where to listen; ``port=0`` picks a free port, readable from `port` after
            `start`.
        path: the only path POSTs are accepted on, or None for any path.
        tls: server certificate and optional client-certificate verification (`ServerTls`; with
            its ``ca`` and ``require_client_cert``, mutual TLS).
        allowed_identities: SPIFFE URIs (``spiffe://aerie/falco``) allowed to post; needs ``tls``
            with ``require_client_cert``. None allows any peer the CA accepted.
        max_body: largest accepted body in bytes; larger ones are refused with 413 without being
            buffered.
        queue_size: accepted events waiting for `events`; when full, POSTs get 503.
        health_path: answers ``GET``/``HEAD`` with 200 ``ok``.

    Raises `InputError` from `start` when the address cannot be bound or TLS files cannot be
    loaded, and from the constructor on inconsistent settings.
    """

    name = "http"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str | None = None,
        tls: ServerTls | None = None,
        allowed_identities: Iterable[str] | None = None,
        max_body: int = 1 << 20,
        queue_size: int = 4096,
        health_path: str = "/healthz",
    ) -> None:
        super().__init__()
        if max_body < 1 or queue_size < 1:
            raise InputError("http input: max_body and queue_size must be positive")
        if path is not None and not path.startswith("/"):
            raise InputError(f"http input: path must start with '/', got {path!r}")
        if allowed_identities is not None and (tls is None or not tls.mutual):
            raise InputError("http input: allowed_identities needs tls with a ca and require_client_cert")
        self.host = host
        self._port = port
        self.path = path
        self.tls = tls
        self.allowed_identities = frozenset(allowed_identities) if allowed_identities is not None else None
        self.max_body = max_body
        self.health_path = health_path
        self._capacity = queue_size
        # One slot more than the capacity the app enforces, so the close sentinel always fits.
        self._queue: asyncio.Queue[FalcoEvent | _Closed] = asyncio.Queue(maxsize=queue_size + 1)
        self._closing = False
        self._running: Running | None = None
        self._start_lock: asyncio.Lock | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the alert endpoint, for configuring Falco's ``http_output.url``."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}{self.path or '/'}"

    async def start(self) -> None:
        """Bind and start serving; returns once the socket accepts connections. Idempotent.

        Raises `InputError` when binding or TLS set-up fails, or after `close`.
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._closing:
                raise InputError("http input: start after close")
            if self._running is not None:
                return
            tls = self.tls
            try:
                sock = bind(self.host, self._port)
                self._running = await serve(
                    self.app,
                    sock,
                    ssl_factory=(lambda: server_ssl_context(tls)) if tls is not None else None,
                    name="aerie-http-input",
                )
            except ServeError as exc:
                raise InputError(f"http input: {exc}") from None
            self._port = self._running.port

    async def close(self) -> None:
        """Stop accepting (new POSTs get 503 ``closing``), stop the server, end `events`.

        Events accepted before the call are still yielded by `events`. Safe to call twice.
        """
        if self._closing:
            return
        self._closing = True
        if self._running is not None:
            await self._running.stop()
        # Never full: the app stops at the capacity, one below maxsize.
        self._queue.put_nowait(_CLOSED)

    async def events(self) -> AsyncIterator[FalcoEvent]:
        """Yield accepted events in arrival order until `close`; starts the server if needed."""
        if not self._closing:
            await self.start()
        while True:
            item = await self._queue.get()
            if isinstance(item, _Closed):
                self._queue.put_nowait(item)  # a later iteration ends too
                return
            yield item

    # -- the ASGI app ------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The raw ASGI application (exposed for in-process tests and embedding)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        method = scope.get("method", "")
        path = scope.get("path", "")
        if path == self.health_path and method in ("GET", "HEAD"):
            # uvicorn sends no body for HEAD but keeps the GET Content-Length, as HTTP wants.
            await _respond(send, 200, b"ok\n")
            return
        self.stats.record_received()
        try:
            await self._handle_alert(scope, receive, send, method, path)
        except Exception:
            self.stats.record_rejected("internal_error")
            log.exception("http input: request handler failed")
            raise

    async def _handle_alert(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        headers = _Headers(scope.get("headers") or ())
        # Whether an unread body may follow: if so, a refusal closes the connection.
        may_have_body = headers.has_body()

        if self.path is not None and path != self.path:
            await self._reject(send, 404, "not_found", f"POST alerts to {self.path}", close=may_have_body)
            return
        if method != "POST":
            await self._reject(
                send, 405, "method_not_allowed", "POST only", close=may_have_body, extra=[(b"allow", b"POST")]
            )
            return
        if self.allowed_identities is not None:
            identity = peer_identity(scope)
            if identity not in self.allowed_identities:
                await self._reject(
                    send,
                    403,
                    "forbidden_identity",
                    f"peer {identity or 'without identity'} not allowed",
                    close=may_have_body,
                )
                return
        if self._closing:
            await self._reject(send, 503, "closing", "shutting down", close=True)
            return
        media = headers.media_type()
        if media is not None and media != "application/json" and not media.endswith("+json"):
            await self._reject(
                send,
                415,
                "unsupported_media_type",
                "send application/json (Falco json_output: true)",
                close=may_have_body,
            )
            return
        encoding = headers.content_encoding()
        if encoding not in ("", "identity"):
            await self._reject(
                send, 415, "unsupported_encoding", "send uncompressed JSON", close=may_have_body
            )
            return
        declared = headers.content_length()
        if declared == -1:
            await self._reject(send, 400, "bad_content_length", "unparseable Content-Length", close=True)
            return
        if declared is not None and declared > self.max_body:
            await self._reject(send, 413, "too_large", f"body over {self.max_body} bytes", close=True)
            return

        body = await self._read_body(receive)
        if body is None:
            self.stats.record_rejected("client_disconnect")
            return
        if isinstance(body, int):
            await self._reject(send, 413, "too_large", f"body over {self.max_body} bytes", close=True)
            return
        # Shed before decoding: under overload the decode CPU is the first thing to save.
        if self._queue.qsize() >= self._capacity:
            await self._reject(send, 503, "overloaded", "queue full", extra=[(b"retry-after", b"1")])
            return
        try:
            event = decode_json(body)
        except DecodeError as exc:
            await self._reject(send, 400, exc.reason, exc.detail[:200])
            return
        self._queue.put_nowait(event)
        self.stats.record_decoded()
        await _respond(send, 204)

    async def _read_body(self, receive: Receive) -> bytes | int | None:
        """The whole body; an int (bytes seen) once it passes ``max_body``; None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "http.disconnect":
                return None
            if kind != "http.request":
                continue
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > self.max_body:
                return size
            if chunk:
                chunks.append(bytes(chunk))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _reject(
        self,
        send: Send,
        status: int,
        reason: str,
        detail: str,
        *,
        close: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.stats.record_rejected(reason)
        text = f"{reason}: {detail}\n".encode("utf-8", "replace")
        headers = list(extra or [])
        if close:
            headers.append((b"connection", b"close"))
        await _respond(send, status, text, headers=headers)


# -- helpers -------------------------------------------------------------------------------------


class _Headers:
    """The few request headers the app reads, parsed leniently (names are lower-case in ASGI)."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = [(bytes(k).lower(), bytes(v)) for k, v in raw]

    def _values(self, name: bytes) -> Iterator[bytes]:
        return (v for k, v in self._raw if k == name)

    def has_body(self) -> bool:
        lengths = [v.strip() for v in self._values(b"content-length")]
        chunked = any(True for _ in self._values(b"transfer-encoding"))
        return chunked or any(v != b"0" for v in lengths)

    def media_type(self) -> str | None:
        value = next(self._values(b"content-type"), None)
        if value is None:
            return None
        return value.split(b";", 1)[0].strip().decode("latin-1").lower()

    def content_encoding(self) -> str:
        parts = b",".join(self._values(b"content-encoding")).decode("latin-1").lower().split(",")
        codings = {p.strip() for p in parts} - {""}
        return "" if not codings else "identity" if codings == {"identity"} else ",".join(sorted(codings))

    def content_length(self) -> int | None:
        """None when absent, -1 when malformed or contradictory."""
        values = {v.strip() for v in self._values(b"content-length")}
        if not values:
            return None
        # bytes.isdigit is ASCII-only: no Unicode digits, signs or blanks slip through int().
        if len(values) > 1 or not all(v.isdigit() for v in values):
            return -1
        value = values.pop()
        # Longer than any real body, and int() of thousands of digits is refused or slow.
        return int(value) if len(value) <= 18 else 1 << 62


async def _respond(
    send: Send,
    status: int,
    body: bytes = b"",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """One complete response; a 204 carries no body, so no content type either."""
    typed = [] if status == 204 else [_TEXT, _NOSNIFF]
    await respond(send, status, body, headers=[*(headers or []), *typed])


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol (unused by our own server, which runs lifespan="off")."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
        else:
            return
