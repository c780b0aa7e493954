"""The simulated cluster: nodes, namespaces, workloads, their pods over time, and the network.

Every workload is described by an `AppSpec` (its containers, images and the long-running processes
each container starts with). Pods are created over time: the ones already running when the corpus
starts, then new ones for rollouts, restarts and cron jobs. A pod owns its containers and processes;
`Workload.pods_at` answers which pods serve at a given instant.

Addresses follow a common cloud layout: nodes in a VPC subnet (10.0.x.y), pods in one /24 per node
(10.244.<node>.0/24, as a cluster-pool CNI hands out), services in 10.96.0.0/12 with the API server
at 10.96.0.1:443 and cluster DNS at 10.96.0.10:53. Public endpoints come in two kinds: well-known
services with fixed address pools (registries, package mirrors, cloud APIs), and `public_ip`, a
random public address that benign traffic (customer webhooks, mirrors, CDNs) and attacks both use,
so "never seen before" is a property of the address, not of who uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Final

from .model import NS_PER_S, Container, Node, Proc

__all__ = [
    "APPS",
    "ENDPOINTS",
    "AppSpec",
    "ContainerSpec",
    "Pod",
    "ProcSpec",
    "Workload",
    "World",
    "build_world",
    "k8s_suffix",
    "public_ip",
    "uuid_text",
]

_K8S_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
HOUR: Final = 3600 * NS_PER_S
MINUTE: Final = 60 * NS_PER_S


def k8s_suffix(rng: Random, n: int) -> str:
    """The random suffix Kubernetes puts on generated names (pods, ReplicaSet hashes)."""
    return "".join(rng.choice(_K8S_ALPHABET) for _ in range(n))


def hex_id(rng: Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


# First octets of busy public allocations (cloud providers, hosting, ISPs). Benign and attack traffic
# draw from the same generator.
_PUBLIC_FIRST_OCTETS: Final = (
    3,
    5,
    13,
    18,
    23,
    31,
    34,
    35,
    37,
    45,
    46,
    51,
    52,
    54,
    62,
    64,
    66,
    69,
    77,
    78,
    79,
    80,
    81,
    82,
    85,
    87,
    89,
    91,
    92,
    93,
    94,
    95,
    103,
    104,
    107,
    109,
    116,
    128,
    134,
    138,
    139,
    141,
    142,
    143,
    144,
    146,
    149,
    151,
    157,
    159,
    161,
    162,
    164,
    165,
    167,
    168,
    170,
    176,
    178,
    185,
    188,
    193,
    194,
    195,
    199,
    206,
    207,
    209,
    212,
    213,
    216,
    217,
)


def public_ip(rng: Random) -> str:
    """A random routable public IPv4 address."""
    first = rng.choice(_PUBLIC_FIRST_OCTETS)
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A public service: a pool of addresses and the port it listens on."""

    ips: tuple[str, ...]
    port: int
    proto: str = "tcp"

    def pick(self, rng: Random) -> tuple[str, int]:
        return rng.choice(self.ips), self.port


ENDPOINTS: Final = {
    "pypi": Endpoint(
        ("151.101.0.223", "151.101.64.223", "151.101.128.223", "151.101.192.223", "151.101.1.63"), 443
    ),
    "npm": Endpoint(("104.16.0.35", "104.16.3.35", "104.16.16.35", "104.16.24.35", "104.16.27.35"), 443),
    "debian": Endpoint(("151.101.2.132", "151.101.66.132", "151.101.130.132", "151.101.194.132"), 80),
    "github": Endpoint(("140.82.121.3", "140.82.121.4", "140.82.112.3", "140.82.114.4"), 443),
    "gitlab": Endpoint(("172.65.251.78",), 443),
    "dl-k8s": Endpoint(("34.107.204.206",), 443),
    "helm": Endpoint(("152.199.39.108",), 443),
    "golang-proxy": Endpoint(("142.250.179.145", "142.250.74.81", "172.217.16.177"), 443),
    "dockerhub": Endpoint(("54.227.20.253", "3.216.34.172", "44.205.64.79", "104.16.98.215"), 443),
    "stripe": Endpoint(
        ("3.18.12.63", "3.130.192.231", "54.187.174.169", "54.187.205.235", "52.15.183.38"), 443
    ),
    "sendgrid": Endpoint(("167.89.115.56", "167.89.118.52", "167.89.123.122"), 587),
    "letsencrypt": Endpoint(("172.65.32.248",), 443),
    "sts": Endpoint(("52.94.233.131", "52.119.172.27", "52.46.154.18"), 443),
    "vpc-dns": Endpoint(("10.0.0.2",), 53, "udp"),
    "ntp": Endpoint(("169.254.169.123",), 123, "udp"),
}


