"""The simulated machine state behind each corpus event: nodes, containers, processes, syscalls.

A `Sys` is one kernel event as Falco's libs would see it (an ``execve`` exit, an ``openat``, a
``connect``...), attributed to a `Proc` (which knows its parent chain, user, container and node).
The rule engine in `aerie.models.corpus.rules` decides which Falco rule, if any, a `Sys` raises, and
renders it into a Falco alert. Nothing here knows whether an event is benign or an attack: the label
travels beside the syscall (`Sys.label`) and is never read by the rules or the renderer, so labels
cannot leak into event content.

Process ids are not chosen when a process is created. Every process is registered with its node and
`Node.assign_pids` hands out host pids in start-time order once the whole corpus has been simulated,
so pids grow with time on every node whatever order the generators ran in (an attack generated last
must not get the largest pids).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from random import Random
from typing import Any, Final

__all__ = [
    "NS_PER_S",
    "Container",
    "Label",
    "Node",
    "Proc",
    "Sys",
    "comm_of",
]

NS_PER_S: Final = 1_000_000_000
_PID_MAX: Final = 4_194_000  # just below Linux's pid_max on 64-bit systems (4194304)

# Linux truncates the command name (comm, Falco's proc.name) to 15 bytes.
_COMM_MAX: Final = 15


def comm_of(argv0: str) -> str:
    """proc.name as the kernel reports it: the basename of what was executed, cut to 15 bytes."""
    return posixpath.basename(argv0)[:_COMM_MAX]


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for every event one activity produced. Never rendered into an event."""

    label: str  # "benign" | "attack"
    activity: str  # the generator that produced it ("exec_probe", "reverse_shell", ...)
    scenario: str | None = None  # attack scenario name; None for benign
    tactic: str | None = None  # MITRE ATT&CK tactic of the step (attacks only)
    technique: str | None = None  # MITRE ATT&CK technique id of the step (attacks only)
    benign_kind: str | None = None  # "baseline" | "rare" for benign; None for attacks
    instance: int | None = None  # which intrusion of the scenario (attacks only)


class Node:
    """One Kubernetes worker node: its name, address, and the processes that ran on it."""

    __slots__ = ("_registered", "hostname", "index", "ip", "pod_prefix")

    def __init__(self, index: int, hostname: str, ip: str, pod_prefix: str) -> None:
        self.index = index
        self.hostname = hostname
        self.ip = ip
        self.pod_prefix = pod_prefix  # "10.244.3." - pods on this node take addresses below it
        self._registered: list[Proc] = []

    def register(self, proc: Proc) -> int:
        """Remember ``proc`` for pid assignment; returns its creation rank on this node."""
        self._registered.append(proc)
        return len(self._registered)

    def assign_pids(self, rng: Random, first_pid: int, forks_per_s: float = 0.8) -> None:
        """Give every process a unique host pid, increasing with its start time.

        Between two processes the corpus knows, a node forks many that raise no alert (threads,
        short-lived helpers): the gap grows with the time between them, at about ``forks_per_s``.
        Processes with a fixed pid (systemd is 1) keep it. Pids never repeat on a node (the corpus does
        not model pid reuse) and stay below Linux's pid_max (4194304) unless a single node runs more
        than four million of the corpus's processes.
        """
        last: int | None = None
        ordered = sorted((p for p in self._registered if p.pid == 0), key=lambda p: (p.start_ns, p.seq))
        gaps = []
        for proc in ordered:
            dt_s = 0.0 if last is None else (proc.start_ns - last) / 1e9
            last = proc.start_ns
            gaps.append(rng.expovariate(1.0) * (dt_s * forks_per_s + 4))
        # Squeeze the gaps if a very long or busy corpus would run past pid_max.
        room = _PID_MAX - first_pid - len(ordered)
        total = sum(gaps)
        scale = 1.0 if total <= room else max(0.0, room / total)
        pid = first_pid
        for proc, gap in zip(ordered, gaps, strict=True):
            pid += 1 + int(gap * scale)
            proc.pid = pid


class Container:
    """One container of one pod (``host`` processes have no container)."""

    __slots__ = (
        "id",
        "image",
        "ip",
        "name",
        "node",
        "ns",
        "pod",
        "privileged",
        "start_ns",
        "tag",
    )

    def __init__(
        self,
        *,
        cid: str,
        name: str,
        image: str,
        tag: str,
        ns: str,
        pod: str,
        node: Node,
        privileged: bool,
        start_ns: int,
        ip: str,
    ) -> None:
        self.id = cid
        self.ip = ip
        self.name = name
        self.image = image
        self.tag = tag
        self.ns = ns
        self.pod = pod
        self.node = node
        self.privileged = privileged
        self.start_ns = start_ns


