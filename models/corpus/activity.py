"""`Activity`: how generators make processes do things.

An activity is one unit of behaviour (an exec probe, a CI job, a reverse shell) with one ground-truth
`Label`. Its methods create processes and append the syscalls they make to the shared sink. They
take the time of each syscall explicitly: generators own their timelines, the corpus is sorted at
the end.
"""

from __future__ import annotations

from random import Random
from typing import Any, Final

from .model import Container, Label, Proc, Sys

__all__ = ["BIN", "Activity", "Sink"]

# Where common binaries live in the images the corpus uses (Debian-based unless the image says
# otherwise). Falco reports proc.exepath as the path that was executed.
BIN: Final = {
    "sh": "/bin/sh",
    "bash": "/bin/bash",
    "dash": "/bin/dash",
    "cat": "/bin/cat",
    "ls": "/bin/ls",
    "ps": "/bin/ps",
    "grep": "/bin/grep",
    "chmod": "/bin/chmod",
    "mkdir": "/bin/mkdir",
    "rm": "/bin/rm",
    "cp": "/bin/cp",
    "mv": "/bin/mv",
    "tar": "/bin/tar",
    "gzip": "/bin/gzip",
    "date": "/bin/date",
    "uname": "/bin/uname",
    "hostname": "/bin/hostname",
    "sleep": "/bin/sleep",
    "mount": "/bin/mount",
    "umount": "/bin/umount",
    "df": "/bin/df",
    "touch": "/usr/bin/touch",
    "echo": "/bin/echo",
    "id": "/usr/bin/id",
    "whoami": "/usr/bin/whoami",
    "env": "/usr/bin/env",
    "find": "/usr/bin/find",
    "curl": "/usr/bin/curl",
    "wget": "/usr/bin/wget",
    "git": "/usr/bin/git",
    "ssh": "/usr/bin/ssh",
    "scp": "/usr/bin/scp",
    "nc": "/usr/bin/nc",
    "nmap": "/usr/bin/nmap",
    "dig": "/usr/bin/dig",
    "tcpdump": "/usr/bin/tcpdump",
    "nslookup": "/usr/bin/nslookup",
    "python3": "/usr/bin/python3",
    "perl": "/usr/bin/perl",
    "apt-get": "/usr/bin/apt-get",
    "dpkg": "/usr/bin/dpkg",
    "head": "/usr/bin/head",
    "tail": "/usr/bin/tail",
    "truncate": "/usr/bin/truncate",
    "shred": "/usr/bin/shred",
    "top": "/usr/bin/top",
    "free": "/usr/bin/free",
    "nproc": "/usr/bin/nproc",
    "crontab": "/usr/bin/crontab",
    "xargs": "/usr/bin/xargs",
    "nsenter": "/usr/bin/nsenter",
    "chroot": "/usr/sbin/chroot",
    "fdisk": "/sbin/fdisk",
    "tee": "/usr/bin/tee",
    "base64": "/usr/bin/base64",
    "awk": "/usr/bin/awk",
    "sed": "/bin/sed",
    "wc": "/usr/bin/wc",
    "seq": "/usr/bin/seq",
    "timeout": "/usr/bin/timeout",
    "psql": "/usr/bin/psql",
    "strace": "/usr/bin/strace",
    "sudo": "/usr/bin/sudo",
    "journalctl": "/usr/bin/journalctl",
    "systemctl": "/usr/bin/systemctl",
    "crictl": "/usr/local/bin/crictl",
    "socat": "/usr/bin/socat",
    "gdb": "/usr/bin/gdb",
    "capsh": "/sbin/capsh",
    "mkfifo": "/usr/bin/mkfifo",
    "redis-cli": "/usr/local/bin/redis-cli",
    "stat": "/usr/bin/stat",
    "sha256sum": "/usr/bin/sha256sum",
    "make": "/usr/bin/make",
    "npm": "/usr/local/bin/npm",
    "node": "/usr/local/bin/node",
    "pip": "/usr/local/bin/pip",
    "go": "/usr/local/go/bin/go",
    "docker": "/usr/local/bin/docker",
    "kubectl": "/usr/local/bin/kubectl",
    "helm": "/usr/local/bin/helm",
    "pg_dump": "/usr/lib/postgresql/16/bin/pg_dump",
    "pg_isready": "/usr/lib/postgresql/16/bin/pg_isready",
    "aws": "/usr/local/bin/aws",
    "openssl": "/usr/bin/openssl",
    "update-ca-certificates": "/usr/sbin/update-ca-certificates",
    "logrotate": "/usr/sbin/logrotate",
    "iptables-restore": "/usr/sbin/xtables-nft-multi",
    "iptables-save": "/usr/sbin/xtables-nft-multi",
    "ip6tables-save": "/usr/sbin/xtables-nft-multi",
    "ip": "/sbin/ip",
    "runc": "/usr/bin/runc",
    "du": "/usr/bin/du",
    "nice": "/usr/bin/nice",
    "mysqladmin": "/usr/bin/mysqladmin",
    "py-spy": "/usr/local/bin/py-spy",
    "jq": "/usr/bin/jq",
    "dockerd": "/usr/local/bin/dockerd",
    "containerd": "/usr/local/bin/containerd",
    "kustomize": "/usr/local/bin/kustomize",
    "pytest": "/usr/local/bin/python3.12",
    "unzip": "/usr/bin/unzip",
    "ln": "/bin/ln",
}

