"""The Falco rules the corpus raises, and how a syscall becomes a Falco alert.

Two families of rules, evaluated in this order (Falco's default ``rule_matching: first``: the first
rule whose condition matches an event raises the alert, later rules are not evaluated):

1. A subset of the upstream rules from falcosecurity/rules (``falco_rules.yaml``,
   ``falco-incubating_rules.yaml``, ``falco-sandbox_rules.yaml``), in file order, with their real
   names, priorities, tags and output formats. Their conditions are re-implemented here in Python,
   simplified to the cases the simulation produces (the exclusion lists that matter are kept, so
   e.g. ``postgres`` running ``wal-e`` does not raise "DB program spawned process").
2. aerie's own broad audit rules (`BASELINE_RULES`): process spawned, outbound and inbound
   connection, file opened for writing, sensitive file opened, file renamed or removed, file
   permissions changed, privileged syscall. They catch what the upstream rules leave, so most of a
   deployment's events are ordinary activity at Informational/Notice priority. Their Falco
   conditions are kept in `Rule.falco_condition` for the rules file aerie will ship.

Rendering follows Falco's JSON output: ``output`` is ``"HH:MM:SS.nnnnnnnnn: Priority <text>"`` with
every ``%field`` substituted (``<NA>`` for a missing value) and ``%container.info`` expanded as with
``-pk``; ``output_fields`` holds every field the output names (typed: ints stay ints) plus
`EXTRA_FIELDS`, the identity fields aerie's Falco configuration appends to every syscall rule
(``append_output: [{match: {source: syscall}, extra_fields: [...]}]``), and ``evt.time``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final

from aerie.proto.event import FieldValue, Priority

from .model import NS_PER_S, Proc, Sys

__all__ = [
    "BASELINE_RULES",
    "EXTRA_FIELDS",
    "RULES",
    "STOCK_RULES",
    "Rule",
    "RuleEngine",
    "describe",
]

# Fields aerie's Falco configuration appends to every syscall alert, so every event carries the
# identity the anomaly model needs whatever rule raised it.
EXTRA_FIELDS: Final = (
    "evt.type",
    "proc.pid",
    "proc.ppid",
    "proc.name",
    "proc.exepath",
    "proc.cmdline",
    "proc.pname",
    "proc.aname[2]",
    "proc.cwd",
    "proc.tty",
    "user.name",
    "user.uid",
    "user.loginuid",
    "container.id",
    "container.name",
    "container.image.repository",
    "container.image.tag",
    "k8s.ns.name",
    "k8s.pod.name",
    "fd.name",
    "fd.type",
    "fd.sip",
    "fd.rip",
    "fd.rport",
    "fd.l4proto",
)

# What -pk makes of %container.info (Falco >= 0.36).
_CONTAINER_INFO: Final = (
    "container_id=%container.id container_image=%container.image.repository "
    "container_image_tag=%container.image.tag container_name=%container.name "
    "k8s_ns=%k8s.ns.name k8s_pod_name=%k8s.pod.name"
)

_TAIL: Final = (
    "evt_type=%evt.type user=%user.name user_uid=%user.uid user_loginuid=%user.loginuid "
    "process=%proc.name proc_exepath=%proc.exepath parent=%proc.pname command=%proc.cmdline "
    "terminal=%proc.tty exe_flags=%evt.arg.flags %container.info"
)
_NET: Final = "connection=%fd.name lport=%fd.lport rport=%fd.rport fd_type=%fd.type fd_proto=fd.l4proto "

# ---------------------------------------------------------------------------------------------
# Lists from the upstream rules files (the parts the simulation can hit).

SHELLS: Final = frozenset({"ash", "bash", "csh", "ksh", "sh", "tcsh", "zsh", "dash"})
_HTTP_SERVERS: Final = frozenset({"nginx", "httpd", "httpd-foregroun", "lighttpd", "apache", "apache2"})
_DB_SERVERS: Final = frozenset({"mysqld", "postgres", "sqlplus"})
_NOSQL_SERVERS: Final = frozenset({"couchdb", "memcached", "redis-server", "rabbitmq-server", "mongod"})
_PROTECTED_SPAWNERS: Final = (
    _HTTP_SERVERS | _DB_SERVERS | _NOSQL_SERVERS | {"fluentd", "flanneld", "splunkd", "consul", "smbd"}
)
_PACKAGE_MGMT: Final = frozenset(
    {
        "dpkg",
        "dpkg-preconfigu",
        "dpkg-reconfigur",
        "dpkg-divert",
        "apt",
        "apt-get",
        "aptitude",
        "frontend",
        "preinst",
        "add-apt-reposit",
        "apt-auto-remova",
        "apt-key",
        "apt-listchanges",
        "unattended-upgr",
        "apt-add-reposit",
        "apt-cache",
        "apt.systemd.dai",
        "rpm",
        "yum",
        "dnf",
        "microdnf",
        "update-alternat",
        "gem",
        "npm",
        "pip",
        "pip3",
        "conda",
        "apk",
        "snapd",
    }
)
_USER_MGMT: Final = frozenset(
    {
        "login",
        "systemd",
        "systemd-logind",
        "su",
        "nologin",
        "passwd",
        "useradd",
        "usermod",
        "chpasswd",
        "adduser",
        "addgroup",
        "unix_chkpwd",
        "groupadd",
        "userdel",
        "chage",
        "sg",
    }
)
_USEREXEC: Final = frozenset({"sudo", "su", "suexec", "critical-stack", "dzdo"})
_CRON: Final = frozenset({"anacron", "cron", "crond", "crontab"})
_READ_SENSITIVE_TRUSTED: Final = frozenset(
    {
        "iptables",
        "ps",
        "lsb_release",
        "check-new-relea",
        "dumpe2fs",
        "accounts-daemon",
        "sshd",
        "vsftpd",
        "systemd",
        "mysql_install_d",
        "psql",
        "screen",
        "debconf-show",
        "sa-update",
        "pam-auth-update",
        "pam-config",
        "polkit-agent-he",
        "lsattr",
        "file",
        "sosreport",
    }
)
_SENSITIVE_FILES: Final = frozenset(
    {"/etc/shadow", "/etc/sudoers", "/etc/pam.conf", "/etc/security/pwquality.conf"}
)
_NETWORK_TOOLS: Final = frozenset(
    {
        "nc",
        "ncat",
        "netcat",
        "nmap",
        "dig",
        "tcpdump",
        "tshark",
        "ngrep",
        "telnet",
        "mitmproxy",
        "socat",
        "zmap",
    }
)
_REMOTE_COPY: Final = frozenset({"rsync", "scp", "sftp", "dcp"})
_K8S_CLIENTS: Final = frozenset({"docker", "kubectl", "crictl"})
_SSH_BINARIES: Final = frozenset(
    {
        "sshd",
        "sftp-server",
        "ssh-agent",
        "ssh",
        "scp",
        "sftp",
        "ssh-keygen",
        "ssh-keysign",
        "ssh-keyscan",
        "ssh-add",
    }
)
_LOG_FILES: Final = frozenset(
    {
        "syslog",
        "auth.log",
        "secure",
        "kern.log",
        "cron",
        "user.log",
        "dpkg.log",
        "last.log",
        "yum.log",
        "access_log",
        "mysql.log",
        "mysqld.log",
    }
)
_DOCKER_BINARIES: Final = frozenset(
    {
        "docker",
        "dockerd",
        "containerd-shim",
        "runc:[1:CHILD]",
        "pause",
        "exe",
        "docker-compose",
        "docker-entrypoi",
    }
)
_K8S_BINARIES: Final = frozenset(
    {"hyperkube", "skydns", "kube2sky", "exechealthz", "weave-net", "loopback", "bridge"}
)
_CONTAINER_ENTRYPOINT_PARENTS: Final = frozenset(
    {
        "runc:[0:PARENT]",
        "runc:[1:CHILD]",
        "runc",
        "docker-runc",
        "exe",
        "docker-runc-cur",
        "containerd-shim",
        "systemd",
        "crio",
    }
)
# Images allowed to talk to the API server (macro k8s_containers), and the privileged allow-list.
_K8S_CONTAINERS: Final = frozenset(
    {
        "docker.io/sysdig/sysdig",
        "fluent/fluentd-kubernetes-daemonset",
        "prom/prometheus",
        "falcosecurity/falco",
        "docker.io/falcosecurity/falco",
        "docker.io/falcosecurity/falco-no-driver",
        "velero/velero",
        "quay.io/jetstack/cert-manager-cainjector",
        "weaveworks/kured",
        "quay.io/prometheus-operator/prometheus-operator",
        "registry.k8s.io/ingress-nginx/kube-webhook-certgen",
        "docker.io/bitnami/prometheus",
        "docker.io/bitnami/kube-state-metrics",
    }
)
_FALCO_PRIVILEGED_IMAGES: Final = frozenset(
    {
        "docker.io/falcosecurity/falco",
        "falcosecurity/falco",
        "docker.io/calico/node",
        "calico/node",
        "registry.k8s.io/kube-proxy",
        "quay.io/calico/node",
        "registry.k8s.io/dns/k8s-dns-node-cache",
    }
)
_WRITE_ETC_ALLOWED: Final = (
    frozenset(
        {
            "passwd",
            "useradd",
            "chpasswd",
            "update-ca-certi",
            "ldconfig",
            "ldconfig.real",
            "confd",
            "gpg",
            "certbot",
            "runsv",
            "falcoctl",
            "pilot-agent",
            "nginx-ingress-c",
            "nginx",
        }
    )
    | _PACKAGE_MGMT
)
_MONITORED_DIRS: Final = frozenset(
    {
        "/boot",
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/root/.ssh",
    }
)
_BIN_DIRS: Final = frozenset({"/bin", "/sbin", "/usr/bin", "/usr/sbin"})
_PTRACE_ATTACH: Final = (
    "PTRACE_POKETEXT",
    "PTRACE_POKEDATA",
    "PTRACE_ATTACH",
    "PTRACE_SEIZE",
    "PTRACE_SETREGS",
)
_STRATUM: Final = ("stratum+tcp", "stratum2+tcp", "stratum+ssl", "stratum2+ssl")
_PRIVATE_KEY_MARKERS: Final = (
    "begin private",
    "begin openssh private",
    "begin rsa private",
    "begin dsa private",
    "begin ec private",
)
_AWS_MARKERS: Final = (
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "accesskeyid",
    "secretaccesskey",
)
_API_SERVER_IP: Final = "10.96.0.1"
_METADATA_IP: Final = "169.254.169.254"

# What aerie's "sensitive file opened" rule watches (credentials a pod or node should rarely read),
# term for term as its Falco condition writes it: exact names (`in`), path prefixes (`pmatch`: the
# path itself or anything below it), name endings (`endswith`) and one `glob`.
SENSITIVE_NAMES: Final = frozenset({"/etc/shadow", "/etc/gshadow", "/etc/sudoers"})
SENSITIVE_PREFIXES: Final = (
    "/etc/pam.d",
    "/etc/kubernetes",
    "/etc/ssl/private",
    "/root/.ssh",
    "/root/.aws",
    "/root/.kube",
    "/var/lib/kubelet/pki",
    "/var/run/secrets/kubernetes.io",
    "/run/secrets/kubernetes.io",
    "/proc/sys/kernel",
)
SENSITIVE_SUFFIXES: Final = ("/.aws/credentials", "/.kube/config", "/.pgpass")
_ENVIRON_GLOB: Final = "/proc/*/environ"
# What "aerie: file opened for writing" leaves out: `not fd.name pmatch (...)` and
# `not fd.directory in (...)`.
WRITE_EXCLUDED_PREFIXES: Final = ("/dev", "/proc/self", "/sys/fs/cgroup")
WRITE_EXCLUDED_DIRS: Final = frozenset({"/tmp/.X11-unix"})
# The unix-socket half of "aerie: outbound connection": `fd.name endswith .sock and (fd.name contains
# containerd or fd.name contains docker or fd.name contains crio)`.
_RUNTIME_SOCKET_WORDS: Final = ("containerd", "docker", "crio")


def pmatch(path: str, prefixes: Sequence[str]) -> bool:
    """Falco's ``pmatch``: ``path`` is one of ``prefixes`` or lies below one (whole components only).

    ``/etc/pam.d`` matches ``/etc/pam.d`` and ``/etc/pam.d/sshd`` but not ``/etc/pam.dx``.
    """
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def falco_glob(path: str, pattern: str) -> bool:
    """Falco's ``glob`` (fnmatch without FNM_PATHNAME: ``*`` also matches ``/``; case-sensitive)."""
    return fnmatchcase(path, pattern)


