"""Hot model reload: watch a directory for model bundles and swap the served one between batches.

Two layouts, told apart at every poll:

* the directory **is** a bundle (``manifest.json`` inside), typically a Kubernetes ConfigMap or
  volume, whose update swaps a ``..data`` symlink atomically. A change shows as a new manifest or
  new files behind the names; whatever valid bundle is there serves, older or newer (a rollback is
  a flip back);
* the directory **holds** bundles as subdirectories (``aerie train --out DIR/<name>`` writes them
  atomically with `aerie.models.bundle.write_bundle`). Hidden names (write_bundle's ``.name.xxx``
  staging directories, ``..data``) and subdirectories without a ``manifest.json`` yet are not
  candidates. The newest valid bundle by manifest ``created_at``, then name, serves. A candidate
  replaces the served model when it is newer, or when the served one's directory is gone (deleting
  the newest bundle rolls back); a served bundle whose files are damaged on disk keeps serving from
  memory, it is never replaced by an older one because of that.

Every candidate is verified whole by `aerie.models.bundle.load_bundle` (manifest, sha256 of every file,
feature-spec hash, ONNX width), which also builds the `OnnxScorer` (one intra-op thread) that then
serves. Scanning, verifying and building the scorer run in a worker thread, never on the event loop;
the swap itself is one reference assignment on the loop (`ModelWatcher.current`), so a batch that
read ``watcher.current`` once finishes on the model it started with.

A bad candidate (damaged or altered file, other feature spec, unreadable manifest, half-written
copy) is refused with one log line naming its path and reason and reported to ``on_refused``; the
model in service keeps serving. A candidate is known by a signature of its manifest's bytes and the
inode, size and mtime of each of its files: a refused one is not verified or logged again until
that signature changes (a half-written copy that completes is then taken).

The live feature state is not the watcher's business, and a swap must not touch it: the node's own
history (decayed counts, sequences) describes this node better than the training snapshot a bundle
carries in ``state.bin``, which is meant only for a cold start (`ModelWatcher.load_initial`, when no
saved state exists). Every bundle that passes `load_bundle` was trained for the feature spec this
process computes, so the live state fits the new model as it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from aerie.models.bundle import MANIFEST_FILE, Bundle, BundleError, load_bundle
from aerie.models.drift import Histogram
from aerie.models.scorer import OnnxScorer, ScorerError

__all__ = ["LoadedModel", "ModelWatcher", "WatchStats"]

log = logging.getLogger("aerie.edge.model_watch")

OnSwap = Callable[["LoadedModel", "LoadedModel"], None]
OnRefused = Callable[[Path, str], None]

_MANIFEST_ENCODER: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModel:
    """A verified bundle with its ready scorer. Immutable: a new bundle makes a new one."""

    bundle: Bundle
    scorer: OnnxScorer
    version: str
    threshold: float
    """The bundle's calibrated threshold (the fallback of `aerie.edge.threshold.LiveThreshold`)."""
    reference: tuple[Histogram, ...]
    """Per-feature reference histograms, for drift."""
    created_at: dt.datetime
    manifest_sha256: str
    """sha256 of the canonical encoding of the manifest: equal for the same bundle wherever it lies."""

    @property
    def path(self) -> Path:
        return self.bundle.path

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> LoadedModel:
        """Build the scorer for ``bundle``; `BundleError` if its ``created_at`` or model is unusable."""
        created_at = _created_at(bundle)
        try:
            scorer = bundle.scorer
        except ScorerError as exc:
            raise BundleError(f"{bundle.path}: {exc}") from None
        return cls(
            bundle=bundle,
            scorer=scorer,
            version=bundle.version,
            threshold=bundle.manifest.threshold,
            reference=tuple(bundle.manifest.reference),
            created_at=created_at,
            manifest_sha256=_manifest_sha256(bundle),
        )

    def __repr__(self) -> str:
        return f"LoadedModel(version={self.version!r}, path={str(self.path)!r}, threshold={self.threshold})"


def _manifest_sha256(bundle: Bundle) -> str:
    return hashlib.sha256(_MANIFEST_ENCODER.encode(bundle.manifest)).hexdigest()


