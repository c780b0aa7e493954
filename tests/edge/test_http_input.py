"""`HttpInput` over real sockets on loopback: plain HTTP, mutual TLS, every refusal counted."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aerie.brain.certs import Pki
from aerie.edge.inputs.base import InputError
from aerie.edge.inputs.http import HttpInput, _Headers
from aerie.edge.tls import ServerTls
from aerie.proto.event import FalcoEvent, decode_json

JSON = {"content-type": "application/json"}


def alert(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "hostname": "node-a",
        "output": f"12:00:00.000000001: Warning Shell spawned (proc.name=bash n={n})",
        "output_fields": {
            "proc.name": "bash",
            "proc.pid": 4000 + n,
            "container.privileged": False,
            "fd.name": None,
        },
        "priority": "Warning",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": ["container", "T1059"],
        "time": f"2024-05-01T12:00:{n % 60:02d}.{n:09d}Z",
        **extra,
    }


def body(n: int = 0, **extra: Any) -> bytes:
    return json.dumps(alert(n, **extra)).encode()


def balanced(inp: HttpInput) -> bool:
    """Every counted request ended exactly once: decoded or rejected."""
    stats = inp.stats
    return stats.received == stats.decoded + sum(stats.rejected.values())


async def take(inp: HttpInput, n: int) -> list[FalcoEvent]:
    out: list[FalcoEvent] = []
    async with asyncio.timeout(10):
        async for event in inp.events():
            out.append(event)
            if len(out) == n:
                break
    return out


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    """Poll ``predicate`` with a deadline: counters have no change notification to wait on."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def server() -> AsyncIterator[HttpInput]:
    inp = HttpInput("127.0.0.1", 0, max_body=4096, queue_size=8)
    await inp.start()
    yield inp
    await inp.close()


async def test_accepts_falco_and_sidekick_posts_and_reports_bound_port(server: HttpInput) -> None:
    assert server.port != 0
    assert server.url == f"http://127.0.0.1:{server.port}/"
    sent = [body(1), body(2, uuid="6c3c2a4e", outputs=["webhook"]), body(3)]
    async with httpx.AsyncClient() as client:
        statuses = [
            (
                await client.post(server.url, content=b, headers=JSON | {"user-agent": "falcosecurity/falco"})
            ).status_code
            for b in sent
        ]
        # Falco's url may carry any path and query: accepted when no path is configured.
        statuses.append(
            (await client.post(f"{server.url}falco?token=x", content=body(4), headers=JSON)).status_code
        )
    assert statuses == [204, 204, 204, 204]
    events = await take(server, 4)
    assert events == [decode_json(b) for b in [*sent, body(4)]]
    assert events[1].uuid == "6c3c2a4e"
    assert server.stats.snapshot() == {"input": "http", "received": 4, "decoded": 4, "rejected": {}}


async def test_health_and_method_checks(server: HttpInput) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        health = await client.get("/healthz")
        head = await client.head("/healthz")
        get = await client.get("/")
        put = await client.put("/", content=body(), headers=JSON)
    assert (health.status_code, health.text) == (200, "ok\n")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "3", b"")
    assert get.status_code == 405
    assert get.headers["allow"] == "POST"
    assert put.status_code == 405
    assert server.stats.rejected == {"method_not_allowed": 2}
    assert server.stats.received == 2  # health checks are not alerts
    assert balanced(server)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (json.dumps({"rule": "x"}).encode(), "schema"),
        (body(0, priority="Loud"), "bad_priority"),
        (body(0, time="yesterday"), "bad_time"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_malformed_bodies_are_400_with_reason(server: HttpInput, payload: bytes, reason: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(server.url, content=payload, headers=JSON)
        after = await client.post(server.url, content=body(), headers=JSON)
    assert response.status_code == 400
    assert response.text.startswith(f"{reason}: ")
    assert server.stats.rejected == {reason: 1}
    assert after.status_code == 204
    assert balanced(server)


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, 415, "unsupported_encoding"),
        ({"content-type": "Application/JSON; charset=utf-8"}, 204, None),
        ({"content-type": "application/cloudevents+json"}, 204, None),
        ({}, 204, None),  # missing content type: lenient, the body is still parsed strictly
    ],
)
async def test_content_type_policy(
    server: HttpInput, headers: dict[str, str], status: int, reason: str | None
) -> None:
    request = httpx.Request("POST", server.url, content=body(), headers=headers)
    assert ("content-type" in request.headers) == bool(headers)  # raw bytes: httpx adds no type
    async with httpx.AsyncClient() as client:
        response = await client.send(request)
    assert response.status_code == status
    assert server.stats.rejected == ({reason: 1} if reason else {})
    assert balanced(server)


