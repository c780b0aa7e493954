"""Fuzzing the HTTP receiver: the ASGI app in-process (thousands of requests), then real sockets.

Properties: the app never raises; it answers once, with a documented status, or not at all only
when the client left mid-body; every counted request ends as exactly one decoded event or one
rejection whose reason matches the status; well-formed Falco POSTs are always accepted intact,
however their body is chunked; a real server keeps serving after any request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import string
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aerie.edge.inputs.http import DOCUMENTED_STATUSES, HttpInput
from aerie.edge.tls import ServerTls
from aerie.proto.event import decode_json

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])

REASONS_BY_STATUS = {
    400: {"invalid_json", "schema", "bad_time", "bad_priority", "bad_content_length"},
    403: {"forbidden_identity"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    413: {"too_large"},
    415: {"unsupported_media_type", "unsupported_encoding"},
    503: {"overloaded", "closing"},
}


def alert(n: int) -> bytes:
    return json.dumps(
        {
            "hostname": "node-a",
            "output": f"Shell spawned {n}",
            "output_fields": {"proc.pid": n, "proc.name": "bash", "fd.name": None},
            "priority": "Critical",
            "rule": "Terminal shell in container",
            "source": "syscall",
            "tags": ["T1059"],
            "time": f"2024-05-01T12:00:00.{n:09d}Z",
        }
    ).encode()


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def totals(inp: HttpInput) -> tuple[int, int, dict[str, int]]:
    return inp.stats.received, inp.stats.decoded, dict(inp.stats.rejected)


def balanced(inp: HttpInput) -> bool:
    received, decoded, rejected = totals(inp)
    return received == decoded + sum(rejected.values())


async def call(
    inp: HttpInput, scope: dict[str, Any], chunks: list[bytes], disconnect: bool
) -> list[MutableMapping[str, Any]]:
    """One request through the ASGI app, as uvicorn would deliver it; returns what the app sent."""
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1 or disconnect}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await inp.app(scope, receive, send)
    return sent


def scope_of(
    method: str, path: str, headers: list[tuple[bytes, bytes]], tls_pem: str | None
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https" if tls_pem else "http",
        "path": path,
        "raw_path": path.encode("utf-8", "replace"),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 2801),
    }
    if tls_pem is not None:
        scope["extensions"] = {"tls": {"client_cert_chain": [tls_pem]}}
    return scope


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    return [body[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


# -- in-process ------------------------------------------------------------------------------------


def mostly(common: st.SearchStrategy[Any], *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four, else one of ``others``."""
    return st.integers(0, 3).flatmap(lambda i: common if i else st.one_of(*others))


# Weighted towards POSTs on accepted paths, so most examples get past routing to the body.
methods = mostly(
    st.just("POST"), st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "post"]), st.text(max_size=8)
)
paths = mostly(
    st.sampled_from(["/", "/falco"]), st.sampled_from(["/healthz", "/other", "/falco/"]), st.text(max_size=20)
)
header_names = st.one_of(
    st.sampled_from(
        [
            b"content-type",
            b"content-length",
            b"content-encoding",
            b"transfer-encoding",
            b"expect",
            b"Content-Type",
        ]
    ),
    st.binary(max_size=12),
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=utf-8",
            b"text/plain",
            b"application/x+json",
            b"gzip",
            b"identity",
            b"chunked",
            b"0",
            b"100",
            b"-1",
            b" 12 ",
            b"99999999999999999999999",
            "\u0661\u0662".encode(),
        ]
    ),
    st.binary(max_size=30),
)
bodies = mostly(
    st.integers(0, 50).map(alert),
    st.binary(max_size=400),
    st.integers(0, 5).map(lambda n: alert(n)[: -n - 1]),  # truncated alerts
    st.sampled_from([b"x" * 3000, b"", b"{}", b"null", b'{"rule": 1}']),
)
json_type = st.sampled_from([[(b"content-type", b"application/json")], []])


@st.composite
def inputs(draw: st.DrawFn, tls: ServerTls) -> HttpInput:
    """An input with fuzzed settings (TLS files are only read at start, which never happens here)."""
    identities = draw(st.sampled_from([None, {"spiffe://aerie/falco"}]))
    return HttpInput(
        path=draw(st.sampled_from([None, None, "/falco"])),
        max_body=draw(st.sampled_from([64, 1000, 1 << 20])),
        queue_size=draw(st.sampled_from([1, 3, 1000])),
        tls=tls if identities else None,
        allowed_identities=identities,
    )


@pytest.fixture(scope="module")
def server_tls(pki: dict[str, Any]) -> ServerTls:
    edge = pki["edge"]
    return ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca))


@pytest.fixture(scope="module")
def peer_pems(pki: dict[str, Any]) -> list[str | None]:
    return [None, pki["falco"].cert.read_text(), pki["edge"].cert.read_text(), "not a certificate"]


