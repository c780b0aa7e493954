"""FalcoEvent → the integers and numbers the kernels consume.

Every text field becomes a stable 32-bit hash (``zlib.crc32`` of its UTF-8 bytes, after normalising
volatile parts), so training, serving and a restarted process agree. ``0`` means *missing*: absent
keys, ``null``, ``""`` and Falco's ``"<NA>"`` all hash to 0 (the CRC of no bytes is 0), and the kernels
turn a 0 into the feature's neutral value. Nothing here raises on odd input: any ``FieldValue`` (lists,
bools, numbers where text was expected, lone surrogates) maps to some token.

Normalisation, so keys generalise across pods, pids and versions:

* paths (files, executables): UUIDs → ``#``, Kubernetes-generated suffixes (``-7pvgs``) → ``-*``,
  hex runs of 8+ characters that contain a digit → ``#``, then every digit run → ``#``
  (``/proc/1234/status`` → ``/proc/#/status``, ``/var/lib/kubelet/pods/<uuid>/volumes/…/
  kube-api-access-7pvgs`` → ``/var/lib/kubelet/pods/#/volumes/…/kube-api-access-*``);
* process names: digit runs of 3+ → ``#`` (``worker-18231`` → ``worker-#``; ``python3`` is kept);
* images: registry host, ``library/``, tag and digest are dropped (``docker.io/library/nginx:1.25``
  → ``nginx``); pod names lose Kubernetes' generated suffixes (``web-7d9f8c6b5-x2k4q`` → ``web``);
* remote endpoints: IPv4 /16 or IPv6 /48 plus the port, ephemeral ports (≥ 32768) pooled.

Caches are plain dicts cleared when full; they change speed only, never values.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Hashable
from typing import Final, TypeVar

import numpy as np
from numba import njit

from aerie.proto.event import FalcoEvent, FieldValue

__all__ = [
    "FIXED_POINT",
    "KIND_EXEC",
    "KIND_FILE",
    "KIND_NET",
    "KIND_OTHER",
    "N_TOKENS",
    "Tokenizer",
    "Tokens",
    "entropy_python",
    "image_key",
    "normalise_name",
    "normalise_path",
    "pod_prefix",
    "sensitivity",
    "stable_hash",
]

KIND_OTHER: Final = 0
KIND_EXEC: Final = 1
KIND_FILE: Final = 2
KIND_NET: Final = 3

#: Fixed-point scale of the fractional tokens (command-line length and entropy, sensitivity): all
#: tokens are int64, so a batch is one ``np.array(rows, int64)``. 2**-24 is below float32 resolution
#: at these magnitudes.
FIXED_POINT: Final = 1 << 24

#: Token layout, the kernels' argument order after the state arrays:
#:   time_ns, rule, evt, pid, ppid                                  (per event)
#:   name, pname, exe, identity, ctx, ns, node+container, root,
#:   cmd_len, cmd_entropy, actor_sensitivity                        (per actor: cached)
#:   kind, file, file_top, endpoint, fd_sensitivity                 (per file/socket: cached)
#: Hashes are 32-bit, 0 = missing. fd_sensitivity is -1 when the event names no fd at all.
N_TOKENS: Final = 21
Tokens = tuple[int, ...]
_Actor = tuple[int, int, int, int, int, int, int, int, int, int, int]
_Fd = tuple[int, int, int, int, int]

_CACHE_MAX: Final = 1 << 16
_MISSING: Final = frozenset({"", "<NA>", "N/A", "null"})
_EXEC_TYPES: Final = frozenset({"execve", "execveat"})
_INBOUND_TYPES: Final = frozenset({"accept", "accept4", "listen", "bind"})
_FILE_FD_TYPES: Final = frozenset({"file", "directory", "unix", "f", "d", "u"})
_UNIX_FD_TYPES: Final = frozenset({"unix", "u"})
_NET_FD_TYPES: Final = frozenset({"ipv4", "ipv6", "4", "6"})
_EPHEMERAL_PORT: Final = 32768
_ID_LIMIT: Final = 1 << 32  # pids/tids beyond this are not real; keeps the kernel's int64 maths exact
_TIME_MAX: Final = (1 << 63) - 1

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_RUN: Final = re.compile(r"(?<![0-9A-Za-z])(?=[a-fA-F]*[0-9])[0-9a-fA-F]{8,}(?![0-9A-Za-z])")
_DIGITS: Final = re.compile(r"[0-9]+")
_LONG_DIGITS: Final = re.compile(r"[0-9]{3,}")
# Kubernetes' generated name suffixes use this alphabet (no vowels, no 0/1/3): pod names, replica-set
# hashes, projected volume names (kube-api-access-7pvgs).
_K8S_SUFFIX: Final = re.compile(r"[bcdfghjklmnpqrstvwxz2456789]{5,10}\Z|[0-9]+\Z")
_K8S_GENERATED: Final = re.compile(r"-[bcdfghjklmnpqrstvwxz2456789]{5,10}(?![0-9A-Za-z])")

# Sensitive locations, matched at every "/" of a path or command line (raw text: digits in /proc/<pid>
# need no normalising). The highest weight wins. 1.0: credentials, kernel and runtime control,
# reverse-shell devices. 0.6: system configuration and persistence locations. Executables in
# world-writable or hidden directories weigh 0.8 (`_WRITABLE_EXE`). Every alternative starts after a
# "/" and the match only consumes that "/", so overlapping locations (/root/.ssh/) are all seen, and
# the regex engine can skip ahead to the next "/".
_SENSITIVE_HIGH: Final = (
    r"etc/g?shadow|etc/sudoers|\.ssh/|id_(?:rsa|dsa|ecdsa|ed25519)\b|(?:var/)?run/secrets/"
    r"|\.kube/config|etc/kubernetes/|var/lib/kubelet/|\.aws/credentials|\.docker/config\.json"
    r"|proc/(?:[0-9]+|self|#)/(?:mem|environ|maps)\b|proc/kcore|dev/(?:mem|kmem|port)\b|dev/(?:tcp|udp)/"
    r"|(?:docker|containerd|crio|cri-dockerd)\.sock|etc/ssl/private|etc/ld\.so\.preload"
    r"|release_agent|proc/sysrq-trigger|\.gnupg/"
)
_SENSITIVE_LOW: Final = (
    r"etc/passwd|etc/group\b|etc/cron|var/spool/cron|etc/systemd/|etc/init\.d/|etc/rc\.local"
    r"|etc/profile|\.bashrc|\.bash_profile|\.profile\b|\.bash_history|etc/pam\.d/"
    r"|etc/security/|lib/modules/|boot/|sys/kernel/|proc/sys/|root/|etc/pki/"
)
_SENSITIVE: Final = re.compile(f"/(?=(?P<high>{_SENSITIVE_HIGH})|(?P<low>{_SENSITIVE_LOW}))")
_WRITABLE_EXE: Final = re.compile(r"\A/(?:tmp|dev/shm|var/tmp|run/user|dev/mqueue)/|/\.[^/]+/")


def stable_hash(text: str) -> int:
    """CRC-32 of the UTF-8 bytes: stable across processes and machines; ``""`` → 0."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def normalise_path(path: str) -> str:
    """Volatile path parts → ``#`` (ids, pids, numbered files)."""
    if "-" in path:
        path = _K8S_GENERATED.sub("-*", _UUID.sub("#", path))
    return _DIGITS.sub("#", _HEX_RUN.sub("#", path))


