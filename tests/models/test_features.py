from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from aerie.models.features import (
    FEATURE_NAMES,
    FEATURE_RANGES,
    N_FEATURES,
    SPEC_HASH,
    FeatureExtractor,
    FeatureParams,
    SnapshotError,
    SpecMismatchError,
    spec_hash,
)
from aerie.models.features.tokens import Tokenizer, image_key, normalise_path, pod_prefix
from aerie.proto.event import FalcoEvent, Priority

T0 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z in ns
S = 1_000_000_000
# Small tables keep snapshots and the bounded-memory test fast; semantics are the same.
SMALL = FeatureParams(count_table_bits=14, stream_table_bits=10, burst_table_bits=6)
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def ev(t_ns: int, fields: dict[str, Any] | None = None, rule: str = "Process spawned") -> FalcoEvent:
    return FalcoEvent(time_ns=t_ns, priority=Priority.INFORMATIONAL, rule=rule, output_fields=fields or {})


def proc_event(
    t_ns: int, ctx: str, name: str, *, pid: int, ppid: int, pname: str, evt: str = "execve", **extra: Any
) -> FalcoEvent:
    return ev(
        t_ns,
        {
            "evt.type": evt,
            "proc.name": name,
            "proc.exepath": f"/usr/bin/{name}",
            "proc.cmdline": f"{name} --flag",
            "proc.pid": pid,
            "proc.ppid": ppid,
            "proc.pname": pname,
            "user.uid": 1000,
            "user.name": "app",
            "container.id": f"{ctx[:6]}0000000",
            "container.image.repository": f"registry.example.com/{ctx}",
            "k8s.ns.name": "apps",
            "k8s.pod.name": f"{ctx}-7d9f8c6b5-x2k4q",
        }
        | extra,
    )