def _created_at(bundle: Bundle) -> dt.datetime:
    text = bundle.manifest.created_at
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BundleError(f"{bundle.path}: manifest created_at {text!r} is not an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


class WatchStats(msgspec.Struct, kw_only=True):
    """What the watcher did, for metrics and health."""

    polls: int = 0
    swaps: int = 0
    refused: int = 0
    """Refusals logged: each distinct bad candidate once."""
    refusing: dict[str, str] = msgspec.field(default_factory=dict)
    """Candidates refused now, path → reason (a candidate leaves when it changes or goes)."""
    last_error: str | None = None
    """Why the directory itself cannot be listed, while that lasts."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a candidate was at its last verification."""

    signature: str
    key: tuple[dt.datetime, str] | None = None
    """(created_at, name) when valid; None when refused."""
    manifest_sha256: str | None = None
    reason: str | None = None


@dataclass
class _Scan:
    seen: dict[Path, _Seen] = field(default_factory=dict)
    refusals: list[tuple[Path, str]] = field(default_factory=list)
    chosen: LoadedModel | None = None
    error: str | None = None


def _signature(path: Path) -> str:
    """The manifest's bytes and every visible file's inode, size and mtime (symlinks followed)."""
    digest = hashlib.sha256()
    try:
        digest.update((path / MANIFEST_FILE).read_bytes())
    except OSError as exc:
        digest.update(f"manifest unreadable: {exc.errno}".encode())
    with os.scandir(path) as entries:
        names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
    for name in names:
        try:
            st = (path / name).stat()
            digest.update(f"\0{name}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError as exc:
            digest.update(f"\0{name}\0error {exc.errno}".encode())
    return digest.hexdigest()


class ModelWatcher:
    """Serves the newest valid model bundle of ``directory`` and swaps in new ones; see the module
    docstring.

    Args:
        directory: a bundle, or a directory of bundles.
        poll_s: seconds between polls in `run`.
        feature_spec_hash: the spec bundles must be trained for (default: this process's).
        on_swap: called ``(old, new)`` on the event loop after each swap (not for `load_initial`).
        on_refused: called ``(path, reason)`` once per distinct refused candidate.

    Callbacks that raise are logged, never propagated.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        poll_s: float = 10.0,
        feature_spec_hash: str | None = None,
        on_swap: OnSwap | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.directory = Path(directory)
        self.poll_s = poll_s
        self.stats = WatchStats()
        self._spec = feature_spec_hash
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._current: LoadedModel | None = None
        self._seen: dict[Path, _Seen] = {}
        self._error: str | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> LoadedModel:
        """The model serving now. Read it once per batch; a swap replaces it whole, between batches.

        Raises `RuntimeError` before `load_initial` succeeded.
        """
        current = self._current
        if current is None:
            raise RuntimeError("ModelWatcher.current read before load_initial() succeeded")
        return current

    def load_initial(self) -> LoadedModel:
        """Scan now (blocking) and serve the best valid bundle; `BundleError` when there is none.

        The error names the directory and every refused candidate's reason. Refusals are logged and
        reported as in `poll`; ``on_swap`` is not called.
        """
        scan = self._scan(dict(self._seen), None)
        self._apply(scan, initial=True)
        if self._current is None:
            if scan.error is not None:
                raise BundleError(scan.error)
            reasons = [s.reason for s in self._seen.values() if s.reason is not None]
            detail = "; ".join(reasons) if reasons else "no bundle (no manifest.json, no bundle directories)"
            raise BundleError(f"{self.directory}: no valid model bundle: {detail}")
        return self._current

    async def run(self) -> None:
        """Poll every ``poll_s`` until cancelled. Call `load_initial` first (`RuntimeError` if not)."""
        _ = self.current
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll()

    async def poll(self) -> bool:
        """Scan once (in a worker thread) and swap if a better valid bundle is there; True if swapped."""
        async with self._lock:
            scan = await asyncio.to_thread(self._scan, dict(self._seen), self._current)
            return self._apply(scan, initial=False)

    # --- on the event loop ---------------------------------------------------------------------

    def _apply(self, scan: _Scan, *, initial: bool) -> bool:
        self.stats.polls += 1
        if scan.error is not None:
            self.stats.last_error = scan.error
            if scan.error != self._error:
                self._error = scan.error
                log.warning(
                    "model directory unusable, keeping %s: %s",
                    self._current.version if self._current else "nothing",
                    scan.error,
                    extra={"path": str(self.directory), "reason": scan.error},
                )
            return False
        if self._error is not None:
            log.info("model directory readable again", extra={"path": str(self.directory)})
            self._error = self.stats.last_error = None
        self._seen = scan.seen
        self.stats.refusing = {str(p): s.reason for p, s in scan.seen.items() if s.reason is not None}
        serving = self._current.version if self._current is not None else None
        for path, reason in scan.refusals:
            self.stats.refused += 1
            log.warning(
                "model bundle refused, %s: %s",
                f"keeping {serving}" if serving else "nothing serving yet",
                reason,
                extra={"path": str(path), "reason": reason, "serving": serving},
            )
            self._call("on_refused", self._on_refused, path, reason)
        new = scan.chosen
        if new is None:
            return False
        old, self._current = self._current, new
        log.info(
            "model %s → %s (%s, threshold %.6f)",
            old.version if old is not None else "none",
            new.version,
            new.path,
            new.threshold,
            extra={
                "old_version": old.version if old is not None else None,
                "new_version": new.version,
                "path": str(new.path),
                "threshold": new.threshold,
                "created_at": new.created_at.isoformat(),
            },
        )
        if old is None or initial:
            return True
        self.stats.swaps += 1
        self._call("on_swap", self._on_swap, old, new)
        return True

    @staticmethod
    def _call(name: str, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("model watcher %s callback failed", name)

    # --- in a worker thread (or at start-up): no shared state is written -------------------------

    def _candidates(self) -> tuple[list[Path], bool]:
        """The candidate directories and whether ``directory`` is itself a bundle. Raises OSError."""
        if os.path.lexists(self.directory / MANIFEST_FILE):
            return [self.directory], True
        with os.scandir(self.directory) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
        return [
            self.directory / n
            for n in names
            if (self.directory / n).is_dir() and (self.directory / n / MANIFEST_FILE).exists()
        ], False

    def _scan(self, known: dict[Path, _Seen], current: LoadedModel | None) -> _Scan:
        scan = _Scan()
        try:
            candidates, single = self._candidates()
        except OSError as exc:
            scan.error = f"{self.directory}: cannot list: {exc.strerror or exc}"
            return scan
        fresh: dict[Path, Bundle] = {}
        for path in candidates:
            try:
                signature = _signature(path)
            except OSError:
                continue  # gone between listing and reading: the next poll sees what is left
            before = known.get(path)
            if before is not None and before.signature == signature:
                scan.seen[path] = before
                continue
            try:
                bundle = load_bundle(path, feature_spec_hash=self._spec)
                key = (_created_at(bundle), path.name)
            except BundleError as exc:
                scan.seen[path] = _Seen(signature=signature, reason=str(exc))
                scan.refusals.append((path, str(exc)))
                continue
            fresh[path] = bundle
            scan.seen[path] = _Seen(signature=signature, key=key, manifest_sha256=_manifest_sha256(bundle))
        for path in self._ranked(scan.seen, current, present=candidates, single=single):
            seen = scan.seen[path]
            try:
                # A candidate verified on an earlier poll (not chosen then) is verified again now.
                bundle = fresh.get(path) or load_bundle(path, feature_spec_hash=self._spec)
                scan.chosen = LoadedModel.from_bundle(bundle)
                return scan
            except BundleError as exc:
                scan.seen[path] = _Seen(signature=seen.signature, reason=str(exc))
                scan.refusals.append((path, str(exc)))
        return scan

    @staticmethod
    def _ranked(
        seen: dict[Path, _Seen], current: LoadedModel | None, *, present: Iterable[Path], single: bool
    ) -> list[Path]:
        """Valid candidates that should replace ``current``, best first (empty: keep it)."""
        valid = sorted(
            ((s.key, p) for p, s in seen.items() if s.key is not None), key=lambda kp: kp[0], reverse=True
        )
        if current is None:
            return [p for _, p in valid]
        if not valid or seen[valid[0][1]].manifest_sha256 == current.manifest_sha256:
            return []
        if single:
            return [valid[0][1]]
        current_key = (current.created_at, current.path.name)
        current_gone = current.path not in set(present)
        return [
            p
            for k, p in valid
            if seen[p].manifest_sha256 != current.manifest_sha256
            and (p == current.path or k > current_key or current_gone)
        ]
