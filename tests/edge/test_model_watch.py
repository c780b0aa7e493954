"""Hot model reload with real bundles: a tiny forest trained here, copied and damaged for the bad ones."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from aerie.edge.model_watch import LoadedModel, ModelWatcher
from aerie.models.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    BundleError,
    load_bundle,
    write_bundle,
)
from aerie.models.corpus import CorpusOptions, write_corpus
from aerie.models.dataset import read_events
from aerie.models.scorer import OnnxScorer
from aerie.models.train import TrainConfig, TrainResult, train

LOGGER = "aerie.edge.model_watch"
DAY1, DAY2, DAY3 = "2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00", "2026-11-03T00:00:00+00:00"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, TrainResult]:
    """Two small, different models (seconds): 2.5k events, 8 trees."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusOptions(seed=5, events=2500, hours=1.0))
    events = read_events(root / "events.jsonl")
    config = TrainConfig(n_estimators=8, min_rows=100)
    return train(events, config=config), train(events, config=dataclasses.replace(config, seed=1))


@pytest.fixture
def v1(trained: tuple[TrainResult, TrainResult]) -> TrainResult:
    return trained[0]


@pytest.fixture
def v2(trained: tuple[TrainResult, TrainResult]) -> TrainResult:
    return trained[1]


def put(path: Path, result: TrainResult, created_at: str, **manifest: Any) -> Path:
    """Write ``result`` as a real bundle at ``path`` (atomically, as `aerie train` does)."""
    final = msgspec.structs.replace(result.manifest, created_at=created_at, **manifest)
    return write_bundle(path, final, model=result.model, state=result.state)


def damage(path: Path, name: str = MODEL_FILE) -> None:
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / name).write_bytes(bytes(data))


def rows(n: int = 32) -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).random((n, 17), dtype=np.float32)


class Events:
    """``on_swap`` / ``on_refused`` calls, awaitable."""

    def __init__(self) -> None:
        self.swaps: list[tuple[LoadedModel, LoadedModel]] = []
        self.refused: list[tuple[Path, str]] = []
        self.swapped = asyncio.Event()

    def on_swap(self, old: LoadedModel, new: LoadedModel) -> None:
        self.swaps.append((old, new))
        self.swapped.set()

    def on_refused(self, path: Path, reason: str) -> None:
        self.refused.append((path, reason))

    def watcher(self, directory: Path, **kwargs: Any) -> ModelWatcher:
        return ModelWatcher(directory, on_swap=self.on_swap, on_refused=self.on_refused, **kwargs)


def serving_v1(directory: Path, v1: TrainResult, **kwargs: Any) -> tuple[Events, ModelWatcher, LoadedModel]:
    """A watcher on ``directory`` serving ``v1`` (bundle ``a``, the only one), with its events."""
    put(directory / "a", v1, DAY1)
    events = Events()
    watcher = events.watcher(directory, **kwargs)
    return events, watcher, watcher.load_initial()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "refused" in r.getMessage()]


def test_the_newest_valid_bundle_serves_and_hidden_names_are_ignored(
    tmp_path: Path, v1: TrainResult, v2: TrainResult
) -> None:
    put(tmp_path / "a", v1, DAY1)
    put(tmp_path / "b", v2, DAY2)
    # Newer, but hidden (write_bundle's staging name): never a candidate, never refused.
    put(tmp_path / ".c.x1y2", v1, DAY3, model_version="staging")
    (tmp_path / "lost+found").mkdir()  # no manifest: not a bundle (yet)
    (tmp_path / "README").write_text("bundles live here\n")
    events = Events()
    watcher = events.watcher(tmp_path)
    with pytest.raises(RuntimeError, match="load_initial"):
        _ = watcher.current
    model = watcher.load_initial()
    assert watcher.current is model
    assert (model.version, model.path) == (v2.manifest.model_version, tmp_path / "b")
    assert model.threshold == v2.manifest.threshold
    assert model.reference == tuple(v2.manifest.reference)
    assert model.scorer.version == model.version
    np.testing.assert_array_equal(model.scorer.score(rows()), OnnxScorer(v2.model).score(rows()))
    assert (events.swaps, events.refused, watcher.stats.refusing) == ([], [], {})


def test_equal_times_are_ordered_by_name(tmp_path: Path, v1: TrainResult, v2: TrainResult) -> None:
    put(tmp_path / "y", v1, DAY1)
    put(tmp_path / "x", v2, DAY1)
    assert ModelWatcher(tmp_path).load_initial().path == tmp_path / "y"