def varied_stream(n: int, seed: int = 7) -> list[FalcoEvent]:
    """A mixed stream: processes, files, sockets, missing and odd fields, out-of-order times."""
    rng = np.random.default_rng(seed)
    names = ["nginx", "sh", "curl", "python3", "postgres", "bash"]
    events = []
    t = T0
    for i in range(n):
        t += int(rng.integers(1, 3 * S // 10))
        if i % 37 == 0:
            t -= 2 * S  # out of order
        name = names[int(rng.integers(len(names)))]
        kind = int(rng.integers(5))
        f: dict[str, Any] = {
            "proc.name": name,
            "proc.pid": int(rng.integers(100, 140)),
            "proc.ppid": int(rng.integers(1, 100)),
            "proc.pname": names[int(rng.integers(len(names)))],
            "proc.cmdline": f"{name} -c 'x{int(rng.integers(5))}'",
            "user.uid": int(rng.choice([0, 33, 1000])),
            "container.id": ["host", "abc123def456", None][int(rng.integers(3))],
            "container.image.repository": [None, "docker.io/library/nginx", "<NA>"][int(rng.integers(3))],
            "k8s.ns.name": ["default", None][int(rng.integers(2))],
        }
        if kind == 0:
            f |= {"evt.type": "execve", "proc.exepath": f"/usr/bin/{name}"}
        elif kind == 1:
            f |= {
                "evt.type": "openat",
                "fd.name": f"/proc/{int(rng.integers(1000))}/status",
                "fd.type": "file",
            }
        elif kind == 2:
            port = int(rng.choice([80, 443, 50000]))
            f |= {
                "evt.type": "connect",
                "fd.name": f"10.0.0.5:{port + 1}->10.0.1.{int(rng.integers(4))}:{port}",
            }
        elif kind == 3:
            f |= {"evt.type": "accept", "fd.lport": 8080, "fd.rip": "1.2.3.4", "fd.type": "ipv4"}
        else:
            f = {"evt.type": None, "proc.name": ["x", True, 3][int(rng.integers(3))], "fd.name": "<NA>"}
        events.append(ev(t, f, rule=["Process spawned", "Generic syscall"][i % 2]))
    return events


def assert_valid(x: npt.NDArray[np.float32]) -> None:
    assert x.dtype == np.float32
    assert x.shape[-1] == N_FEATURES
    assert np.isfinite(x).all()
    lo = np.array([r[0] for r in FEATURE_RANGES], np.float32)
    hi = np.array([r[1] for r in FEATURE_RANGES], np.float32)
    assert (x >= lo).all(), FEATURE_NAMES[int(np.argmin((x >= lo).all(axis=0)))]
    assert (x <= hi).all(), FEATURE_NAMES[int(np.argmin((x <= hi).all(axis=0)))]


# -- the contract ------------------------------------------------------------------------------


def test_seventeen_named_features_with_ranges() -> None:
    assert N_FEATURES == 17
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == len(FEATURE_RANGES) == 17
    assert all(lo < hi for lo, hi in FEATURE_RANGES)
    x = FeatureExtractor(SMALL).transform(varied_stream(50))
    assert x.shape == (50, 17)
    assert_valid(x)
    one = FeatureExtractor(SMALL).transform_one(varied_stream(1)[0])
    assert one.shape == (17,)
    assert one.dtype == np.float32


def test_spec_hash_covers_parameters() -> None:
    assert spec_hash(FeatureParams()) == SPEC_HASH
    assert FeatureExtractor().spec_hash == SPEC_HASH
    assert len(SPEC_HASH) == 64
    assert spec_hash(FeatureParams(rarity_half_life_s=3600.0)) != SPEC_HASH
    assert spec_hash(FeatureParams(count_table_bits=18)) != SPEC_HASH


@pytest.mark.parametrize(
    "bad",
    [
        {"count_table_bits": 40},
        {"rate_half_life_s": 0.0},
        {"smoothing": float("inf")},
        {"ema_alpha": 1.5},
        {"burst_short_half_life_s": 900.0},
    ],
)
def test_invalid_params_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="FeatureParams"):
        FeatureExtractor(FeatureParams(**bad))


def test_features_finite_and_in_range_on_odd_input() -> None:
    x = FeatureExtractor(SMALL).transform(varied_stream(600))
    assert_valid(x)


# -- determinism, parity, restart --------------------------------------------------------------


def test_one_at_a_time_equals_batch() -> None:
    events = varied_stream(400)
    a = FeatureExtractor(SMALL)
    one = np.stack([a.transform_one(e) for e in events])
    b = FeatureExtractor(SMALL)
    batched = np.concatenate([b.transform(events[:150]), b.transform(events[150:])])
    np.testing.assert_array_equal(one, batched)
    np.testing.assert_array_equal(one, FeatureExtractor(SMALL).transform(events))


def test_plain_python_baseline_equals_numba() -> None:
    events = varied_stream(250)
    fast = FeatureExtractor(SMALL).transform(events)
    slow = FeatureExtractor(SMALL, plain_python=True).transform(events)
    # Same definition; libm and LLVM may differ in the last bit of exp/log.
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
    step_slow = FeatureExtractor(SMALL, plain_python=True)
    np.testing.assert_allclose(
        fast[:40], np.stack([step_slow.transform_one(e) for e in events[:40]]), atol=1e-6
    )


_SUBPROCESS = """
import json, sys
from aerie.models.features import FeatureExtractor, FeatureParams
from aerie.proto.event import decode_json
events = [decode_json(line) for line in sys.stdin.read().splitlines()]
params = FeatureParams(count_table_bits=14, stream_table_bits=10, burst_table_bits=6)
x = FeatureExtractor(params).transform(events)
print(json.dumps(x.tolist()))
"""


def test_fresh_process_gives_identical_features() -> None:
    """Another interpreter (another PYTHONHASHSEED) computes bit-identical features: hashing is stable."""
    events = varied_stream(120)
    lines = "\n".join(json.dumps(e.to_falco_json()) for e in events)
    here = FeatureExtractor(SMALL).transform(events)
    done = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=dict(os.environ, PYTHONHASHSEED="12345"),
    )
    there = np.array(json.loads(done.stdout), np.float32)
    np.testing.assert_array_equal(here, there)


