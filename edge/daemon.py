"""`aerie edge run`: every part of the node daemon, wired together in one event loop.

Start-up order: load and verify the model bundle (no valid bundle → `StartupError`, exit 2), restore
the feature state (the saved state file when it matches, else the bundle's), open the spool, start
the ops endpoints, the forwarder, the model watcher, the threshold poller, then the input, once the
threshold policy was read (or after `FIRST_POLICY_WAIT_S`). Kafka need not be reachable: anomalies are
spooled, readiness and the logs say so, and they are published when the broker answers.

SIGTERM / SIGINT: the input is closed, everything already accepted is scored and spooled, the
forwarder waits up to ``pipeline.drain_timeout_s`` for Kafka to confirm what is in flight (the rest
stays in the spool for the next start), the feature state is saved, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

from aerie.edge.config import EdgeConfig
from aerie.edge.detector import Detector
from aerie.edge.errors import InputError, SpoolError
from aerie.edge.forwarder import Forwarder
from aerie.edge.inputs import GrpcInput, HttpInput, JsonLinesInput
from aerie.edge.inputs.base import FalcoInput
from aerie.edge.metrics import EdgeMetrics
from aerie.edge.model_watch import LoadedModel, ModelWatcher
from aerie.edge.pipeline import Pipeline
from aerie.edge.spool import AsyncSpool
from aerie.edge.threshold import LiveThreshold
from aerie.models.bundle import BundleError
from aerie.models.features import FeatureExtractor
from aerie.models.features.state import SnapshotError, SpecMismatchError
from aerie.proto.ops import OpsServer, Probe

__all__ = ["EdgeDaemon", "StartupError", "run_edge"]

log = logging.getLogger("aerie.edge.daemon")

FIRST_POLICY_WAIT_S: Final = 2.0
"""At start, how long the input waits for the threshold policy's first read (see `EdgeDaemon.run`)."""


class StartupError(Exception):
    """The daemon cannot start with these settings (no valid bundle, unusable spool or input)."""


def build_input(config: EdgeConfig) -> FalcoInput:
    settings = config.input
    if settings.kind == "grpc":
        return GrpcInput(settings.grpc)
    if settings.kind == "http":
        http = settings.http
        return HttpInput(
            http.host,
            http.port,
            path=http.path,
            tls=http.tls,
            allowed_identities=http.allowed_identities,
            max_body=http.max_body,
        )
    return JsonLinesInput(settings.jsonlines.path, follow=settings.jsonlines.follow)