def test_nothing_valid_is_an_error_naming_the_reasons(tmp_path: Path, v1: TrainResult) -> None:
    with pytest.raises(BundleError, match="no valid model bundle"):
        ModelWatcher(tmp_path).load_initial()
    with pytest.raises(BundleError, match="cannot list"):
        ModelWatcher(tmp_path / "absent").load_initial()
    damage(put(tmp_path / "a", v1, DAY1))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 does not match"):
        ModelWatcher(tmp_path).load_initial()


async def test_a_new_subdirectory_is_swapped_in_while_running(
    tmp_path: Path, v1: TrainResult, v2: TrainResult
) -> None:
    events, watcher, first = serving_v1(tmp_path, v1, poll_s=0.02)
    task = asyncio.create_task(watcher.run())
    try:
        put(tmp_path / "b", v2, DAY2)
        await asyncio.wait_for(events.swapped.wait(), timeout=20)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ((old, new),) = events.swaps
    assert old is first
    assert new is watcher.current
    assert (old.version, new.version) == (v1.manifest.model_version, v2.manifest.model_version)
    # A batch that read the old model before the swap finishes on it.
    np.testing.assert_array_equal(old.scorer.score(rows()), OnnxScorer(v1.model).score(rows()))
    assert not np.array_equal(old.scorer.score(rows()), new.scorer.score(rows()))
    assert (watcher.stats.swaps, events.refused) == (1, [])


def configmap(mount: Path, version_dir: str) -> None:
    """Point a ConfigMap-style volume at ``version_dir`` (``..data`` swapped atomically, like the kubelet)."""
    for name in (MANIFEST_FILE, MODEL_FILE, STATE_FILE):
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")
    (mount / "..data_tmp").symlink_to(version_dir)
    os.replace(mount / "..data_tmp", mount / "..data")


async def test_a_configmap_symlink_flip_swaps_the_bundle(
    tmp_path: Path, v1: TrainResult, v2: TrainResult
) -> None:
    mount = tmp_path / "model"
    put(mount / "..2026_11_01", v1, DAY1)
    configmap(mount, "..2026_11_01")
    events = Events()
    watcher = events.watcher(mount)
    assert watcher.load_initial().version == v1.manifest.model_version
    assert watcher.current.path == mount
    assert not await watcher.poll()

    put(mount / "..2026_11_02", v2, DAY2)
    assert not await watcher.poll()  # written, not yet published
    configmap(mount, "..2026_11_02")
    assert await watcher.poll()
    assert watcher.current.version == v2.manifest.model_version

    # The same bundle republished under another directory: new inodes, same manifest, no swap.
    shutil.copytree(mount / "..2026_11_02", mount / "..2026_11_03")
    configmap(mount, "..2026_11_03")
    assert not await watcher.poll()
    # Flipping back is a rollback: whatever valid bundle the volume holds serves.
    configmap(mount, "..2026_11_01")
    assert await watcher.poll()
    assert watcher.current.version == v1.manifest.model_version
    assert [(o.version, n.version) for o, n in events.swaps] == [
        (v1.manifest.model_version, v2.manifest.model_version),
        (v2.manifest.model_version, v1.manifest.model_version),
    ]
    assert events.refused == []


async def test_a_tampered_bundle_is_refused_once_and_the_old_model_keeps_serving(
    tmp_path: Path, v1: TrainResult, v2: TrainResult, caplog: pytest.LogCaptureFixture
) -> None:
    events, watcher, first = serving_v1(tmp_path, v1)
    good = put(tmp_path / ".good", v2, DAY2)
    bad = tmp_path / "b"
    shutil.copytree(good, bad)
    damage(bad)
    for _ in range(4):
        assert not await watcher.poll()
        assert watcher.current is first
    ((path, reason),) = events.refused
    assert path == bad
    assert f"{bad}/{MODEL_FILE}: sha256 does not match the manifest" in reason
    (line,) = refusal_lines(caplog)
    assert line.levelno == logging.WARNING
    assert str(bad) in line.getMessage()
    assert f"keeping {first.version}" in line.getMessage()
    assert (line.path, line.reason) == (str(bad), reason)  # type: ignore[attr-defined]
    assert (watcher.stats.refused, watcher.stats.refusing) == (1, {str(bad): reason})

    # Repaired: the changed candidate is verified again and taken.
    shutil.copy2(good / MODEL_FILE, bad / MODEL_FILE)
    assert await watcher.poll()
    assert watcher.current.version == v2.manifest.model_version
    assert watcher.stats.refusing == {}
    assert len(events.refused) == 1