@settings(FUZZ, max_examples=1500)
@given(data=st.data())
def test_asgi_app_answers_every_request_with_a_documented_status(
    runner: asyncio.Runner, server_tls: ServerTls, peer_pems: list[str | None], data: st.DataObject
) -> None:
    inp = data.draw(inputs(server_tls))
    prefill = data.draw(st.integers(0, 4))
    closing = data.draw(st.sampled_from([False] * 9 + [True]))
    method = data.draw(methods)
    path = data.draw(paths)
    headers = data.draw(json_type) + data.draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    body = data.draw(bodies)
    chunks = split(body, data.draw(st.lists(st.integers(0, 3000), max_size=4)))
    disconnect = data.draw(st.sampled_from([False] * 7 + [True]))
    pem = data.draw(st.sampled_from(peer_pems))

    async def scenario() -> None:
        ok_path = inp.path or "/"
        for n in range(prefill):  # fill the queue part way or completely
            await call(inp, scope_of("POST", ok_path, [], pem), [alert(n)], False)
        if closing:
            await inp.close()
        before = totals(inp)
        queued_before = inp._queue.qsize()

        sent = await call(inp, scope_of(method, path, headers, pem), chunks, disconnect)

        received, decoded, rejected = totals(inp)
        new = {k: v - before[2].get(k, 0) for k, v in rejected.items() if v != before[2].get(k, 0)}
        assert balanced(inp)
        if not sent:
            assert disconnect
            assert (received - before[0], new) == (1, {"client_disconnect": 1})
            event("client_disconnect")
            return
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[1].get("more_body", False) is False
        status = sent[0]["status"]
        assert status in DOCUMENTED_STATUSES
        event(str(status))
        for name, value in sent[0]["headers"]:
            assert isinstance(name, bytes)
            assert not set(value) & {0x0D, 0x0A}
        if status == 200:
            assert (method in ("GET", "HEAD"), path) == (True, inp.health_path)
            assert (received, new) == (before[0], {})
        elif status == 204:
            assert (received - before[0], decoded - before[1], new) == (1, 1, {})
            assert inp._queue.qsize() == queued_before + 1
        else:
            assert (received - before[0], decoded) == (1, before[1])
            assert list(new.values()) == [1]
            reason = next(iter(new))
            event(f"{status} {reason}")
            assert reason in REASONS_BY_STATUS[status]
            assert sent[1]["body"].startswith(reason.encode())

    runner.run(scenario())


@settings(FUZZ, max_examples=600)
@given(
    n=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    content_type=st.sampled_from([b"application/json", b"application/json; charset=utf-8", None]),
    declare_length=st.booleans(),
    extra=st.lists(
        st.tuples(
            st.sampled_from([b"user-agent", b"accept", b"x-forwarded-for", b"te"]), st.binary(max_size=20)
        ),
        max_size=3,
    ),
)
def test_well_formed_falco_posts_are_always_accepted_intact(
    runner: asyncio.Runner,
    *,
    n: int,
    cuts: list[int],
    content_type: bytes | None,
    declare_length: bool,
    extra: list[tuple[bytes, bytes]],
) -> None:
    inp = HttpInput()
    body = alert(n)
    headers = list(extra)
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if declare_length:
        headers.append((b"content-length", str(len(body)).encode()))

    async def scenario() -> None:
        sent = await call(inp, scope_of("POST", "/", headers, None), split(body, cuts), False)
        assert sent[0]["status"] == 204
        assert inp._queue.get_nowait() == decode_json(body)

    runner.run(scenario())


# -- real sockets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(runner: asyncio.Runner) -> Iterator[HttpInput]:
    inp = HttpInput(max_body=2048, queue_size=100_000)
    runner.run(inp.start())
    yield inp
    runner.run(inp.close())


async def exchange(port: int, request: bytes) -> int | None:
    """Send one request on a fresh connection (asking it to close); the final status, if any."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    except ConnectionError:
        raw = b""
    finally:
        writer.close()
    statuses = [int(line.split(b" ")[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    statuses = [s for s in statuses if s != 100]  # "100 Continue" precedes the answer
    return statuses[0] if statuses else None


token = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
safe_value = st.text(string.ascii_letters + string.digits + " ;=/+*-_.,", max_size=30)


@settings(FUZZ, max_examples=120)
@given(
    method=st.sampled_from(
        ["POST", "POST", "POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]
    ),
    path=st.text(string.ascii_letters + string.digits + "/-_.%?=&", max_size=20).map(lambda p: "/" + p),
    headers=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["Content-Type", "Content-Encoding", "Expect", "User-Agent"]), token),
            st.one_of(
                st.sampled_from(["application/json", "text/plain", "gzip", "100-continue"]), safe_value
            ),
        ).filter(lambda h: h[0].lower() not in ("content-length", "transfer-encoding", "connection", "host")),
        max_size=5,
    ),
    body=st.one_of(st.integers(0, 99).map(alert), st.binary(max_size=600), st.just(b"y" * 5000)),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(0, 600), max_size=4),
)
def test_real_server_answers_documented_statuses_and_keeps_serving(
    runner: asyncio.Runner,
    live: HttpInput,
    *,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    chunked: bool,
    cuts: list[int],
) -> None:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in split(body, cuts) if c) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    request = "\r\n".join(head).encode() + b"\r\n\r\n" + payload

    async def scenario() -> None:
        status = await exchange(live.port, request)
        assert status in DOCUMENTED_STATUSES
        event(str(status))
        assert balanced(live)
        after = await exchange(
            live.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(alert(7))
            + alert(7),
        )
        assert after == 204

    runner.run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS to a plain port
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
        b"POST / HTTP/1.1\r\nBad Header\r\n\r\n",
    ],
)
def test_real_server_survives_malformed_http(runner: asyncio.Runner, live: HttpInput, garbage: bytes) -> None:
    async def scenario() -> None:
        status = await exchange(live.port, garbage)
        assert status in (None, *DOCUMENTED_STATUSES)
        after = await exchange(
            live.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(alert(8))
            + alert(8),
        )
        assert after == 204

    runner.run(scenario())