class EdgeDaemon:
    """The running daemon; `run` until `stop` (or the end of a finite input)."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.node = config.node_name
        self.metrics = EdgeMetrics(node=self.node)
        self._stopping = asyncio.Event()
        self._started = False
        self.pipeline: Pipeline | None = None
        self.forwarder: Forwarder | None = None
        self.ops: OpsServer | None = None

    # -- start ----------------------------------------------------------------------------------

    async def _load_model(self) -> tuple[ModelWatcher, LoadedModel]:
        watcher = ModelWatcher(
            Path(self.config.model.dir),
            poll_s=self.config.model.poll_s,
            on_swap=self._on_swap,
            on_refused=self._on_refused,
        )
        try:
            model = await asyncio.to_thread(watcher.load_initial)
        except BundleError as exc:
            raise StartupError(f"no usable model bundle in {self.config.model.dir}: {exc}") from None
        return watcher, model

    def _extractor(self, model: LoadedModel) -> FeatureExtractor:
        extractor = FeatureExtractor()
        state_file = self.config.model.state_file
        if state_file and Path(state_file).is_file():
            try:
                extractor.restore(Path(state_file).read_bytes())
                log.info("feature state restored", extra={"state_file": state_file})
                return extractor
            except (SpecMismatchError, SnapshotError, OSError) as exc:
                log.warning(
                    "saved feature state not usable; starting from the bundle's",
                    extra={"state_file": state_file, "error": str(exc)},
                )
        extractor.restore(model.bundle.state)
        return extractor

    async def run(self) -> int:
        config = self.config
        watcher, model = await self._load_model()
        self.watcher = watcher
        extractor = self._extractor(model)
        self.threshold = LiveThreshold(
            node=self.node,
            bundle_threshold=model.threshold,
            source=config.threshold.source,
            override=config.threshold.override,
            refresh_s=config.threshold.refresh_s,
            tls=config.threshold.tls,
            on_change=self._on_threshold,
        )
        self.detector = Detector(
            node=self.node, extractor=extractor, model=model.scorer, threshold=self.threshold.value
        )
        self.metrics.set_model(model.version, model.reference)
        try:
            spool = await AsyncSpool.open(
                config.spool.dir, max_bytes=config.spool.max_bytes, segment_bytes=config.spool.segment_bytes
            )
        except (SpoolError, ValueError) as exc:
            raise StartupError(f"spool {config.spool.dir}: {exc}") from None
        try:
            source = build_input(config)
            if isinstance(source, HttpInput):
                # Bind now: a port in use is a start-up error (exit 2), not a failure at run time.
                await source.start()
        except InputError as exc:
            await spool.close()
            raise StartupError(str(exc)) from None
        self.forwarder = Forwarder(spool.spool, config.kafka)
        self.pipeline = Pipeline(
            source,
            self.detector,
            spool,
            queue_size=config.input.queue_size,
            max_batch=config.pipeline.max_batch,
            anomaly_queue=config.pipeline.anomaly_queue,
            shed=config.sheds,
            on_batch=self.metrics.record_batch,
            on_spooled=self.forwarder.wake,
        )
        self.metrics.attach(
            input_stats=source.stats,
            pipeline=self.pipeline.stats,
            spool=spool.spool,
            forwarder=self.forwarder,
        )
        self.ops = OpsServer(
            config.ops.host, config.ops.port, self.metrics.registry, health=self._health, ready=self._ready
        )
        try:
            await self.ops.start()
        except Exception as exc:
            await spool.close()
            raise StartupError(f"ops endpoints on {config.ops.host}:{config.ops.port}: {exc}") from None

        forwarding = asyncio.create_task(self.forwarder.run(), name="aerie-edge-forwarder")
        background: list[asyncio.Task[Any]] = [
            forwarding,
            asyncio.create_task(watcher.run(), name="aerie-edge-model-watch"),
            asyncio.create_task(self.threshold.run(), name="aerie-edge-threshold"),
        ]
        # The policy in force decides from the first event: without this, whatever waits at start
        # (a followed file, Falco's backlog) is judged by the bundle's threshold until the first poll
        # answers. Bounded, so a slow brain does not hold the node's start-up (the bundle's threshold
        # serves until the poller gets through), and not cancelled on timeout: a read cut short
        # would be remembered as read but never applied.
        first_policy = asyncio.create_task(self.threshold.refresh(), name="aerie-edge-threshold-first")
        background.append(first_policy)
        await asyncio.wait({first_policy}, timeout=FIRST_POLICY_WAIT_S)
        pipeline_task = asyncio.create_task(self.pipeline.run(), name="aerie-edge-pipeline")
        self._started = True
        log.info(
            "edge started",
            extra={
                "node": self.node,
                "input": config.input.kind,
                "model_version": model.version,
                "threshold": self.threshold.value,
                "threshold_origin": self.threshold.origin,
                "kafka": config.kafka.bootstrap_servers,
                "spool": config.spool.dir,
                "spooled_backlog": spool.stats().get("queued_records"),
                "ops_port": self.ops.port,
                "input_url": source.url if isinstance(source, HttpInput) else None,
                "pid": os.getpid(),
            },
        )
        status = 0
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({pipeline_task, stop_wait, forwarding}, return_when=asyncio.FIRST_COMPLETED)
            if forwarding.done() and not forwarding.cancelled() and forwarding.exception() is not None:
                # The spool failed under the forwarder (a disk error): what reached the disk is
                # unknown until it is reopened, which a restart does.
                status = 1
                log.error("forwarder failed; stopping", exc_info=forwarding.exception())
            if not pipeline_task.done():
                log.info("stopping: closing the input, scoring and spooling what was accepted")
                await self.pipeline.stop()
            try:
                await pipeline_task
            except Exception as exc:
                status = 1
                log.error("pipeline failed", exc_info=exc)
        finally:
            stop_wait.cancel()
            await self._shutdown(background, spool, extractor)
        return status

    async def _shutdown(self, background: list[asyncio.Task[Any]], spool: AsyncSpool, extractor: Any) -> None:
        assert self.forwarder is not None
        started = time.monotonic()
        with contextlib.suppress(Exception):  # a failed forwarder has already been reported
            await self.forwarder.stop(drain_timeout_s=self.config.pipeline.drain_timeout_s)
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.threshold.aclose()
        state_file = self.config.model.state_file
        if state_file:
            try:
                await asyncio.to_thread(_write_atomically, Path(state_file), extractor.snapshot())
            except OSError as exc:
                log.warning(
                    "could not save the feature state", extra={"state_file": state_file, "error": str(exc)}
                )
        try:
            left = spool.stats().get("queued_records", 0)
            await spool.close()
        except SpoolError as exc:
            left = -1
            log.error(
                "spool did not close cleanly; it is recovered at the next start", extra={"error": str(exc)}
            )
        if self.ops is not None:
            await self.ops.close()
        log.info(
            "edge stopped",
            extra={
                "stats": self.pipeline.stats.snapshot() if self.pipeline else {},
                "left_in_spool": left,
                "drain_s": round(time.monotonic() - started, 3),
            },
        )

    def stop(self) -> None:
        self._stopping.set()

    # -- callbacks ------------------------------------------------------------------------------

    def _on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        self.detector.model = new.scorer
        self.threshold.set_bundle_default(new.threshold)
        self.metrics.set_model(new.version, new.reference)
        log.info(
            "model swapped",
            extra={"old": old.version if old else None, "new": new.version, "path": str(new.bundle.path)},
        )

    def _on_refused(self, path: Path, reason: str) -> None:
        self.metrics.model_refused()

    def _on_threshold(self, old: float | None, new: float, origin: str) -> None:
        # Called once from LiveThreshold's constructor, before the detector exists.
        detector = getattr(self, "detector", None)
        if detector is not None:
            detector.threshold = new
        self.metrics.set_threshold(new, origin, changed=old is not None)

    # -- probes ---------------------------------------------------------------------------------

    def _health(self) -> Probe:
        pipeline = self.pipeline
        alive = pipeline is not None and (pipeline.running or not self._started)
        return Probe(ok=alive, detail={"pipeline": "running" if alive else "stopped"})

    def _ready(self) -> Probe:
        pipeline, forwarder = self.pipeline, self.forwarder
        if pipeline is None or forwarder is None or not pipeline.running:
            return Probe(ok=False, detail={"pipeline": "not running"})
        broker = forwarder.broker_up
        stats = forwarder.stats
        return Probe(
            ok=True,
            detail={
                "model_version": self.detector.model.version,
                "threshold": self.detector.threshold,
                "queued_events": pipeline.queued,
                # Ready either way: events are scored and anomalies kept on disk until Kafka answers.
                "kafka": "up" if broker else "unreachable: spooling anomalies until it answers",
                "forwarder": stats,
            },
        )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


async def run_edge(config: EdgeConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT or the end of a finite input; the exit status."""
    daemon = EdgeDaemon(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    try:
        return await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
