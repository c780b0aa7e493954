"""`aerie falco replay` run as a real subprocess, consumed by aerie's own inputs over real sockets."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from falco_testkit import varied_events
from process_testkit import clean_env

from aerie.brain.certs import Pki
from aerie.edge.inputs import FalcoInput, GrpcInput, HttpInput
from aerie.edge.inputs.grpc import GrpcInputConfig
from aerie.edge.tls import ClientTls, ServerTls
from aerie.proto.event import FalcoEvent
from aerie.proto.grpc_codec import decode_response, encode_response

DEADLINE_S = 60.0  # generous: the machine is shared; every wait below ends as soon as it can
BAD_LINES = b'{not json\n{"rule": "no time"}\n\n'


def fast(address: str, tls: ClientTls | None = None) -> GrpcInputConfig:
    return GrpcInputConfig(
        address=address, tls=tls, initial_backoff_s=0.02, max_backoff_s=0.2, poll_interval_s=0.02
    )


def as_grpc(events: list[FalcoEvent]) -> list[FalcoEvent]:
    """What gRPC can carry of each event (every field value travels as text)."""
    return [decode_response(encode_response(e)) for e in events]


def write_events(path: Path, events: list[FalcoEvent], *, bad_lines: bytes = b"") -> Path:
    lines = [msgspec.json.encode(e.to_falco_json()) + b"\n" for e in events]
    half = len(lines) // 2
    path.write_bytes(b"".join(lines[:half]) + bad_lines + b"".join(lines[half:]))
    return path


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for unix sockets, whose paths must fit in ~107 bytes."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="aerie-") as short:
        yield Path(short)


# The installed console script; without one, its entry point. (Not `python -m aerie.brain.cli`:
# run as __main__, that module's CliError is another class than the one the handlers raise.)
_SCRIPT = Path(sys.executable).with_name("aerie")
AERIE = (
    [str(_SCRIPT)]
    if _SCRIPT.is_file()
    else [sys.executable, "-c", "import sys; from aerie.brain.cli import main; sys.exit(main())"]
)


async def aerie(*args: str) -> asyncio.subprocess.Process:
    """``aerie ARGS`` as a subprocess, with no AERIE_ variables inherited from the test's environment."""
    return await asyncio.create_subprocess_exec(
        *AERIE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(DEADLINE_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def serving_address(proc: asyncio.subprocess.Process) -> str:
    """The address the command says it serves on (its first stderr line)."""
    assert proc.stderr is not None
    async with asyncio.timeout(DEADLINE_S):
        line = (await proc.stderr.readline()).decode()
    m = re.search(r"serving Falco gRPC outputs at (\S+)", line)
    assert m, f"unexpected first stderr line: {line!r}"
    return m[1]


async def take(source: FalcoInput, n: int) -> tuple[list[FalcoEvent], float]:
    """The first ``n`` events of ``source`` and the seconds from the first to the last."""
    got: list[FalcoEvent] = []
    first = 0.0

    async def drain(events: AsyncIterator[FalcoEvent]) -> None:
        nonlocal first
        async for event in events:
            if not got:
                first = time.monotonic()
            got.append(event)
            if len(got) == n:
                return

    try:
        async with asyncio.timeout(DEADLINE_S):
            await drain(source.events())
    finally:
        await source.close()
    return got, time.monotonic() - first


async def test_grpc_on_a_unix_socket_delivers_every_event(tmp_path: Path, short_dir: Path) -> None:
    events = varied_events(80)
    path = write_events(tmp_path / "events.jsonl", events, bad_lines=BAD_LINES)
    sock = f"unix://{short_dir}/falco.sock"
    proc = await aerie("falco", "replay", "--events", str(path), "--grpc", sock, "--rate", "400")
    try:
        assert await serving_address(proc) == sock
        got, seconds = await take(GrpcInput(fast(address=sock)), len(events))
        code, out, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert got == as_grpc(events)
    assert seconds >= 0.9 * (len(events) - 1) / 400, "--rate paces the alerts"
    assert code == 0, err
    assert f"events: 80 read from {path}, 2 bad lines skipped (invalid_json 1, schema 1)" in out
    assert f"grpc {sock}: 80 delivered of 80, 0 requeued after a failed write" in out
    assert "Traceback" not in err
    assert not (short_dir / "falco.sock").exists(), "the socket is removed on exit"


async def test_http_output_over_mtls_and_grpc_over_tcp_mtls_at_once(
    tmp_path: Path, pki: dict[str, Pki]
) -> None:
    """Both outputs at once, as Falco sends every alert to each output it has enabled."""
    events = varied_events(60)
    path = write_events(tmp_path / "events.jsonl", events)
    edge, falco = pki["edge"], pki["falco"]
    receiver = HttpInput(
        tls=ServerTls(cert=str(edge.cert), key=str(edge.key), ca=str(edge.ca)),
        allowed_identities={"spiffe://aerie/falco"},
    )
    await receiver.start()
    proc = await aerie(
        "falco", "replay", "--events", str(path),
        "--http", receiver.url,
        "--http-ca", str(falco.ca), "--http-cert", str(falco.cert), "--http-key", str(falco.key),
        "--grpc", "127.0.0.1:0",
        "--tls-cert", str(falco.cert), "--tls-key", str(falco.key), "--tls-ca", str(falco.ca),
    )  # fmt: skip
    try:
        address = await serving_address(proc)
        assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", address), "the real port, not 0"
        subscriber = GrpcInput(
            fast(address=address, tls=ClientTls(ca=str(edge.ca), cert=str(edge.cert), key=str(edge.key)))
        )
        (posted, _), (streamed, _) = await asyncio.gather(
            take(receiver, len(events)), take(subscriber, len(events))
        )
        code, out, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await receiver.close()
    assert posted == events, "http_output keeps the order and every typed field"
    assert streamed == as_grpc(events)
    assert receiver.stats.snapshot()["rejected"] == {}
    assert code == 0, err
    assert f"http {receiver.url}: 60 sent, 0 failed, 0 retries" in out
    assert f"grpc {address}: 60 delivered of 60" in out


TLS_KEY_CA = ["--tls-key", "KEY", "--tls-ca", "CA"]
BAD_OPTIONS = [
    (["--grpc", "unix:///tmp/x.sock"], "EVENTS_MISSING", "--events: "),
    ([], "", "nothing to replay to: give --grpc, --http, or both"),
    (["--grpc", "tcp://127.0.0.1:5060"], "", "--grpc: 'tcp://127.0.0.1:5060' is not a gRPC address"),
    (["--grpc", "127.0.0.1:5060"], "", "serves only with mutual TLS"),
    (["--grpc", "127.0.0.1:0", "--tls-cert", "CERT"], "", "--tls-cert, --tls-key and --tls-ca go together"),
    (["--grpc", "127.0.0.1:0", "--tls-cert", "MISSING", *TLS_KEY_CA], "", "does not exist"),
    (["--grpc", "unix:///tmp/x.sock", "--tls-cert", "CERT", *TLS_KEY_CA], "", "unix socket"),
    (["--http", "ftp://127.0.0.1/"], "", "--http: URL must be http:// or https://"),
    (["--http", "http://127.0.0.1:1/", "--http-ca", "CA"], "", "needs an https:// URL"),
    (["--http", "https://127.0.0.1:1/", "--http-cert", "CERT"], "", "needs both cert and key (missing: key)"),
    (["--grpc", "unix:///nonexistent-aerie-dir/x.sock"], "", "folder /nonexistent-aerie-dir does not exist"),
    (["--grpc", "unix:///tmp/x.sock", "--rate", "-5"], "", "--rate must be >= 0"),
    (["--grpc", "unix:///tmp/x.sock", "--rate", "fast"], "", "argument --rate: invalid float value"),
]  # fmt: skip


async def test_bad_options_exit_non_zero_with_a_clear_message(tmp_path: Path, pki: dict[str, Pki]) -> None:
    path = write_events(tmp_path / "events.jsonl", varied_events(3))
    files = {"CERT": str(pki["falco"].cert), "KEY": str(pki["falco"].key), "CA": str(pki["falco"].ca)}
    files["MISSING"] = str(tmp_path / "missing.crt")
    runs = []
    for args, events, _ in BAD_OPTIONS:
        events_arg = [
            "--events",
            str(tmp_path / "missing.jsonl") if events == "EVENTS_MISSING" else str(path),
        ]
        runs.append(await aerie("falco", "replay", *events_arg, *[files.get(a, a) for a in args]))
    results = await asyncio.gather(*(finish(p) for p in runs))  # concurrently: each start costs imports
    for (args, _, expected), (code, out, err) in zip(BAD_OPTIONS, results, strict=True):
        assert code == 2, (args, code, err)
        assert expected in err, (args, err)
        assert "Traceback" not in err, (args, err)
        assert out == "", (args, out)
    assert "missing.jsonl" in results[0][2]
    assert files["MISSING"] in results[5][2], "the message names the missing file"


async def test_linger_and_interrupt_stop_with_counts(tmp_path: Path, short_dir: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", varied_events(5))
    lingering = await aerie(
        "falco", "replay", "--events", str(path), "--grpc", f"unix://{short_dir}/a.sock", "--linger", "0.5"
    )
    interrupted = await aerie(
        "falco", "replay", "--events", str(path), "--grpc", f"unix://{short_dir}/b.sock"
    )
    try:
        await serving_address(interrupted)
        interrupted.send_signal(signal.SIGINT)
        (linger_code, linger_out, linger_err), (int_code, int_out, int_err) = await asyncio.gather(
            finish(lingering), finish(interrupted)
        )
    finally:
        for proc in (lingering, interrupted):
            if proc.returncode is None:
                proc.kill()
    # Nobody subscribed: nothing was delivered, and the command says so instead of hanging.
    assert linger_code == 1, linger_err
    assert "0 delivered of 5" in linger_out
    assert "stopped: the linger time passed" in linger_out
    assert int_code == 130, int_err
    assert "stopped: interrupted" in int_out
    assert "Traceback" not in linger_err + int_err


def test_help_names_every_environment_variable() -> None:
    import subprocess

    out = subprocess.run(
        [*AERIE, "falco", "replay", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE_S,
    ).stdout
    flags = re.findall(r"^\s+(--[a-z-]+) ", out, flags=re.MULTILINE)
    assert {"--events", "--grpc", "--http", "--rate", "--linger", "--tls-ca", "--http-key"} <= set(flags)
    assert len(re.findall(r"\[env\s+AERIE_REPLAY_[A-Z_]+", out)) == len(flags)