_EPHEMERAL_LOW: Final = 32768
_EPHEMERAL_HIGH: Final = 60999


class Sink:
    """Every syscall of one corpus, in generation order (sorted by time at the end)."""

    def __init__(self) -> None:
        self.records: list[Sys] = []

    def add(self, s: Sys) -> Sys:
        s.seq = len(self.records)
        self.records.append(s)
        return s


class Activity:
    """One labelled piece of behaviour: creates processes and the syscalls they make."""

    def __init__(self, sink: Sink, rng: Random, label: Label) -> None:
        self.sink = sink
        self.rng = rng
        self.label = label
        self.count = 0

    def _sys(self, t: int, proc: Proc, evt_type: str, label: Label | None = None) -> Sys:
        self.count += 1
        return self.sink.add(Sys(t, proc, evt_type, label or self.label))

    # -- processes ---------------------------------------------------------------------------

    def spawn(
        self,
        t: int,
        parent: Proc,
        command: str,
        *,
        exepath: str | None = None,
        user: str | None = None,
        uid: int | None = None,
        cwd: str | None = None,
        tty: int | None = None,
        container: Container | bool | None = True,
        name: str | None = None,
        dropped_at: int | None = None,
        memfd: bool = False,
        vpid1: bool = False,
        emit: bool = True,
        label: Label | None = None,
    ) -> Proc:
        """``parent`` forks and the child execs ``command``; returns the child.

        The child inherits user, working directory, terminal, login uid and container from the
        parent unless told otherwise (``container=True`` means "the parent's"). ``dropped_at`` marks
        a binary written at that time (into the container's upper layer, or onto the /dev/shm tmpfs,
        which sets no layer flag); ``memfd`` one executed from a memfd. ``emit=False`` creates the
        process without an ``execve`` event (a fork, or a process started before the corpus window).
        """
        argv0 = command.partition(" ")[0]
        base = argv0.rsplit("/", 1)[-1]
        path = exepath or (argv0 if argv0.startswith("/") else BIN.get(base, f"/usr/bin/{base}"))
        ctr: Container | None = parent.container if container is True else (container or None)
        the_uid = parent.uid if uid is None else uid
        flags = None
        if memfd:
            flags = "EXE_WRITABLE|EXE_FROM_MEMFD" if the_uid == 0 else "EXE_FROM_MEMFD"
        elif dropped_at is not None and _on_tmpfs(path):
            # /dev/shm is a tmpfs of its own, not part of the container's overlay: no layer flag.
            flags = "EXE_WRITABLE"
        elif dropped_at is not None:
            flags = "EXE_WRITABLE|EXE_UPPER_LAYER"
        proc = Proc(
            node=parent.node,
            container=ctr,
            parent=parent,
            command=command,
            exepath=path,
            user=parent.user if user is None else user,
            uid=the_uid,
            start_ns=t,
            cwd=cwd or parent.cwd,
            tty=parent.tty if tty is None else tty,
            loginuid=parent.loginuid,
            exe_flags=flags,
            name=name,
            vpid1=vpid1,
        )
        if emit:
            s = self._sys(t, proc, "execve", label)
            if dropped_at is not None:
                s.args = {"exe_ino_ctime": dropped_at}
        return proc

    def announce(self, proc: Proc, *, label: Label | None = None) -> Sys:
        """The ``execve`` of a process created beforehand (a container's entrypoint), at its start."""
        return self._sys(proc.start_ns, proc, "execve", label)

    # -- files -------------------------------------------------------------------------------

    def open_read(
        self, t: int, proc: Proc, path: str, *, raw: str | None = None, label: Label | None = None
    ) -> Sys:
        s = self._sys(t, proc, "openat", label)
        s.fd_name = path
        s.fd_nameraw = raw
        s.fd_type = "file"
        s.flags = "O_RDONLY|O_CLOEXEC" if self.rng.random() < 0.7 else "O_RDONLY"
        return s

    def open_write(
        self,
        t: int,
        proc: Proc,
        path: str,
        flags: str = "O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC",
        *,
        label: Label | None = None,
    ) -> Sys:
        s = self._sys(t, proc, "openat", label)
        s.fd_name = path
        s.fd_type = "file"
        s.flags = flags
        return s

    def append(self, t: int, proc: Proc, path: str, *, label: Label | None = None) -> Sys:
        return self.open_write(t, proc, path, "O_APPEND|O_CREAT|O_WRONLY|O_CLOEXEC", label=label)

    def rename(self, t: int, proc: Proc, old: str, new: str, *, label: Label | None = None) -> Sys:
        s = self._sys(t, proc, "renameat2", label)
        s.fd_name = new
        s.args = {"oldpath": old, "newpath": new}
        return s

    def unlink(self, t: int, proc: Proc, path: str, *, label: Label | None = None) -> Sys:
        s = self._sys(t, proc, "unlinkat", label)
        s.fd_name = path
        s.args = {"name": path}
        return s

    def chmod(self, t: int, proc: Proc, path: str, mode: str = "0755", *, label: Label | None = None) -> Sys:
        s = self._sys(t, proc, "fchmodat", label)
        s.fd_name = path
        s.args = {"filename": path, "mode": _mode_text(mode)}
        return s

    # -- network -----------------------------------------------------------------------------

    def connect(
        self,
        t: int,
        proc: Proc,
        ip: str,
        port: int,
        *,
        proto: str = "tcp",
        src_ip: str | None = None,
        label: Label | None = None,
    ) -> Sys:
        """An outbound connection from ``proc`` (its pod's address unless ``src_ip``)."""
        s = self._sys(t, proc, "connect", label)
        local = src_ip or _local_ip(proc)
        lport = self.rng.randint(_EPHEMERAL_LOW, _EPHEMERAL_HIGH)
        s.fd_type = "ipv4"
        s.l4proto = proto
        s.sip = ip
        s.rip = ip
        s.lport = lport
        s.rport = port
        s.fd_name = f"{local}:{lport}->{ip}:{port}"
        return s

    def connect_unix(self, t: int, proc: Proc, path: str, *, label: Label | None = None) -> Sys:
        s = self._sys(t, proc, "connect", label)
        s.fd_type = "unix"
        s.fd_name = f"{self.rng.getrandbits(64):016x}->{self.rng.getrandbits(64):016x} {path}"
        return s

    def accept(
        self,
        t: int,
        proc: Proc,
        client_ip: str,
        port: int,
        *,
        server_ip: str | None = None,
        label: Label | None = None,
    ) -> Sys:
        """An inbound connection accepted by ``proc`` on ``port``."""
        s = self._sys(t, proc, "accept4", label)
        local = server_ip or _local_ip(proc)
        cport = self.rng.randint(_EPHEMERAL_LOW, _EPHEMERAL_HIGH)
        s.fd_type = "ipv4"
        s.l4proto = "tcp"
        s.sip = local
        s.rip = client_ip
        s.lport = port
        s.rport = cport
        s.fd_name = f"{client_ip}:{cport}->{local}:{port}"
        return s

    def dup2(self, t: int, proc: Proc, sock: Sys, newfd: int, *, label: Label | None = None) -> Sys:
        """``proc`` duplicates the socket of connection ``sock`` onto fd ``newfd`` (0, 1, 2)."""
        s = self._sys(t, proc, "dup2", label)
        s.fd_type = sock.fd_type
        s.l4proto = sock.l4proto
        s.sip, s.rip, s.lport, s.rport, s.fd_name = sock.sip, sock.rip, sock.lport, sock.rport, sock.fd_name
        s.args = {"oldfd": 3, "newfd": newfd}
        return s

    # -- privileged operations ----------------------------------------------------------------

    def syscall(self, t: int, proc: Proc, evt_type: str, label: Label | None = None, **args: Any) -> Sys:
        """Any other syscall (ptrace, setns, mount, memfd_create, setuid...) with its arguments."""
        s = self._sys(t, proc, evt_type, label)
        s.args = dict(args) if args else None
        if evt_type == "mount":
            s.fd_name = str(args.get("dir", "")) or None
        return s

    def audit(self, t: int, proc: Proc, fields: dict[str, Any], *, label: Label | None = None) -> Sys:
        """A Kubernetes audit record (source ``k8s_audit``) with its ``ka.*`` fields.

        ``proc`` only places the record: its node is the Falco instance that received the audit log.
        """
        s = self._sys(t, proc, "k8s_audit", label)
        s.args = dict(fields)
        return s


def _on_tmpfs(path: str) -> bool:
    """Whether an executable at ``path`` sits on a container's /dev/shm tmpfs rather than its overlay."""
    return path == "/dev/shm" or path.startswith("/dev/shm/")


def _local_ip(proc: Proc) -> str:
    return proc.container.ip if proc.container is not None else proc.node.ip


_MODE_BITS: Final = (
    (0o4000, "S_ISUID"),
    (0o2000, "S_ISGID"),
    (0o1000, "S_ISVTX"),
    (0o400, "S_IRUSR"),
    (0o200, "S_IWUSR"),
    (0o100, "S_IXUSR"),
    (0o40, "S_IRGRP"),
    (0o20, "S_IWGRP"),
    (0o10, "S_IXGRP"),
    (0o4, "S_IROTH"),
    (0o2, "S_IWOTH"),
    (0o1, "S_IXOTH"),
)


def _mode_text(mode: str) -> str:
    """Falco prints chmod modes as the octal value followed by the bit names."""
    value = int(mode, 8)
    names = "|".join(name for bit, name in _MODE_BITS if value & bit)
    return f"0{value:o}({names})"