def is_sensitive_path(path: str) -> bool:
    """Whether "aerie: sensitive file opened" watches ``path`` (the name part of its condition)."""
    return (
        path in SENSITIVE_NAMES
        or pmatch(path, SENSITIVE_PREFIXES)
        or path.endswith(SENSITIVE_SUFFIXES)
        or falco_glob(path, _ENVIRON_GLOB)
    )


def is_runtime_socket(name: str) -> bool:
    """Whether a unix socket's ``fd.name`` is one "aerie: outbound connection" reports."""
    return name.endswith(".sock") and any(word in name for word in _RUNTIME_SOCKET_WORDS)


# ---------------------------------------------------------------------------------------------
# Conditions.


def _spawned(s: Sys) -> bool:
    return s.evt_type in ("execve", "execveat")


def _in_container(s: Sys) -> bool:
    return s.proc.container is not None


def _succeeded(s: Sys) -> bool:
    """``evt.rawres >= 0`` (and, for opens, ``fd.num >= 0``): the corpus writes failures as errno names."""
    return s.res == "SUCCESS"


def _open_read(s: Sys) -> bool:
    # open_read/open_write require fd.num>=0: a failed open raises neither. evt.is_open_read holds for
    # O_RDONLY and O_RDWR (libs encode O_RDWR as O_RDONLY|O_WRONLY), so an O_RDWR open is both.
    return (
        s.evt_type == "openat" and s.fd_type == "file" and "O_WRONLY" not in (s.flags or "") and _succeeded(s)
    )


def _open_write(s: Sys) -> bool:
    return s.evt_type == "openat" and s.fd_type == "file" and s.is_write and _succeeded(s)


def _pname(p: Proc) -> str:
    return p.parent.name if p.parent is not None else ""


def _ancestor_name(p: Proc, level: int) -> str:
    a = p.ancestor(level)
    return a.name if a is not None else ""


def _directory_traversal(s: Sys) -> bool:
    raw = s.fd_nameraw or ""
    name = s.fd_name or ""
    return (
        (_open_read(s) or (s.evt_type == "openat" and s.res.startswith("E")))
        and (
            name.startswith(("/etc/", "/root/.ssh"))
            or ("/.ssh/" in name and fnmatchcase(name, "/home/*/.ssh/*"))
            or "id_rsa" in name
        )
        and raw.count("../") >= 2
        and _pname(s.proc) not in SHELLS
    )


