"""What every generator shares: the corpus context and the mechanics of Kubernetes itself.

`Ctx` hands each generator its own random stream (seeded from the corpus seed and the generator's
name, so adding a generator does not reshuffle the others), the world, the sink and the profiles.
The helpers below produce the events Kubernetes machinery causes whoever asks for them: a pod
starting (containerd shim, runc, kubelet's volume mount, the entrypoint), an ``exec`` into a
container (exec probes and ``kubectl exec`` alike go through ``runc exec``), a DNS lookup.
"""

from __future__ import annotations

from random import Random
from typing import Final

from .activity import Activity, Sink
from .model import NS_PER_S, Label, Proc
from .timeline import Profile
from .world import AppSpec, Pod, Workload, World, hex_id, k8s_suffix, start_pod

__all__ = [
    "MS",
    "Ctx",
    "dns_lookup",
    "exec_into",
    "ms",
    "pod_start_events",
    "run_pod",
    "seconds",
]

MS: Final = 1_000_000


def ms(rng: Random, lo: float, hi: float) -> int:
    """A random delay between ``lo`` and ``hi`` milliseconds, in ns."""
    return int(rng.uniform(lo, hi) * MS)


def seconds(rng: Random, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * NS_PER_S)


class Ctx:
    """One corpus run: seed, world, sink, time window and load profiles."""

    def __init__(self, seed: int, world: World, sink: Sink, profiles: dict[str, Profile]) -> None:
        self.seed = seed
        self.world = world
        self.sink = sink
        self.profiles = profiles

    @property
    def t0(self) -> int:
        return self.world.t0

    @property
    def t1(self) -> int:
        return self.world.t1

    def rng(self, name: str) -> Random:
        """An independent random stream for the generator ``name``."""
        return Random(f"aerie-corpus/{self.seed}/{name}")

    def benign(self, rng: Random, activity: str, kind: str = "baseline") -> Activity:
        return Activity(self.sink, rng, Label("benign", activity, benign_kind=kind))

    def attack(self, rng: Random, scenario: str, tactic: str, technique: str, instance: int) -> Activity:
        return Activity(
            self.sink, rng, Label("attack", scenario, scenario, tactic, technique, instance=instance)
        )

    def alive_ns(self, pods: list[Pod]) -> int:
        """Total time the pods spend inside the corpus window."""
        return sum(max(0, min(p.end_ns, self.t1) - max(p.start_ns, self.t0)) for p in pods)


def pod_start_events(act: Activity, world: World, pod: Pod) -> None:
    """The events of a pod starting: kubelet's volume mount, the shim, runc, the entrypoints."""
    rng = act.rng
    host = world.host[pod.node.hostname]
    t = pod.start_ns
    kubelet = host["kubelet"]
    volumes = f"/var/lib/kubelet/pods/{pod.uid}/volumes"
    vol = f"{volumes}/kubernetes.io~projected/kube-api-access-{k8s_suffix(rng, 5)}"
    mount = act.spawn(
        t - ms(rng, 600, 1400),
        kubelet,
        f"mount -t tmpfs -o size=7996612k tmpfs {vol}",
        exepath="/usr/bin/mount",
        container=None,
    )
    act.syscall(mount.start_ns + ms(rng, 1, 4), mount, "mount", dev="tmpfs", dir=vol, type="tmpfs", flags=0)
    if pod.shim is not None:
        act.announce(pod.shim)
        for container in pod.containers.values():
            long_id = container.id + hex_id(rng, 52)
            bundle = f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{long_id}"
            act.spawn(
                container.start_ns - ms(rng, 20, 80),
                pod.shim,
                f"runc --root /run/containerd/runc/k8s.io --log {bundle}/log.json --log-format json create "
                f"--bundle {bundle} --pid-file {bundle}/init.pid {long_id}",
                exepath="/usr/bin/runc",
                container=None,
            )
    for role, procs in pod.procs.items():
        for proc in procs:
            # Forked workers raise no event; exec'd processes do.
            if proc.parent is not None and proc.parent.container is proc.container and role == "worker":
                continue
            act.announce(proc)
    falco = _node_falco(world, pod)
    if falco is not None:
        # Falco asks the runtime for the new container's metadata.
        act.connect_unix(t + ms(rng, 2, 40), falco, "/run/containerd/containerd.sock")
    if "istio-proxy" in pod.containers:
        agent = pod.role("pilot-agent")
        if agent:
            act.open_write(agent[0].start_ns + ms(rng, 30, 200), agent[0], "/etc/istio/proxy/envoy-rev.json")
    if pod.workload.app == "postgres":
        main = pod.main()
        act.open_write(
            main.start_ns + ms(rng, 5, 50),
            main,
            "/var/lib/postgresql/data/postmaster.pid",
            "O_EXCL|O_CREAT|O_RDWR",
        )


def _node_falco(world: World, pod: Pod) -> Proc | None:
    wl = world.workloads.get("falco")
    if wl is None:
        return None
    for p in wl.pods_at(pod.start_ns):
        if p.node is pod.node:
            return p.main()
    return None


def run_pod(
    act: Activity,
    world: World,
    wl: Workload,
    t: int,
    *,
    spec: AppSpec | None = None,
    tag: str | None = None,
    node_index: int | None = None,
    name: str | None = None,
) -> Pod:
    """Start a new pod of ``wl`` at ``t`` on a random node (or ``node_index``) and emit its start."""
    rng = act.rng
    node = world.nodes[node_index] if node_index is not None else rng.choice(world.nodes)
    pod = start_pod(rng, world, wl, node, t, spec=spec, tag=tag, name=name)
    pod_start_events(act, world, pod)
    return pod


def exec_into(
    act: Activity,
    t: int,
    pod: Pod,
    command: str,
    *,
    container: str | None = None,
    tty: int = 0,
    user: str | None = None,
    uid: int | None = None,
    exepath: str | None = None,
    cwd: str | None = None,
    host_runc: bool = True,
) -> Proc:
    """Run ``command`` inside a container of ``pod`` the way kubelet and ``kubectl exec`` do.

    containerd's shim starts ``runc exec`` on the host; the new process's parent is runc.
    """
    ctr = pod.container(container)
    main = next((p for procs in pod.procs.values() for p in procs if p.container is ctr), None)
    shim = pod.shim
    assert shim is not None
    process_id = act.rng.randint(10**8, 10**9)
    pid_file = hex_id(act.rng, 64)
    runc = act.spawn(
        t - ms(act.rng, 3, 12),
        shim,
        f"runc --root /run/containerd/runc/k8s.io --log /run/containerd/io.containerd.runtime.v2.task/k8s.io/"
        f"{ctr.id}{'0' * 52}/log.json --log-format json exec --process /tmp/runc-process{process_id} "
        f"--detach --pid-file /run/containerd/io.containerd.runtime.v2.task/k8s.io/{ctr.id}/{pid_file}.pid "
        f"{ctr.id}",
        exepath="/usr/bin/runc",
        container=None,
        emit=host_runc,
    )
    return act.spawn(
        t,
        runc,
        command,
        container=ctr,
        user=user if user is not None else (main.user if main else "root"),
        uid=uid if uid is not None else (main.uid if main else 0),
        cwd=cwd or (main.cwd if main else "/"),
        tty=tty,
        exepath=exepath,
    )


def dns_lookup(act: Activity, t: int, proc: Proc, world: World) -> None:
    """A resolver query from ``proc`` to the cluster DNS service."""
    act.connect(t, proc, world.services["kube-dns"], 53, proto="udp")
