"""The edge's one home for TLS settings: checked when made, built into real contexts."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import msgspec
import pytest

from aerie.brain.certs import Pki
from aerie.edge.errors import InputError, ReplayError, TlsError
from aerie.edge.inputs.grpc import GrpcInputConfig
from aerie.edge.tls import (
    ClientTls,
    ServerTls,
    client_ssl_context,
    grpc_channel_credentials,
    grpc_server_credentials,
    server_ssl_context,
)


def test_a_missing_file_is_refused_when_the_settings_are_made(tmp_path: Path, pki: dict[str, Pki]) -> None:
    edge, missing = pki["edge"], str(tmp_path / "gone.pem")
    with pytest.raises(TlsError, match=f"TLS key file '{re.escape(missing)}' does not exist"):
        ServerTls(cert=str(edge.cert), key=missing, ca=str(edge.ca))
    with pytest.raises(TlsError, match=f"TLS ca file '{re.escape(missing)}' does not exist"):
        ClientTls(ca=missing)
    with pytest.raises(TlsError, match=r"missing: key"):
        ClientTls(ca=str(edge.ca), cert=str(edge.cert))
    with pytest.raises(TlsError, match=r"missing: cert"):
        ClientTls(key=str(edge.key))
    # One exception for inputs and replays alike.
    assert issubclass(TlsError, InputError)
    assert issubclass(TlsError, ReplayError)


def test_a_configuration_tree_names_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"does not exist - at `\$.tls`"):
        msgspec.convert({"address": "127.0.0.1:5060", "tls": {"ca": str(tmp_path / "x")}}, GrpcInputConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"cert": "a", "key": "b", "verify": False}, ServerTls)


def test_mutual_means_a_ca_and_required_client_certificates(pki: dict[str, Pki]) -> None:
    edge = pki["edge"]
    assert ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca)).mutual
    assert not ServerTls(cert=str(edge.cert), key=str(edge.key)).mutual
    assert not ServerTls(
        cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca), require_client_cert=False
    ).mutual
    assert ClientTls(ca=str(edge.ca)).missing_for_mutual_tls() == ["cert", "key"]


async def test_contexts_shake_hands_and_refuse_strangers(pki: dict[str, Pki], foreign_pki: Pki) -> None:
    edge, falco = pki["edge"], pki["falco"]
    server = server_ssl_context(ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca)))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]

    async def greeting(client: ClientTls) -> bytes | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl_context(client))
        except (ssl.SSLError, ConnectionError):
            return None
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except (ssl.SSLError, ConnectionError):  # TLS 1.3: a refused client learns it on its first read
            return None
        finally:
            writer.close()

    try:
        assert (
            await greeting(ClientTls(ca=str(falco.ca), cert=str(falco.cert), key=str(falco.key))) == b"hello"
        )
        stranger = ClientTls(ca=str(falco.ca), cert=str(foreign_pki.cert), key=str(foreign_pki.key))
        assert await greeting(stranger) in (None, b"")
        assert await greeting(ClientTls(ca=str(falco.ca))) in (None, b""), "no certificate, no entry"
    finally:
        listener.close()
        await listener.wait_closed()


def test_builders_refuse_material_that_does_not_load(tmp_path: Path, pki: dict[str, Pki]) -> None:
    edge, falco = pki["edge"], pki["falco"]
    with pytest.raises(TlsError, match="cannot load TLS material"):
        server_ssl_context(ServerTls(cert=str(edge.cert), key=str(falco.key)))  # not its key
    # Files are read when a builder runs, not only when the settings were made (rotation).
    key = tmp_path / "rotating.key"
    key.write_bytes(falco.key.read_bytes())
    tls = ClientTls(ca=str(falco.ca), cert=str(falco.cert), key=str(key))
    assert grpc_channel_credentials(tls) is not None
    key.unlink()
    with pytest.raises(TlsError, match=r"cannot read TLS file .*rotating\.key"):
        grpc_channel_credentials(tls)
    cert = tmp_path / "server.crt"
    cert.write_bytes(edge.cert.read_bytes())
    server_tls = ServerTls(cert=str(cert), key=str(edge.key), ca=str(edge.ca))
    assert grpc_server_credentials(server_tls) is not None
    cert.unlink()
    with pytest.raises(TlsError, match=r"server\.crt"):
        grpc_server_credentials(server_tls)