def _sensitive_files(s: Sys) -> bool:
    return (s.fd_name or "") in _SENSITIVE_FILES or s.directory in ("/etc/sudoers.d", "/etc/pam.d")


def _read_sensitive_untrusted(s: Sys) -> bool:
    p = s.proc
    return (
        _open_read(s)
        and _sensitive_files(s)
        and p.name
        not in (_USER_MGMT | _USEREXEC | _PACKAGE_MGMT | _CRON | _READ_SENSITIVE_TRUSTED | SHELLS | {"mandb"})
    )


def _run_shell_untrusted(s: Sys) -> bool:
    p = s.proc
    if not (_spawned(s) and p.name in SHELLS and p.parent is not None):
        return False
    if _pname(p) in SHELLS or _pname(p) in _CRON:
        return False
    if not any(a in _PROTECTED_SPAWNERS for a in p.ancestor_names()):
        return False
    cmd = p.cmdline
    # postgres_running_wal_e and nginx_starting_nginx exclusions
    return not (
        (_pname(p) == "postgres" and cmd.startswith("sh -c envdir /etc/wal-e.d/env /usr/local/bin/wal-e"))
        or (_pname(p) == "nginx" and "/usr/sbin/nginx -c /etc/nginx/nginx.conf" in cmd)
    )


def _terminal_shell(s: Sys) -> bool:
    p = s.proc
    return (
        _spawned(s)
        and _in_container(s)
        and p.name in SHELLS
        and p.tty != 0
        and (p.parent is None or _pname(p) in _CONTAINER_ENTRYPOINT_PARENTS)
    )


def _contact_api_server(s: Sys) -> bool:
    c = s.proc.container
    return (
        s.evt_type == "connect"
        and s.fd_type in ("ipv4", "ipv6")
        and c is not None
        and s.sip == _API_SERVER_IP
        and c.image not in _K8S_CONTAINERS
        and c.ns != "kube-system"
    )


def _netcat_rce(s: Sys) -> bool:
    p = s.proc
    if not (_spawned(s) and _in_container(s)):
        return False
    if p.name == "nc":
        return " -e" in p.cmdline or " -c" in p.cmdline
    if p.name == "ncat":
        return any(x in p.args for x in ("--sh-exec", "--exec", "-e ", "-c ", "--lua-exec"))
    return False


def _search_private_keys(s: Sys) -> bool:
    p = s.proc
    if not _spawned(s):
        return False
    if p.name in ("grep", "egrep", "fgrep"):
        low = p.args.lower()
        return any(m in low for m in _PRIVATE_KEY_MARKERS)
    if p.name == "find":
        return any(k in p.args for k in ("id_rsa", "id_dsa", "id_ed25519", "id_ecdsa"))
    return False


def _clear_log(s: Sys) -> bool:
    return (
        _open_write(s)
        and (s.directory in ("/var/log", "/dev/log") or s.filename in _LOG_FILES)
        and "O_TRUNC" in (s.flags or "")
        and not (
            s.proc.container is not None
            and s.proc.container.image.endswith("fluent/fluentd-kubernetes-daemonset")
        )
    )


def _remove_bulk_data(s: Sys) -> bool:
    return _spawned(s) and s.proc.name in ("shred", "mkfs", "mke2fs")


def _redirect_stdio(s: Sys) -> bool:
    return (
        s.evt_type in ("dup", "dup2", "dup3")
        and _in_container(s)
        and s.arg("newfd") in (0, 1, 2)
        and s.fd_type in ("ipv4", "ipv6")
    )


def _release_agent(s: Sys) -> bool:
    c = s.proc.container
    return (
        _open_write(s)
        and c is not None
        and (s.fd_name or "").endswith("release_agent")
        and s.proc.uid == 0
        and c.privileged
    )


def _ptrace_attached(s: Sys) -> bool:
    return s.evt_type == "ptrace" and str(s.arg("request")) in _PTRACE_ATTACH


def _find_aws_credentials(s: Sys) -> bool:
    p = s.proc
    if not _spawned(s):
        return False
    if p.name in ("grep", "egrep", "fgrep"):
        low = p.args.lower()
        return any(m in low for m in _AWS_MARKERS)
    return p.name == "find" and p.args.endswith(".aws/credentials")


def _exec_from_dev_shm(s: Sys) -> bool:
    p = s.proc
    if "/dev/shm" not in p.exe and "/dev/shm" not in p.cwd and "/dev/shm" not in p.tail:
        return False
    return (
        _spawned(s)
        and (
            p.exe.startswith("/dev/shm/")
            or (p.cwd.startswith("/dev/shm/") and p.exe.startswith("./"))
            or (p.name in SHELLS and (p.args.startswith(("-c /dev/shm", "-i /dev/shm", "/dev/shm"))))
            or (p.cwd.startswith("/dev/shm/") and p.args.startswith("./"))
        )
        and not (p.container is not None and p.container.image in _FALCO_PRIVILEGED_IMAGES)
    )


def _drop_and_execute(s: Sys) -> bool:
    return _spawned(s) and _in_container(s) and "EXE_UPPER_LAYER" in s.proc.exe_flags


def _fileless_memfd(s: Sys) -> bool:
    return _spawned(s) and "EXE_FROM_MEMFD" in s.proc.exe_flags


def _schedule_cron(s: Sys) -> bool:
    return (_open_write(s) and (s.fd_name or "").startswith("/etc/cron")) or (
        _spawned(s) and s.proc.name == "crontab"
    )


def _read_ssh_information(s: Sys) -> bool:
    name = s.fd_name or ""
    return (
        _open_read(s)
        and (name.startswith("/root/.ssh") or (name.startswith("/home/") and "/.ssh/" in name))
        and s.proc.name not in _SSH_BINARIES
    )


def _db_spawned_process(s: Sys) -> bool:
    p = s.proc
    return (
        _spawned(s)
        and _pname(p) in _DB_SERVERS
        and p.name not in _DB_SERVERS
        and not (
            _pname(p) == "postgres"
            and p.cmdline.startswith(
                (
                    "sh -c envdir /etc/wal-e.d/env /usr/local/bin/wal-e",
                    'sh -c envdir "/run/etc/wal-e.d/env" wal-g wal-push',
                )
            )
        )
    )


def _change_thread_namespace(s: Sys) -> bool:
    p = s.proc
    if s.evt_type != "setns":
        return False
    if p.container is None and p.name in (_DOCKER_BINARIES | _K8S_BINARIES | {"nsenter"}):
        return False
    if p.name in ("crio", "multus", "calico", "cilium-cni", "aws-cni") or p.name.startswith("runc"):
        return False
    if p.cmdline.startswith("containerd"):
        return False
    return _pname(p) not in ("hyperkube", "kubelet", "protokube", "dockerd", "tini", "aws")


def _launch_privileged_container(s: Sys) -> bool:
    c = s.proc.container
    return (
        _spawned(s)
        and s.proc.vpid1
        and c is not None
        and c.privileged
        and c.image not in _FALCO_PRIVILEGED_IMAGES
        and not c.image.startswith("istio/proxy_")
    )