def normalise_name(name: str) -> str:
    """Process name with long digit runs and hex ids → ``#``."""
    return _LONG_DIGITS.sub("#", _HEX_RUN.sub("#", name))


def image_key(image: str) -> str:
    """Image reference → repository without registry host, ``library/``, tag or digest."""
    image = image.split("@", 1)[0]
    if image.rfind(":") > image.rfind("/"):
        image = image[: image.rfind(":")]
    parts = image.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def pod_prefix(pod: str) -> str:
    """Pod name without the suffixes Kubernetes generates (replica-set hash, random id, ordinal)."""
    parts = pod.split("-")
    for _ in range(2):
        if len(parts) > 1 and _K8S_SUFFIX.match(parts[-1]):
            parts.pop()
    return "-".join(parts)


def sensitivity(text: str) -> float:
    """Highest weight of a sensitive location named in ``text`` (0.0 when none)."""
    if "/" not in text:
        return 0.0
    best = 0.0
    for m in _SENSITIVE.finditer(text):
        if m.lastgroup == "high":
            return 1.0
        best = 0.6
    return best


@njit(cache=True)
def _entropy_jit(data: bytes) -> float:  # pragma: no cover - compiled
    n = len(data)
    if n == 0:
        return 0.0
    counts = np.zeros(256, np.int64)
    for c in data:
        counts[c] += 1
    acc = 0.0
    for k in counts:
        if k > 0:
            acc += k * math.log2(k)
    return max(0.0, math.log2(n) - acc / n)