class Proc:
    """A process: the identity Falco attaches to every event it raises.

    ``exe_flags`` is Falco's ``evt.arg.flags`` of the ``execve`` that started it (EXE_WRITABLE,
    EXE_UPPER_LAYER for a binary written after the container started, EXE_FROM_MEMFD ...).
    """

    __slots__ = (
        "container",
        "cwd",
        "exe",
        "exe_flags",
        "exepath",
        "gid",
        "group",
        "loginuid",
        "name",
        "node",
        "parent",
        "pid",
        "seq",
        "start_ns",
        "tail",
        "tty",
        "uid",
        "user",
        "vpid1",
    )

    def __init__(
        self,
        *,
        node: Node,
        container: Container | None,
        parent: Proc | None,
        command: str,
        exepath: str,
        user: str,
        uid: int,
        start_ns: int,
        cwd: str = "/",
        tty: int = 0,
        loginuid: int = -1,
        exe_flags: str | None = None,
        name: str | None = None,
        pid: int = 0,
        vpid1: bool = False,
    ) -> None:
        argv0, _, tail = command.partition(" ")
        self.node = node
        self.container = container
        self.parent = parent
        self.exe = argv0
        self.name = name if name is not None else comm_of(argv0)
        self.tail = tail
        self.exepath = exepath
        self.user = user
        self.uid = uid
        self.group = user if uid != 0 else "root"
        self.gid = uid
        self.loginuid = loginuid
        self.tty = tty
        self.cwd = cwd if cwd.endswith("/") else cwd + "/"
        self.start_ns = start_ns
        self.vpid1 = vpid1
        self.exe_flags = exe_flags if exe_flags is not None else _default_exe_flags(container, uid)
        self.pid = pid
        self.seq = node.register(self)

    @property
    def cmdline(self) -> str:
        """Falco's proc.cmdline: the command name followed by the arguments."""
        return f"{self.name} {self.tail}" if self.tail else self.name

    @property
    def args(self) -> str:
        return self.tail

    def ancestor(self, level: int) -> Proc | None:
        """proc.aname[level]: 1 is the parent, 2 the grandparent..."""
        proc: Proc | None = self
        for _ in range(level):
            if proc is None:
                return None
            proc = proc.parent
        return proc

    def ancestor_names(self) -> list[str]:
        names = []
        proc = self.parent
        while proc is not None:
            names.append(proc.name)
            proc = proc.parent
        return names

    @property
    def ppid(self) -> int:
        return self.parent.pid if self.parent is not None else 0


def _default_exe_flags(container: Container | None, uid: int) -> str:
    # Binaries of the image sit on the overlay's lower layer; root can write them.
    if container is None:
        return "EXE_WRITABLE" if uid == 0 else "0"
    return "EXE_WRITABLE|EXE_LOWER_LAYER" if uid == 0 else "EXE_LOWER_LAYER"


class Sys:
    """One syscall (or audit record) that may raise a Falco alert.

    Only the fields that matter for the syscall type are set; the rest stay ``None``. ``args``
    carries event arguments some rules print (``evt.arg.request`` of ptrace, ``evt.arg.mode`` of
    chmod, the ``ka.*`` fields of a Kubernetes audit record).
    """

    __slots__ = (
        "args",
        "evt_type",
        "fd_name",
        "fd_nameraw",
        "fd_type",
        "flags",
        "l4proto",
        "label",
        "lport",
        "proc",
        "res",
        "rip",
        "rport",
        "seq",
        "sip",
        "t",
    )

    def __init__(self, t: int, proc: Proc, evt_type: str, label: Label) -> None:
        self.t = t
        self.proc = proc
        self.evt_type = evt_type
        self.label = label
        self.fd_name: str | None = None
        self.fd_nameraw: str | None = None
        self.fd_type: str | None = None
        self.l4proto: str | None = None
        self.sip: str | None = None
        self.rip: str | None = None
        self.lport: int | None = None
        self.rport: int | None = None
        self.flags: str | None = None
        self.res: str = "SUCCESS"
        self.args: dict[str, Any] | None = None
        self.seq = 0

    @property
    def is_write(self) -> bool:
        return self.flags is not None and ("O_WRONLY" in self.flags or "O_RDWR" in self.flags)

    @property
    def directory(self) -> str:
        """fd.directory: the path without its last component."""
        name = self.fd_name
        if not name:
            return ""
        head = name.rpartition("/")[0]
        return head or "/"

    @property
    def filename(self) -> str:
        return self.fd_name.rpartition("/")[2] if self.fd_name else ""

    def arg(self, name: str) -> Any:
        return None if self.args is None else self.args.get(name)
