"""`aerie brain run`: the Kafka consumer feeding the coordinator, which calls the agents over A2A/mTLS.

Start-up: open the audit store and the checkpoints, resume every incident a previous run left
unfinished (after a crash, SIGKILL included), then consume. Offsets are committed only after an
incident is durably admitted, so a crash between the two re-reads the message and the duplicate is
recognised by its event id.

SIGTERM / SIGINT: stop consuming (in-flight admits finish and are committed), give running incidents
``drain_timeout_s`` to reach a verdict or a human, then close; whatever is cut short resumes from its
checkpoint at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from aerie.brain.agents.client import A2AAgentCaller
from aerie.brain.consumer import AnomalyConsumer, ConsumerConfig, ConsumerFailed
from aerie.brain.coordinator import Coordinator
from aerie.brain.metrics import BrainMetrics
from aerie.proto.ops import OpsServer, Probe

__all__ = ["BrainSettings", "run_brain"]

log = logging.getLogger("aerie.brain.service")


@dataclass(frozen=True)
class BrainSettings:
    consumer: ConsumerConfig
    audit: str
    checkpoints: str
    certs: Path
    identity: str = "brain"
    endpoints: dict[str, str] | None = None
    agent_timeout_s: float = 10.0
    concurrency: int = 8
    ops_host: str = "0.0.0.0"
    ops_port: int = 9102
    drain_timeout_s: float = 30.0


async def run_brain(settings: BrainSettings) -> int:
    """Run until SIGTERM/SIGINT; the exit status (1 when the consumer cannot go on)."""
    metrics = BrainMetrics()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    caller = A2AAgentCaller.from_certs(
        settings.certs,
        component=settings.identity,
        endpoints=settings.endpoints,
        metrics=metrics,
        timeout_s=settings.agent_timeout_s,
    )
    status = 0
    async with (
        caller,
        Coordinator.open(
            caller=caller,
            checkpoints=settings.checkpoints,
            audit=settings.audit,
            metrics=metrics,
            concurrency=settings.concurrency,
        ) as coordinator,
    ):
        resumed = await coordinator.resume_pending()
        consumer = AnomalyConsumer(settings.consumer, coordinator.admit, metrics=metrics)

        def ready() -> Probe:
            stats = consumer.stats
            return Probe(ok=True, detail={"assigned": stats.assigned, "consumed": stats.consumed})

        ops = OpsServer(
            settings.ops_host, settings.ops_port, metrics.registry, ready=ready, name="aerie-brain-ops"
        )
        await ops.start()
        log.info(
            "brain started",
            extra={
                "resumed_incidents": resumed,
                "topic": settings.consumer.topic,
                "group": settings.consumer.group_id,
                "ops_port": ops.port,
            },
        )
        consuming = asyncio.create_task(consumer.run(), name="aerie-brain-consumer")
        stop_wait = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({consuming, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not consuming.done():
                log.info("stopping: finishing admits in flight and committing")
                await consumer.stop()
            try:
                await consuming
            except ConsumerFailed as exc:
                status = 1
                log.error("consumer failed", extra={"error": str(exc)})
            drained = await coordinator.drain(settings.drain_timeout_s)
            if not drained:
                log.warning(
                    "incidents still running at shutdown; they resume from their checkpoints at next start"
                )
        finally:
            stop_wait.cancel()
            with contextlib.suppress(Exception):
                await ops.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("brain stopped")
    return status