def s3_ip(rng: Random) -> str:
    """An S3 endpoint address (S3 spreads clients over a wide range)."""
    if rng.random() < 0.7:
        return f"52.{rng.choice((216, 217, 218, 219))}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return f"3.5.{rng.randint(0, 31)}.{rng.randint(1, 254)}"


# ---------------------------------------------------------------------------------------------
# Application layouts.


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    tags: tuple[str, ...]  # successive releases; rollouts move forward along them
    privileged: bool = False


@dataclass(frozen=True, slots=True)
class ProcSpec:
    """A process a container runs for its whole life.

    ``exec_by`` names the role whose process exec'd this one (an ``execve`` event at start);
    ``fork_of`` names the role it was forked from (no event: forks raise no alert).
    """

    role: str
    container: str
    command: str
    exepath: str
    user: str
    uid: int
    cwd: str = "/"
    count: int = 1
    exec_by: str | None = None
    fork_of: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class AppSpec:
    containers: tuple[ContainerSpec, ...]
    procs: tuple[ProcSpec, ...]
    port: int | None = None
    metrics_port: int | None = None
    host_network: bool = False


_ISTIO = ContainerSpec("istio-proxy", "docker.io/istio/proxyv2", ("1.21.1", "1.21.2"))
_ISTIO_PROCS = (
    ProcSpec(
        "pilot-agent",
        "istio-proxy",
        "pilot-agent proxy sidecar --domain $(POD_NAMESPACE).svc.cluster.local --proxyLogLevel=warning "
        "--proxyComponentLogLevel=misc:error --log_output_level=default:info",
        "/usr/local/bin/pilot-agent",
        "istio-proxy",
        1337,
    ),
    ProcSpec(
        "envoy",
        "istio-proxy",
        "envoy -c etc/istio/proxy/envoy-rev.json --drain-time-s 45 --drain-strategy immediate "
        "--local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart "
        "--allow-unknown-static-fields",
        "/usr/local/bin/envoy",
        "istio-proxy",
        1337,
        exec_by="pilot-agent",
    ),
)


def _meshed(app: AppSpec) -> AppSpec:
    return AppSpec((*app.containers, _ISTIO), (*app.procs, *_ISTIO_PROCS), app.port, app.metrics_port)


_PY = "/usr/local/bin/python3.12"

