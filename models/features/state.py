"""Bounded per-node feature state: fixed-size numpy tables, snapshot to bytes and back.

Memory is decided by `FeatureParams` alone (about 20 MiB at the defaults) and never grows with the
number of distinct processes, files or endpoints: keys are hashed into the tables, old counts decay.

Snapshot format: a deflate-compressed ``.npz`` held in memory (empty slots compress to almost
nothing, so a young state is small). Its ``header`` member is UTF-8 JSON: ``{"format":
"aerie-features-state", "format_version": 1, "spec_hash": ..., "params": {...}}``.
`FeatureState.from_snapshot` refuses a snapshot whose spec hash differs from the expected one
(`SpecMismatchError`) and anything malformed (`SnapshotError`); it never unpickles.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from aerie.models.features.kernels import GLOB_ROWS, STREAM_INT_COLUMNS
from aerie.models.features.spec import FeatureParams, spec_hash

__all__ = ["FeatureState", "SnapshotError", "SpecMismatchError"]

_FORMAT: Final = "aerie-features-state"
_FORMAT_VERSION: Final = 1
# Flat indices of glob rows 1..6 that hold parameters (constants, table sizes); [4, 1] is state.
_PARAM_CELLS: Final = [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]
_ARRAYS: Final = ("fs", "sti")


class SnapshotError(ValueError):
    """A state snapshot that cannot be read (truncated, not a snapshot, wrong shapes)."""


class SpecMismatchError(SnapshotError):
    """A snapshot taken under another feature spec: its counts mean something else here."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(
            f"feature state snapshot has spec hash {found[:16]}…, this extractor expects {expected[:16]}…; "
            "the snapshot was taken with other feature definitions or parameters and cannot be reused"
        )
        self.found = found
        self.expected = expected


@dataclass
class FeatureState:
    """The kernels' tables: ``fs`` (flat float64, see `aerie.models.features.kernels`) and ``sti``."""

    params: FeatureParams
    fs: npt.NDArray[np.float64]
    sti: npt.NDArray[np.int64]

    @classmethod
    def fresh(cls, params: FeatureParams) -> FeatureState:
        """Empty tables sized by ``params`` (which must be valid)."""
        n_cnt = 1 << params.count_table_bits
        n_stream = 1 << params.stream_table_bits
        n_burst = 1 << params.burst_table_bits
        fs = np.zeros(GLOB_ROWS * 2 + 4 * n_cnt + 4 * n_stream + 4 * n_burst, np.float64)
        glob = fs[: GLOB_ROWS * 2].reshape(GLOB_ROWS, 2)
        ln2 = math.log(2.0)
        glob[1] = (ln2 / params.rarity_half_life_s, ln2 / params.rate_half_life_s)
        glob[2] = (ln2 / params.burst_short_half_life_s, ln2 / params.burst_long_half_life_s)
        glob[3] = (params.stream_idle_s, params.smoothing)
        glob[4] = (params.ema_alpha, 0.0)
        glob[5] = (n_cnt, n_stream)
        glob[6] = (n_burst, params.max_gap_s)
        glob[7] = (0.0, params.time_rewind_s)
        sti = np.zeros((n_stream, STREAM_INT_COLUMNS), np.int64)
        # Touch every page now: np.zeros maps pages lazily, and first-touch page faults in the middle
        # of scoring would land on single events' latency (several µs each inside a VM).
        fs[GLOB_ROWS * 2 :] = 0.0
        sti.fill(0)
        return cls(params=params, fs=fs, sti=sti)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (constant for given params)."""
        return sum(getattr(self, name).nbytes for name in _ARRAYS)

    @property
    def events_seen(self) -> int:
        return int(self.fs[1])

    def snapshot(self) -> bytes:
        """The whole state as bytes (see the module docstring for the format)."""
        header = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "spec_hash": spec_hash(self.params),
            "params": msgspec.to_builtins(self.params),
        }
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
            **{name: getattr(self, name) for name in _ARRAYS},
        )
        return buf.getvalue()

    @classmethod
    def from_snapshot(cls, data: bytes, expected_spec_hash: str) -> FeatureState:
        """Rebuild the state from `snapshot` bytes.

        Raises `SpecMismatchError` when the snapshot's spec hash is not ``expected_spec_hash`` and
        `SnapshotError` when the bytes are not a readable snapshot.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                if "header" not in npz.files:
                    raise SnapshotError("not a feature state snapshot: no header")
                header = json.loads(bytes(npz["header"]).decode())
                arrays = {name: npz[name] for name in _ARRAYS if name in npz.files}
        except SnapshotError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"not a readable feature state snapshot: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise SnapshotError("not a feature state snapshot: wrong format marker")
        if header.get("format_version") != _FORMAT_VERSION:
            raise SnapshotError(f"unsupported snapshot format version {header.get('format_version')!r}")
        found = str(header.get("spec_hash", ""))
        if found != expected_spec_hash:
            raise SpecMismatchError(found, expected_spec_hash)
        try:
            params = msgspec.convert(header.get("params"), FeatureParams).validate()
        except (msgspec.ValidationError, ValueError) as exc:
            raise SnapshotError(f"snapshot parameters unreadable: {exc}") from None
        if spec_hash(params) != found:
            raise SnapshotError("snapshot header is inconsistent: parameters do not match its spec hash")
        template = cls.fresh(params)
        for name in _ARRAYS:
            want = getattr(template, name)
            got = arrays.get(name)
            if got is None or got.shape != want.shape or got.dtype != want.dtype:
                raise SnapshotError(f"snapshot table {name!r} missing or of the wrong shape/dtype")
            if got.dtype == np.float64 and not np.isfinite(got).all():
                raise SnapshotError(f"snapshot table {name!r} holds non-finite values")
            setattr(template, name, np.ascontiguousarray(got).copy())
        cells = _PARAM_CELLS
        if not np.array_equal(template.fs[cells], cls.fresh(params).fs[cells]):
            raise SnapshotError("snapshot constants or table sizes do not match its parameters")
        return template