def _contact_metadata(s: Sys) -> bool:
    c = s.proc.container
    # The stock `outbound` macro: an IP socket, a routable peer, a connect that succeeded or is in progress.
    return (
        s.evt_type == "connect"
        and c is not None
        and s.sip == _METADATA_IP
        and _routable_ip_socket(s)
        and (_succeeded(s) or s.res == "EINPROGRESS")
        and c.ns != "kube-system"
    )


def _package_mgmt_in_container(s: Sys) -> bool:
    p = s.proc
    if not (_spawned(s) and _in_container(s) and p.user != "_apt" and p.name in _PACKAGE_MGMT):
        return False
    ancestors = [_ancestor_name(p, level) for level in (1, 2, 3, 4)]
    return not any(a in _PACKAGE_MGMT for a in ancestors)


def _network_tool_in_container(s: Sys) -> bool:
    return _spawned(s) and _in_container(s) and s.proc.name in _NETWORK_TOOLS


def _shell_history(s: Sys) -> bool:
    history_suffixes = ("ash_history", "zsh_history", "fish_history")
    if s.evt_type in ("rename", "renameat", "renameat2", "unlink", "unlinkat"):
        names = (s.fd_name or "", str(s.arg("oldpath") or ""))
        return any(n.endswith(history_suffixes) for n in names) and s.proc.name not in _DOCKER_BINARIES
    return (
        _open_write(s)
        and (s.fd_name or "").endswith(history_suffixes)
        and "O_TRUNC" in (s.flags or "")
        and s.proc.name not in _DOCKER_BINARIES
    )


def _remote_copy_in_container(s: Sys) -> bool:
    return _spawned(s) and _in_container(s) and s.proc.name in _REMOTE_COPY


def _mount_in_privileged(s: Sys) -> bool:
    p = s.proc
    c = p.container
    return (
        _spawned(s)
        and c is not None
        and c.privileged
        and p.name == "mount"
        and p.args not in ("", "-V", "-l", "-h")
    )


def _ingress_remote_copy(s: Sys) -> bool:
    p = s.proc
    if not (_spawned(s) and _in_container(s)):
        return False
    if p.name == "wget":
        return True
    cmd = p.cmdline
    return p.name == "curl" and any(x in cmd for x in (" -o ", " --output ", " -O ", " --remote-name "))


def _read_environ(s: Sys) -> bool:
    name = s.fd_name or ""
    return (
        _open_read(s)
        and _in_container(s)
        and name.startswith("/proc/")
        and name.endswith("/environ")
        and s.proc.name not in ("scsi_id", "argoexec")
    )


def _write_below_binary_dir(s: Sys) -> bool:
    return _open_write(s) and s.directory in _BIN_DIRS and s.proc.name not in _PACKAGE_MGMT


def _write_below_monitored_dir(s: Sys) -> bool:
    name = s.fd_name or ""
    monitored = s.directory in _MONITORED_DIRS or (name.startswith("/home/") and "/.ssh/" in name)
    return _open_write(s) and monitored and s.proc.name not in _PACKAGE_MGMT


def _write_below_etc(s: Sys) -> bool:
    p = s.proc
    return (
        _open_write(s)
        and (s.fd_name or "").startswith("/etc/")
        and p.name not in _WRITE_ETC_ALLOWED
        and _pname(p) not in _PACKAGE_MGMT
        and not (s.fd_name or "").startswith(("/etc/nginx/conf.d", "/etc/ssl/certs/java", "/etc/istio"))
    )


def _stratum_miner(s: Sys) -> bool:
    return s.evt_type == "execve" and "stratum" in s.proc.tail and any(m in s.proc.tail for m in _STRATUM)


def _k8s_client_in_container(s: Sys) -> bool:
    return _spawned(s) and _in_container(s) and s.proc.name in _K8S_CLIENTS


def _attach_exec_pod(s: Sys) -> bool:
    return s.evt_type == "k8s_audit" and s.arg("ka.target.subresource") in ("exec", "attach")


# aerie's baseline conditions.


def _any_spawn(s: Sys) -> bool:
    return _spawned(s)


def _socket_ips(s: Sys) -> tuple[str, ...]:
    """Both addresses of an IP socket (client and server), from ``fd.name`` ``cip:cport->sip:sport``.

    Falco's ``fd.ip`` and ``fd.net`` compare both ends: ``fd.ip != X`` holds only when neither is X.
    """
    ips = [part.rpartition(":")[0].strip("[]") for part in (s.fd_name or "").split("->")]
    ips.extend(ip for ip in (s.sip, s.rip) if ip is not None)
    return tuple(ip for ip in ips if ip)


def _routable_ip_socket(s: Sys) -> bool:
    # (fd.typechar=4 or fd.typechar=6) and fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8"
    if s.fd_type not in ("ipv4", "ipv6"):
        return False
    ips = _socket_ips(s)
    return bool(ips) and not any(ip == "0.0.0.0" or ip.startswith("127.") for ip in ips)


def _outbound(s: Sys) -> bool:
    if s.evt_type != "connect":
        return False
    if s.fd_type == "unix":  # no result test: a refused attempt on the runtime socket is reported too
        return is_runtime_socket(s.fd_name or "")
    return _routable_ip_socket(s) and (_succeeded(s) or s.res == "EINPROGRESS")


def _inbound(s: Sys) -> bool:
    return s.evt_type in ("accept", "accept4") and _routable_ip_socket(s) and _succeeded(s)


def _sensitive_open(s: Sys) -> bool:
    return _open_read(s) and is_sensitive_path(s.fd_name or "")


def _any_write(s: Sys) -> bool:
    return (
        _open_write(s)
        and not pmatch(s.fd_name or "", WRITE_EXCLUDED_PREFIXES)
        and s.directory not in WRITE_EXCLUDED_DIRS
    )


def _rename_remove(s: Sys) -> bool:
    return s.evt_type in ("rename", "renameat", "renameat2", "unlink", "unlinkat") and _succeeded(s)


def _chmod(s: Sys) -> bool:
    return s.evt_type in ("chmod", "fchmod", "fchmodat") and _succeeded(s)


_PRIVILEGED_SYSCALLS: Final = frozenset(
    {
        "ptrace",
        "setuid",
        "setns",
        "mount",
        "umount2",
        "unshare",
        "memfd_create",
        "init_module",
        "finit_module",
        "bpf",
    }
)


def _privileged_syscall(s: Sys) -> bool:
    return s.evt_type in _PRIVILEGED_SYSCALLS


# ---------------------------------------------------------------------------------------------
# Rule table.


@dataclass(frozen=True, slots=True)
class Rule:
    """One Falco rule: what it is called, how loud it is, what it prints, when it fires."""

    name: str
    priority: Priority
    tags: tuple[str, ...]
    output: str
    evt_types: tuple[str, ...]
    condition: Callable[[Sys], bool] = field(repr=False)
    origin: str = "falco_rules.yaml"
    source: str = "syscall"
    falco_condition: str = ""  # aerie rules only: the condition as Falco's rule language writes it


_SPAWN = ("execve", "execveat")
_OPEN = ("openat",)
_CONNECT = ("connect",)
_STABLE = "falco_rules.yaml"
_INCUBATING = "falco-incubating_rules.yaml"
_SANDBOX = "falco-sandbox_rules.yaml"