APPS: Final[dict[str, AppSpec]] = {
    "storefront": _meshed(
        AppSpec(
            (ContainerSpec("nginx", "docker.io/library/nginx", ("1.25.4", "1.25.5", "1.26.0", "1.26.1")),),
            (
                ProcSpec("main", "nginx", "nginx -g daemon off;", "/usr/sbin/nginx", "root", 0),
                ProcSpec(
                    "worker",
                    "nginx",
                    "nginx -g daemon off;",
                    "/usr/sbin/nginx",
                    "nginx",
                    101,
                    count=2,
                    fork_of="main",
                ),
            ),
            port=8080,
            metrics_port=9113,
        )
    ),
    "api": _meshed(
        AppSpec(
            (
                ContainerSpec(
                    "api",
                    "registry.example.com/shop/api",
                    ("v2.14.0", "v2.14.1", "v2.15.0", "v2.15.1", "v2.16.0"),
                ),
            ),
            (
                ProcSpec(
                    "main",
                    "api",
                    "node --enable-source-maps /app/dist/server.js",
                    "/usr/local/bin/node",
                    "node",
                    1000,
                    cwd="/app",
                ),
            ),
            port=3000,
            metrics_port=3000,
        )
    ),
    "orders": _meshed(
        AppSpec(
            (
                ContainerSpec(
                    "orders",
                    "registry.example.com/shop/orders",
                    ("1.8.2", "1.8.3", "1.9.0", "1.9.1", "1.9.2"),
                ),
            ),
            (
                ProcSpec(
                    "main",
                    "orders",
                    "gunicorn orders.wsgi:application --bind 0.0.0.0:8000 --workers 3 --timeout 60",
                    _PY,
                    "app",
                    10001,
                    cwd="/srv",
                    name="gunicorn",
                ),
                ProcSpec(
                    "worker",
                    "orders",
                    "gunicorn orders.wsgi:application --bind 0.0.0.0:8000 --workers 3 --timeout 60",
                    _PY,
                    "app",
                    10001,
                    cwd="/srv",
                    count=3,
                    fork_of="main",
                    name="gunicorn",
                ),
            ),
            port=8000,
            metrics_port=8000,
        )
    ),
    "orders-worker": _meshed(
        AppSpec(
            (
                ContainerSpec(
                    "worker",
                    "registry.example.com/shop/orders",
                    ("1.8.2", "1.8.3", "1.9.0", "1.9.1", "1.9.2"),
                ),
            ),
            (
                ProcSpec(
                    "main",
                    "worker",
                    "celery -A orders worker --loglevel=INFO --concurrency=4",
                    _PY,
                    "app",
                    10001,
                    cwd="/srv",
                    name="celery",
                ),
                ProcSpec(
                    "worker",
                    "worker",
                    "celery -A orders worker --loglevel=INFO --concurrency=4",
                    _PY,
                    "app",
                    10001,
                    cwd="/srv",
                    count=4,
                    fork_of="main",
                    name="celery",
                ),
            ),
        )
    ),
    "postgres": AppSpec(
        (ContainerSpec("postgres", "docker.io/library/postgres", ("16.2", "16.3")),),
        (
            ProcSpec(
                "main",
                "postgres",
                "postgres -c config_file=/etc/postgresql/postgresql.conf",
                "/usr/lib/postgresql/16/bin/postgres",
                "postgres",
                999,
                cwd="/var/lib/postgresql/data",
            ),
            ProcSpec(
                "worker",
                "postgres",
                "postgres -c config_file=/etc/postgresql/postgresql.conf",
                "/usr/lib/postgresql/16/bin/postgres",
                "postgres",
                999,
                cwd="/var/lib/postgresql/data",
                count=4,
                fork_of="main",
            ),
        ),
        port=5432,
        metrics_port=9187,
    ),
    "redis": AppSpec(
        (ContainerSpec("redis", "docker.io/library/redis", ("7.2.4", "7.2.5")),),
        (
            ProcSpec(
                "main",
                "redis",
                "redis-server *:6379",
                "/usr/local/bin/redis-server",
                "redis",
                999,
                cwd="/data",
            ),
        ),
        port=6379,
        metrics_port=9121,
    ),
    "mysql": AppSpec(
        (ContainerSpec("mysql", "docker.io/library/mysql", ("8.0.36", "8.0.37")),),
        (ProcSpec("main", "mysql", "mysqld", "/usr/sbin/mysqld", "mysql", 999, cwd="/var/lib/mysql"),),
        port=3306,
    ),
    "ingress-nginx": AppSpec(
        (ContainerSpec("controller", "registry.k8s.io/ingress-nginx/controller", ("v1.10.0", "v1.10.1")),),
        (
            ProcSpec(
                "controller",
                "controller",
                "/nginx-ingress-controller --publish-service=$(POD_NAMESPACE)/ingress-nginx-controller "
                "--election-id=ingress-nginx-leader --controller-class=k8s.io/ingress-nginx "
                "--ingress-class=nginx",
                "/nginx-ingress-controller",
                "www-data",
                101,
                cwd="/etc/nginx",
            ),
            ProcSpec(
                "main",
                "controller",
                "nginx -c /etc/nginx/nginx.conf",
                "/usr/bin/nginx",
                "www-data",
                101,
                cwd="/etc/nginx",
                exec_by="controller",
            ),
            ProcSpec(
                "worker",
                "controller",
                "nginx -c /etc/nginx/nginx.conf",
                "/usr/bin/nginx",
                "www-data",
                101,
                cwd="/etc/nginx",
                count=2,
                fork_of="main",
            ),
        ),
        port=443,
        metrics_port=10254,
    ),
    "prometheus": AppSpec(
        (ContainerSpec("prometheus", "quay.io/prometheus/prometheus", ("v2.51.0", "v2.51.2")),),
        (
            ProcSpec(
                "main",
                "prometheus",
                "prometheus --config.file=/etc/prometheus/config_out/prometheus.env.yaml "
                "--storage.tsdb.path=/prometheus --storage.tsdb.retention.time=15d --web.enable-lifecycle",
                "/bin/prometheus",
                "nobody",
                65534,
                cwd="/prometheus",
            ),
        ),
        port=9090,
        metrics_port=9090,
    ),
    "prometheus-operator": AppSpec(
        (
            ContainerSpec(
                "prometheus-operator", "quay.io/prometheus-operator/prometheus-operator", ("v0.72.0",)
            ),
        ),
        (
            ProcSpec(
                "main",
                "prometheus-operator",
                "operator --kubelet-service=kube-system/kubelet "
                "--prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.72.0",
                "/bin/operator",
                "nobody",
                65534,
            ),
        ),
        metrics_port=8080,
    ),
    "kube-state-metrics": AppSpec(
        (
            ContainerSpec(
                "kube-state-metrics", "registry.k8s.io/kube-state-metrics/kube-state-metrics", ("v2.11.0",)
            ),
        ),
        (
            ProcSpec(
                "main",
                "kube-state-metrics",
                "kube-state-metrics --port=8080 --telemetry-port=8081",
                "/kube-state-metrics",
                "nobody",
                65534,
            ),
        ),
        metrics_port=8080,
    ),
    "node-exporter": AppSpec(
        (ContainerSpec("node-exporter", "quay.io/prometheus/node-exporter", ("v1.7.0",)),),
        (
            ProcSpec(
                "main",
                "node-exporter",
                "node_exporter --path.procfs=/host/proc --path.sysfs=/host/sys "
                "--path.rootfs=/host/root --web.listen-address=[$(HOST_IP)]:9100",
                "/bin/node_exporter",
                "nobody",
                65534,
            ),
        ),
        metrics_port=9100,
        host_network=True,
    ),
    "fluent-bit": AppSpec(
        (ContainerSpec("fluent-bit", "cr.fluentbit.io/fluent/fluent-bit", ("2.2.2",)),),
        (
            ProcSpec(
                "main",
                "fluent-bit",
                "fluent-bit -c /fluent-bit/etc/conf/fluent-bit.conf",
                "/fluent-bit/bin/fluent-bit",
                "root",
                0,
            ),
        ),
        metrics_port=2020,
    ),
    "cert-manager": AppSpec(
        (ContainerSpec("cert-manager-controller", "quay.io/jetstack/cert-manager-controller", ("v1.14.4",)),),
        (
            ProcSpec(
                "main",
                "cert-manager-controller",
                "controller --v=2 --cluster-resource-namespace=$(POD_NAMESPACE) "
                "--leader-election-namespace=kube-system "
                "--acme-http01-solver-image=quay.io/jetstack/cert-manager-acmesolver:v1.14.4",
                "/app/cmd/controller/controller",
                "cert-manager",
                1000,
            ),
        ),
        metrics_port=9402,
    ),
    "cert-manager-cainjector": AppSpec(
        (ContainerSpec("cert-manager-cainjector", "quay.io/jetstack/cert-manager-cainjector", ("v1.14.4",)),),
        (
            ProcSpec(
                "main",
                "cert-manager-cainjector",
                "cainjector --v=2 --leader-election-namespace=kube-system",
                "/app/cmd/cainjector/cainjector",
                "cert-manager",
                1000,
            ),
        ),
    ),
    "argocd-application-controller": AppSpec(
        (ContainerSpec("application-controller", "quay.io/argoproj/argocd", ("v2.10.4", "v2.10.5")),),
        (
            ProcSpec(
                "main",
                "application-controller",
                "argocd-application-controller --operation-processors 10 "
                "--status-processors 20 --app-resync 180",
                "/usr/local/bin/argocd",
                "argocd",
                999,
                cwd="/home/argocd",
            ),
        ),
        metrics_port=8082,
    ),
    "argocd-repo-server": AppSpec(
        (ContainerSpec("repo-server", "quay.io/argoproj/argocd", ("v2.10.4", "v2.10.5")),),
        (
            ProcSpec(
                "main",
                "repo-server",
                "argocd-repo-server --redis argocd-redis:6379",
                "/usr/local/bin/argocd",
                "argocd",
                999,
                cwd="/home/argocd",
            ),
        ),
        port=8081,
        metrics_port=8084,
    ),
    "gitlab-runner": AppSpec(
        (ContainerSpec("gitlab-runner", "docker.io/gitlab/gitlab-runner", ("alpine-v16.9.1",)),),
        (
            ProcSpec(
                "main",
                "gitlab-runner",
                "gitlab-runner run --user=gitlab-runner --working-directory=/home/gitlab-runner",
                "/usr/bin/gitlab-runner",
                "gitlab-runner",
                999,
                cwd="/home/gitlab-runner",
            ),
        ),
        metrics_port=9252,
    ),
    "kube-proxy": AppSpec(
        (ContainerSpec("kube-proxy", "registry.k8s.io/kube-proxy", ("v1.29.2",), privileged=True),),
        (
            ProcSpec(
                "main",
                "kube-proxy",
                "kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=$(NODE_NAME)",
                "/usr/local/bin/kube-proxy",
                "root",
                0,
            ),
        ),
        metrics_port=10249,
        host_network=True,
    ),
    "coredns": AppSpec(
        (ContainerSpec("coredns", "registry.k8s.io/coredns/coredns", ("v1.11.1",)),),
        (ProcSpec("main", "coredns", "/coredns -conf /etc/coredns/Corefile", "/coredns", "nonroot", 65532),),
        port=53,
        metrics_port=9153,
    ),
    "cilium": AppSpec(
        (ContainerSpec("cilium-agent", "quay.io/cilium/cilium", ("v1.15.3",), privileged=True),),
        (
            ProcSpec(
                "main",
                "cilium-agent",
                "cilium-agent --config-dir=/tmp/cilium/config-map",
                "/usr/bin/cilium-agent",
                "root",
                0,
                cwd="/home/cilium",
            ),
        ),
        metrics_port=9962,
        host_network=True,
    ),
    "falco": AppSpec(
        (ContainerSpec("falco", "docker.io/falcosecurity/falco-no-driver", ("0.37.1",), privileged=True),),
        (
            ProcSpec(
                "main", "falco", "falco --modern-bpf -pk -o json_output=true", "/usr/bin/falco", "root", 0
            ),
        ),
        metrics_port=8765,
    ),
    "loki": AppSpec(
        (ContainerSpec("loki", "docker.io/grafana/loki", ("2.9.6",)),),
        (
            ProcSpec(
                "main",
                "loki",
                "loki -config.file=/etc/loki/config/config.yaml -target=all",
                "/usr/bin/loki",
                "loki",
                10001,
                cwd="/var/loki",
            ),
        ),
        port=3100,
        metrics_port=3100,
    ),
    "istiod": AppSpec(
        (ContainerSpec("discovery", "docker.io/istio/pilot", ("1.21.1",)),),
        (
            ProcSpec(
                "main",
                "discovery",
                "pilot-discovery discovery --monitoringAddr=:15014 --log_output_level=default:info",
                "/usr/local/bin/pilot-discovery",
                "istio-proxy",
                1337,
            ),
        ),
        port=15012,
        metrics_port=15014,
    ),
}


