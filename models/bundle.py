"""The model bundle: what `aerie train` writes and the edge loads.

A bundle is a directory::

    manifest.json   version, feature-spec hash, IsolationForest parameters, calibrated threshold and the
                    target alert rate it came from, training-data digest, per-feature reference
                    histograms, sha256 of every other file
    model.onnx      the fused IsolationForest (one tree-ensemble operator + path-length arithmetic)
    state.bin       the feature extractor's state at the end of training, so serving starts warm

`load_bundle` checks everything before it returns, and returns nothing on any mismatch: a bundle is
used whole or not at all (`BundleError` says which check failed). `write_bundle` writes to a sibling
temporary directory and renames it into place, so a watcher never sees half a bundle.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from aerie.models.drift import Histogram

if TYPE_CHECKING:
    from aerie.models.scorer import OnnxScorer

__all__ = ["FORMAT", "Bundle", "BundleError", "Manifest", "load_bundle", "sha256_hex", "write_bundle"]

FORMAT = 1
MODEL_FILE = "model.onnx"
STATE_FILE = "state.bin"
MANIFEST_FILE = "manifest.json"
_FILES = (MODEL_FILE, STATE_FILE)


class BundleError(Exception):
    """A bundle that cannot be used; the message names the bundle and the failed check."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int = FORMAT
    model_version: str
    parent_version: str | None = None
    created_at: str
    feature_names: list[str]
    feature_spec_hash: str
    iforest: dict[str, str | int | float | bool | None]
    threshold: float
    """Scores (higher = more anomalous) above this are anomalies, unless policy overrides it."""
    target_alert_rate: float
    """The benign alert rate the threshold was calibrated for, on held-out benign rows."""
    calibration_rows: int
    training_rows: int
    training_data_digest: str
    reference: list[Histogram]
    files: dict[str, str] = msgspec.field(default_factory=dict)
    """sha256 of every file of the bundle except the manifest itself."""
    evaluation: dict[str, float] = msgspec.field(default_factory=dict)
    """Figures on the comparison set used to accept this bundle over its parent, when there was one."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, loaded whole."""

    path: Path
    manifest: Manifest
    model: bytes
    state: bytes

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @functools.cached_property
    def scorer(self) -> OnnxScorer:
        """The model ready to score (single-threaded); `load_bundle` builds it while verifying, so
        serving does not load the model twice. Raises `aerie.models.scorer.ScorerError` when the
        bytes are not a model (only possible for a bundle that did not come from `load_bundle`)."""
        from aerie.models.scorer import OnnxScorer

        return OnnxScorer(self.model, version=self.version)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_MANIFEST_DECODER = msgspec.json.Decoder(Manifest)


def load_bundle(path: Path, *, feature_spec_hash: str | None = None) -> Bundle:
    """Read and verify the bundle at ``path``.

    Checks: the manifest decodes strictly and has our format; every listed file exists and matches its
    sha256, and no expected file is missing from the list; the feature-spec hash equals
    ``feature_spec_hash`` (default: the running code's); the ONNX model parses and takes as many
    features as the manifest names. Raises `BundleError` on the first failure.
    """
    from aerie.models.features import SPEC_HASH
    from aerie.models.scorer import ScorerError

    expected_spec = SPEC_HASH if feature_spec_hash is None else feature_spec_hash
    try:
        raw = (path / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {MANIFEST_FILE}: {exc.strerror or exc}") from None
    try:
        manifest = _MANIFEST_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise BundleError(f"{path}/{MANIFEST_FILE}: {exc}") from None
    if manifest.format != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.format}, this aerie reads format {FORMAT}")
    missing = [name for name in _FILES if name not in manifest.files]
    if missing:
        raise BundleError(f"{path}: manifest lists no sha256 for {', '.join(missing)}")
    contents: dict[str, bytes] = {}
    for name, digest in sorted(manifest.files.items()):
        if Path(name).name != name:
            raise BundleError(f"{path}: manifest names a file outside the bundle: {name!r}")
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read {name}: {exc.strerror or exc}") from None
        if sha256_hex(data) != digest:
            raise BundleError(f"{path}/{name}: sha256 does not match the manifest (corrupt or altered)")
        contents[name] = data
    if manifest.feature_spec_hash != expected_spec:
        raise BundleError(
            f"{path}: trained for feature spec {manifest.feature_spec_hash[:12]}, "
            f"this aerie computes {expected_spec[:12]}; retrain with this version"
        )
    bundle = Bundle(path=path, manifest=manifest, model=contents[MODEL_FILE], state=contents[STATE_FILE])
    try:
        n_features = bundle.scorer.n_features
    except ScorerError as exc:
        raise BundleError(f"{path}/{MODEL_FILE}: {exc}") from None
    if n_features != len(manifest.feature_names):
        raise BundleError(
            f"{path}: model takes {n_features} features, manifest names {len(manifest.feature_names)}"
        )
    return bundle


def write_bundle(
    path: Path, manifest: Manifest, *, model: bytes, state: bytes, overwrite: bool = False
) -> Path:
    """Write a bundle to ``path`` atomically; the manifest's ``files`` are filled in here."""
    files = {MODEL_FILE: model, STATE_FILE: state}
    final = msgspec.structs.replace(manifest, files={n: sha256_hex(d) for n, d in files.items()})
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise BundleError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        (staging / MANIFEST_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(final), indent=2))
        for entry in staging.iterdir():
            with entry.open("rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
