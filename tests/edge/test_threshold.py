"""The live threshold: resolution order, a file source read at run time, bad documents, and a real
HTTP(S) source with ETag revalidation and mutual TLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from aerie.brain.certs import Pki
from aerie.edge.threshold import LiveThreshold, ThresholdPolicy, decode_policy
from aerie.edge.tls import ClientTls, ServerTls, server_ssl_context
from aerie.proto.serving import Running, bind, peer_identity, serve

LOGGER = "aerie.edge.threshold"
BUNDLE = 0.6


def doc(
    version: str = "2026-11-21.1", threshold: float | None = 0.62, nodes: dict[str, float] | None = None
) -> bytes:
    edge: dict[str, Any] = {"nodes": nodes or {}}
    if threshold is not None:
        edge["threshold"] = threshold
    return json.dumps({"version": version, "edge": edge}).encode()


def replace(path: Path, data: bytes) -> None:
    """Write ``data`` the way a careful publisher does: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Changes:
    """``on_change`` calls, awaitable."""

    def __init__(self) -> None:
        self.calls: list[tuple[float | None, float, str]] = []
        self.queue: asyncio.Queue[tuple[float | None, float, str]] = asyncio.Queue()

    def __call__(self, old: float | None, new: float, origin: str) -> None:
        self.calls.append((old, new, origin))
        self.queue.put_nowait((old, new, origin))

    async def next(self) -> tuple[float | None, float, str]:
        return await asyncio.wait_for(self.queue.get(), timeout=10)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_example_policy_document_decodes() -> None:
    path = Path(__file__).parents[2] / "policies" / "edge" / "threshold.json"
    policy = decode_policy(path.read_bytes())
    assert isinstance(policy, ThresholdPolicy)
    assert policy.edge.threshold is not None
    assert policy.threshold_for("no-such-node") == (policy.edge.threshold, "cluster")
    node, value = next(iter(policy.edge.nodes.items()))
    assert policy.threshold_for(node) == (value, "node")


async def test_resolution_order_override_then_node_then_cluster_then_bundle(tmp_path: Path) -> None:
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(threshold=0.62, nodes={"node-a": 0.70}))
    changes = Changes()
    a = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source, on_change=changes)
    b = LiveThreshold(node="node-b", bundle_threshold=BUNDLE, source=source)
    assert (a.value, a.origin, a.policy_version) == (BUNDLE, "bundle", None)
    assert changes.calls == [(None, BUNDLE, "bundle")]  # the first value is reported too
    assert await a.refresh()
    assert await b.refresh()
    assert (a.value, a.origin, a.policy_version) == (0.70, "policy", "2026-11-21.1")
    assert (b.value, b.origin) == (0.62, "policy")
    assert changes.calls[-1] == (BUNDLE, 0.70, "policy")

    # A new bundle changes nothing while the policy sets the value ...
    a.set_bundle_default(0.5)
    assert (a.value, a.origin, len(changes.calls)) == (0.70, "policy", 2)
    # ... and is the value again once the policy stops setting one.
    replace(source, doc(version="2", threshold=None))
    assert await a.refresh()
    assert (a.value, a.origin, a.policy_version) == (0.5, "bundle", "2")
    assert changes.calls[-1] == (0.70, 0.5, "bundle")

    over = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source, override=0.9)
    replace(source, doc(version="3", nodes={"node-a": 0.71}))
    assert await over.refresh()
    assert (over.value, over.origin, over.policy_version) == (0.9, "override", "3")
    over.set_override(None)
    assert (over.value, over.origin) == (0.71, "policy")
    over.set_override(0.95)
    assert (over.value, over.origin) == (0.95, "override")


