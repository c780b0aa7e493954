"""TLS settings of every edge endpoint, and the builders that turn them into contexts and credentials.

Two shapes, each a frozen msgspec Struct on a strict base (so they nest in a typed configuration):

* `ServerTls` — a server's certificate and key, and optionally the CA that client certificates must
  chain to (``require_client_cert``, on by default, makes that mutual TLS);
* `ClientTls` — the CA to verify a server against (None: the system store) and optionally a client
  certificate (``cert`` with ``key``).

Paths are PEM files. They are checked when the settings are constructed (or decoded): a file that
does not exist, or a client certificate without its key, raises `TlsError` naming the setting and
the path — before anything binds or connects. The files themselves are read only by the builders,
every time one is called, so a connection made after a certificate rotation uses the new files.

Builders, for the libraries the edge speaks through:

* `server_ssl_context` / `client_ssl_context` — `ssl.SSLContext` (uvicorn, httpx), TLS 1.2 or newer;
* `grpc_server_credentials` / `grpc_channel_credentials` — gRPC credentials.

Each raises `TlsError` when a file cannot be read or its PEM does not load (a key that does not
match its certificate, say); `TlsError` is both an `InputError` and a `ReplayError`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import msgspec

from aerie.edge.errors import TlsError

__all__ = [
    "ClientTls",
    "ServerTls",
    "TlsError",
    "client_ssl_context",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "server_ssl_context",
]


def _require_files(settings: object, *fields: str) -> None:
    for field in fields:
        value = getattr(settings, field)
        if value is not None and not Path(value).is_file():
            raise TlsError(f"TLS {field} file {value!r} does not exist")


class ServerTls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A server's TLS: ``cert`` and ``key`` it presents, ``ca`` its clients must chain to.

    With ``ca`` and ``require_client_cert`` (the default) a client without a certificate signed by
    ``ca`` fails the handshake: mutual TLS. ``ca`` without ``require_client_cert`` verifies a
    certificate when one is offered and lets anonymous clients in; no ``ca`` asks for none.
    Raises `TlsError` when a named file does not exist.
    """

    cert: str
    key: str
    ca: str | None = None
    require_client_cert: bool = True

    def __post_init__(self) -> None:
        _require_files(self, "cert", "key", "ca")

    @property
    def mutual(self) -> bool:
        """Whether every client must present a certificate signed by ``ca``."""
        return self.ca is not None and self.require_client_cert


class ClientTls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A client's TLS: ``ca`` to verify the server (None: the system store), and a client
    certificate (``cert`` and ``key`` together, or neither).

    Raises `TlsError` when a named file does not exist or only one of ``cert``/``key`` is given.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise TlsError(f"a TLS client certificate needs both cert and key (missing: {missing})")
        _require_files(self, "ca", "cert", "key")

    def missing_for_mutual_tls(self) -> list[str]:
        """The settings mutual TLS with a private CA still needs (``ca``, ``cert``, ``key``)."""
        return [name for name in ("ca", "cert", "key") if getattr(self, name) is None]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read TLS file {path!r}: {exc.strerror or exc}") from None


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """An `ssl.SSLContext` for a server, TLS 1.2 or newer. Raises `TlsError`."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:
            context.load_verify_locations(cafile=tls.ca)
            context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS material (cert {tls.cert!r}, key {tls.key!r}): {exc}") from None
    return context


def client_ssl_context(tls: ClientTls | None) -> ssl.SSLContext:
    """An `ssl.SSLContext` for a client that verifies the server; None trusts the system store.

    Raises `TlsError`.
    """
    ca = tls.ca if tls is not None else None
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls is not None and tls.cert is not None and tls.key is not None:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load client TLS material: {exc}") from None
    return context


def grpc_server_credentials(tls: ServerTls) -> Any:
    """``grpc.ServerCredentials`` from ``tls`` (client certificates required when `ServerTls.mutual`).

    Raises `TlsError` when a file cannot be read (gRPC itself checks the PEM when it binds).
    """
    import grpc  # only the gRPC endpoints pay for importing it

    return grpc.ssl_server_credentials(
        [(_read(tls.key), _read(tls.cert))],
        root_certificates=_read(tls.ca) if tls.ca is not None else None,
        require_client_auth=tls.mutual,
    )


def grpc_channel_credentials(tls: ClientTls) -> Any:
    """``grpc.ChannelCredentials`` from ``tls``. Raises `TlsError` when a file cannot be read."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca) if tls.ca is not None else None,
        private_key=_read(tls.key) if tls.key is not None else None,
        certificate_chain=_read(tls.cert) if tls.cert is not None else None,
    )