# ---------------------------------------------------------------------------------------------
# Workloads and pods.


class Pod:
    """One pod incarnation: where it ran, when, and what it started."""

    __slots__ = (
        "containers",
        "end_ns",
        "ip",
        "name",
        "node",
        "procs",
        "shim",
        "start_ns",
        "tag",
        "uid",
        "workload",
    )

    def __init__(
        self, workload: Workload, name: str, node: Node, *, ip: str, start_ns: int, tag: str, uid: str
    ) -> None:
        self.workload = workload
        self.name = name
        self.node = node
        self.ip = ip
        self.start_ns = start_ns
        self.end_ns = 2**62
        self.tag = tag
        self.uid = uid
        self.containers: dict[str, Container] = {}
        self.procs: dict[str, list[Proc]] = {}
        self.shim: Proc | None = None

    def alive(self, t: int) -> bool:
        return self.start_ns <= t < self.end_ns

    def main(self) -> Proc:
        return self.procs["main"][0]

    def role(self, role: str) -> list[Proc]:
        return self.procs.get(role, [])

    def serving(self, rng: Random) -> Proc:
        """The process that handles a request: a worker if the app forks them, else the main one."""
        workers = self.procs.get("worker")
        return rng.choice(workers) if workers else self.main()

    def container(self, name: str | None = None) -> Container:
        if name is None:
            return next(iter(self.containers.values()))
        return self.containers[name]


