"""When things happen: load profiles over the corpus window and samplers over them.

A `Profile` is a non-negative weight per minute of the window. Load-driven activity (requests,
database work) samples its start times from the ``web`` profile: a diurnal curve (quiet around
03:00 UTC, busiest mid-afternoon), lighter at weekends, with a few traffic bursts whose times and
sizes come from the seed. People-driven activity (CI jobs, rollouts, debugging) follows ``office``
hours. Infrastructure runs ``flat``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from random import Random
from typing import Final

from .model import NS_PER_S

__all__ = ["Profile", "build_profiles", "periodic"]

_MINUTE: Final = 60 * NS_PER_S


class Profile:
    """Relative activity per minute of ``[t0, t1)``; sample start times from it."""

    def __init__(self, t0: int, weights: list[float]) -> None:
        self.t0 = t0
        self._cum: list[float] = []
        total = 0.0
        for w in weights:
            total += max(w, 0.0)
            self._cum.append(total)
        self.total = total

    def sample(self, rng: Random) -> int:
        """One instant, minutes chosen in proportion to their weight, uniform inside the minute."""
        minute = bisect.bisect_right(self._cum, rng.random() * self.total)
        minute = min(minute, len(self._cum) - 1)
        return self.t0 + minute * _MINUTE + rng.randrange(_MINUTE)


def _hour_of(t0: int, minute: int) -> tuple[float, int]:
    stamp = datetime.fromtimestamp(t0 // NS_PER_S + minute * 60, UTC)
    return stamp.hour + stamp.minute / 60.0, stamp.weekday()


def build_profiles(rng: Random, t0: int, t1: int) -> dict[str, Profile]:
    """The ``web``, ``office`` and ``flat`` profiles of one corpus."""
    minutes = max(1, (t1 - t0) // _MINUTE)
    bursts = [
        (rng.randrange(minutes), rng.uniform(8, 50), rng.uniform(0.6, 2.5))
        for _ in range(max(1, round(minutes / 1440 * rng.uniform(2, 5))))
    ]
    web: list[float] = []
    office: list[float] = []
    for m in range(minutes):
        hour, weekday = _hour_of(t0, m)
        weekend = weekday >= 5
        diurnal = 0.22 + 0.78 * (0.5 - 0.5 * math.cos(2 * math.pi * (hour - 3.5) / 24))
        w = diurnal * (0.75 if weekend else 1.0)
        for centre, width, height in bursts:
            w += height * math.exp(-0.5 * ((m - centre) / width) ** 2) * diurnal
        web.append(w)
        work = max(0.0, math.sin(math.pi * (hour - 7.0) / 12.0)) if 7.0 <= hour <= 19.0 else 0.0
        office.append((0.03 + work**1.3) * (0.12 if weekend else 1.0))
    return {
        "web": Profile(t0, web),
        "office": Profile(t0, office),
        "flat": Profile(t0, [1.0] * minutes),
    }


def periodic(rng: Random, start: int, end: int, period: int, jitter: float = 0.05) -> Iterator[int]:
    """Ticks every ``period`` ns over ``[start, end)`` from a random phase, each jittered a little."""
    if period <= 0 or end <= start:
        return
    t = start + rng.randrange(period)
    spread = max(1, int(period * jitter))
    while t < end:
        yield t + rng.randint(-spread, spread) if t - spread > start else t
        t += period
