"""What both replays share (`aerie.edge.replay_grpc`, `aerie.edge.replay_http`): the error, the
event-file reader, and pacing.

* `read_events` — Falco JSON alerts, one per line, from a file, lazily; bad lines are counted and
  skipped, never fatal.
* `aiter_of` — an iterable or async iterable as an async iterator.
* `paced` — the same, at a chosen rate in events per second.

Failure modes: `read_events` raises `ReplayError` when the file cannot be opened or read (a bad line
is not an error). `paced` and `aiter_of` pass on whatever the source raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from aerie.edge.errors import ReplayError
from aerie.proto.event import DecodeError, FalcoEvent, decode_json

__all__ = ["ReplayError", "aiter_of", "paced", "read_events"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Without a rate, yield to the event loop this often: a source that never waits (a list, a file)
# would otherwise keep the servers and clients sharing the loop from running at all.
_YIELD_EVERY = 256


async def aiter_of(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """``items`` (a list, a generator, an async iterable) as an async iterator."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def paced(items: Iterable[T] | AsyncIterable[T], rate: float) -> AsyncIterator[T]:
    """``items`` with the n-th (from 0) handed out no earlier than n / ``rate`` seconds after the
    first; ``rate`` 0 hands them out as fast as they are taken.

    A consumer slower than ``rate`` is never made to wait (no catch-up bursts beyond what it missed).
    Raises `ReplayError` for a negative rate, when iteration starts.
    """
    if rate < 0:
        raise ReplayError(f"rate must be >= 0 events/s, got {rate}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    async for item in aiter_of(items):
        if rate > 0:
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif n % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)
        n += 1
        yield item


def read_events(
    path: Path, rejected: Counter[str] | None = None, *, log_skipped: bool = True
) -> Iterator[FalcoEvent]:
    """Falco JSON alerts, one per line, from ``path`` → `FalcoEvent`s, lazily.

    Blank lines are skipped; a line that does not decode is skipped, counted in ``rejected`` under
    its `DecodeError` reason and, unless ``log_skipped`` is false (a second reader of the same
    file), logged with its line number. Raises `ReplayError` when the file cannot be opened or read.
    """
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield decode_json(line)
                except DecodeError as exc:
                    if rejected is not None:
                        rejected[exc.reason] += 1
                    if log_skipped:
                        log.warning("%s:%d: skipped: %s", path, number, exc, extra={"reason": exc.reason})
    except OSError as exc:
        raise ReplayError(f"cannot read events from {path}: {exc}") from None