@dataclass(slots=True)
class Workload:
    name: str
    ns: str
    kind: str  # Deployment | StatefulSet | DaemonSet | CronJob
    app: str
    replicas: int = 1
    service_ip: str | None = None
    pods: list[Pod] = field(default_factory=list)
    tag_index: int = 0
    template_hash: str = ""

    @property
    def spec(self) -> AppSpec:
        return APPS[self.app]

    def pods_at(self, t: int) -> list[Pod]:
        return [p for p in self.pods if p.start_ns <= t < p.end_ns]

    def pick(self, rng: Random, t: int) -> Pod | None:
        alive = self.pods_at(t)
        return rng.choice(alive) if alive else None


class World:
    """The cluster at large: what every generator reads and extends."""

    def __init__(self, nodes: list[Node], t0: int, t1: int) -> None:
        self.nodes = nodes
        self.t0 = t0
        self.t1 = t1
        self.workloads: dict[str, Workload] = {}
        self.host: dict[str, dict[str, Proc]] = {n.hostname: {} for n in nodes}
        self._ips: dict[str, set[str]] = {n.hostname: set() for n in nodes}
        self.services: dict[str, str] = {"kubernetes": "10.96.0.1", "kube-dns": "10.96.0.10"}
        self.falco_audit_node = nodes[0]

    def add(self, wl: Workload) -> Workload:
        self.workloads[wl.name] = wl
        return wl

    def __getitem__(self, name: str) -> Workload:
        return self.workloads[name]

    def pod_ip(self, rng: Random, node: Node) -> str:
        used = self._ips[node.hostname]
        while True:
            ip = f"{node.pod_prefix}{rng.randint(2, 254)}"
            if ip not in used or len(used) > 240:
                used.add(ip)
                return ip


