"""OpsServer over real HTTP: probes, Prometheus exposition, and failures that must not reach the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from aerie.proto.ops import OpsServer, Probe, ServeError
from aerie.proto.serving import bind


class Switch:
    """A probe whose answer the test sets."""

    def __init__(self, ok: bool = True, **detail: object) -> None:
        self.answer = Probe(ok=ok, detail=dict(detail))
        self.calls = 0

    def __call__(self) -> Probe:
        self.calls += 1
        return self.answer


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("aerie_test_requests", "Requests.", ["path"], registry=registry).labels("/x").inc(3)
    Gauge("aerie_test_up", "Up.", registry=registry).set(1)
    return registry


@pytest.fixture
async def ops(registry: CollectorRegistry) -> AsyncIterator[tuple[OpsServer, Switch, Switch]]:
    health, ready = Switch(), Switch(ok=False, kafka="down")
    server = OpsServer("127.0.0.1", 0, registry, health=health, ready=ready)
    await server.start()
    yield server, health, ready
    await server.close()


async def test_probes_answer_200_or_503_with_the_probe_as_json(ops: tuple[OpsServer, Switch, Switch]) -> None:
    server, health, ready = ops
    assert server.port != 0
    async with httpx.AsyncClient(base_url=server.url) as client:
        live = await client.get("/healthz")
        not_ready = await client.get("/readyz")
        ready.answer = Probe(ok=True, detail={"kafka": "up", "model": "v3"})
        now_ready = await client.get("/readyz")
    assert live.status_code == 200
    assert live.headers["content-type"] == "application/json"
    assert live.json() == {"ok": True, "detail": {}}
    assert not_ready.status_code == 503
    assert not_ready.json() == {"ok": False, "detail": {"kafka": "down"}}
    assert now_ready.status_code == 200
    assert now_ready.json() == {"ok": True, "detail": {"kafka": "up", "model": "v3"}}
    assert (health.calls, ready.calls) == (1, 2)


async def test_metrics_is_prometheus_text_that_parses(ops: tuple[OpsServer, Switch, Switch]) -> None:
    server, _, _ = ops
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["aerie_test_requests"].type == "counter"
    assert [
        (s.name, s.labels, s.value)
        for s in families["aerie_test_requests"].samples
        if s.name.endswith("_total")
    ] == [("aerie_test_requests_total", {"path": "/x"}, 3.0)]
    assert families["aerie_test_up"].samples[0].value == 1.0


async def test_head_answers_headers_only_and_other_methods_and_paths_are_refused(
    ops: tuple[OpsServer, Switch, Switch],
) -> None:
    server, _, _ = ops
    async with httpx.AsyncClient(base_url=server.url) as client:
        get_ready = await client.get("/readyz")
        head_ready = await client.head("/readyz")
        head_metrics = await client.head("/metrics")
        post = await client.post("/metrics", content=b"x")
        delete = await client.delete("/healthz")
        missing = await client.get("/metrics/")
        root = await client.get("/")
    assert (head_ready.status_code, head_ready.content) == (503, b"")
    assert head_ready.headers["content-length"] == get_ready.headers["content-length"]
    assert head_metrics.status_code == 200
    assert head_metrics.content == b""
    assert int(head_metrics.headers["content-length"]) > 0
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    assert delete.status_code == 405
    assert (missing.status_code, root.status_code) == (404, 404)


async def test_a_probe_that_raises_or_answers_nonsense_is_503_and_logged(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Probe:
        raise RuntimeError("spool directory vanished")

    def wrong() -> Probe:
        return {"ok": True}  # type: ignore[return-value]

    async with (
        OpsServer("127.0.0.1", 0, registry, health=broken, ready=wrong) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        with caplog.at_level(logging.WARNING, logger="aerie.proto.ops"):
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
            again = await client.get("/healthz")  # the server goes on serving
    assert health.status_code == 503
    assert health.json() == {"ok": False, "detail": {"error": "RuntimeError: spool directory vanished"}}
    assert ready.status_code == 503
    assert ready.json()["detail"]["error"] == "TypeError: probe returned dict, not Probe"
    assert again.status_code == 503
    failures = [r for r in caplog.records if "probe failed" in r.getMessage()]
    assert len(failures) == 3
    assert failures[0].exc_info is not None
    assert "spool directory vanished" in failures[0].getMessage()


async def test_async_probes_are_awaited_and_a_hung_one_times_out(registry: CollectorRegistry) -> None:
    never = asyncio.Event()

    async def checks_database() -> Probe:
        await asyncio.sleep(0)
        return Probe(ok=True, detail={"postgres": "ok"})

    async def hangs() -> Probe:
        await never.wait()
        return Probe(ok=True)

    async with (
        OpsServer(
            "127.0.0.1", 0, registry, health=checks_database, ready=hangs, probe_timeout_s=0.05
        ) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, health.json()["detail"]) == (200, {"postgres": "ok"})
    assert ready.status_code == 503
    assert ready.json() == {"ok": False, "detail": {"error": "timed out after 0.05s"}}


async def test_details_that_json_cannot_hold_are_shown_as_text(registry: CollectorRegistry) -> None:
    class Path:
        def __str__(self) -> str:
            return "/var/lib/aerie/spool"

    ready = Switch(ok=True, spool=Path(), queued=3)
    async with (
        OpsServer("127.0.0.1", 0, registry, ready=ready) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/readyz")
    assert response.json() == {"ok": True, "detail": {"spool": "/var/lib/aerie/spool", "queued": 3}}


class Exploding:
    def collect(self) -> Iterator[Metric]:
        raise ValueError("collector bug")


async def test_a_failing_collector_answers_500_and_the_server_keeps_serving(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    exploding = Exploding()
    registry.register(exploding)
    async with (
        OpsServer("127.0.0.1", 0, registry) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        with caplog.at_level(logging.ERROR, logger="aerie.proto.ops"):
            failed = await client.get("/metrics")
        registry.unregister(exploding)
        recovered = await client.get("/metrics")
        health = await client.get("/healthz")
    assert failed.status_code == 500
    assert "ValueError: collector bug" in failed.text
    assert any(r.getMessage() == "metrics collection failed" for r in caplog.records)
    assert recovered.status_code == 200
    assert health.status_code == 200  # liveness defaults to "the loop answers"


async def test_readiness_flips_are_logged_once_each(
    ops: tuple[OpsServer, Switch, Switch], caplog: pytest.LogCaptureFixture
) -> None:
    server, _, ready = ops
    async with httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.INFO, logger="aerie.proto.ops"):
            await client.get("/readyz")  # first answer: no flip
            ready.answer = Probe(ok=True)
            await client.get("/readyz")
            await client.get("/readyz")
            ready.answer = Probe(ok=False, detail={"kafka": "down"})
            await client.get("/readyz")
    flips = [r.getMessage() for r in caplog.records if " is now " in r.getMessage()]
    assert flips == ["ready is now ok", "ready is now failing"]


async def test_lifecycle_port_in_use_close_and_restart(registry: CollectorRegistry) -> None:
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(ServeError, match="cannot bind"):
            await OpsServer("127.0.0.1", port, registry).start()
    finally:
        taken.close()

    server = OpsServer("127.0.0.1", 0, registry)
    await server.start()
    await server.start()  # idempotent
    url = server.url
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/healthz")).status_code == 200
    await server.close()
    await server.close()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
    with pytest.raises(ServeError, match="start after close"):
        await server.start()
