"""`aerie corpus generate`: format, labels, determinism, identity, coverage, the command line."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aerie.brain.cli import main
from aerie.models.corpus import BASELINE_RULES, STOCK_RULES, CorpusOptions, generate, write_corpus
from aerie.models.corpus.generate import Corpus
from aerie.models.corpus.model import Container, Label, Node, Proc, Sys
from aerie.models.corpus.rules import Rule, describe
from aerie.models.corpus.scenarios import SCENARIOS
from aerie.proto.event import Priority, decode_json, parse_time

_RFC3339_NS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z\Z")
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_FALCO_KEYS = {"hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time", "uuid"}
SMALL = CorpusOptions(seed=11, events=4000)


def _read(directory: Path) -> tuple[list[bytes], list[dict[str, Any]], dict[str, Any]]:
    lines = (directory / "events.jsonl").read_bytes().splitlines()
    labels = [json.loads(line) for line in (directory / "labels.jsonl").read_bytes().splitlines()]
    summary = json.loads((directory / "scenarios.json").read_text())
    return lines, labels, summary


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus-small")
    write_corpus(out, SMALL)
    return out


@pytest.fixture(scope="module")
def default_corpus() -> Corpus:
    """The corpus the default options produce (100k events): coverage and proportions."""
    return generate(CorpusOptions())


def test_same_options_give_the_same_bytes(tmp_path: Path) -> None:
    args = ["corpus", "generate", "--seed", "5", "--events", "2500", "--nodes", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("events.jsonl", "labels.jsonl", "scenarios.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_different_seeds_differ() -> None:
    one = generate(CorpusOptions(seed=1, events=3000))
    two = generate(CorpusOptions(seed=2, events=3000))
    assert [e.output for e in one.events[:200]] != [e.output for e in two.events[:200]]
    # Which workloads are hit, where and when all move with the seed.
    hits_one = [(i["scenario"], i["pod"], i["node"], i["start"]) for i in one.summary["instances"]]
    hits_two = [(i["scenario"], i["pod"], i["node"], i["start"]) for i in two.summary["instances"]]
    assert hits_one
    assert hits_two
    assert set(hits_one).isdisjoint(hits_two)
    remote_one = {
        e.output_fields.get("fd.sip")
        for e, lab in zip(one.events, one.labels, strict=True)
        if lab.label == "attack"
    }
    remote_two = {
        e.output_fields.get("fd.sip")
        for e, lab in zip(two.events, two.labels, strict=True)
        if lab.label == "attack"
    }
    assert remote_one != remote_two


def test_every_line_is_falco_json_and_round_trips(small_dir: Path) -> None:
    lines, _labels, _summary = _read(small_dir)
    events = generate(SMALL).events
    assert len(lines) == len(events) > 3000
    for line, event in zip(lines, events, strict=True):
        decoded = decode_json(line)
        assert decoded == event
        assert set(json.loads(line)) == _FALCO_KEYS
        assert msgspec.json.encode(decoded.to_falco_json()) == line


def test_labels_align_with_events_by_line_and_uuid(small_dir: Path) -> None:
    lines, labels, summary = _read(small_dir)
    assert len(labels) == len(lines) == summary["events"]
    uuids = set()
    for n, (line, label) in enumerate(zip(lines, labels, strict=True), start=1):
        event = json.loads(line)
        assert label["line"] == n
        assert label["uuid"] == event["uuid"]
        assert _UUID4.match(label["uuid"])
        uuids.add(label["uuid"])
        if label["label"] == "benign":
            assert label["benign_kind"] in ("baseline", "rare")
            assert label["scenario"] is None
            assert label["tactic"] is None
            assert label["technique"] is None
        else:
            assert label["label"] == "attack"
            assert label["benign_kind"] is None
            assert label["scenario"] in {s.name for s in SCENARIOS}
            assert label["tactic"]
            assert re.match(r"T\d{4}(\.\d{3})?\Z", label["technique"])
        # Ground truth stays beside the events, never inside them.
        assert "attack" not in event["output_fields"]
        assert "label" not in event
    assert len(uuids) == len(lines)
    assert summary["labels"]["benign"] + summary["labels"]["attack"] == summary["events"]


def test_times_are_ordered_rfc3339_with_nine_digits(small_dir: Path) -> None:
    lines, _labels, summary = _read(small_dir)
    start = parse_time(summary["window"]["start"])
    end = parse_time(summary["window"]["end"])
    previous = start
    for line in lines:
        event = json.loads(line)
        assert _RFC3339_NS.match(event["time"]), event["time"]
        now = parse_time(event["time"])
        assert previous <= now < end
        assert event["output_fields"]["evt.time"] == now
        previous = now


def test_output_text_carries_the_substituted_fields(small_dir: Path) -> None:
    lines, _labels, _summary = _read(small_dir)
    for line in lines:
        event = decode_json(line)
        fields = event.output_fields
        stamp = event.output.split(" ", 1)[0]
        assert stamp == event_time_of_day(event.time_ns) + ":"
        assert event.output.split(" ", 2)[1] == event.priority.falco_name
        # Every %field is replaced (Falco prints <NA> for a missing value).
        assert not re.search(r"%[a-z]+\.[a-z]", event.output), event.output
        if event.source == "syscall":
            assert f"process={fields['proc.name']} " in event.output
            assert f"command={fields['proc.cmdline']} " in event.output
            assert f"container_id={fields['container.id']} " in event.output
            assert f"k8s_pod_name={event.field_str('k8s.pod.name') or '<NA>'})" in event.output
        else:
            assert f"pod={fields['ka.target.name']} " in event.output


def event_time_of_day(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    day = seconds % 86400
    return f"{day // 3600:02d}:{day % 3600 // 60:02d}:{day % 60:02d}.{nanos:09d}"


def test_a_process_keeps_one_identity(small_dir: Path) -> None:
    lines, _labels, _summary = _read(small_dir)
    identity_keys = (
        "proc.name",
        "proc.exepath",
        "proc.cmdline",
        "proc.ppid",
        "proc.pname",
        "proc.aname[2]",
        "user.name",
        "user.uid",
        "user.loginuid",
        "proc.tty",
        "proc.cwd",
        "container.id",
        "container.name",
        "container.image.repository",
        "k8s.pod.name",
    )
    seen: dict[tuple[str, object], tuple[object, ...]] = {}
    spawned: set[tuple[str, object]] = set()
    for line in lines:
        event = decode_json(line)
        if event.source != "syscall":
            continue
        fields = event.output_fields
        key = (event.hostname, fields["proc.pid"])
        identity = tuple(fields[k] for k in identity_keys)
        assert seen.setdefault(key, identity) == identity, (key, seen[key], identity)
        assert isinstance(fields["proc.pid"], int)
        assert 0 < fields["proc.pid"] < 4194304
        assert re.fullmatch(r"host|[0-9a-f]{12}", str(fields["container.id"]))
        if fields["evt.type"] == "execve":
            assert key not in spawned, f"pid {key} exec'd twice"
            spawned.add(key)


def test_field_sets_depend_on_the_rule_not_the_label(default_corpus: Corpus) -> None:
    keys_by_rule: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    attack_hosts: set[str] = set()
    benign_hosts: set[str] = set()
    for event, label in zip(default_corpus.events, default_corpus.labels, strict=True):
        keys_by_rule[event.rule].add(tuple(event.output_fields))
        (attack_hosts if label.label == "attack" else benign_hosts).add(event.hostname)
    assert all(len(sets) == 1 for sets in keys_by_rule.values())
    assert attack_hosts <= benign_hosts
    assert len(attack_hosts) >= 2


def test_default_options_cover_every_scenario_within_the_attack_budget(default_corpus: Corpus) -> None:
    summary = default_corpus.summary
    assert 90_000 <= summary["events"] <= 110_000
    assert 0.005 <= summary["attack_fraction"] <= 0.02
    for scenario in SCENARIOS:
        assert summary["scenarios"][scenario.name]["events"] > 0, scenario.name
    victims = {i["victim"] for i in summary["instances"]}
    assert len(victims) >= 4
    assert summary["benign_kinds"]["rare"] > 0.3 * summary["labels"]["attack"]
    assert len(summary["nodes"]) == CorpusOptions().nodes
    assert summary["sources"].get("k8s_audit", 0) > 0
    # Most traffic is the broad audit rules at low priority.
    low = summary["priorities"]["Informational"] + summary["priorities"]["Notice"]
    assert low > 0.95 * summary["events"]


def test_rules_follow_falco_conventions() -> None:
    names = [r.name for r in STOCK_RULES + BASELINE_RULES]
    assert len(names) == len(set(names))
    for rule in STOCK_RULES:
        if rule.source == "syscall":
            assert rule.tags[0] in ("maturity_stable", "maturity_incubating", "maturity_sandbox"), rule.name
            assert any(t.startswith("mitre_") for t in rule.tags), rule.name
            assert any(re.fullmatch(r"T(A)?\d{4}(\.\d{3})?", t) for t in rule.tags), rule.name
    for rule in BASELINE_RULES:
        assert rule.name.startswith("aerie: ")
        assert rule.priority in (Priority.INFORMATIONAL, Priority.NOTICE)
        shipped = describe(rule)
        assert shipped["condition"].startswith(("evt.type", "open_"))
        assert shipped["priority"] in ("INFORMATIONAL", "NOTICE")


def test_cli_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert (
        main(["corpus", "generate", "--out", str(out), "--events", "1500", "--seed", "3", "--nodes", "2"])
        == 0
    )
    assert "events" in capsys.readouterr().out
    lines, labels, summary = _read(out)
    assert len(lines) == len(labels) == summary["events"] > 1000
    assert summary["seed"] == 3
    assert summary["options"]["nodes"] == 2
    assert len({json.loads(line)["hostname"] for line in lines}) == 2


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--events", "12", "events must be between"),
        ("--events", "lots", "events must be a number"),
        ("--nodes", "0", "nodes must be between"),
        ("--attack-rate", "0.9", "attack rate must be between"),
        ("--start", "yesterday", "RFC 3339"),
        ("--hours", "0", "hours must be between"),
    ],
)
def test_cli_rejects_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["corpus", "generate", "--out", str(tmp_path), flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert flag in err
    assert message in err
    assert not (tmp_path / "events.jsonl").exists()


def test_cli_rejects_a_bad_environment_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AERIE_CORPUS_SEED", "-4")
    with pytest.raises(SystemExit) as exited:
        main(["corpus", "generate", "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert "AERIE_CORPUS_SEED" in capsys.readouterr().err


def test_cli_refuses_an_output_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("not a directory")
    assert main(["corpus", "generate", "--out", str(target), "--events", "500"]) == 2
    assert "aerie: error: --out" in capsys.readouterr().err


def test_options_are_validated_by_the_library_too() -> None:
    with pytest.raises(ValueError, match="nodes"):
        generate(CorpusOptions(nodes=0))
    with pytest.raises(ValueError, match="start"):
        generate(CorpusOptions(start="2024-13-45"))


# The baseline predicates implement their Falco conditions term for term (policies/falco/aerie_rules.yaml).

_NODE = Node(0, "node-a", "10.0.0.5", "10.244.0.")
_POD = Container(
    cid="0123456789ab",
    name="app",
    image="docker.io/library/python",
    tag="3.12",
    ns="shop",
    pod="api-1",
    node=_NODE,
    privileged=False,
    start_ns=0,
    ip="10.244.0.7",
)
_PROC = Proc(
    node=_NODE,
    container=_POD,
    parent=None,
    command="python app.py",
    exepath="/usr/bin/python",
    user="app",
    uid=1000,
    start_ns=1,
)
_LABEL = Label("benign", "test")


def _sys(evt_type: str, *, res: str = "SUCCESS", **attrs: object) -> Sys:
    s = Sys(10, _PROC, evt_type, _LABEL)
    s.res = res
    for key, value in attrs.items():
        setattr(s, key, value)
    return s


def _open(path: str, flags: str, res: str = "SUCCESS") -> Sys:
    return _sys("openat", res=res, fd_name=path, fd_type="file", flags=flags)


def _connect(local: str, remote: str, res: str = "SUCCESS", fd_type: str = "ipv4") -> Sys:
    return _sys(
        "connect", res=res, fd_type=fd_type, sip=remote, rip=remote, fd_name=f"{local}:40000->{remote}:443"
    )


def _accept(client: str, res: str = "SUCCESS") -> Sys:
    return _sys(
        "accept4",
        res=res,
        fd_type="ipv4",
        sip="10.244.0.7",
        rip=client,
        fd_name=f"{client}:40000->10.244.0.7:80",
    )


def _baseline(name: str) -> Rule:
    return next(rule for rule in BASELINE_RULES if rule.name == f"aerie: {name}")


_WRITE = "O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC"


@pytest.mark.parametrize(
    ("rule", "sys", "fires"),
    [
        # open_write and not fd.name pmatch (/dev, /proc/self, /sys/fs/cgroup)
        # and not fd.directory in (/tmp/.X11-unix)
        ("file opened for writing", _open("/tmp/x", _WRITE), True),
        ("file opened for writing", _open("/tmp/.X11-unix/x", _WRITE), False),
        ("file opened for writing", _open("/tmp/.X11-unix/sub/x", _WRITE), True),
        ("file opened for writing", _open("/dev/shm/x", _WRITE), False),
        ("file opened for writing", _open("/dev/null", _WRITE), False),
        ("file opened for writing", _open("/devices/x", _WRITE), True),
        ("file opened for writing", _open("/proc/self/attr/current", _WRITE), False),
        ("file opened for writing", _open("/proc/1/attr/current", _WRITE), True),
        ("file opened for writing", _open("/sys/fs/cgroup/cpu.max", _WRITE), False),
        ("file opened for writing", _open("/var/lib/db/wal", "O_CREAT|O_RDWR"), True),
        ("file opened for writing", _open("/tmp/x", _WRITE, res="EACCES"), False),
        # open_read and (fd.name in (...) or fd.name pmatch (...) or endswith ... or glob /proc/*/environ)
        ("sensitive file opened", _open("/etc/shadow", "O_RDONLY"), True),
        ("sensitive file opened", _open("/etc/sudoers", "O_RDONLY"), True),
        ("sensitive file opened", _open("/etc/sudoers.d/90-cloud", "O_RDONLY"), False),
        ("sensitive file opened", _open("/etc/shadow-", "O_RDONLY"), False),
        ("sensitive file opened", _open("/etc/pam.d/sshd", "O_RDONLY"), True),
        ("sensitive file opened", _open("/etc/pam.d", "O_RDONLY"), True),
        ("sensitive file opened", _open("/etc/pam.dx", "O_RDONLY"), False),
        ("sensitive file opened", _open("/root/.ssh/id_rsa", "O_RDONLY"), True),
        ("sensitive file opened", _open("/home/dev/.ssh/id_rsa", "O_RDONLY"), False),
        ("sensitive file opened", _open("/home/dev/.kube/config", "O_RDONLY"), True),
        ("sensitive file opened", _open("/var/lib/postgresql/.pgpass", "O_RDONLY"), True),
        ("sensitive file opened", _open("/proc/1/environ", "O_RDONLY"), True),
        ("sensitive file opened", _open("/proc/environ", "O_RDONLY"), False),
        ("sensitive file opened", _open("/etc/shadow", "O_RDWR"), True),  # O_RDWR is also a read
        ("sensitive file opened", _open("/etc/shadow", "O_WRONLY"), False),
        ("sensitive file opened", _open("/etc/shadow", "O_RDONLY", res="EACCES"), False),
        # ((fd.typechar=4 or 6) and fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8"
        #  and (evt.rawres >= 0 or evt.res = EINPROGRESS)) or (fd.typechar=u and ... .sock ...)
        ("outbound connection", _connect("10.244.0.7", "93.184.216.34"), True),
        ("outbound connection", _connect("10.244.0.7", "93.184.216.34", res="EINPROGRESS"), True),
        ("outbound connection", _connect("10.244.0.7", "93.184.216.34", res="ECONNREFUSED"), False),
        ("outbound connection", _connect("127.0.0.1", "127.0.0.1"), False),
        ("outbound connection", _connect("0.0.0.0", "93.184.216.34"), False),
        (
            "outbound connection",
            _sys("connect", fd_type="unix", fd_name="ab->cd /run/k3s/containerd/containerd.sock"),
            True,
        ),
        (
            "outbound connection",
            _sys("connect", fd_type="unix", fd_name="ab->cd /var/run/docker.sock", res="EACCES"),
            True,
        ),
        (
            "outbound connection",
            _sys("connect", fd_type="unix", fd_name="ab->cd /run/dbus/system_bus_socket"),
            False,
        ),
        ("outbound connection", _sys("connect", fd_type="unix", fd_name="ab->cd /run/docker/plugins"), False),
        ("inbound connection", _accept("10.244.1.9"), True),
        ("inbound connection", _accept("10.244.1.9", res="EAGAIN"), False),
        ("inbound connection", _accept("127.0.0.1"), False),
        # evt.rawres >= 0
        ("file renamed or removed", _sys("unlinkat", fd_name="/tmp/x"), True),
        ("file renamed or removed", _sys("renameat", fd_name="/tmp/y"), True),
        ("file renamed or removed", _sys("unlinkat", fd_name="/tmp/x", res="ENOENT"), False),
        ("file permissions changed", _sys("fchmodat", fd_name="/tmp/x"), True),
        ("file permissions changed", _sys("fchmodat", fd_name="/tmp/x", res="EPERM"), False),
        # whether it succeeds or not
        ("privileged syscall", _sys("finit_module"), True),
        ("privileged syscall", _sys("setns", res="EPERM"), True),
        ("process spawned", _sys("execveat"), True),
    ],
)
def test_baseline_conditions_follow_their_falco_text(rule: str, sys: Sys, fires: bool) -> None:
    baseline = _baseline(rule)
    assert baseline.condition(sys) is fires
    # The engine indexes rules by event type: the type must be listed for the rule to be reached.
    assert sys.evt_type in baseline.evt_types


def test_corpus_raises_no_baseline_alert_falco_would_not(default_corpus: Corpus) -> None:
    seen: set[str] = set()
    for event in default_corpus.events:
        name = event.output_fields.get("fd.name")
        if event.rule == "aerie: file opened for writing":
            assert isinstance(name, str)
            assert not name.startswith(("/dev/", "/proc/self/", "/sys/fs/cgroup/")), name
            assert name.rpartition("/")[0] != "/tmp/.X11-unix", name
            seen.add(event.rule)
        elif event.rule == "aerie: sensitive file opened":
            assert isinstance(name, str)
            assert not name.startswith("/etc/sudoers.d/"), name
            seen.add(event.rule)
    assert seen == {"aerie: file opened for writing", "aerie: sensitive file opened"}