def _hostname(ip: str, region: str) -> str:
    return f"ip-{ip.replace('.', '-')}.{region}.compute.internal"


# (name, namespace, kind, app, replicas, has service)
_LAYOUT: Final = (
    ("ingress-nginx-controller", "ingress-nginx", "Deployment", "ingress-nginx", 2, True),
    ("storefront", "shop", "Deployment", "storefront", 3, True),
    ("api", "shop", "Deployment", "api", 3, True),
    ("orders", "shop", "Deployment", "orders", 2, True),
    ("orders-worker", "shop", "Deployment", "orders-worker", 2, False),
    ("postgres", "data", "StatefulSet", "postgres", 1, True),
    ("redis", "data", "StatefulSet", "redis", 1, True),
    ("mysql", "legacy", "StatefulSet", "mysql", 1, True),
    ("prometheus-k8s", "monitoring", "StatefulSet", "prometheus", 1, True),
    ("prometheus-operator", "monitoring", "Deployment", "prometheus-operator", 1, True),
    ("kube-state-metrics", "monitoring", "Deployment", "kube-state-metrics", 1, True),
    ("node-exporter", "monitoring", "DaemonSet", "node-exporter", 1, False),
    ("loki", "logging", "StatefulSet", "loki", 1, True),
    ("fluent-bit", "logging", "DaemonSet", "fluent-bit", 1, False),
    ("cert-manager", "cert-manager", "Deployment", "cert-manager", 1, True),
    ("cert-manager-cainjector", "cert-manager", "Deployment", "cert-manager-cainjector", 1, False),
    ("argocd-application-controller", "argocd", "StatefulSet", "argocd-application-controller", 1, False),
    ("argocd-repo-server", "argocd", "Deployment", "argocd-repo-server", 1, True),
    ("gitlab-runner", "ci", "Deployment", "gitlab-runner", 1, False),
    ("istiod", "istio-system", "Deployment", "istiod", 1, True),
    ("kube-proxy", "kube-system", "DaemonSet", "kube-proxy", 1, False),
    ("cilium", "kube-system", "DaemonSet", "cilium", 1, False),
    ("coredns", "kube-system", "Deployment", "coredns", 2, False),
    ("falco", "falco", "DaemonSet", "falco", 1, False),
)


