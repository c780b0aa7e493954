"""The feature contract: names, order, documented ranges, parameters, and the spec hash.

Everything that changes what a feature value means goes into `spec_hash`: the names and their order,
the ranges, every table size and decay constant in `FeatureParams`, and `DEFINITION_VERSION`, which is
bumped by hand whenever the computation itself changes (tokenisation, normalisation, kernel maths).
A model bundle records the hash it was trained with; serving refuses a bundle whose hash differs, and
`FeatureExtractor.restore` refuses a state snapshot taken under another spec.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

import msgspec

__all__ = [
    "DEFINITION_VERSION",
    "FEATURE_NAMES",
    "FEATURE_RANGES",
    "N_FEATURES",
    "SURPRISAL_MAX",
    "FeatureParams",
    "spec_hash",
]

#: Bump when a feature's computation changes in a way the parameters do not capture.
DEFINITION_VERSION: Final = 1

#: Upper clip for every surprisal feature, in nats. ``-ln p`` for the rarest key a count table can
#: express stays well below it (about 2 · ln(decayed events per half-life)), so the clip only guards
#: collisions and pathological inputs.
SURPRISAL_MAX: Final = 40.0

#: Feature names in column order. models/FEATURES.md documents each one.
FEATURE_NAMES: Final[tuple[str, ...]] = (
    "rule_rarity",
    "proc_rarity",
    "lineage_rarity",
    "exe_rarity",
    "file_rarity",
    "endpoint_rarity",
    "cmdline_length",
    "cmdline_entropy",
    "sensitive_path",
    "is_root",
    "user_rarity",
    "context_rarity",
    "proc_rate",
    "ctx_burst",
    "seq_surprisal",
    "seq_window",
    "proc_novelty",
)

N_FEATURES: Final = len(FEATURE_NAMES)

#: Closed range [low, high] of every feature, in column order; the kernels clip into it.
FEATURE_RANGES: Final[tuple[tuple[float, float], ...]] = (
    (0.0, SURPRISAL_MAX),  # rule_rarity
    (0.0, SURPRISAL_MAX),  # proc_rarity
    (0.0, SURPRISAL_MAX),  # lineage_rarity
    (0.0, SURPRISAL_MAX),  # exe_rarity
    (0.0, SURPRISAL_MAX),  # file_rarity
    (0.0, SURPRISAL_MAX),  # endpoint_rarity
    (0.0, 12.0),  # cmdline_length: ln(1 + UTF-8 bytes)
    (0.0, 8.0),  # cmdline_entropy: bits per byte
    (0.0, 1.0),  # sensitive_path
    (0.0, 1.0),  # is_root
    (0.0, SURPRISAL_MAX),  # user_rarity
    (0.0, SURPRISAL_MAX),  # context_rarity
    (0.0, 16.0),  # proc_rate: ln(1 + recent events of the process)
    (-6.0, 6.0),  # ctx_burst: signed ln(1 + |z|)
    (0.0, SURPRISAL_MAX),  # seq_surprisal
    (0.0, SURPRISAL_MAX),  # seq_window
    (0.0, SURPRISAL_MAX),  # proc_novelty
)


class FeatureParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Table sizes and time constants. Every field is part of the spec hash.

    Table sizes are powers of two given as bit counts; memory is fixed by them and never grows with the
    number of distinct keys. Half-lives are in event time (seconds of ``FalcoEvent.time_ns``).
    """

    #: Decayed-count table shared by every rarity and sequence count: 2**bits entries of 32 bytes.
    count_table_bits: int = 19
    #: Per-process stream table (previous event types, rates, moving averages): 2**bits slots.
    stream_table_bits: int = 16
    #: Per-container burst table (short and long decayed counts): 2**bits slots.
    burst_table_bits: int = 12
    #: Half-life of the counts behind every rarity and sequence feature.
    rarity_half_life_s: float = 6 * 3600.0
    #: Half-life of a process's own event count (``proc_rate``).
    rate_half_life_s: float = 10.0
    #: Short and long half-lives of a container's event count (``ctx_burst``).
    burst_short_half_life_s: float = 10.0
    burst_long_half_life_s: float = 600.0
    #: A process stream idle this long starts afresh (pids are reused).
    stream_idle_s: float = 3600.0
    #: An event this far behind the clock starts a new timeline (see kernels: time handling).
    time_rewind_s: float = 60.0
    #: A silence longer than this advances the clock by this much only (see kernels: time handling).
    max_gap_s: float = 900.0
    #: Pseudo-count added to every escape count: the minimum weight of the back-off distribution
    #: (context → node-wide, trigram → bigram → unigram → node-wide).
    smoothing: float = 2.0
    #: Per-event weight of the newest event in the per-process moving averages.
    ema_alpha: float = 0.3

    def validate(self) -> FeatureParams:
        """Return self, or raise `ValueError` naming the first out-of-range field."""
        for name, low, high in (
            ("count_table_bits", 8, 28),
            ("stream_table_bits", 6, 24),
            ("burst_table_bits", 4, 20),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"FeatureParams.{name}={value} outside [{low}, {high}]")
        for name in (
            "rarity_half_life_s",
            "rate_half_life_s",
            "burst_short_half_life_s",
            "burst_long_half_life_s",
            "stream_idle_s",
            "time_rewind_s",
            "max_gap_s",
            "smoothing",
        ):
            value = getattr(self, name)
            if not value > 0.0 or value == float("inf"):
                raise ValueError(f"FeatureParams.{name}={value} must be a positive finite number")
        if self.burst_long_half_life_s <= self.burst_short_half_life_s:
            raise ValueError("FeatureParams.burst_long_half_life_s must exceed burst_short_half_life_s")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"FeatureParams.ema_alpha={self.ema_alpha} outside (0, 1]")
        return self


def spec_hash(params: FeatureParams) -> str:
    """Hex sha256 over the definition version, names, order, ranges and every parameter.

    Stable across processes and machines: canonical JSON (sorted keys, floats as ``repr``).
    """
    doc = {
        "definition_version": DEFINITION_VERSION,
        "names": list(FEATURE_NAMES),
        "ranges": [[repr(float(lo)), repr(float(hi))] for lo, hi in FEATURE_RANGES],
        "params": {k: repr(v) for k, v in sorted(msgspec.structs.asdict(params).items())},
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