def entropy_python(data: bytes) -> float:
    """Shannon entropy of ``data`` in bits per byte (plain Python; same definition as the kernel)."""
    n = len(data)
    if n == 0:
        return 0.0
    counts = [0] * 256
    for c in data:
        counts[c] += 1
    acc = 0.0
    for k in counts:
        if k > 0:
            acc += k * math.log2(k)
    return max(0.0, math.log2(n) - acc / n)


def _text(value: FieldValue) -> str:
    """A field value as text; every flavour of missing → ``""``.

    Values Python considers equal get the same text (``True``, ``1`` and ``1.0`` → ``"1"``), so the
    token caches, which are dicts keyed on raw values, can never change a result.
    """
    if value.__class__ is str:
        return "" if value in _MISSING else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)  # pragma: no cover - FieldValue is closed


def _int(value: FieldValue) -> int:
    """A pid-like field → non-negative int, or -1 when missing or not a number."""
    if value.__class__ is int:
        return value if 0 <= value < _ID_LIMIT else -1
    if isinstance(value, str) and value.isdigit() and len(value) < 12:
        return int(value) if int(value) < _ID_LIMIT else -1
    if isinstance(value, float) and value.is_integer() and 0 <= value < _ID_LIMIT:
        return int(value)
    return -1


def _split_hostport(text: str) -> tuple[str, str]:
    """``1.2.3.4:80`` / ``[::1]:80`` / ``::1:80`` → (host, port); no port → (text, "")."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text, ""
    return host.strip("[]"), port


def _mask_ip(ip: str) -> str:
    """IPv4 /16, IPv6 /48: cloud services rotate addresses inside large blocks, pods churn inside the
    pod CIDR; the block plus the port is what stays stable."""
    if "." in ip and ":" not in ip:
        return ".".join(ip.split(".")[:2])
    if ":" in ip:
        return ":".join(ip.split(":")[:3])
    return ip


def _port_class(port: str) -> str:
    if port.isdigit() and int(port) >= _EPHEMERAL_PORT:
        return "eph"
    return port


class Tokenizer:
    """Turns `FalcoEvent`s into kernel tokens. Holds only speed caches (bounded dicts).

    Each cache is keyed on the raw field values its group reads (fallback fields included), so a hit
    returns exactly what a miss would compute. Unhashable raw values (lists) bypass the caches.

    ``entropy`` computes the command line's bits per byte; the default is a compiled kernel, the
    plain-Python baseline passes `entropy_python` (same definition).
    """

    def __init__(self, entropy: Callable[[bytes], float] | None = None) -> None:
        self._entropy = entropy if entropy is not None else _entropy_jit
        self._hash: dict[str, int] = {}
        self._actors: dict[tuple[FieldValue, ...], _Actor] = {}
        self._fds: dict[tuple[FieldValue, ...], _Fd] = {}
        # Second-level caches, consulted only when a group misses (a new command line in a known
        # container should not redo the container's and the executable's work).
        self._names: dict[str, int] = {}
        self._exes: dict[str, tuple[int, float]] = {}
        self._cmds: dict[str, tuple[int, int, float]] = {}
        self._contexts: dict[tuple[FieldValue, ...], tuple[int, int, int]] = {}

    def _h(self, value: FieldValue) -> int:
        if value.__class__ is not str:
            return stable_hash(_text(value))
        h = self._hash.get(value)
        if h is None:
            if len(self._hash) >= _CACHE_MAX:
                self._hash.clear()
            h = self._hash[value] = stable_hash(_text(value))
        return h

    def _actor(self, key: tuple[FieldValue, ...]) -> _Actor:
        try:
            return self._actors[key]
        except KeyError:
            pass
        except TypeError:
            return self._actor_tokens(key)
        if len(self._actors) >= _CACHE_MAX:
            self._actors.clear()
        got = self._actors[key] = self._actor_tokens(key)
        return got

    def _fd(self, key: tuple[FieldValue, ...]) -> _Fd:
        try:
            return self._fds[key]
        except KeyError:
            pass
        except TypeError:
            return _fd_tokens(key)
        if len(self._fds) >= _CACHE_MAX:
            self._fds.clear()
        got = self._fds[key] = _fd_tokens(key)
        return got

    def tokens(self, event: FalcoEvent) -> Tokens:
        """The kernel's inputs for one event (layout above). Never raises on field contents."""
        get = event.output_fields.get
        evt = get("evt.type")
        key = (
            get("proc.name"),
            get("proc.exepath"),
            get("proc.exe"),
            get("proc.pname"),
            get("proc.aname[1]"),
            get("proc.cmdline"),
            get("proc.args"),
            get("user.uid"),
            get("user.name"),
            get("container.image.repository"),
            get("container.image"),
            get("k8s.ns.name"),
            get("k8s.pod.name"),
            get("container.name"),
            get("container.id"),
            get("proc.tty"),
            get("user.loginuid"),
            event.hostname,
        )
        try:
            actor = self._actors[key]
        except (KeyError, TypeError):
            actor = self._actor(key)
        fdname = get("fd.name")
        if fdname is None:
            fd = self._fd(
                (
                    evt,
                    None,
                    get("fd.type"),
                    get("fs.path.name"),
                    get("evt.arg.path"),
                    get("fd.rip"),
                    get("fd.sip"),
                    get("fd.rport"),
                    get("fd.sport"),
                    get("fd.lport"),
                )
            )
        else:
            if fdname.__class__ is str and "->" in fdname:
                # A connection tuple: only the server side counts (the client's ephemeral port would
                # make every connection a cache miss).
                fdname = "->" + fdname.partition("->")[2]
            fd = self._fd((evt, fdname, get("fd.type")))
        pid = get("thread.tid")
        if pid is not None and (pid.__class__ is not int or not 0 <= pid < _ID_LIMIT):
            pid = _int(pid)
        if pid is None or pid < 0:
            pid = get("proc.pid")
            if pid.__class__ is not int or not 0 <= pid < _ID_LIMIT:
                pid = _int(pid)
                if pid < 0:
                    pid = _int(get("proc.vpid"))
        ppid = get("proc.ppid")
        if ppid.__class__ is not int or not 0 <= ppid < _ID_LIMIT:
            ppid = _int(ppid)
        t_ns = event.time_ns
        if not 0 <= t_ns <= _TIME_MAX:
            t_ns = 0 if t_ns < 0 else _TIME_MAX
        hashes = self._hash
        rule = hashes.get(event.rule)
        if rule is None:
            rule = self._h(event.rule)
        h_evt = hashes.get(evt) if evt.__class__ is str else None
        if h_evt is None:
            h_evt = self._h(evt)
        return (t_ns, rule, h_evt, pid, ppid, *actor, *fd)

    def _actor_tokens(self, key: tuple[FieldValue, ...]) -> _Actor:
        """Process, user and workload tokens (see the layout above)."""
        name_v, exepath_v, exe_v, pname_v, aname_v, cmd_v, args_v, uid_v, user_v = key[:9]
        name = _text(name_v)
        exe = _text(exepath_v) or _text(exe_v)
        if not name and exe:
            name = exe.rsplit("/", 1)[-1]
        pname = _text(pname_v) or _text(aname_v)
        cmd = _text(cmd_v)
        if not cmd:
            args = _text(args_v)
            cmd = name + " " + args if args else ""
        if not name and cmd:
            name = cmd.split(" ", 1)[0].rsplit("/", 1)[-1]
        h_exe, exe_sens = _cached(self._exes, exe, _exe_tokens)
        cmd_len, cmd_ent, cmd_sens = _cached(self._cmds, cmd, self._cmd_tokens)
        tty_v, loginuid_v, host = key[15:18]
        uid = _text(uid_v)
        user = uid or _text(user_v)
        root = 1 if uid == "0" or (not uid and user == "root") else 0
        h_user = 0
        if user:
            # Identity: who, whether on a terminal, whether inside a login session (auid set).
            tty = _text(tty_v)
            loginuid = _text(loginuid_v)
            h_user = stable_hash(
                ("u:" if uid else "n:")
                + user
                + ("|tty" if tty not in {"", "0"} else "")
                + ("|login" if loginuid not in {"", "-1", "4294967295"} else "")
            )
        ctx_key = key[9:15]
        try:
            h_ctx, h_ns, h_cont = _cached(self._contexts, ctx_key, _context_tokens)
        except TypeError:  # a list among the values
            h_ctx, h_ns, h_cont = _context_tokens(ctx_key)
        if host:
            # Streams and bursts are per node: pids and host processes of two nodes must not mix when
            # one extractor reads a whole cluster's events (training). Rarity stays cluster-wide.
            h_cont = stable_hash(f"{host}|{h_cont}")
        return (
            _cached(self._names, name, _name_hash),
            _cached(self._names, pname, _name_hash),
            h_exe,
            h_user,
            h_ctx,
            h_ns,
            h_cont,
            root,
            cmd_len,
            cmd_ent,
            _fixed(max(exe_sens, cmd_sens)),
        )

    def _cmd_tokens(self, cmd: str) -> tuple[int, int, float]:
        """(fixed-point ln(1 + bytes), fixed-point bits per byte, sensitivity) of a command line."""
        if not cmd:
            return 0, 0, 0.0
        data = cmd.encode("utf-8", "surrogatepass")
        return (
            _fixed(min(12.0, math.log1p(len(data)))),
            _fixed(float(self._entropy(data))),
            sensitivity(cmd),
        )