async def test_a_file_source_is_followed_at_run_time(tmp_path: Path) -> None:
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(version="1", nodes={"node-a": 0.70}))
    changes = Changes()
    live = LiveThreshold(
        node="node-a", bundle_threshold=BUNDLE, source=source, refresh_s=0.01, on_change=changes
    )
    await changes.next()
    task = asyncio.create_task(live.run())
    try:
        assert await changes.next() == (BUNDLE, 0.70, "policy")
        # Rewritten in place, same size, likely within one mtime tick: still seen.
        source.write_bytes(doc(version="2", nodes={"node-a": 0.71}))
        assert await changes.next() == (0.70, 0.71, "policy")
        replace(source, doc(version="3", threshold=0.64))
        assert await changes.next() == (0.71, 0.64, "policy")
        assert live.policy_version == "3"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert live.stats.applied == 3
    assert live.stats.failures == {}
    # Unchanged since: nothing new, nothing counted as a failure.
    assert not await live.refresh()
    assert live.stats.unchanged >= 1


async def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(version="1", nodes={"node-a": 0.72}))
    before = source.stat()
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source)
    assert await live.refresh()
    # Same inode, same size, same mtime: what an in-place rewrite within one mtime tick looks like.
    source.write_bytes(doc(version="2", nodes={"node-a": 0.71}))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = source.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert await live.refresh()
    assert (live.value, live.policy_version) == (0.71, "2")


async def test_a_file_whose_stat_is_unchanged_and_old_is_not_read_again(tmp_path: Path) -> None:
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(version="1", nodes={"node-a": 0.72}))
    an_hour_ago = source.stat().st_mtime_ns - 3600 * 10**9
    os.utime(source, ns=(an_hour_ago, an_hour_ago))
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source)
    assert await live.refresh()
    # Only a writer that forges the old mtime could hide a change; this one does, to show the file
    # is not opened: the stat alone decided.
    source.write_bytes(doc(version="2", nodes={"node-a": 0.71}))
    os.utime(source, ns=(an_hour_ago, an_hour_ago))
    assert not await live.refresh()
    assert (live.value, live.policy_version, live.stats.unchanged) == (0.72, "1", 1)


async def test_a_configmap_symlink_flip_is_followed(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    for name, body in (
        ("..v1", doc(version="1", threshold=0.61)),
        ("..v2", doc(version="2", threshold=0.66)),
    ):
        (mount / name).mkdir(parents=True)
        (mount / name / "threshold.json").write_bytes(body)
    (mount / "..data").symlink_to("..v1")
    (mount / "threshold.json").symlink_to("..data/threshold.json")
    live = LiveThreshold(node="n", bundle_threshold=BUNDLE, source=mount / "threshold.json")
    assert await live.refresh()
    assert (live.value, live.policy_version) == (0.61, "1")
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")  # what the kubelet does
    assert await live.refresh()
    assert (live.value, live.policy_version) == (0.66, "2")


BAD_DOCUMENTS = [
    pytest.param(b'{"version": "x", "edge": {"threshold": 0.7', "malformed_json", id="truncated"),
    pytest.param(b'{"version": "x", "edge": {"threshold": NaN}}', "malformed_json", id="nan"),
    pytest.param(doc(threshold=-0.1), "invalid_document", id="negative"),
    pytest.param(doc(threshold=1.5), "invalid_document", id="above-one"),
    pytest.param(b'{"version": "x", "edge": {"threshold": 1e999}}', "invalid_document", id="infinite"),
    pytest.param(b'{"version": "x", "edge": {"threshold": "0.7"}}', "invalid_document", id="string"),
    pytest.param(b'{"version": "x", "edge": {"threshold": true}}', "invalid_document", id="bool"),
    pytest.param(b'{"version": "x", "edge": {"nodes": {"node-a": null}}}', "invalid_document", id="null"),
    pytest.param(b'{"version": "x", "edge": {"treshold": 0.7}}', "invalid_document", id="typo"),
    pytest.param(b'{"edge": {"threshold": 0.7}}', "invalid_document", id="no-version"),
    pytest.param(b"[]", "invalid_document", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_DOCUMENTS)
async def test_a_bad_document_keeps_the_last_good_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(version="good", nodes={"node-a": 0.70}))
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source)
    assert await live.refresh()
    replace(source, body)
    for _ in range(4):
        assert not await live.refresh()
        assert (live.value, live.origin, live.policy_version) == (0.70, "policy", "good")
    # Counted and logged once: the same bad document is remembered, not decoded again each poll.
    assert live.stats.failures == {reason: 1}
    assert (live.stats.last_error or "").startswith(f"{reason}: ")
    (warning,) = warnings_of(caplog)
    assert warning.reason == reason  # type: ignore[attr-defined]
    assert warning.threshold == 0.70  # type: ignore[attr-defined]
    replace(source, doc(version="fixed", nodes={"node-a": 0.72}))
    assert await live.refresh()
    assert (live.value, live.policy_version, live.stats.last_error) == (0.72, "fixed", None)