def build_world(rng: Random, n_nodes: int, t0: int, t1: int) -> World:
    """Nodes with their host daemons, and every workload's pods as they run when the corpus starts."""
    region = rng.choice(("eu-west-1", "us-east-1", "eu-central-1", "us-west-2"))
    nodes: list[Node] = []
    used: set[str] = set()
    while len(nodes) < n_nodes:
        ip = f"10.0.{rng.choice((16, 32, 48)) + rng.randint(0, 15)}.{rng.randint(4, 250)}"
        if ip in used:
            continue
        used.add(ip)
        nodes.append(Node(len(nodes), _hostname(ip, region), ip, f"10.244.{len(nodes)}."))
    world = World(nodes, t0, t1)
    for node in nodes:
        _host_daemons(rng, world, node, t0)
    for name, ns, kind, app, replicas, has_svc in _LAYOUT:
        wl = world.add(Workload(name, ns, kind, app, replicas, template_hash=k8s_suffix(rng, 10)))
        if has_svc:
            ip = f"10.96.{rng.randint(1, 255)}.{rng.randint(1, 254)}"
            wl.service_ip = ip
            world.services[name] = ip
        targets = list(nodes) if kind == "DaemonSet" else _spread(rng, nodes, replicas)
        for i, node in enumerate(targets):
            started = t0 - rng.randint(2 * HOUR, 20 * 24 * HOUR)
            start_pod(rng, world, wl, node, started, ordinal=i)
    return world


def _spread(rng: Random, nodes: list[Node], n: int) -> list[Node]:
    order = rng.sample(nodes, len(nodes))
    return [order[i % len(order)] for i in range(n)]


def _host_daemons(rng: Random, world: World, node: Node, t0: int) -> None:
    boot = t0 - rng.randint(21 * 24 * HOUR, 30 * 24 * HOUR)
    host = world.host[node.hostname]
    systemd = Proc(
        node=node,
        container=None,
        parent=None,
        command="/sbin/init",
        exepath="/usr/lib/systemd/systemd",
        user="root",
        uid=0,
        start_ns=boot,
        name="systemd",
        pid=1,
    )
    host["systemd"] = systemd

    def daemon(key: str, command: str, exepath: str, after_s: int) -> None:
        host[key] = Proc(
            node=node,
            container=None,
            parent=systemd,
            command=command,
            exepath=exepath,
            user="root",
            uid=0,
            start_ns=boot + after_s * NS_PER_S,
        )

    daemon("containerd", "/usr/bin/containerd", "/usr/bin/containerd", 4)
    daemon(
        "kubelet",
        "/usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf "
        "--kubeconfig=/etc/kubernetes/"
        "kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/"
        "containerd.sock --node-ip=" + node.ip,
        "/usr/bin/kubelet",
        6,
    )
    daemon("cron", "/usr/sbin/cron -f -P", "/usr/sbin/cron", 3)
    daemon("sshd", "/usr/sbin/sshd -D", "/usr/sbin/sshd", 3)
    daemon("chronyd", "/usr/sbin/chronyd -F 1", "/usr/sbin/chronyd", 3)