async def test_configured_path_only() -> None:
    inp = HttpInput(path="/falco")
    await inp.start()
    try:
        assert inp.url.endswith("/falco")
        async with httpx.AsyncClient() as client:
            wrong = await client.post(inp.url.replace("/falco", "/other"), content=body(), headers=JSON)
            right = await client.post(inp.url, content=body(), headers=JSON)
        assert (wrong.status_code, right.status_code) == (404, 204)
        assert inp.stats.rejected == {"not_found": 1}
    finally:
        await inp.close()


async def test_oversize_declared_body_refused_before_it_is_sent(server: HttpInput) -> None:
    # Headers announce 1 GB and no body follows: an answer proves nothing was waited for or buffered.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        rest = await reader.read()  # the server closes the connection after a 413
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert rest.startswith(b"too_large")
    assert server.stats.rejected == {"too_large": 1}


async def test_oversize_streamed_body_counted_and_server_keeps_serving(server: HttpInput) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):  # 64 KiB in total, chunked: no Content-Length to refuse early
            yield b" " * 1024

    async with httpx.AsyncClient() as client:
        try:
            response = await client.post(server.url, content=chunks(), headers=JSON)
            assert response.status_code == 413
        except (httpx.WriteError, httpx.ReadError):
            pass  # the server closes while the client still writes; the count below decides
    async with httpx.AsyncClient() as client:
        after = await client.post(server.url, content=body(), headers=JSON)
    await wait_for(lambda: server.stats.rejected.get("too_large") == 1)
    assert after.status_code == 204
    assert balanced(server)


async def test_client_disconnect_mid_body_is_counted(server: HttpInput) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ru'
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: server.stats.rejected.get("client_disconnect") == 1)
    assert server.stats.decoded == 0
    assert balanced(server)


async def test_overload_sheds_with_503_and_recovers() -> None:
    inp = HttpInput(queue_size=2)
    await inp.start()
    try:
        async with httpx.AsyncClient() as client:
            statuses = [(await client.post(inp.url, content=body(n), headers=JSON)) for n in range(4)]
            assert [r.status_code for r in statuses] == [204, 204, 503, 503]
            assert statuses[2].headers["retry-after"] == "1"
            assert inp.stats.rejected == {"overloaded": 2}
            assert [e.output_fields["proc.pid"] for e in await take(inp, 2)] == [4000, 4001]
            again = await client.post(inp.url, content=body(9), headers=JSON)
        assert again.status_code == 204
        assert (await take(inp, 1))[0].output_fields["proc.pid"] == 4009
        assert balanced(inp)
    finally:
        await inp.close()


async def test_close_ends_events_after_yielding_what_was_accepted() -> None:
    inp = HttpInput()
    await inp.start()
    async with httpx.AsyncClient() as client:
        for n in range(3):
            assert (await client.post(inp.url, content=body(n), headers=JSON)).status_code == 204
    await inp.close()
    await inp.close()  # twice is fine
    async with asyncio.timeout(10):
        events = [e async for e in inp.events()]
    assert len(events) == 3
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(inp.url, content=body(), headers=JSON)
    with pytest.raises(InputError):
        await inp.start()


