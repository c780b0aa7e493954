"""The one interface every Falco input implements, and the counters every input keeps.

An input is an async source of `FalcoEvent`s. It never raises on a bad record: the record is counted
as rejected with a reason and skipped (per-record failures are values, not crashes). It raises only
when it cannot go on at all (a file that does not exist, a socket that cannot be bound), and then
with `InputError` (defined with the edge's other exceptions in `aerie.edge.errors`).
"""

from __future__ import annotations

import abc
import threading
from collections import Counter
from collections.abc import AsyncIterator

from aerie.edge.errors import InputError
from aerie.proto.event import FalcoEvent

__all__ = ["FalcoInput", "InputError", "InputStats"]


class InputStats:
    """Received / decoded / rejected-by-reason counts of one input.

    Thread-safe: the gRPC client decodes on a worker thread while metrics read from another.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.received = 0
        self.decoded = 0
        self.rejected: Counter[str] = Counter()

    def record_received(self, n: int = 1) -> None:
        with self._lock:
            self.received += n

    def record_decoded(self, n: int = 1) -> None:
        with self._lock:
            self.decoded += n

    def record_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "input": self.name,
                "received": self.received,
                "decoded": self.decoded,
                "rejected": dict(self.rejected),
            }

    def __repr__(self) -> str:
        return f"InputStats({self.snapshot()!r})"


class FalcoInput(abc.ABC):
    """An async source of `FalcoEvent`s (gRPC, HTTP, JSON lines)."""

    name: str = "input"

    def __init__(self) -> None:
        self.stats = InputStats(self.name)

    @abc.abstractmethod
    def events(self) -> AsyncIterator[FalcoEvent]:
        """Yield events until the source ends or `close` is called.

        Must not raise on a bad record (count it in `stats` and go on). Raises `InputError` when the
        source cannot start or continue at all.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, most inputs end with their iterator
        """Stop producing; `events` finishes soon after. Safe to call more than once."""