def test_snapshot_restore_continues_exactly() -> None:
    events = varied_stream(500)
    whole = FeatureExtractor(SMALL).transform(events)
    first = FeatureExtractor(SMALL)
    first.transform(events[:300])
    blob = first.snapshot()
    second = FeatureExtractor(SMALL)
    second.restore(blob)
    assert second.events_seen == 300
    rest = np.stack([second.transform_one(e) for e in events[300:]])
    np.testing.assert_array_equal(rest, whole[300:])


def test_restore_refuses_other_spec_and_garbage() -> None:
    other = FeatureExtractor(FeatureParams(count_table_bits=12, stream_table_bits=10, burst_table_bits=6))
    other.transform(varied_stream(20))
    mine = FeatureExtractor(SMALL)
    before = mine.transform(varied_stream(20))
    with pytest.raises(SpecMismatchError, match="spec hash"):
        mine.restore(other.snapshot())
    with pytest.raises(SnapshotError):
        mine.restore(b"not a snapshot")
    with pytest.raises(SnapshotError):
        mine.restore(mine.snapshot()[:100])
    # A refused restore leaves the state as it was.
    assert mine.events_seen == 20
    np.testing.assert_array_equal(FeatureExtractor(SMALL).transform(varied_stream(20)), before)


def test_silence_does_not_erase_normal() -> None:
    """A week without events (a restart, the next file) advances time by max_gap_s only."""
    x = FeatureExtractor(SMALL)
    t = T0
    for i in range(300):
        x.transform_one(
            proc_event(t, "api", "gunicorn" if i % 3 else "worker", pid=100 + i, ppid=1, pname="init")
        )
        t += S
    before = x.transform_one(proc_event(t, "api", "worker", pid=999, ppid=1, pname="init"))
    after = x.transform_one(proc_event(t + 7 * 86400 * S, "api", "worker", pid=1000, ppid=1, pname="init"))
    col = COL["proc_rarity"]
    assert after[col] == pytest.approx(before[col], abs=0.1)
    assert after[col] < 2.0