def _fixed(value: float) -> int:
    return round(value * FIXED_POINT)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _cached(cache: dict[_K, _V], key: _K, compute: Callable[[_K], _V]) -> _V:
    got = cache.get(key)
    if got is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        got = cache[key] = compute(key)
    return got


def _name_hash(name: str) -> int:
    return stable_hash(normalise_name(name))


def _exe_tokens(exe: str) -> tuple[int, float]:
    """(hash of the normalised executable path, sensitivity); (0, 0.0) when missing."""
    if not exe:
        return 0, 0.0
    norm = normalise_path(exe)
    return stable_hash(norm), max(sensitivity(exe), 0.8 if _WRITABLE_EXE.search(norm) else 0.0)


def _fd_tokens(key: tuple[FieldValue, ...]) -> _Fd:
    """(kind, file hash, top-directory hash, endpoint hash, fixed-point sensitivity or -1 for no fd)."""
    evt = _text(key[0])
    fdname = _text(key[1])
    fdtype = _text(key[2])
    rip = rport = lport = ""
    if len(key) > 3:
        fdname = fdname or _text(key[3]) or _text(key[4])
        rip = _text(key[5]) or _text(key[6])
        rport = _text(key[7]) or _text(key[8])
        lport = _text(key[9])
    if fdtype in _UNIX_FD_TYPES:
        # Unix sockets: libsinsp may print "<addr>-><addr> /path"; the path is what identifies them.
        fdname = fdname.rsplit(" ", 1)[-1] if "->" in fdname else fdname
        rip = rport = lport = ""
    h_ep = _endpoint(evt, fdname, rip, rport, lport) if fdtype not in _UNIX_FD_TYPES else 0
    if evt in _EXEC_TYPES:
        return KIND_EXEC, 0, 0, h_ep, 0 if fdname else -1
    if h_ep:
        return KIND_NET, 0, 0, h_ep, 0
    if not fdname:
        return KIND_OTHER, 0, 0, 0, -1
    norm = normalise_path(fdname)
    # A path that climbs out of where it started ("/../") is how traversal looks in a syscall.
    sens = _fixed(max(sensitivity(fdname), 0.6 if "/../" in fdname else 0.0))
    if fdtype in _FILE_FD_TYPES or (not fdtype and fdname.startswith("/")):
        cut = norm.find("/", 1)
        top = norm[:cut] if norm.startswith("/") and cut > 0 else (norm if norm.startswith("/") else ".")
        return KIND_FILE, stable_hash(norm), stable_hash(top), 0, sens
    return KIND_OTHER, 0, 0, 0, sens if fdtype not in _NET_FD_TYPES else 0