STOCK_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "Directory traversal monitored file read",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "filesystem", "mitre_credential_access", "T1555"),
        "Read monitored file via directory traversal (file=%fd.name fileraw=%fd.nameraw "
        "gparent=%proc.aname[2] "
        "ggparent=%proc.aname[3] gggparent=%proc.aname[4] " + _TAIL + ")",
        _OPEN,
        _directory_traversal,
    ),
    Rule(
        "Read sensitive file untrusted",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "filesystem", "mitre_credential_access", "T1555"),
        "Sensitive file opened for reading by non-trusted program (file=%fd.name gparent=%proc.aname[2] "
        "ggparent=%proc.aname[3] gggparent=%proc.aname[4] " + _TAIL + ")",
        _OPEN,
        _read_sensitive_untrusted,
    ),
    Rule(
        "Run shell untrusted",
        Priority.NOTICE,
        ("maturity_stable", "host", "container", "process", "shell", "mitre_execution", "T1059.004"),
        "Shell spawned by untrusted binary (parent_exe=%proc.pexe parent_exepath=%proc.pexepath "
        "pcmdline=%proc.pcmdline gparent=%proc.aname[2] ggparent=%proc.aname[3] aname[4]=%proc.aname[4] "
        "aname[5]=%proc.aname[5] aname[6]=%proc.aname[6] aname[7]=%proc.aname[7] " + _TAIL + ")",
        _SPAWN,
        _run_shell_untrusted,
    ),
    Rule(
        "Terminal shell in container",
        Priority.NOTICE,
        ("maturity_stable", "container", "shell", "mitre_execution", "T1059"),
        "A shell was spawned in a container with an attached terminal (" + _TAIL + ")",
        _SPAWN,
        _terminal_shell,
    ),
    Rule(
        "Contact K8S API Server From Container",
        Priority.NOTICE,
        ("maturity_stable", "container", "network", "k8s", "mitre_discovery", "T1565"),
        "Unexpected connection to K8s API Server from container (" + _NET + _TAIL + ")",
        _CONNECT,
        _contact_api_server,
    ),
    Rule(
        "Netcat Remote Code Execution in Container",
        Priority.WARNING,
        ("maturity_stable", "container", "network", "process", "mitre_execution", "T1059"),
        "Netcat runs inside container that allows remote code execution (" + _TAIL + ")",
        _SPAWN,
        _netcat_rce,
    ),
    Rule(
        "Search Private Keys or Passwords",
        Priority.WARNING,
        (
            "maturity_stable",
            "host",
            "container",
            "process",
            "filesystem",
            "mitre_credential_access",
            "T1552.001",
        ),
        "Grep private keys or passwords activities found (" + _TAIL + ")",
        _SPAWN,
        _search_private_keys,
    ),
    Rule(
        "Clear Log Activities",
        Priority.WARNING,
        (
            "maturity_stable",
            "host",
            "container",
            "filesystem",
            "mitre_defense_evasion",
            "T1070",
            "NIST_800-53_AU-10",
        ),
        "Log files were tampered (file=%fd.name " + _TAIL + ")",
        _OPEN,
        _clear_log,
    ),
    Rule(
        "Remove Bulk Data from Disk",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "process", "filesystem", "mitre_impact", "T1485"),
        "Bulk data has been removed from disk (file=%fd.name " + _TAIL + ")",
        _SPAWN,
        _remove_bulk_data,
    ),
    Rule(
        "Redirect STDOUT/STDIN to Network Connection in Container",
        Priority.NOTICE,
        ("maturity_stable", "container", "network", "process", "mitre_execution", "T1059"),
        "Redirect stdout/stdin to network connection (gparent=%proc.aname[2] ggparent=%proc.aname[3] "
        "gggparent=%proc.aname[4] fd.sip=%fd.sip " + _NET + _TAIL + ")",
        ("dup2", "dup3", "dup"),
        _redirect_stdio,
    ),
    Rule(
        "Detect release_agent File Container Escapes",
        Priority.CRITICAL,
        ("maturity_stable", "container", "process", "mitre_privilege_escalation", "T1611"),
        "Detect an attempt to exploit a container escape using release_agent file (file=%fd.name "
        "cap_effective=%thread.cap_effective " + _TAIL + ")",
        _OPEN,
        _release_agent,
    ),
    Rule(
        "PTRACE attached to process",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "process", "mitre_privilege_escalation", "T1055.008"),
        "Detected ptrace PTRACE_ATTACH attempt (proc_pcmdline=%proc.pcmdline " + _TAIL + ")",
        ("ptrace",),
        _ptrace_attached,
    ),
    Rule(
        "Find AWS Credentials",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "process", "aws", "mitre_credential_access", "T1552"),
        "Detected AWS credentials search activity (proc_pcmdline=%proc.pcmdline proc_cwd=%proc.cwd "
        "group_gid=%group.gid group_name=%group.name user_loginname=%user.loginname " + _TAIL + ")",
        _SPAWN,
        _find_aws_credentials,
    ),
    Rule(
        "Execution from /dev/shm",
        Priority.WARNING,
        ("maturity_stable", "host", "container", "mitre_execution", "T1059.004"),
        "File execution detected from /dev/shm (evt_res=%evt.res file=%fd.name proc_cwd=%proc.cwd "
        "proc_pcmdline=%proc.pcmdline user_loginname=%user.loginname group_gid=%group.gid "
        "group_name=%group.name " + _TAIL + ")",
        _SPAWN,
        _exec_from_dev_shm,
    ),
    Rule(
        "Drop and execute new binary in container",
        Priority.CRITICAL,
        ("maturity_stable", "container", "process", "mitre_persistence", "TA0003", "PCI_DSS_11.5.1"),
        "Executing binary not part of base image (proc_exe=%proc.exe proc_sname=%proc.sname "
        "gparent=%proc.aname[2] proc_exe_ino_ctime=%proc.exe_ino.ctime "
        "proc_exe_ino_mtime=%proc.exe_ino.mtime "
        "proc_exe_ino_ctime_duration_proc_start=%proc.exe_ino.ctime_duration_proc_start proc_cwd=%proc.cwd "
        "container_start_ts=%container.start_ts " + _TAIL + ")",
        _SPAWN,
        _drop_and_execute,
    ),
    Rule(
        "Fileless execution via memfd_create",
        Priority.CRITICAL,
        ("maturity_stable", "host", "container", "process", "mitre_defense_evasion", "T1620"),
        "Fileless execution via memfd_create (container_start_ts=%container.start_ts proc_cwd=%proc.cwd "
        "evt_res=%evt.res proc_sname=%proc.sname gparent=%proc.aname[2] " + _TAIL + ")",
        _SPAWN,
        _fileless_memfd,
    ),
    Rule(
        "Schedule Cron Jobs",
        Priority.NOTICE,
        ("maturity_incubating", "host", "container", "filesystem", "mitre_execution", "T1053.003"),
        "Cron jobs were scheduled to run (file=%fd.name " + _TAIL + ")",
        ("openat", "execve"),
        _schedule_cron,
        _INCUBATING,
    ),
    Rule(
        "Read ssh information",
        Priority.ERROR,
        ("maturity_incubating", "host", "container", "filesystem", "mitre_collection", "T1005"),
        "ssh-related file/directory read by non-ssh program (file=%fd.name pcmdline=%proc.pcmdline "
        + _TAIL
        + ")",
        _OPEN,
        _read_ssh_information,
        _INCUBATING,
    ),
    Rule(
        "DB program spawned process",
        Priority.NOTICE,
        ("maturity_incubating", "host", "container", "process", "database", "mitre_execution", "T1190"),
        "Database-related program spawned process other than itself (" + _TAIL + ")",
        _SPAWN,
        _db_spawned_process,
        _INCUBATING,
    ),
    Rule(
        "Change thread namespace",
        Priority.NOTICE,
        ("maturity_incubating", "host", "container", "process", "mitre_privilege_escalation", "T1611"),
        "Namespace change (setns) by unexpected program (" + _TAIL + ")",
        ("setns",),
        _change_thread_namespace,
        _INCUBATING,
    ),
    Rule(
        "Launch Privileged Container",
        Priority.INFORMATIONAL,
        ("maturity_incubating", "container", "cis", "mitre_execution", "T1610", "PCI_DSS_10.2.5"),
        "Privileged container started (" + _TAIL + ")",
        _SPAWN,
        _launch_privileged_container,
        _INCUBATING,
    ),
    Rule(
        "Contact cloud metadata service from container",
        Priority.NOTICE,
        ("maturity_incubating", "network", "container", "mitre_discovery", "T1565"),
        "Outbound connection to cloud instance metadata service (" + _NET + _TAIL + ")",
        _CONNECT,
        _contact_metadata,
        _INCUBATING,
    ),
    Rule(
        "Launch Package Management Process in Container",
        Priority.ERROR,
        ("maturity_incubating", "container", "process", "software_mgmt", "mitre_persistence", "T1505"),
        "Package management process launched in container (" + _TAIL + ")",
        _SPAWN,
        _package_mgmt_in_container,
        _INCUBATING,
    ),
    Rule(
        "Launch Suspicious Network Tool in Container",
        Priority.NOTICE,
        ("maturity_incubating", "container", "network", "process", "mitre_execution", "T1059"),
        "Network tool launched in container (" + _TAIL + ")",
        _SPAWN,
        _network_tool_in_container,
        _INCUBATING,
    ),
    Rule(
        "Delete or rename shell history",
        Priority.WARNING,
        (
            "maturity_incubating",
            "host",
            "container",
            "process",
            "filesystem",
            "mitre_defense_evasion",
            "T1070",
        ),
        "Shell history deleted or renamed (file=%fd.name name=%evt.arg.name path=%evt.arg.path "
        "oldpath=%evt.arg.oldpath " + _TAIL + ")",
        ("openat", "rename", "renameat", "renameat2", "unlink", "unlinkat"),
        _shell_history,
        _INCUBATING,
    ),
    Rule(
        "Launch Remote File Copy Tools in Container",
        Priority.NOTICE,
        ("maturity_incubating", "container", "network", "process", "mitre_exfiltration", "T1020"),
        "Remote file copy tool launched in container (" + _TAIL + ")",
        _SPAWN,
        _remote_copy_in_container,
        _INCUBATING,
    ),
    Rule(
        "Mount Launched in Privileged Container",
        Priority.WARNING,
        ("maturity_incubating", "container", "cis", "filesystem", "mitre_privilege_escalation", "T1611"),
        "Mount was executed inside a privileged container (" + _TAIL + ")",
        _SPAWN,
        _mount_in_privileged,
        _INCUBATING,
    ),
    Rule(
        "Launch Ingress Remote File Copy Tools in Container",
        Priority.NOTICE,
        ("maturity_incubating", "container", "network", "process", "mitre_command_and_control", "TA0011"),
        "Ingress remote file copy tool launched in container (" + _TAIL + ")",
        _SPAWN,
        _ingress_remote_copy,
        _INCUBATING,
    ),
    Rule(
        "Read environment variable from /proc files",
        Priority.WARNING,
        ("maturity_incubating", "container", "filesystem", "process", "mitre_discovery", "T1083"),
        "Environment variables were retrieved from /proc files (file=%fd.name gparent=%proc.aname[2] "
        "ggparent=%proc.aname[3] gggparent=%proc.aname[4] " + _TAIL + ")",
        _OPEN,
        _read_environ,
        _INCUBATING,
    ),
    Rule(
        "Write below binary dir",
        Priority.ERROR,
        ("maturity_sandbox", "host", "container", "filesystem", "mitre_persistence", "T1543"),
        "File below a known binary directory opened for writing (file=%fd.name pcmdline=%proc.pcmdline "
        "gparent=%proc.aname[2] " + _TAIL + ")",
        _OPEN,
        _write_below_binary_dir,
        _SANDBOX,
    ),
    Rule(
        "Write below monitored dir",
        Priority.ERROR,
        ("maturity_sandbox", "host", "container", "filesystem", "mitre_persistence", "T1543"),
        "File below a monitored directory opened for writing (file=%fd.name pcmdline=%proc.pcmdline "
        "gparent=%proc.aname[2] " + _TAIL + ")",
        _OPEN,
        _write_below_monitored_dir,
        _SANDBOX,
    ),
    Rule(
        "Write below etc",
        Priority.ERROR,
        ("maturity_sandbox", "host", "container", "filesystem", "mitre_persistence", "T1098"),
        "File below /etc opened for writing (file=%fd.name pcmdline=%proc.pcmdline gparent=%proc.aname[2] "
        "ggparent=%proc.aname[3] gggparent=%proc.aname[4] " + _TAIL + ")",
        _OPEN,
        _write_below_etc,
        _SANDBOX,
    ),
    Rule(
        "Detect crypto miners using the Stratum protocol",
        Priority.CRITICAL,
        ("maturity_sandbox", "host", "container", "process", "mitre_impact", "T1496"),
        "Possible miner running (" + _TAIL + ")",
        _SPAWN,
        _stratum_miner,
        _SANDBOX,
    ),
    Rule(
        "The docker client is executed in a container",
        Priority.WARNING,
        ("maturity_sandbox", "container", "mitre_execution", "T1610"),
        "Docker or kubernetes client executed in container (" + _TAIL + ")",
        _SPAWN,
        _k8s_client_in_container,
        _SANDBOX,
    ),
    Rule(
        "Attach/Exec Pod",
        Priority.NOTICE,
        ("k8s",),
        "Attach/Exec to pod (user=%ka.user.name pod=%ka.target.name resource=%ka.target.resource "
        "ns=%ka.target.namespace action=%ka.target.subresource command=%ka.uri.param[command])",
        ("k8s_audit",),
        _attach_exec_pod,
        "k8s_audit_rules.yaml",
        source="k8s_audit",
    ),
)