async def test_a_missing_file_is_counted_each_poll_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = tmp_path / "threshold.json"
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source)
    for _ in range(3):
        assert not await live.refresh()
    assert (live.value, live.origin, live.stats.failures) == (BUNDLE, "bundle", {"missing": 3})
    assert len(warnings_of(caplog)) == 1
    source.write_bytes(doc(threshold=0.63))
    assert await live.refresh()
    assert (live.value, live.origin) == (0.63, "policy")
    source.unlink()  # gone again: the last good value stays
    assert not await live.refresh()
    assert (live.value, live.stats.failures) == (0.63, {"missing": 4})
    assert len(warnings_of(caplog)) == 2  # a new episode of the failure is logged again
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("readable again" in m for m in messages)


async def test_changes_are_logged_with_origin_and_policy_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = tmp_path / "threshold.json"
    source.write_bytes(doc(version="2026-11-21.7", nodes={"node-a": 0.70}))
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=source)
    await live.refresh()
    changed = [r for r in caplog.records if r.name == LOGGER and hasattr(r, "new")]
    assert [(r.old, r.new, r.origin, r.policy_version) for r in changed] == [  # type: ignore[attr-defined]
        (None, BUNDLE, "bundle", None),
        (BUNDLE, 0.70, "policy", "2026-11-21.7"),
    ]
    assert changed[-1].policy_scope == "node"  # type: ignore[attr-defined]
    assert "0.600000 → 0.700000" in changed[-1].getMessage()


async def test_a_failing_callback_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(old: float | None, new: float, origin: str) -> None:
        raise RuntimeError("metric backend down")

    live = LiveThreshold(node="n", bundle_threshold=BUNDLE, on_change=broken)
    live.set_bundle_default(0.7)
    assert live.value == 0.7
    assert sum("callback failed" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"override": 1.5}, "override must be within 0..1"),
        ({"override": float("nan")}, "override must be within 0..1"),
        ({"bundle_threshold": -0.1}, "bundle threshold must be within 0..1"),
        ({"source": "ftp://brain/threshold.json"}, "file path or an http"),
        ({"source": "https://"}, "host|URL"),
        ({"refresh_s": 0}, "refresh_s"),
    ],
)
def test_settings_that_cannot_work_are_refused(kwargs: dict[str, Any], match: str) -> None:
    settings: dict[str, Any] = {"node": "n", "bundle_threshold": BUNDLE, **kwargs}
    with pytest.raises(ValueError, match=match):
        LiveThreshold(**settings)


def test_a_bad_bundle_threshold_keeps_the_old_one() -> None:
    live = LiveThreshold(node="n", bundle_threshold=BUNDLE)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        live.set_bundle_default(float("inf"))
    assert (live.value, live.bundle_threshold) == (BUNDLE, BUNDLE)


# --- a real HTTP(S) source ----------------------------------------------------------------------