def test_replayed_timeline_keeps_time_flowing() -> None:
    """Scoring a file that starts before the restored state's clock (the same window replayed) is a new
    timeline: rates on the replay match the first pass instead of piling up under a frozen clock."""
    events = [
        proc_event(T0 + i * S // 5, "web", "nginx", pid=10, ppid=1, pname="init", evt="openat")
        for i in range(600)
    ]
    x = FeatureExtractor(SMALL)
    first = x.transform(events)
    again = x.transform(events)
    rate = COL["proc_rate"]
    assert again[-1, rate] == pytest.approx(first[-1, rate], abs=0.05)
    assert again[:, rate].max() < first[:, rate].max() + 0.05


def test_count_scale_reset_is_invisible() -> None:
    """Counts live on one exponential scale that is reset every ~58 half-lives: with a 2 s half-life,
    200 s of events cross several resets; values stay continuous and match the plain-Python path."""
    params = FeatureParams(
        count_table_bits=12, stream_table_bits=8, burst_table_bits=4, rarity_half_life_s=2.0
    )
    events = [
        proc_event(
            T0 + i * S, "web", ["nginx", "php-fpm"][i % 2], pid=10 + i % 2, ppid=1, pname="init", evt="openat"
        )
        for i in range(200)
    ]
    x = FeatureExtractor(params)
    fast = x.transform(events)
    assert x._state.fs[9] > 100.0  # glob[4, 1], the scale's reference time, moved: resets happened
    slow = FeatureExtractor(params, plain_python=True).transform(events)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
    steady = fast[20:, COL["proc_rarity"]]
    assert np.abs(np.diff(steady)).max() < 1e-3
    assert 0.3 < steady.mean() < 1.0  # two names sharing the context: about ln 2


def test_out_of_order_time_is_tolerated() -> None:
    x = FeatureExtractor(SMALL)
    forward = [proc_event(T0 + i * S, "web", "nginx", pid=10, ppid=1, pname="init") for i in range(20)]
    back = [proc_event(T0 - i * S, "web", "nginx", pid=10, ppid=1, pname="init") for i in range(20)]
    out = x.transform(forward + back + [ev(0), ev(-5), ev(2**62)])
    assert_valid(out)


# -- bounded state -----------------------------------------------------------------------------


def test_state_size_independent_of_distinct_keys() -> None:
    x = FeatureExtractor(SMALL)
    x.transform(varied_stream(50))
    size = x.state_nbytes
    snap_small = len(x.snapshot())
    events = (
        ev(
            T0 + i * 1_000_000,
            {
                "evt.type": "openat",
                "proc.name": f"p{i % 9973}",
                "proc.pid": 1000 + i,
                "proc.ppid": 1,
                "fd.name": f"/data/file-{i}.bin",
                "fd.type": "file",
                "fd.rip": f"10.{i % 251}.{i % 13}.1",
                "fd.rport": 1 + i % 30000,
            },
        )
        for i in range(200_000)
    )
    out = x.transform(events)
    assert out.shape == (200_000, 17)
    assert x.state_nbytes == size
    # The snapshot of a full table is bounded by the table size, not by the keys fed.
    assert len(x.snapshot()) <= size + 4096
    assert snap_small <= size + 4096
    # The token caches (speed only) are bounded too.
    tokenizer = x._tokens.__self__  # type: ignore[attr-defined]
    assert all(len(c) <= 1 << 16 for c in vars(tokenizer).values() if isinstance(c, dict))


# -- semantics ---------------------------------------------------------------------------------


def test_rarity_falls_with_use_and_returns_after_inactivity() -> None:
    x = FeatureExtractor(SMALL)
    half_life = SMALL.rarity_half_life_s
    col = COL["proc_rarity"]
    t = T0
    for i in range(200):  # the context's routine
        x.transform_one(proc_event(t, "api", "gunicorn", pid=100 + i, ppid=1, pname="init"))
        t += S
    first = x.transform_one(proc_event(t, "api", "backup", pid=999, ppid=1, pname="init"))[col]
    for i in range(300):
        t += S
        x.transform_one(proc_event(t, "api", "backup", pid=1000 + i, ppid=1, pname="init"))
        x.transform_one(proc_event(t, "api", "gunicorn", pid=2000 + i, ppid=1, pname="init"))
    common = x.transform_one(proc_event(t + S, "api", "backup", pid=5000, ppid=1, pname="init"))[col]
    # Twenty half-lives of routine traffic without "backup" (steps below max_gap_s: time flows).
    step = int(20 * half_life * S / 1500)
    assert step < SMALL.max_gap_s * S
    for i in range(1500):
        t += step
        x.transform_one(proc_event(t, "api", "gunicorn", pid=6000 + i, ppid=1, pname="init"))
    again = x.transform_one(proc_event(t + S, "api", "backup", pid=9000, ppid=1, pname="init"))[col]
    assert first > 3.0
    assert common < 1.0
    assert again > 3.0
    assert again > 3 * common


def _spawn_chain(t: int, ctx: str, sh_pid: int, chain: list[str]) -> list[FalcoEvent]:
    """A web/CI process spawns sh, which runs ``chain`` one after the other."""
    events = [proc_event(t, ctx, "sh", pid=sh_pid, ppid=sh_pid - 1, pname="runner")]
    for j, name in enumerate(chain):
        events.append(proc_event(t + (j + 1) * S, ctx, name, pid=sh_pid + 1 + j, ppid=sh_pid, pname="sh"))
    return events


def test_novel_sequence_scores_higher_than_routine_sequence() -> None:
    """sh → curl → chmod → x: routine on a CI runner; in the web context each step is routine on its own
    (separate shells), but never in that order within one shell."""
    chain = ["curl", "chmod", "x"]
    x = FeatureExtractor(SMALL)
    t = T0
    pid = 1000
    for i in range(150):
        for e in _spawn_chain(t, "ci-runner", pid, chain):
            x.transform_one(e)
        pid += 10
        for e in _spawn_chain(t, "web", pid, [chain[i % 3]]):  # one step per shell
            x.transform_one(e)
        pid += 10
        t += 20 * S
    seq = COL["seq_surprisal"]
    window = COL["seq_window"]
    routine = np.stack([x.transform_one(e) for e in _spawn_chain(t, "ci-runner", pid, chain)])
    novel = np.stack([x.transform_one(e) for e in _spawn_chain(t + S // 2, "web", pid + 10, chain)])
    # The single-event rarities hardly tell them apart: every process and lineage is known in both
    # (each step is a sixth of the web context's events, a quarter of the runner's).
    for name in ("proc_rarity", "lineage_rarity"):
        assert novel[1:, COL[name]].max() < routine[1:, COL[name]].max() + 0.5
    # The sequence does, from the second step on.
    assert novel[2:, seq].min() > routine[2:, seq].max() + 2.0
    assert novel[-1, window] > routine[-1, window] + 1.0


def test_rarity_is_contextual() -> None:
    """bash is common on the CI runner and rare in the nginx container."""
    x = FeatureExtractor(SMALL)
    t = T0
    for i in range(200):
        x.transform_one(proc_event(t, "ci-runner", "bash", pid=100 + i, ppid=1, pname="runner"))
        x.transform_one(proc_event(t, "nginx", "nginx", pid=5000 + i, ppid=1, pname="nginx"))
        t += S
    col = COL["proc_rarity"]
    on_ci = x.transform_one(proc_event(t, "ci-runner", "bash", pid=9000, ppid=1, pname="runner"))[col]
    in_nginx = x.transform_one(proc_event(t, "nginx", "bash", pid=9001, ppid=1, pname="nginx"))[col]
    assert on_ci < 0.5
    assert in_nginx > on_ci + 3.0


def test_new_keys_surprise_less_where_new_keys_are_routine() -> None:
    """Witten-Bell escape counts: a context that always meets new files (a temp-file writer) expects
    them; one that reads a fixed set does not."""
    x = FeatureExtractor(SMALL)
    t = T0

    def open_(ctx: str, name: str, path: str) -> FalcoEvent:
        return proc_event(
            t, ctx, name, pid=50, ppid=1, pname="init", evt="openat", **{"fd.name": path, "fd.type": "file"}
        )

    for i in range(400):
        unique = "".join(chr(ord("a") + int(c)) for c in f"{i:04d}")  # letters: survives normalising
        x.transform_one(open_("uploader", "uploader", f"/srv/spool/upload-{unique}e.part"))
        x.transform_one(open_("web", "nginx", f"/var/www/html/page{'abcdefgh'[i % 8]}.html"))
        t += S
    col = COL["file_rarity"]
    churn = x.transform_one(open_("uploader", "uploader", "/srv/spool/upload-newone.part"))[col]
    fixed = x.transform_one(open_("web", "nginx", "/var/www/html/admin.php"))[col]
    assert fixed > churn + 3.0


def test_missing_fields_are_neutral() -> None:
    x = FeatureExtractor(SMALL)
    x.transform(varied_stream(100))
    bare = [
        FalcoEvent(time_ns=T0 + 100 * S, priority=Priority.NOTICE, rule=""),
        ev(T0 + 101 * S, {"proc.name": None, "fd.name": "<NA>", "user.uid": None, "container.id": ""}),
        ev(T0 + 102 * S, {"proc.name": ["a", 1], "proc.pid": "abc", "user.uid": True, "fd.name": 5}),
        ev(T0 + 103 * S, {"proc.pid": 2**70, "proc.ppid": -4, "fd.rport": 1.5, "fd.name": "no-arrow"}),
    ]
    out = np.stack([x.transform_one(e) for e in bare])
    assert_valid(out)
    # Fields that are absent contribute nothing: no rarity, no content, not root.
    for name in (
        "proc_rarity",
        "lineage_rarity",
        "exe_rarity",
        "file_rarity",
        "endpoint_rarity",
        "user_rarity",
    ):
        assert out[0, COL[name]] == 0.0
        assert out[1, COL[name]] == 0.0
    for name in ("cmdline_length", "cmdline_entropy", "sensitive_path", "is_root"):
        assert out[:2, COL[name]].max() == 0.0


def test_content_features() -> None:
    x = FeatureExtractor(SMALL)
    plain = x.transform_one(proc_event(T0, "web", "ls", pid=5, ppid=1, pname="sh"))
    payload = x.transform_one(
        ev(
            T0 + S,
            {
                "evt.type": "openat",
                "proc.name": "cat",
                "proc.cmdline": "sh -c echo aGVsbG8gd29ybGQ9PT0/K3Jldm|base64 -d > /dev/shm/.x",
                "proc.exepath": "/dev/shm/.x/run",
                "fd.name": "/etc/shadow",
                "fd.type": "file",
                "user.uid": 0,
            },
        )
    )
    assert payload[COL["cmdline_length"]] > plain[COL["cmdline_length"]]
    assert payload[COL["cmdline_entropy"]] > plain[COL["cmdline_entropy"]]
    assert payload[COL["sensitive_path"]] == 1.0
    assert plain[COL["sensitive_path"]] == 0.0
    assert payload[COL["is_root"]] == 1.0
    assert plain[COL["is_root"]] == 0.0


def test_tokenizer_normalises_volatile_parts() -> None:
    assert normalise_path("/proc/1234/status") == "/proc/#/status"
    assert normalise_path("/var/lib/docker/containers/3f9a0b1c2d4e/log") == "/var/lib/docker/containers/#/log"
    assert pod_prefix("web-7d9f8c6b5-x2k4q") == "web"
    assert pod_prefix("postgres-0") == "postgres"
    assert pod_prefix("node-exporter") == "node-exporter"
    assert image_key("docker.io/library/nginx:1.25@sha256:abc") == "nginx"
    assert image_key("localhost:5000/team/app:v2") == "team/app"
    uuid_path = "/var/lib/kubelet/pods/942e7218-588e-4d4f-fbd4-d28dc1133682/volumes/kube-api-access-7pvgs"
    assert normalise_path(uuid_path) == "/var/lib/kubelet/pods/#/volumes/kube-api-access-*"
    assert normalise_path("/etc/nginx/sites-enabled/default") == "/etc/nginx/sites-enabled/default"
    tok = Tokenizer().tokens
    a = tok(ev(T0, {"evt.type": "openat", "fd.name": "/proc/1/status", "fd.type": "file", "proc.pid": 1}))
    b = tok(ev(T0, {"evt.type": "openat", "fd.name": "/proc/77/status", "fd.type": "file", "proc.pid": 1}))
    assert a == b
    # Ephemeral ports pool, service ports do not; addresses pool by /16.
    c1 = tok(ev(T0, {"evt.type": "connect", "fd.name": "10.0.0.1:40000->10.0.0.9:40001"}))
    c2 = tok(ev(T0, {"evt.type": "connect", "fd.name": "10.0.0.2:40100->10.0.3.7:50002"}))
    c3 = tok(ev(T0, {"evt.type": "connect", "fd.name": "10.0.0.1:40000->10.0.0.7:443"}))
    c4 = tok(ev(T0, {"evt.type": "connect", "fd.name": "10.0.0.1:40000->10.9.0.7:443"}))
    assert c1 == c2
    assert len({c1, c3, c4}) == 3


def test_caches_do_not_change_values() -> None:
    """Equal raw values of different types (True, 1, 1.0) share cache entries; results must not depend
    on which came first."""
    variants = [True, 1, 1.0, "1"]
    outs = []
    for order in (variants, variants[::-1]):
        tok = Tokenizer().tokens
        outs.append([tok(ev(T0, {"proc.name": v, "user.uid": v, "container.id": v})) for v in order])
    assert outs[0] == outs[1][::-1]
