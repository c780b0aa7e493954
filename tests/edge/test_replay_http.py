"""`post_events` against real receivers on loopback: our `HttpInput` and a raw recording server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from falco_testkit import varied_events

from aerie.brain.certs import Pki
from aerie.edge.inputs.http import HttpInput
from aerie.edge.inputs.jsonlines import JsonLinesInput
from aerie.edge.replay import ReplayError
from aerie.edge.replay_http import FALCO_USER_AGENT, post_events
from aerie.edge.tls import ClientTls, ServerTls
from aerie.proto.event import FalcoEvent


def events(n: int) -> list[FalcoEvent]:
    """Varied events, with what only JSON carries: a list value, a uuid on some (Falcosidekick)."""
    return varied_events(n, json_only=True)


async def collect(inp: HttpInput, n: int) -> list[FalcoEvent]:
    out: list[FalcoEvent] = []
    async with asyncio.timeout(15):
        async for event in inp.events():
            out.append(event)
            if len(out) == n:
                break
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[HttpInput]:
    inp = HttpInput(queue_size=1000)
    await inp.start()
    yield inp
    await inp.close()


async def test_every_event_arrives_equal_and_in_order(receiver: HttpInput) -> None:
    sent = events(60)
    stats = await post_events(sent, receiver.url, rate=0)
    assert (stats.sent, stats.failed, stats.failures, stats.retries) == (60, 0, {}, 0)
    assert await collect(receiver, 60) == sent


async def test_replay_of_a_json_lines_file(receiver: HttpInput, tmp_path: Path) -> None:
    """What `aerie falco replay --events FILE --http URL` wires together."""
    sent = events(20)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(e.to_falco_json()) + b"\n" for e in sent))
    stats = await post_events(JsonLinesInput(path).events(), receiver.url, rate=0)
    assert (stats.sent, stats.failed) == (20, 0)
    assert await collect(receiver, 20) == sent


async def test_async_source_and_concurrency(receiver: HttpInput) -> None:
    sent = events(40)

    async def source() -> AsyncIterator[FalcoEvent]:
        for event in sent:
            yield event

    stats = await post_events(source(), receiver.url, rate=0, concurrency=4)
    assert (stats.sent, stats.failed) == (40, 0)
    received = await collect(receiver, 40)
    assert sorted(received, key=lambda e: e.time_ns) == sent


async def test_rate_paces_the_posts(receiver: HttpInput) -> None:
    stats = await post_events(events(11), receiver.url, rate=50)
    # 11 starts at 50/s span at least 10 intervals of 20 ms; the upper bound is only a sanity check.
    assert 0.19 <= stats.elapsed_s < 30
    assert stats.sent == 11


async def test_mtls_with_falco_certificate(pki: dict[str, Pki]) -> None:
    edge, falco = pki["edge"], pki["falco"]
    inp = HttpInput(
        tls=ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca)),
        allowed_identities={"spiffe://aerie/falco"},
    )
    await inp.start()
    try:
        sent = events(5)
        ok = await post_events(
            sent, inp.url, rate=0, tls=ClientTls(ca=str(falco.ca), cert=str(falco.cert), key=str(falco.key))
        )
        assert (ok.sent, ok.failed) == (5, 0)
        assert await collect(inp, 5) == sent
        anonymous = await post_events(sent, inp.url, rate=0, tls=ClientTls(ca=str(falco.ca)))
        assert (anonymous.sent, anonymous.failed) == (0, 5)
        assert sum(anonymous.failures.values()) == 5
        assert inp.stats.received == 5  # the refused handshakes never became requests
    finally:
        await inp.close()


async def test_status_errors_are_counted_not_retried() -> None:
    inp = HttpInput(queue_size=2)  # nobody consumes: the third POST on gets 503
    await inp.start()
    try:
        stats = await post_events(events(5), inp.url, rate=0)
        assert (stats.sent, stats.failed, stats.failures, stats.retries) == (2, 3, {"http_503": 3}, 0)
        assert inp.stats.received == 5  # one POST per event: Falco does not retry on status
    finally:
        await inp.close()


async def test_connection_refused_is_counted() -> None:
    inp = HttpInput()
    await inp.start()
    url = inp.url
    await inp.close()
    stats = await post_events(events(3), url, rate=0)
    assert (stats.sent, stats.failed, stats.failures) == (0, 3, {"connect_error": 3})


class Recorder:
    """A raw HTTP/1.1 server that records each request's head and body; optionally never answers."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
                content = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((line.encode(), headers, content))
                if not self.answer:
                    await reader.read()  # hold the connection silently until the client gives up
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def recorder(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder(**getattr(request, "param", {}))
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield rec, f"http://127.0.0.1:{port}/falco?x=1"
    server.close()


async def test_requests_look_like_falcos_http_output(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    sent = events(3)
    stats = await post_events(sent, url, rate=0)
    assert stats.sent == 3
    assert len(rec.requests) == 3
    assert rec.connections == 1  # one kept-alive connection, like Falco's curl handle
    for (line, headers, content), event in zip(rec.requests, sent, strict=True):
        assert line == b"POST /falco?x=1 HTTP/1.1"
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == FALCO_USER_AGENT
        assert headers["accept"] == "*/*"
        assert int(headers["content-length"]) == len(content)
        alert = json.loads(content)
        assert alert == event.to_falco_json()  # one alert object per POST
        assert list(alert) == sorted(alert)  # Falco's (nlohmann::json) key order
        # Compact, UTF-8 unescaped, as Falco's json_output writes it.
        assert content == json.dumps(alert, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("recorder", [{"answer": False}], indirect=True)
async def test_only_timeouts_are_retried_like_falco(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    stats = await post_events(events(1), url, rate=0, request_timeout=0.2, max_consecutive_timeouts=2)
    assert (stats.sent, stats.failed, stats.retries) == (0, 1, 2)
    assert stats.failures == {"read_timeout": 1}
    assert len(rec.requests) == 3  # the first attempt and two retries


async def test_an_unencodable_event_fails_alone(receiver: HttpInput) -> None:
    good = events(2)
    far_future = msgspec.structs.replace(good[0], time_ns=10**30)  # no RFC 3339 year for it
    stats = await post_events([good[0], far_future, good[1]], receiver.url, rate=0)
    assert (stats.sent, stats.failures) == (2, {"unencodable": 1})
    assert await collect(receiver, 2) == good


def iter_events() -> Iterator[FalcoEvent]:
    yield from events(1)


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("ftp://127.0.0.1/", None),
        ("not a url", None),
        ("http://127.0.0.1:1/", {"cert": "/nonexistent.crt"}),
        ("https://127.0.0.1:1/", {"ca": "/nonexistent-ca.crt"}),
    ],
)
async def test_unusable_configuration_raises_before_sending(url: str, tls: Any) -> None:
    with pytest.raises(ReplayError):
        await post_events(iter_events(), url, rate=0, tls=ClientTls(**tls) if tls else None)