class PolicyServer:
    """A raw ASGI app that serves one policy document with a strong ETag and answers 304s."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 200
        self.seen: list[tuple[bytes | None, int, str | None]] = []
        """(If-None-Match, status sent, peer identity) per request."""

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = dict(scope["headers"])
        if_none_match = headers.get(b"if-none-match")
        etag = b'"' + hashlib.sha256(self.body).hexdigest()[:16].encode() + b'"'
        if self.status != 200:
            status, body, out = self.status, b"policy store unavailable", []
        elif if_none_match == etag:
            status, body, out = 304, b"", [(b"etag", etag)]
        else:
            status, body, out = 200, self.body, [(b"etag", etag), (b"content-type", b"application/json")]
        self.seen.append((if_none_match, status, peer_identity(scope)))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def plain_server() -> AsyncIterator[tuple[PolicyServer, Running]]:
    app = PolicyServer(doc(version="h1", threshold=0.62, nodes={"node-a": 0.70}))
    running = await serve(app, bind("127.0.0.1", 0), name="policy")
    try:
        yield app, running
    finally:
        await running.stop()


async def test_http_source_revalidates_with_etag(
    plain_server: tuple[PolicyServer, Running], caplog: pytest.LogCaptureFixture
) -> None:
    app, running = plain_server
    url = f"http://127.0.0.1:{running.port}/edge/threshold.json"
    live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=url)
    try:
        assert await live.refresh()
        assert (live.value, live.origin, live.policy_version) == (0.70, "policy", "h1")
        assert not await live.refresh()
        assert app.seen[0][0] is None  # nothing to revalidate the first time
        assert app.seen[1][0] is not None
        assert [status for _, status, _ in app.seen] == [200, 304]
        assert live.stats.not_modified == 1

        app.body = doc(version="h2", threshold=0.65)
        assert await live.refresh()
        assert (live.value, live.policy_version) == (0.65, "h2")
        assert app.seen[-1][1] == 200

        app.status = 503
        for _ in range(3):
            assert not await live.refresh()
        assert (live.value, live.stats.failures) == (0.65, {"http_503": 3})
        assert len(warnings_of(caplog)) == 1

        app.status = 200  # back, same document: a 304 ends the failure
        assert not await live.refresh()
        assert app.seen[-1][1] == 304
        assert (live.value, live.stats.last_error, live.stats.not_modified) == (0.65, None, 2)
    finally:
        await live.aclose()


async def test_http_source_keeps_the_value_while_the_server_is_down(closed_port: int) -> None:
    live = LiveThreshold(
        node="node-a", bundle_threshold=BUNDLE, source=f"http://127.0.0.1:{closed_port}/t.json", timeout_s=2
    )
    try:
        assert not await live.refresh()
        assert (live.value, live.origin, live.stats.failures) == (BUNDLE, "bundle", {"connect_error": 1})
    finally:
        await live.aclose()


async def test_https_source_with_mutual_tls(pki: dict[str, Pki], foreign_pki: Pki) -> None:
    brain, edge = pki["brain"], pki["edge"]
    app = PolicyServer(doc(version="tls-1", nodes={"node-a": 0.71}))
    server_tls = ServerTls(cert=str(brain.cert), key=str(brain.key), ca=str(brain.ca))
    running = await serve(
        app, bind("127.0.0.1", 0), ssl_factory=lambda: server_ssl_context(server_tls), name="p"
    )
    url = f"https://127.0.0.1:{running.port}/edge/threshold.json"
    try:
        tls = ClientTls(ca=str(edge.ca), cert=str(edge.cert), key=str(edge.key))
        live = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=url, tls=tls)
        try:
            assert await live.refresh()
            assert (live.value, live.policy_version) == (0.71, "tls-1")
            assert not await live.refresh()
            assert [(status, who) for _, status, who in app.seen] == [
                (200, "spiffe://aerie/edge"),
                (304, "spiffe://aerie/edge"),
            ]
        finally:
            await live.aclose()

        strangers = {
            "no client certificate": ClientTls(ca=str(edge.ca)),
            "another CA's certificate": ClientTls(
                ca=str(edge.ca), cert=str(foreign_pki.cert), key=str(foreign_pki.key)
            ),
        }
        for tls in strangers.values():
            stranger = LiveThreshold(node="node-a", bundle_threshold=BUNDLE, source=url, tls=tls)
            try:
                assert not await stranger.refresh()
                assert (stranger.value, stranger.origin) == (BUNDLE, "bundle")
                assert sum(stranger.stats.failures.values()) == 1
            finally:
                await stranger.aclose()
        assert len(app.seen) == 2  # refused handshakes never became requests
    finally:
        await running.stop()