async def test_bind_failure_is_input_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        inp = HttpInput("127.0.0.1", taken.getsockname()[1])
        with pytest.raises(InputError, match="cannot bind"):
            await inp.start()


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        ([], None),
        ([b"12"], 12),
        ([b" 12 "], 12),
        ([b"12", b"12"], 12),
        ([b"12", b"13"], -1),  # contradictory
        ([b"-1"], -1),
        ([b"1e3"], -1),
        (["\u0661\u0662".encode()], -1),  # Unicode digits are not digits on the wire
        ([b"9" * 5000], 1 << 62),  # absurdly long: "too large", without int() on 5000 digits
    ],
)
def test_content_length_parsing(values: list[bytes], parsed: int | None) -> None:
    assert _Headers([(b"Content-Length", v) for v in values]).content_length() == parsed


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(InputError):
        HttpInput(max_body=0)
    with pytest.raises(InputError):
        HttpInput(path="falco")
    with pytest.raises(InputError):
        HttpInput(allowed_identities=["spiffe://aerie/falco"])  # identities need mTLS


# -- mutual TLS ----------------------------------------------------------------------------------


def client_context(ca: Pki | None, me: Pki | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca) if ca else None)
    if me is not None:
        context.load_cert_chain(str(me.cert), str(me.key))
    return context


def server_tls(pki: dict[str, Pki]) -> ServerTls:
    edge = pki["edge"]
    return ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca))


async def test_mtls_accepts_falco_and_refuses_strangers(pki: dict[str, Pki], foreign_pki: Pki) -> None:
    inp = HttpInput(tls=server_tls(pki))
    await inp.start()
    try:
        assert inp.url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=client_context(pki["falco"], pki["falco"])) as client:
            accepted = await client.post(inp.url, content=body(), headers=JSON)
        assert accepted.status_code == 204
        for stranger in (client_context(pki["falco"], foreign_pki), client_context(pki["falco"], None)):
            async with httpx.AsyncClient(verify=stranger) as client:
                with pytest.raises(httpx.TransportError):
                    await client.post(inp.url, content=body(), headers=JSON)
        # A client that does not trust our server's CA refuses it too.
        async with httpx.AsyncClient(verify=client_context(None, pki["falco"])) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(inp.url, content=body(), headers=JSON)
        assert len(await take(inp, 1)) == 1
        assert inp.stats.snapshot()["received"] == 1
    finally:
        await inp.close()


async def test_mtls_identity_allow_list(pki: dict[str, Pki]) -> None:
    inp = HttpInput(tls=server_tls(pki), allowed_identities={"spiffe://aerie/falco"})
    await inp.start()
    try:
        async with httpx.AsyncClient(verify=client_context(pki["falco"], pki["falco"])) as client:
            falco = [
                (await client.post(inp.url, content=body(n), headers=JSON)).status_code for n in range(2)
            ]
        async with httpx.AsyncClient(verify=client_context(pki["falco"], pki["brain"])) as client:
            brain = await client.post(inp.url, content=body(), headers=JSON)
        assert falco == [204, 204]
        assert brain.status_code == 403
        assert "spiffe://aerie/brain" in brain.text
        assert inp.stats.rejected == {"forbidden_identity": 1}
    finally:
        await inp.close()


async def test_unreadable_tls_material_is_input_error(tmp_path: Any, pki: dict[str, Pki]) -> None:
    with pytest.raises(InputError, match="TLS"):
        await HttpInput(
            tls=ServerTls(cert=str(tmp_path / "nope.crt"), key=str(tmp_path / "nope.key"))
        ).start()
    mismatched = ServerTls(cert=str(pki["edge"].cert), key=str(pki["falco"].key))
    with pytest.raises(InputError, match="TLS"):
        await HttpInput(tls=mismatched).start()