def _endpoint(evt: str, fdname: str, rip: str, rport: str, lport: str) -> int:
    """Hash of the remote endpoint (outbound) or local service port (inbound); 0 when none."""
    server_ip = server_port = ""
    if "->" in fdname:
        _, _, server = fdname.partition("->")
        server_ip, server_port = _split_hostport(server)
    elif not (rip or rport or lport):
        return 0
    if evt in _INBOUND_TYPES:
        port = lport or server_port or rport
        return stable_hash("in|" + _port_class(port)) if port else 0
    ip = rip or server_ip
    port = rport or server_port
    return stable_hash("out|" + _mask_ip(ip) + "|" + _port_class(port)) if (ip or port) else 0


def _context_tokens(key: tuple[FieldValue, ...]) -> tuple[int, int, int]:
    """(workload context hash, namespace hash, container hash)."""
    image = _text(key[0]) or _text(key[1])
    ns, pod, cname, cid = (_text(v) for v in key[2:])
    if image:
        ctx = "i:" + image_key(image)
    elif pod:
        ctx = "p:" + ns + "/" + pod_prefix(pod)
    elif cname and cid != "host":
        ctx = "c:" + normalise_name(cname)
    elif cid == "host":
        ctx = "h"
    elif cid:
        ctx = "x:" + cid
    elif ns:
        ctx = "n:" + ns
    else:
        ctx = ""
    return stable_hash(ctx), stable_hash(ns), stable_hash(cid or ctx)