def next_tag(wl: Workload) -> str:
    tags = APPS[wl.app].containers[0].tags
    wl.tag_index = min(wl.tag_index + 1, len(tags) - 1)
    return tags[wl.tag_index]


def pod_name(rng: Random, wl: Workload, ordinal: int, t: int) -> str:
    if wl.kind == "StatefulSet":
        return f"{wl.name}-{ordinal}"
    if wl.kind == "DaemonSet":
        return f"{wl.name}-{k8s_suffix(rng, 5)}"
    if wl.kind == "CronJob":
        return f"{wl.name}-{t // MINUTE}-{k8s_suffix(rng, 5)}"
    return f"{wl.name}-{wl.template_hash}-{k8s_suffix(rng, 5)}"


def start_pod(
    rng: Random,
    world: World,
    wl: Workload,
    node: Node,
    t: int,
    *,
    ordinal: int = 0,
    tag: str | None = None,
    name: str | None = None,
    spec: AppSpec | None = None,
) -> Pod:
    """Create a pod of ``wl`` on ``node`` started at ``t``, with its containers and processes.

    Emits nothing: the caller (`aerie.models.corpus.workloads.pod_start_events`) decides whether a
    start inside the corpus window raises events. Processes get their pids later (`Node.assign_pids`).
    """
    spec = spec or APPS[wl.app]
    main_spec = spec.containers[0]
    tag = tag or main_spec.tags[min(wl.tag_index, len(main_spec.tags) - 1)]
    ip = node.ip if spec.host_network else world.pod_ip(rng, node)
    pod = Pod(wl, name or pod_name(rng, wl, ordinal, t), node, ip=ip, start_ns=t, tag=tag, uid=uuid_text(rng))
    # The shim daemonizes: its parent is init once containerd has started it.
    pod.shim = Proc(
        node=node,
        container=None,
        parent=world.host[node.hostname]["systemd"],
        command=f"/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {hex_id(rng, 64)} "
        "-address /run/containerd/containerd.sock",
        exepath="/usr/bin/containerd-shim-runc-v2",
        user="root",
        uid=0,
        start_ns=t - rng.randint(250, 450) * 1_000_000,
    )
    for i, cspec in enumerate(spec.containers):
        pod.containers[cspec.name] = Container(
            cid=hex_id(rng, 12),
            name=cspec.name,
            image=cspec.image,
            tag=tag if i == 0 else cspec.tags[0],
            ns=wl.ns,
            pod=pod.name,
            node=node,
            privileged=cspec.privileged,
            start_ns=t + i * 150_000_000,
            ip=ip,
        )
    first_in_container: set[str] = set()
    for pspec in spec.procs:
        container = pod.containers[pspec.container]
        for k in range(pspec.count):
            if pspec.fork_of is not None:
                parent = pod.procs[pspec.fork_of][0]
            elif pspec.exec_by is not None:
                parent = pod.procs[pspec.exec_by][0]
            else:
                parent = pod.shim
            started = container.start_ns + rng.randint(20, 900) * 1_000_000 + k * 3_000_000
            if pspec.exec_by is not None or pspec.fork_of is not None:
                started = max(started, parent.start_ns + rng.randint(5, 400) * 1_000_000)
            command = pspec.command.replace("$(POD_NAMESPACE)", wl.ns).replace("$(NODE_NAME)", node.hostname)
            proc = Proc(
                node=node,
                container=container,
                parent=parent,
                command=command,
                exepath=pspec.exepath,
                user=pspec.user,
                uid=pspec.uid,
                cwd=pspec.cwd,
                start_ns=started,
                name=pspec.name,
                vpid1=pspec.container not in first_in_container,
            )
            first_in_container.add(pspec.container)
            pod.procs.setdefault(pspec.role, []).append(proc)
    wl.pods.append(pod)
    return pod


def uuid_text(rng: Random) -> str:
    h = hex_id(rng, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