async def test_a_bundle_for_another_feature_spec_is_refused(
    tmp_path: Path, v1: TrainResult, v2: TrainResult, caplog: pytest.LogCaptureFixture
) -> None:
    events, watcher, first = serving_v1(tmp_path, v1)
    other = put(tmp_path / "b", v2, DAY2, feature_spec_hash="0" * 64)
    assert not await watcher.poll()
    assert not await watcher.poll()
    assert watcher.current is first
    ((path, reason),) = events.refused
    assert path == other
    assert "trained for feature spec 000000000000" in reason
    assert len(refusal_lines(caplog)) == 1


async def test_unreadable_and_half_written_bundles_are_refused_until_complete(
    tmp_path: Path, v1: TrainResult, v2: TrainResult, caplog: pytest.LogCaptureFixture
) -> None:
    events, watcher, first = serving_v1(tmp_path, v1)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / MANIFEST_FILE).write_text('{"format": 1, "model_version": ')
    # Copied file by file (not with write_bundle): the manifest arrived first.
    source = put(tmp_path / ".source", v2, DAY2)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy2(source / MANIFEST_FILE, half / MANIFEST_FILE)
    for _ in range(3):
        assert not await watcher.poll()
    assert watcher.current is first
    reasons = dict(events.refused)
    assert set(reasons) == {tmp_path / "garbled", half}
    assert f"{tmp_path / 'garbled'}/{MANIFEST_FILE}" in reasons[tmp_path / "garbled"]
    assert f"cannot read {MODEL_FILE}" in reasons[half] or f"cannot read {STATE_FILE}" in reasons[half]
    assert len(refusal_lines(caplog)) == 2

    shutil.copy2(source / MODEL_FILE, half / MODEL_FILE)
    shutil.copy2(source / STATE_FILE, half / STATE_FILE)
    assert await watcher.poll()
    assert (watcher.current.version, watcher.current.path) == (v2.manifest.model_version, half)
    assert list(watcher.stats.refusing) == [str(tmp_path / "garbled")]


async def test_deleting_the_newest_rolls_back_but_damage_on_disk_does_not(
    tmp_path: Path, v1: TrainResult, v2: TrainResult
) -> None:
    put(tmp_path / "a", v1, DAY1)
    newest = put(tmp_path / "b", v2, DAY2)
    events = Events()
    watcher = events.watcher(tmp_path)
    serving = watcher.load_initial()
    assert serving.version == v2.manifest.model_version
    # The served bundle's files are damaged: it keeps serving from memory, no older one replaces it.
    damage(newest, STATE_FILE)
    assert not await watcher.poll()
    assert watcher.current is serving
    assert [p for p, _ in events.refused] == [newest]
    # Deleted: the operator rolled back.
    shutil.rmtree(newest)
    assert await watcher.poll()
    assert watcher.current.version == v1.manifest.model_version
    assert watcher.stats.refusing == {}


async def test_an_older_bundle_arriving_later_does_not_replace_the_newer(
    tmp_path: Path, v1: TrainResult, v2: TrainResult
) -> None:
    put(tmp_path / "b", v2, DAY2)
    watcher = ModelWatcher(tmp_path)
    serving = watcher.load_initial()
    put(tmp_path / "a", v1, DAY1)
    assert not await watcher.poll()
    assert watcher.current is serving


async def test_verification_runs_off_the_event_loop_thread(
    tmp_path: Path, v1: TrainResult, v2: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(tmp_path / "a", v1, DAY1)
    watcher = ModelWatcher(tmp_path)
    watcher.load_initial()
    threads: list[int] = []

    def spy(path: Path, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return load_bundle(path, **kwargs)

    monkeypatch.setattr("aerie.edge.model_watch.load_bundle", spy)
    put(tmp_path / "b", v2, DAY2)
    assert await watcher.poll()
    assert threads
    assert threading.get_ident() not in threads


async def test_a_failing_callback_is_logged_and_the_swap_stands(
    tmp_path: Path, v1: TrainResult, v2: TrainResult, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(old: LoadedModel, new: LoadedModel) -> None:
        raise RuntimeError("metrics backend down")

    put(tmp_path / "a", v1, DAY1)
    watcher = ModelWatcher(tmp_path, on_swap=broken)
    watcher.load_initial()
    put(tmp_path / "b", v2, DAY2)
    assert await watcher.poll()
    assert watcher.current.version == v2.manifest.model_version
    assert any("on_swap callback failed" in r.getMessage() for r in caplog.records)


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="poll_s"):
        ModelWatcher(tmp_path, poll_s=0)