_AERIE_TAGS: Final = ("maturity_incubating", "aerie", "audit")
_AERIE_TAIL: Final = (
    "evt_type=%evt.type user=%user.name user_uid=%user.uid user_loginuid=%user.loginuid process=%proc.name "
    "proc_exepath=%proc.exepath parent=%proc.pname command=%proc.cmdline terminal=%proc.tty %container.info"
)

BASELINE_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "aerie: process spawned",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "process"),
        "Process spawned (gparent=%proc.aname[2] cwd=%proc.cwd exe_flags=%evt.arg.flags " + _AERIE_TAIL + ")",
        _SPAWN,
        _any_spawn,
        "aerie",
        falco_condition="evt.type in (execve, execveat) and evt.dir=<",
    ),
    Rule(
        "aerie: outbound connection",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "network"),
        "Outbound connection (connection=%fd.name lport=%fd.lport rport=%fd.rport fd_type=%fd.type "
        "fd_proto=%fd.l4proto " + _AERIE_TAIL + ")",
        _CONNECT,
        _outbound,
        "aerie",
        falco_condition=(
            'evt.type=connect and evt.dir=< and (((fd.typechar=4 or fd.typechar=6) and fd.ip != "0.0.0.0" '
            'and fd.net != "127.0.0.0/8" and (evt.rawres >= 0 or evt.res = EINPROGRESS)) or '
            "(fd.typechar=u and fd.name endswith .sock and "
            "(fd.name contains containerd or fd.name contains docker "
            "or fd.name contains crio)))"
        ),
    ),
    Rule(
        "aerie: inbound connection",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "network"),
        "Inbound connection (connection=%fd.name lport=%fd.lport rport=%fd.rport fd_type=%fd.type "
        "fd_proto=%fd.l4proto " + _AERIE_TAIL + ")",
        ("accept", "accept4"),
        _inbound,
        "aerie",
        falco_condition=(
            "evt.type in (accept, accept4) and evt.dir=< and (fd.typechar=4 or fd.typechar=6) and "
            'fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8" and evt.rawres >= 0'
        ),
    ),
    Rule(
        "aerie: sensitive file opened",
        Priority.NOTICE,
        (*_AERIE_TAGS, "host", "container", "filesystem"),
        "Sensitive file opened for reading (file=%fd.name gparent=%proc.aname[2] " + _AERIE_TAIL + ")",
        _OPEN,
        _sensitive_open,
        "aerie",
        falco_condition=(
            "open_read and (fd.name in (/etc/shadow, /etc/gshadow, /etc/sudoers) or "
            "fd.name pmatch (/etc/pam.d, "
            "/etc/kubernetes, /etc/ssl/private, /root/.ssh, /root/.aws, /root/.kube, /var/lib/kubelet/pki, "
            "/var/run/secrets/kubernetes.io, /run/secrets/kubernetes.io, /proc/sys/kernel) or "
            "fd.name endswith "
            "/.aws/credentials or fd.name endswith /.kube/config or fd.name endswith /.pgpass or "
            "fd.name glob /proc/*/environ)"
        ),
    ),
    Rule(
        "aerie: file opened for writing",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "filesystem"),
        "File opened for writing (file=%fd.name flags=%evt.arg.flags " + _AERIE_TAIL + ")",
        _OPEN,
        _any_write,
        "aerie",
        falco_condition=(
            "open_write and not fd.name pmatch (/dev, /proc/self, /sys/fs/cgroup) and not fd.directory in "
            "(/tmp/.X11-unix)"
        ),
    ),
    Rule(
        "aerie: file renamed or removed",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "filesystem"),
        "File renamed or removed (file=%fd.name oldpath=%evt.arg.oldpath newpath=%evt.arg.newpath "
        + _AERIE_TAIL
        + ")",
        ("rename", "renameat", "renameat2", "unlink", "unlinkat"),
        _rename_remove,
        "aerie",
        falco_condition=(
            "evt.type in (rename, renameat, renameat2, unlink, unlinkat) and evt.dir=< and evt.rawres >= 0"
        ),
    ),
    Rule(
        "aerie: file permissions changed",
        Priority.INFORMATIONAL,
        (*_AERIE_TAGS, "host", "container", "filesystem"),
        "File permissions changed (file=%fd.name mode=%evt.arg.mode " + _AERIE_TAIL + ")",
        ("chmod", "fchmod", "fchmodat"),
        _chmod,
        "aerie",
        falco_condition="evt.type in (chmod, fchmod, fchmodat) and evt.dir=< and evt.rawres >= 0",
    ),
    Rule(
        "aerie: privileged syscall",
        Priority.NOTICE,
        (*_AERIE_TAGS, "host", "container", "process"),
        "Privileged syscall (syscall=%evt.type res=%evt.res args=%evt.args " + _AERIE_TAIL + ")",
        tuple(sorted(_PRIVILEGED_SYSCALLS)),
        _privileged_syscall,
        "aerie",
        falco_condition=(
            "evt.type in (ptrace, setuid, setns, mount, umount2, unshare, memfd_create, init_module, "
            "finit_module, bpf) and evt.dir=<"
        ),
    ),
)

