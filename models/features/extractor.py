"""`FeatureExtractor`: the one entry point training and the edge daemon share."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Final

import numpy as np
import numpy.typing as npt

from aerie.models.features import kernels
from aerie.models.features.spec import N_FEATURES, FeatureParams, spec_hash
from aerie.models.features.state import FeatureState
from aerie.models.features.tokens import N_TOKENS, Tokenizer, Tokens, entropy_python
from aerie.proto.event import FalcoEvent

__all__ = ["FeatureExtractor"]

_CHUNK: Final = 8192  # events tokenised per kernel call in `transform` (bounds the token buffers)


class FeatureExtractor:
    """Per-node feature state plus the code that turns events into 17 float32 features.

    Calls update the state: feed events in time order, each event once. The same events fed in the
    same order give the same features in any process (stable hashing, no randomness), whether one at
    a time (`transform_one`) or in batches (`transform`).

    Not thread-safe: one extractor per consumer thread.

    ``plain_python=True`` runs the identical definition without numba (the kernels' ``py_func`` and
    a Python entropy): the reference and benchmark baseline, about two orders of magnitude slower.

    Raises `ValueError` for invalid ``params``.
    """

    def __init__(self, params: FeatureParams | None = None, *, plain_python: bool = False) -> None:
        self.params = (params if params is not None else FeatureParams()).validate()
        self.spec_hash = spec_hash(self.params)
        self._state = FeatureState.fresh(self.params)
        self._tokens = Tokenizer(entropy_python if plain_python else None).tokens
        if plain_python:
            self._step = kernels.step.py_func
            self._batch = kernels.batch.py_func
        else:
            self._step = kernels.compiled_step()
            self._batch = kernels.compiled_batch()

    @property
    def events_seen(self) -> int:
        """Events fed since the state was created (carried across snapshot/restore)."""
        return self._state.events_seen

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the state tables: fixed by the parameters, whatever was fed."""
        return self._state.nbytes

    def transform_one(self, event: FalcoEvent) -> npt.NDArray[np.float32]:
        """float32[17] for one event; counts it into the state."""
        out = np.empty(N_FEATURES, np.float32)
        st = self._state
        self._step(st.fs, st.sti, out, *self._tokens(event))
        return out

    def transform(self, events: Iterable[FalcoEvent]) -> npt.NDArray[np.float32]:
        """float32[N, 17], one row per event in input order; counts them into the state in order."""
        parts: list[npt.NDArray[np.float32]] = []
        chunk: list[Tokens] = []
        for event in events:
            chunk.append(self._tokens(event))
            if len(chunk) >= _CHUNK:
                parts.append(self._run(chunk))
                chunk = []
        if chunk or not parts:
            parts.append(self._run(chunk))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, chunk: list[Tokens]) -> npt.NDArray[np.float32]:
        out = np.empty((len(chunk), N_FEATURES), np.float32)
        if not chunk:
            return out
        tokens = np.fromiter(chain.from_iterable(chunk), np.int64, count=len(chunk) * N_TOKENS)
        st = self._state
        self._batch(st.fs, st.sti, out, tokens.reshape(len(chunk), N_TOKENS))
        return out

    def snapshot(self) -> bytes:
        """The whole state as bytes, tagged with the spec hash; `restore` continues from it exactly."""
        return self._state.snapshot()

    def restore(self, data: bytes) -> None:
        """Replace the state with a `snapshot`.

        Raises `SpecMismatchError` for a snapshot taken under another spec, `SnapshotError` for bytes
        that are not a snapshot; the current state is kept in both cases.
        """
        self._state = FeatureState.from_snapshot(data, self.spec_hash)