RULES: Final = STOCK_RULES + BASELINE_RULES

# ---------------------------------------------------------------------------------------------
# Field values.

_DEFAULT_CAPS: Final = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP "
    "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD CAP_AUDIT_WRITE CAP_SETFCAP"
)
_ALL_CAPS: Final = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
    "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW "
    "CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT "
    "CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD "
    "CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
    "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
)


def _leader_name(p: Proc) -> str:
    # The session leader: the top of the process chain inside the same container.
    while p.parent is not None and p.parent.container is p.container:
        p = p.parent
    return p.name


def _caps(p: Proc) -> str:
    if p.uid != 0:
        return ""
    c = p.container
    return _ALL_CAPS if (c is None or c.privileged) else _DEFAULT_CAPS


def _ancestor_getter(level: int) -> Callable[[Proc], FieldValue]:
    def get(p: Proc) -> FieldValue:
        a = p.ancestor(level)
        return None if a is None else a.name

    return get


def _parent_getter(attr: str) -> Callable[[Proc], FieldValue]:
    def get(p: Proc) -> FieldValue:
        return None if p.parent is None else getattr(p.parent, attr)

    return get


def _container_getter(attr: str, host: str | None) -> Callable[[Proc], FieldValue]:
    def get(p: Proc) -> FieldValue:
        return host if p.container is None else getattr(p.container, attr)

    return get


# Process, user, container and Kubernetes fields: they depend on the process only.
_PROC_GETTERS: Final[dict[str, Callable[[Proc], FieldValue]]] = {
    "proc.pid": lambda p: p.pid,
    "proc.ppid": lambda p: p.ppid,
    "proc.name": lambda p: p.name,
    "proc.exe": lambda p: p.exe,
    "proc.exepath": lambda p: p.exepath,
    "proc.cmdline": lambda p: p.cmdline,
    "proc.args": lambda p: p.args,
    "proc.cwd": lambda p: p.cwd,
    "proc.tty": lambda p: p.tty,
    "proc.pname": _parent_getter("name"),
    "proc.pexe": _parent_getter("exe"),
    "proc.pexepath": _parent_getter("exepath"),
    "proc.pcmdline": _parent_getter("cmdline"),
    "proc.sname": _leader_name,
    "user.name": lambda p: p.user,
    "user.uid": lambda p: p.uid,
    "user.loginuid": lambda p: p.loginuid,
    "user.loginname": lambda p: p.user if p.loginuid >= 0 else None,
    "group.gid": lambda p: p.gid,
    "group.name": lambda p: p.group,
    "thread.cap_effective": _caps,
    "container.id": _container_getter("id", "host"),
    "container.name": _container_getter("name", "host"),
    "container.image.repository": _container_getter("image", None),
    "container.image.tag": _container_getter("tag", None),
    "container.start_ts": _container_getter("start_ns", None),
    "k8s.ns.name": _container_getter("ns", None),
    "k8s.pod.name": _container_getter("pod", None),
    **{f"proc.aname[{level}]": _ancestor_getter(level) for level in range(2, 8)},
}


def event_fields(s: Sys) -> dict[str, FieldValue]:
    """The fields that belong to this one syscall (time, type, file descriptor, arguments).

    Every key of `_EVENT_KEYS` is present (``None`` when the syscall has no such value).
    """
    args = s.args
    fields: dict[str, FieldValue] = {
        "evt.time": s.t,
        "evt.type": s.evt_type,
        "evt.res": s.res,
        "evt.arg.flags": s.proc.exe_flags if s.evt_type == "execve" else s.flags,
        "fd.name": s.fd_name,
        "fd.nameraw": s.fd_nameraw if s.fd_nameraw is not None else s.fd_name,
        "fd.type": s.fd_type,
        "fd.sip": s.sip,
        "fd.rip": s.rip,
        "fd.lport": s.lport,
        "fd.rport": s.rport,
        "fd.l4proto": s.l4proto,
        **_NO_ARGS,
    }
    if args is None:
        return fields
    if s.evt_type == "k8s_audit":
        fields.update(args)
        return fields
    fields["evt.args"] = " ".join(f"{k}={v}" for k, v in args.items() if k != "exe_ino_ctime") or None
    fields["evt.arg.mode"] = args.get("mode")
    fields["evt.arg.oldpath"] = args.get("oldpath")
    fields["evt.arg.newpath"] = args.get("newpath")
    fields["evt.arg.path"] = args.get("path")
    fields["evt.arg.name"] = args.get("name")
    ctime = args.get("exe_ino_ctime")
    if ctime is not None:
        fields["proc.exe_ino.ctime"] = ctime
        fields["proc.exe_ino.mtime"] = ctime
        fields["proc.exe_ino.ctime_duration_proc_start"] = s.proc.start_ns - int(ctime)
    return fields


# Fields some rule prints that only some events have (None elsewhere).
_EVENT_ONLY: Final = frozenset(
    {
        "evt.args",
        "evt.arg.mode",
        "evt.arg.oldpath",
        "evt.arg.newpath",
        "evt.arg.path",
        "evt.arg.name",
        "proc.exe_ino.ctime",
        "proc.exe_ino.mtime",
        "proc.exe_ino.ctime_duration_proc_start",
    }
)
_NO_ARGS: Final[dict[str, FieldValue]] = dict.fromkeys(sorted(_EVENT_ONLY))
_PROCESS_KEYS: Final = frozenset(_PROC_GETTERS)
_EVENT_KEYS: Final = (
    frozenset(
        {
            "evt.time",
            "evt.type",
            "evt.res",
            "evt.arg.flags",
            "fd.name",
            "fd.nameraw",
            "fd.type",
            "fd.sip",
            "fd.rip",
            "fd.lport",
            "fd.rport",
            "fd.l4proto",
        }
    )
    | _EVENT_ONLY
)


def _falco_text(value: FieldValue) -> str:
    if value is None:
        return "<NA>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


_FIELD_RE: Final = re.compile(r"%([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)+(?:\[[^\]]*\])?)")


class _Plan:
    """A rule's output format, parsed once: a format string, the fields it prints, the keys it emits."""

    __slots__ = ("event_ref_slots", "event_slots", "fmt", "keys", "proc_keys", "refs", "source")

    def __init__(self, rule: Rule) -> None:
        text = rule.output.replace("%container.info", _CONTAINER_INFO)
        literals: list[str] = []
        refs: list[str] = []
        pos = 0
        for m in _FIELD_RE.finditer(text):
            literals.append(text[pos : m.start()])
            refs.append(m.group(1))
            pos = m.end()
        literals.append(text[pos:])
        escaped = [lit.replace("{", "{{").replace("}", "}}") for lit in literals]
        self.fmt = "".join(lit + ("{}" if i < len(refs) else "") for i, lit in enumerate(escaped))
        self.refs = tuple(refs)
        keys = {"evt.time", *refs}
        if rule.source == "syscall":
            keys.update(EXTRA_FIELDS)
        for key in keys:
            known = (
                key in _PROCESS_KEYS
                or key in _EVENT_KEYS
                or (rule.source == "k8s_audit" and key.startswith("ka."))
            )
            if not known:  # fail at import, not mid-corpus, on a field we cannot fill
                raise KeyError(f"rule {rule.name!r} prints {key!r}, which the corpus cannot fill")
        self.keys = tuple(sorted(keys))
        self.event_slots = tuple((i, key) for i, key in enumerate(self.keys) if key not in _PROCESS_KEYS)
        self.event_ref_slots = tuple((i, key) for i, key in enumerate(self.refs) if key not in _PROCESS_KEYS)
        self.proc_keys = tuple(key for key in self.keys if key in _PROCESS_KEYS) + tuple(
            key for key in self.refs if key in _PROCESS_KEYS and key not in self.keys
        )
        self.source = rule.source

    def process_part(self, proc: Proc) -> tuple[list[FieldValue], list[str]]:
        """The field values and output texts that depend on the process only (event slots empty)."""
        values: dict[str, FieldValue] = {}
        for key in self.proc_keys:
            values[key] = _PROC_GETTERS[key](proc)
        get = values.get
        return [get(key) for key in self.keys], [_falco_text(get(key)) for key in self.refs]


@dataclass(frozen=True, slots=True)
class Rendered:
    """A syscall as Falco would emit it (everything but the time prefix)."""

    rule: Rule
    text: str
    fields: dict[str, FieldValue]


class RuleEngine:
    """Matches a `Sys` against the rules in order; renders the first match."""

    def __init__(self, rules: Sequence[Rule] = RULES) -> None:
        self._by_type: dict[str, list[tuple[Rule, _Plan]]] = {}
        for rule in rules:
            plan = _Plan(rule)
            for evt_type in rule.evt_types:
                self._by_type.setdefault(evt_type, []).append((rule, plan))
        self._parts: dict[tuple[int, int], tuple[list[FieldValue], list[str]]] = {}

    def match(self, s: Sys) -> Rule | None:
        for rule, _plan in self._by_type.get(s.evt_type, ()):
            if rule.condition(s):
                return rule
        return None

    def render(self, s: Sys) -> Rendered | None:
        """The alert ``s`` raises, or ``None`` when no rule matches it. Pids must be assigned."""
        for rule, plan in self._by_type.get(s.evt_type, ()):
            if rule.condition(s):
                return self._render(rule, plan, s)
        return None

    def _render(self, rule: Rule, plan: _Plan, s: Sys) -> Rendered:
        # Hot path: the process part of a (process, rule) pair is computed once and copied.
        key = (id(s.proc), id(plan))
        part = self._parts.get(key)
        if part is None:
            part = (
                plan.process_part(s.proc)
                if plan.source == "syscall"
                else ([None] * len(plan.keys), [""] * len(plan.refs))
            )
            self._parts[key] = part
        event = event_fields(s)
        values = part[0].copy()
        for i, name in plan.event_slots:
            values[i] = event[name]
        texts = part[1].copy()
        for i, name in plan.event_ref_slots:
            texts[i] = _falco_text(event[name])
        return Rendered(rule, plan.fmt.format(*texts), dict(zip(plan.keys, values, strict=True)))


_CLOCK: dict[int, str] = {}


def time_prefix(time_ns: int, priority: Priority) -> str:
    """Falco's output prefix: the UTC time of day with nanoseconds, then the priority name."""
    seconds, nanos = divmod(time_ns, NS_PER_S)
    day = seconds % 86400
    clock = _CLOCK.get(day)
    if clock is None:
        clock = _CLOCK[day] = f"{day // 3600:02d}:{day % 3600 // 60:02d}:{day % 60:02d}"
    return f"{clock}.{nanos:09d}: {priority.falco_name} "


def describe(rule: Rule) -> dict[str, Any]:
    """The rule as a plain dict (name, priority, tags, output, condition) for docs and rules files."""
    return {
        "rule": rule.name,
        "priority": rule.priority.name,
        "tags": list(rule.tags),
        "output": rule.output,
        "source": rule.source,
        "origin": rule.origin,
        "condition": rule.falco_condition,
    }
