"""Routine benign activity (``benign_kind="baseline"``): what the cluster does every day.

Each source gets an event budget (a share of the corpus) and spends it either on load-driven
activity, sampled from the ``web``/``office``/``flat`` profiles (requests through ingress → web →
api → orders → databases, DNS, CI jobs), or on periodic activity whose period is stretched or
shrunk to fit the budget (exec probes, controllers re-reading their service-account token and
reconnecting to the API server, Prometheus scrapes, log shipping, kube-proxy syncs, cron jobs).

Several routine sources raise upstream Falco rules that a real deployment sees as everyday noise:
CI jobs run package managers, ``curl -o`` and freshly downloaded ``kubectl``/``helm`` binaries
("Launch Package Management Process in Container", "Drop and execute new binary in container", "The
docker client is executed in a container"), controllers outside Falco's allow-list contact the API
server, a report job asks the cloud metadata service for credentials, docker-in-docker mounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .activity import Activity
from .behaviour import Ctx, dns_lookup, exec_into, ms, run_pod, seconds
from .model import NS_PER_S, Proc
from .timeline import periodic
from .world import (
    ENDPOINTS,
    AppSpec,
    ContainerSpec,
    Pod,
    ProcSpec,
    Workload,
    hex_id,
    k8s_suffix,
    public_ip,
    s3_ip,
    uuid_text,
)

__all__ = ["BASELINE_SHARES", "SOURCES", "ensure_workload"]

_API_SERVER: Final = "10.96.0.1"
_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_CA: Final = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def ensure_workload(ctx: Ctx, name: str, ns: str, kind: str, app: str) -> Workload:
    """A workload created on demand (cron jobs, CI job pods, debug pods)."""
    wl = ctx.world.workloads.get(name)
    if wl is None:
        wl = ctx.world.add(
            Workload(name, ns, kind, app, 0, template_hash=k8s_suffix(ctx.rng(f"wl/{name}"), 10))
        )
    return wl


def _budget_period(
    ctx: Ctx, pods: list[Pod], events_per_tick: float, budget: int, floor_s: float = 1.0
) -> int:
    alive = ctx.alive_ns(pods)
    if budget <= 0 or alive <= 0:
        return 0
    return max(int(floor_s * NS_PER_S), int(alive * events_per_tick / budget))


def _window(ctx: Ctx, pod: Pod) -> tuple[int, int]:
    return max(pod.start_ns, ctx.t0), min(pod.end_ns, ctx.t1)


# ---------------------------------------------------------------------------------------------
# Request traffic.


class _Traffic:
    """Requests entering through ingress and fanning out to the services behind it."""

    def __init__(self, ctx: Ctx, act: Activity) -> None:
        self.ctx = ctx
        self.act = act
        self.rng = act.rng
        w = ctx.world
        self.w = w
        self.clients = [public_ip(self.rng) for _ in range(500)]
        self.webhooks = [public_ip(self.rng) for _ in range(40)]

    def _client(self) -> str:
        rng = self.rng
        if rng.random() < 0.8:
            return rng.choice(self.clients)
        ip = public_ip(rng)
        self.clients[rng.randrange(len(self.clients))] = ip
        return ip

    def _call(self, t: int, caller: Proc, caller_pod: Pod, target: str, port: int) -> tuple[int, Pod | None]:
        """``caller`` opens a connection to service ``target``; returns when and which pod accepted."""
        act, rng = self.act, self.rng
        wl = self.w[target]
        pod = wl.pick(rng, t)
        if pod is None or wl.service_ip is None:
            return t, None
        act.connect(t, caller, wl.service_ip, port)
        envoy = caller_pod.role("envoy")
        if envoy and rng.random() < 0.4:
            act.connect(t + ms(rng, 0.1, 0.5), envoy[0], pod.ip, port)
        t += ms(rng, 0.3, 2)
        act.accept(t, pod.serving(rng) if wl.app != "postgres" else pod.main(), caller_pod.ip, port)
        return t, pod

    def request(self, t: int) -> None:
        act, rng, w = self.act, self.rng, self.w
        ing = w["ingress-nginx-controller"].pick(rng, t)
        if ing is None:
            return
        worker = ing.serving(rng)
        act.accept(t, worker, self._client(), 443)
        if rng.random() > 0.38:
            return
        t, sf = self._call(t + ms(rng, 0.5, 3), worker, ing, "storefront", 8080)
        if sf is None or rng.random() > 0.5:
            return
        t, api = self._call(t + ms(rng, 1, 6), sf.serving(rng), sf, "api", 3000)
        if api is not None:
            self._api(t + ms(rng, 1, 8), api)

    def _api(self, t: int, pod: Pod) -> None:
        act, rng, w = self.act, self.rng, self.w
        node = pod.main()
        r = rng.random()
        if r < 0.16:
            self._call(t, node, pod, "postgres", 5432)
        elif r < 0.30:
            self._call(t, node, pod, "redis", 6379)
        elif r < 0.36:
            dns_lookup(act, t, node, w)
            if rng.random() < 0.5:
                act.connect(t + ms(rng, 2, 20), node, *ENDPOINTS["stripe"].pick(rng))
        if rng.random() < 0.33:
            t, orders = self._call(t + ms(rng, 1, 10), node, pod, "orders", 8000)
            if orders is not None:
                self._orders(t + ms(rng, 1, 10), orders)

    def _orders(self, t: int, pod: Pod) -> None:
        act, rng, w = self.act, self.rng, self.w
        worker = pod.serving(rng)
        r = rng.random()
        if r < 0.28:
            self._call(t, worker, pod, "postgres", 5432)
        elif r < 0.42:
            self._call(t, worker, pod, "redis", 6379)
        elif r < 0.47:
            dns_lookup(act, t, worker, w)
            act.connect(t + ms(rng, 2, 30), worker, *ENDPOINTS["sendgrid"].pick(rng))
        elif r < 0.50:
            dns_lookup(act, t, worker, w)
            act.connect(
                t + ms(rng, 2, 30),
                worker,
                rng.choice(self.webhooks) if rng.random() < 0.85 else public_ip(rng),
                443,
            )
        elif r < 0.52:
            # Invoices are rendered by a helper binary the web worker runs.
            name = f"/tmp/invoice-{rng.randint(100000, 999999)}"
            pdf = act.spawn(
                t,
                worker,
                f"wkhtmltopdf --quiet --page-size A4 {name}.html {name}.pdf",
                exepath="/usr/local/bin/wkhtmltopdf",
            )
            act.open_write(t + ms(rng, 50, 400), pdf, f"{name}.pdf")
            act.unlink(t + ms(rng, 500, 1500), worker, f"{name}.pdf")


def web_traffic(ctx: Ctx, budget: int, stream: str = "web_traffic") -> None:
    rng = ctx.rng(stream)
    act = ctx.benign(rng, "web_traffic")
    traffic = _Traffic(ctx, act)
    profile = ctx.profiles["web"]
    while act.count < budget:
        traffic.request(profile.sample(rng))


# ---------------------------------------------------------------------------------------------
# Databases and background workers.


def data_background(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("data_background")
    act = ctx.benign(rng, "data_background")
    w = ctx.world
    profile = ctx.profiles["web"]
    span = max(1, ctx.t1 - ctx.t0)
    wal_base = rng.randint(0x300, 0x900)
    archive_to_s3 = rng.random() < 0.4  # one archive_command per cluster
    while act.count < budget:
        t = profile.sample(rng)
        r = rng.random()
        if r < 0.40:
            pod = w["postgres"].pick(rng, t)
            if pod is None:
                continue
            seg = wal_base + int(400 * (t - ctx.t0) / span)
            walwriter = pod.serving(rng)
            name = f"/var/lib/postgresql/data/pg_wal/00000001{seg >> 8:08X}{seg & 0xFF:08X}"
            if rng.random() < 0.6:
                old = f"/var/lib/postgresql/data/pg_wal/00000001{(seg - 6) >> 8:08X}{(seg - 6) & 0xFF:08X}"
                act.rename(t, walwriter, old, name)
            act.open_write(t + ms(rng, 0.1, 2), walwriter, name, "O_CREAT|O_RDWR|O_CLOEXEC")
        elif r < 0.46:
            pod = w["postgres"].pick(rng, t)
            if pod is None:
                continue
            seg = wal_base + int(400 * (t - ctx.t0) / span) - 1
            archiver = pod.serving(rng)
            segname = f"00000001{seg >> 8:08X}{seg & 0xFF:08X}"
            if archive_to_s3:
                sh = act.spawn(
                    t,
                    archiver,
                    f"sh -c envdir /etc/wal-e.d/env /usr/local/bin/wal-e wal-push pg_wal/{segname}",
                )
                wale = act.spawn(
                    t + ms(rng, 5, 30),
                    sh,
                    f"wal-e wal-push pg_wal/{segname}",
                    exepath="/usr/bin/python3",
                    name="wal-e",
                )
                act.connect(t + ms(rng, 200, 600), wale, *ENDPOINTS["sts"].pick(rng))
                act.connect(t + ms(rng, 600, 1500), wale, s3_ip(rng), 443)
            else:
                # The classic archive_command: a shell spawned by postgres (Falco calls it untrusted).
                sh = act.spawn(
                    t,
                    archiver,
                    f"sh -c test ! -f /wal-archive/{segname} && cp pg_wal/{segname} /wal-archive/{segname}",
                )
                cp = act.spawn(t + ms(rng, 1, 4), sh, f"cp pg_wal/{segname} /wal-archive/{segname}")
                act.open_write(t + ms(rng, 4, 8), cp, f"/wal-archive/{segname}")
        elif r < 0.64:
            pod = w["redis"].pick(rng, t)
            if pod is None:
                continue
            main = pod.main()
            child = act.spawn(
                t, main, main.cmdline, exepath=main.exepath, name="redis-rdb-bgsave", emit=False
            )
            tmp = f"/data/temp-{rng.randint(20, 99999)}.rdb"
            act.open_write(t + ms(rng, 1, 10), child, tmp)
            act.rename(t + ms(rng, 80, 900), child, tmp, "/data/dump.rdb")
        elif r < 0.74:
            pod = w["mysql"].pick(rng, t)
            if pod is None:
                continue
            main = pod.main()
            n = 1000 + int(30 * (t - ctx.t0) / span)
            if rng.random() < 0.5:
                act.open_write(
                    t, main, f"/var/lib/mysql/#innodb_redo/#ib_redo{n}", "O_CREAT|O_RDWR|O_CLOEXEC"
                )
            else:
                act.open_write(t, main, "/var/lib/mysql/binlog.index_crash_safe", "O_TRUNC|O_CREAT|O_WRONLY")
                act.rename(
                    t + ms(rng, 0.2, 2),
                    main,
                    "/var/lib/mysql/binlog.index_crash_safe",
                    "/var/lib/mysql/binlog.index",
                )
            if rng.random() < 0.5:
                billing = w["orders-worker"].pick(rng, t)
                if billing is not None:
                    src = billing.serving(rng)
                    act.connect(t + ms(rng, 1, 5), src, w["mysql"].service_ip or "", 3306)
                    act.accept(t + ms(rng, 5, 8), main, billing.ip, 3306)
        else:
            pod = w["orders-worker"].pick(rng, t)
            if pod is None:
                continue
            worker = pod.serving(rng)
            for target, port in (("redis", 6379), ("postgres", 5432)):
                if rng.random() < 0.6:
                    dst = w[target]
                    accepted = dst.pick(rng, t)
                    if accepted is None or dst.service_ip is None:
                        continue
                    act.connect(t, worker, dst.service_ip, port)
                    act.accept(t + ms(rng, 0.3, 2), accepted.main(), pod.ip, port)
                    t += ms(rng, 3, 40)
            if rng.random() < 0.15:
                dns_lookup(act, t, worker, w)
                act.connect(t + ms(rng, 3, 40), worker, *ENDPOINTS["sendgrid"].pick(rng))


# ---------------------------------------------------------------------------------------------
# Exec probes.

_PROBES: Final = {
    # workload: (command, exepath, base period s, children)
    "postgres": (
        "pg_isready -U postgres -h 127.0.0.1 -p 5432",
        "/usr/lib/postgresql/16/bin/pg_isready",
        10.0,
    ),
    "redis": ("redis-cli ping", "/usr/local/bin/redis-cli", 10.0),
    "mysql": ('sh -c mysqladmin ping -uroot -p"${MYSQL_ROOT_PASSWORD}"', "/bin/sh", 10.0),
    "orders-worker": (
        "celery -A orders inspect ping -d celery@$HOSTNAME --timeout 10",
        "/usr/local/bin/python3.12",
        60.0,
    ),
    "gitlab-runner": ("/bin/bash /configmaps/check-live", "/bin/bash", 10.0),
    "loki": ("sh -c curl -fsS -m 2 http://localhost:3100/ready", "/bin/sh", 15.0),
}


def exec_probes(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("exec_probes")
    act = ctx.benign(rng, "exec_probe")
    w = ctx.world
    weights = {name: 1.0 / spec[2] for name, spec in _PROBES.items()}
    per_tick = {
        "postgres": 2.0,
        "redis": 2.0,
        "mysql": 3.0,
        "orders-worker": 3.0,
        "gitlab-runner": 3.0,
        "loki": 3.0,
    }
    expected = sum(weights[n] * per_tick[n] * ctx.alive_ns(w[n].pods) / NS_PER_S for n in _PROBES)
    scale = expected / budget if budget > 0 else 0.0
    if scale <= 0:
        return
    password = "".join(
        rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(24)
    )
    for name, (command, exepath, base_s) in _PROBES.items():
        period = max(NS_PER_S, int(base_s * scale * NS_PER_S))
        for pod in list(w[name].pods):
            start, end = _window(ctx, pod)
            for t in periodic(rng, start, end, period, jitter=0.02):
                cmd = command.replace("$HOSTNAME", pod.name)
                probe = exec_into(act, t, pod, cmd, exepath=exepath)
                if name == "mysql":
                    act.spawn(
                        t + ms(rng, 1, 4),
                        probe,
                        f"mysqladmin ping -uroot -p{password}",
                        exepath="/usr/bin/mysqladmin",
                    )
                elif name == "orders-worker":
                    redis = w["redis"]
                    act.connect(t + ms(rng, 300, 900), probe, redis.service_ip or "", 6379)
                elif name == "gitlab-runner":
                    act.spawn(t + ms(rng, 1, 5), probe, "pgrep gitlab.*runner", exepath="/usr/bin/pgrep")
                elif name == "loki":
                    act.spawn(t + ms(rng, 1, 4), probe, "curl -fsS -m 2 http://localhost:3100/ready")


# ---------------------------------------------------------------------------------------------
# Controllers talking to the API server.

# workload, process role, token re-read period (s), API reconnect period (s)
_API_CLIENTS: Final = (
    ("cert-manager", "main", 60.0, 300.0),
    ("cert-manager-cainjector", "main", 60.0, 600.0),
    ("argocd-application-controller", "main", 60.0, 240.0),
    ("prometheus-k8s", "main", 60.0, 300.0),
    ("prometheus-operator", "main", 60.0, 420.0),
    ("kube-state-metrics", "main", 60.0, 420.0),
    ("fluent-bit", "main", 60.0, 900.0),
    ("cilium", "main", 60.0, 600.0),
    ("coredns", "main", 60.0, 600.0),
    ("ingress-nginx-controller", "controller", 60.0, 300.0),
    ("gitlab-runner", "main", 60.0, 240.0),
    ("istiod", "main", 60.0, 300.0),
)


def controllers(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("controllers")
    act = ctx.benign(rng, "api_client")
    w = ctx.world
    expected = 0.0
    for name, _role, token_s, reconnect_s in _API_CLIENTS:
        alive = ctx.alive_ns(w[name].pods) / NS_PER_S
        expected += alive / token_s + alive / reconnect_s * 1.3
    scale = expected / budget if budget > 0 else 0.0
    if scale <= 0:
        return
    for name, role, token_s, reconnect_s in _API_CLIENTS:
        for pod in list(w[name].pods):
            procs = pod.role(role)
            if not procs:
                continue
            proc = procs[0]
            start, end = _window(ctx, pod)
            for t in periodic(rng, start, end, int(token_s * scale * NS_PER_S), jitter=0.1):
                act.open_read(t, proc, _TOKEN)
            for t in periodic(rng, start, end, int(reconnect_s * scale * NS_PER_S), jitter=0.4):
                if rng.random() < 0.3:
                    act.open_read(t - ms(rng, 1, 5), proc, _CA)
                act.connect(t, proc, _API_SERVER, 443)


# ---------------------------------------------------------------------------------------------
# Monitoring and logging.


def prometheus_scrapes(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("prometheus_scrapes")
    act = ctx.benign(rng, "metrics_scrape")
    w = ctx.world
    prom_pods = w["prometheus-k8s"].pods
    period = _budget_period(ctx, prom_pods, 1.7, budget, floor_s=0.2)
    for prom in list(prom_pods):
        start, end = _window(ctx, prom)
        for t in periodic(rng, start, end, period, jitter=0.3):
            scraper = prom.main()
            if rng.random() < 0.2:
                node = rng.choice(w.nodes)
                port = rng.choice((9100, 10250))
                act.connect(t, scraper, node.ip, port)
                if port == 10250:
                    act.accept(t + ms(rng, 0.2, 1), w.host[node.hostname]["kubelet"], prom.ip, 10250)
                else:
                    exporter = next((p for p in w["node-exporter"].pods_at(t) if p.node is node), None)
                    if exporter is not None:
                        act.accept(t + ms(rng, 0.2, 1), exporter.main(), prom.ip, 9100)
                continue
            candidates = [
                wl for wl in w.workloads.values() if wl.spec.metrics_port and wl.kind != "DaemonSet"
            ]
            wl = rng.choice(candidates)
            target = wl.pick(rng, t)
            if target is None or target is prom:
                continue
            port = wl.spec.metrics_port or 0
            act.connect(t, scraper, target.ip, port)
            if port in (wl.spec.port, 8080, 8082, 8084, 9402, 10254, 15014, 3100, 9252):
                act.accept(t + ms(rng, 0.2, 1), target.main(), prom.ip, port)


def log_shipping(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("log_shipping")
    act = ctx.benign(rng, "log_shipping")
    w = ctx.world
    shippers = w["fluent-bit"].pods
    period = _budget_period(ctx, shippers, 2.6, budget, floor_s=0.5)
    loki = w["loki"]
    for pod in list(shippers):
        start, end = _window(ctx, pod)
        fb = pod.main()
        for t in periodic(rng, start, end, period, jitter=0.5):
            journal = "/fluent-bit/db/flb_kube.db-journal"
            act.open_write(t, fb, journal, "O_CREAT|O_RDWR|O_CLOEXEC")
            act.unlink(t + ms(rng, 1, 30), fb, journal)
            if rng.random() < 0.3:
                target = loki.pick(rng, t)
                if target is not None and loki.service_ip:
                    act.connect(t + ms(rng, 30, 80), fb, loki.service_ip, 3100)
                    act.accept(t + ms(rng, 80, 90), target.main(), pod.ip, 3100)
            if rng.random() < 0.15:
                target = loki.pick(rng, t)
                if target is not None:
                    key = ":".join((hex_id(rng, 16), hex_id(rng, 11), hex_id(rng, 11), hex_id(rng, 8)))
                    chunk = f"/var/loki/chunks/fake/{key}"
                    act.open_write(
                        t + seconds(rng, 1, 5), target.main(), chunk, "O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC"
                    )


# ---------------------------------------------------------------------------------------------
# Node networking.


def node_networking(ctx: Ctx, budget: int) -> None:
    """kube-proxy's iptables syncs and cilium's health probes between nodes."""
    rng = ctx.rng("node_networking")
    act = ctx.benign(rng, "node_networking")
    w = ctx.world
    proxies = w["kube-proxy"].pods
    ciliums = w["cilium"].pods
    period = _budget_period(ctx, proxies + ciliums, 1.3, budget, floor_s=0.5)
    for pod in list(proxies):
        start, end = _window(ctx, pod)
        kp = pod.main()
        for t in periodic(rng, start, end, period, jitter=0.5):
            act.spawn(t, kp, "iptables-restore -w 5 -W 100000 --noflush --counters", name="iptables-restor")
            if rng.random() < 0.3:
                act.spawn(t + ms(rng, 20, 90), kp, "iptables-save -t nat")
            if rng.random() < 0.15:
                act.spawn(
                    t + ms(rng, 90, 200),
                    kp,
                    "ip6tables-restore -w 5 -W 100000 --noflush --counters",
                    exepath="/usr/sbin/xtables-nft-multi",
                    name="ip6tables-resto",
                )
    for pod in list(ciliums):
        start, end = _window(ctx, pod)
        agent = pod.main()
        others = [n for n in w.nodes if n is not pod.node] or w.nodes
        for t in periodic(rng, start, end, period, jitter=0.5):
            act.connect(t, agent, rng.choice(others).ip, 4240)
            if rng.random() < 0.1:
                act.spawn(t + ms(rng, 5, 50), agent, "ip -o -4 route show table 2005", exepath="/usr/sbin/ip")


def dns_traffic(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("dns_traffic")
    act = ctx.benign(rng, "dns")
    w = ctx.world
    profile = ctx.profiles["web"]
    askers = (
        "api",
        "orders",
        "orders-worker",
        "prometheus-k8s",
        "argocd-repo-server",
        "gitlab-runner",
        "cert-manager",
        "loki",
    )
    vpc_dns = ENDPOINTS["vpc-dns"]
    while act.count < budget:
        t = profile.sample(rng)
        wl = w[rng.choice(askers)]
        pod = wl.pick(rng, t)
        if pod is None:
            continue
        dns_lookup(act, t, pod.serving(rng), w)
        if rng.random() < 0.35:
            core = w["coredns"].pick(rng, t)
            if core is not None:
                ip, port = vpc_dns.pick(rng)
                act.connect(t + ms(rng, 0.2, 1), core.main(), ip, port, proto="udp")


def gitops(ctx: Ctx, budget: int) -> None:
    """argocd's repo server fetching manifests and rendering them."""
    rng = ctx.rng("gitops")
    act = ctx.benign(rng, "gitops")
    w = ctx.world
    pods = w["argocd-repo-server"].pods
    period = _budget_period(ctx, pods, 3.5, budget, floor_s=2)
    repos = ("platform-deploy", "shop-config", "observability")
    for pod in list(pods):
        start, end = _window(ctx, pod)
        repo_server = pod.main()
        for t in periodic(rng, start, end, period, jitter=0.4):
            repo = rng.choice(repos)
            cwd = f"/tmp/_argocd-repo/{uuid_text(rng)}"
            git = act.spawn(t, repo_server, "git fetch origin --tags --force --prune", cwd=cwd)
            remote = act.spawn(
                t + ms(rng, 2, 10),
                git,
                f"git-remote-https origin https://github.com/acme/{repo}.git",
                exepath="/usr/lib/git-core/git-remote-https",
            )
            act.connect(t + ms(rng, 10, 40), remote, *ENDPOINTS["github"].pick(rng))
            if rng.random() < 0.35:
                t2 = t + ms(rng, 300, 1500)
                if rng.random() < 0.5:
                    act.spawn(t2, repo_server, "kustomize build . --enable-helm", cwd=cwd)
                else:
                    act.spawn(
                        t2,
                        repo_server,
                        f"helm template . --name-template {repo} --namespace shop --kube-version 1.29 "
                        "--values values-prod.yaml --include-crds",
                        cwd=cwd,
                    )


def host_daemons(ctx: Ctx, budget: int) -> None:
    """Node-level daemons: time sync, kubelet to the control plane, hourly cron."""
    rng = ctx.rng("host_daemons")
    act = ctx.benign(rng, "host_daemon")
    w = ctx.world
    control_plane = [f"10.0.{rng.randint(0, 15)}.{rng.randint(10, 250)}" for _ in range(2)]
    per_node = max(1, budget // max(1, len(w.nodes)))
    span = ctx.t1 - ctx.t0
    period = max(NS_PER_S, int(span * 1.2 / per_node))
    for node in w.nodes:
        host = w.host[node.hostname]
        for t in periodic(rng, ctx.t0, ctx.t1, period, jitter=0.5):
            r = rng.random()
            if r < 0.45:
                ip, port = ENDPOINTS["ntp"].pick(rng)
                act.connect(t, host["chronyd"], ip, port, proto="udp")
            elif r < 0.8:
                act.connect(t, host["kubelet"], rng.choice(control_plane), 443)
            else:
                cron = act.spawn(
                    t, host["cron"], "/usr/sbin/CRON -f -P", exepath="/usr/sbin/cron", emit=False
                )
                sh = act.spawn(
                    t + ms(rng, 1, 3), cron, "/bin/sh -c cd / && run-parts --report /etc/cron.hourly"
                )
                act.spawn(
                    t + ms(rng, 3, 8), sh, "run-parts --report /etc/cron.hourly", exepath="/bin/run-parts"
                )


# ---------------------------------------------------------------------------------------------
# Cron jobs.

_CRON_APPS: Final = {
    "cache-warmer": AppSpec(
        (ContainerSpec("cache-warmer", "docker.io/curlimages/curl", ("8.6.0",)),),
        (
            ProcSpec(
                "main",
                "cache-warmer",
                "curl -fsS -o /dev/null --retry 3 http://storefront.shop.svc.cluster.local:8080/",
                "/usr/bin/curl",
                "curl_user",
                100,
            ),
        ),
    ),
    "report-generator": AppSpec(
        (ContainerSpec("report", "registry.example.com/data/reports", ("2024.05.3",)),),
        (
            ProcSpec(
                "main",
                "report",
                "python3 /app/report.py --window 30m --out s3://acme-reports/hourly",
                "/usr/local/bin/python3.11",
                "app",
                10001,
                cwd="/app",
            ),
        ),
    ),
    "orders-cleanup": AppSpec(
        (ContainerSpec("cleanup", "registry.example.com/shop/orders", ("1.9.0",)),),
        (
            ProcSpec(
                "main",
                "cleanup",
                "python manage.py clearsessions",
                "/usr/local/bin/python3.12",
                "app",
                10001,
                cwd="/srv",
            ),
        ),
    ),
}
# name: (namespace, base period in minutes)
_CRON_SCHEDULE: Final = {
    "cache-warmer": ("batch", 10),
    "report-generator": ("batch", 30),
    "orders-cleanup": ("shop", 60),
}


def cron_jobs(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("cron_jobs")
    act = ctx.benign(rng, "cron_job")
    w = ctx.world
    span = ctx.t1 - ctx.t0
    runs_per_base = sum(span / (m * 60 * NS_PER_S) for _ns, m in _CRON_SCHEDULE.values())
    per_run = 9.0
    scale = max(0.5, runs_per_base * per_run / max(budget, 1))
    for name, (ns, minutes) in _CRON_SCHEDULE.items():
        wl = ensure_workload(ctx, name, ns, "CronJob", name)
        period = max(1, round(minutes * scale)) * 60 * NS_PER_S
        first = ctx.t0 + period - (ctx.t0 % period)
        t = first
        while t < ctx.t1:
            start = t + seconds(rng, 1.5, 6)
            pod = run_pod(act, w, wl, start, spec=_CRON_APPS[name])
            end = _run_cron(act, ctx, name, pod)
            pod.end_ns = end
            t += period


def _run_cron(act: Activity, ctx: Ctx, name: str, pod: Pod) -> int:
    rng, w = act.rng, ctx.world
    main = pod.main()
    t = main.start_ns + ms(rng, 20, 80)
    if name == "cache-warmer":
        dns_lookup(act, t, main, w)
        sf = w["storefront"]
        target = sf.pick(rng, t)
        act.connect(t + ms(rng, 1, 5), main, sf.service_ip or "", 8080)
        if target is not None:
            act.accept(t + ms(rng, 5, 8), target.serving(rng), pod.ip, 8080)
        return t + seconds(rng, 0.3, 2)
    if name == "report-generator":
        dns_lookup(act, t, main, w)
        pg = w["postgres"]
        target = pg.pick(rng, t)
        act.connect(t + ms(rng, 5, 20), main, pg.service_ip or "", 5432)
        if target is not None:
            act.accept(t + ms(rng, 20, 25), target.main(), pod.ip, 5432)
        t += seconds(rng, 2, 20)
        if rng.random() < 0.35:
            # boto3 falls back to the instance metadata service for credentials.
            act.connect(t, main, "169.254.169.254", 80)
            t += ms(rng, 20, 90)
        act.connect(t, main, *ENDPOINTS["sts"].pick(rng))
        out = f"/tmp/report-{(t // NS_PER_S) % 100000:05d}.csv"
        act.open_write(t + ms(rng, 10, 50), main, out)
        act.connect(t + seconds(rng, 1, 4), main, s3_ip(rng), 443)
        return t + seconds(rng, 5, 15)
    dns_lookup(act, t, main, w)
    pg = w["postgres"]
    target = pg.pick(rng, t)
    act.connect(t + ms(rng, 5, 20), main, pg.service_ip or "", 5432)
    if target is not None:
        act.accept(t + ms(rng, 20, 25), target.main(), pod.ip, 5432)
    return t + seconds(rng, 1, 5)


# ---------------------------------------------------------------------------------------------
# CI jobs.

_DETECT_SHELL: Final = (
    "sh -c if [ -x /usr/local/bin/bash ]; then exec /usr/local/bin/bash; elif [ -x /usr/bin/bash ]; then "
    "exec /usr/bin/bash; elif [ -x /bin/bash ]; then exec /bin/bash; elif [ -x /usr/local/bin/sh ]; then "
    "exec /usr/local/bin/sh; elif [ -x /usr/bin/sh ]; then exec /usr/bin/sh; elif [ -x /bin/sh ]; then "
    "exec /bin/sh; elif [ -x /busybox/sh ]; then exec /busybox/sh; else echo shell not found; exit 1; fi"
)
_HELPER = ContainerSpec(
    "helper", "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper", ("x86_64-v16.9.1",)
)
_JOB_IMAGES: Final = {
    "python": ("docker.io/library/python", ("3.12-slim", "3.12.2-slim", "3.11-slim")),
    "node": ("docker.io/library/node", ("20-bookworm-slim", "20.11-bookworm")),
    "go": ("docker.io/library/golang", ("1.22", "1.22.1")),
    "docker": ("docker.io/library/docker", ("25.0", "25.0.4")),
    "deploy": ("docker.io/alpine/k8s", ("1.29.2",)),
    "apt": ("docker.io/library/debian", ("bookworm-slim", "bookworm")),
}
PROJECTS: Final = ("shop/api", "shop/orders", "shop/storefront", "platform/deploy", "data/reports")


def _job_spec(kind: str, image_tag: str) -> AppSpec:
    image, _tags = _JOB_IMAGES[kind]
    # Runners that offer docker-in-docker run every container of the job privileged.
    containers = [ContainerSpec("build", image, (image_tag,), privileged=kind == "docker"), _HELPER]
    procs = [
        ProcSpec("main", "build", _DETECT_SHELL, "/bin/sh", "root", 0, cwd="/builds"),
        ProcSpec("helper", "helper", _DETECT_SHELL, "/bin/sh", "root", 0, cwd="/builds"),
    ]
    if kind == "docker":
        containers.append(ContainerSpec("svc-0", "docker.io/library/docker", ("25.0-dind",), privileged=True))
        procs.append(
            ProcSpec(
                "dind",
                "svc-0",
                "dockerd-entrypoint.sh",
                "/usr/local/bin/dockerd-entrypoint.sh",
                "root",
                0,
                name="dockerd-entrypo",
            )
        )
    return AppSpec(tuple(containers), tuple(procs))


class CiJob:
    """One CI job pod: clone, then the job's script, step by step."""

    def __init__(self, ctx: Ctx, act: Activity, kind: str, t: int, *, upgrade: bool = False) -> None:
        self.ctx, self.act, self.rng, self.kind = ctx, act, act.rng, kind
        rng = self.rng
        w = ctx.world
        wl = ensure_workload(ctx, "runner", "ci", "Job", "gitlab-runner")
        _image, tags = _JOB_IMAGES[kind]
        self.project = rng.choice(PROJECTS)
        pipeline = rng.randint(40000, 49999)
        job_id = rng.randint(900000, 999999)
        spec = _job_spec(kind, rng.choice(tags))
        runner = w["gitlab-runner"].pick(rng, t)
        if runner is not None:
            act.connect(t - seconds(rng, 1, 3), runner.main(), "10.96.0.1", 443)
        node = rng.randrange(len(w.nodes))
        project_id, slot = rng.randint(10, 99), rng.randint(0, 3)
        name = f"runner-{k8s_suffix(rng, 8)}-project-{project_id}-concurrent-{slot}-{k8s_suffix(rng, 8)}"
        self.pod = run_pod(act, w, wl, t, spec=spec, node_index=node, name=name)
        self.t = t + seconds(rng, 2, 6)
        self.workdir = f"/builds/{self.project}"
        self.pipeline, self.job_id, self.upgrade = pipeline, job_id, upgrade

    def run(self) -> int:
        act, rng = self.act, self.rng
        pod = self.pod
        helper = pod.role("helper")[0]
        git = act.spawn(
            self.t,
            helper,
            f"git -c http.userAgent=gitlab-runner 16.9.1 linux/amd64 fetch origin "
            f"+refs/pipelines/{self.pipeline}:refs/pipelines/{self.pipeline} --depth 20 --prune --quiet",
            cwd=self.workdir,
        )
        remote = act.spawn(
            self.t + ms(rng, 3, 15),
            git,
            f"git-remote-https origin https://gitlab.com/acme/{self.project}.git",
            exepath="/usr/lib/git-core/git-remote-https",
        )
        act.connect(self.t + ms(rng, 20, 60), remote, *ENDPOINTS["gitlab"].pick(rng))
        self.t += seconds(rng, 2, 8)
        build = pod.main()
        self.shell = act.spawn(self.t, build, "bash", exepath="/bin/bash", cwd=self.workdir)
        self.t += ms(rng, 50, 300)
        steps: dict[str, Callable[[], None]] = {
            "python": self._python,
            "node": self._node,
            "go": self._go,
            "docker": self._docker,
            "deploy": self._deploy,
            "apt": self._apt,
        }
        steps[self.kind]()
        if rng.random() < 0.6:
            self.t += seconds(rng, 1, 4)
            cache = act.spawn(
                self.t,
                helper,
                f"gitlab-runner-helper cache-archiver --file ../../cache/{self.project}/default/cache.zip "
                "--timeout 10 --path .cache/pip --path node_modules",
                exepath="/usr/bin/gitlab-runner-helper",
            )
            act.connect(self.t + ms(rng, 100, 900), cache, s3_ip(rng), 443)
        return self.t + seconds(rng, 1, 5)

    def _cmd(
        self,
        command: str,
        *,
        exepath: str | None = None,
        parent: Proc | None = None,
        gap: tuple[float, float] = (0.05, 1.5),
    ) -> Proc:
        proc = self.act.spawn(self.t, parent or self.shell, command, exepath=exepath)
        self.t += seconds(self.rng, *gap)
        return proc

    def _downloads(self, proc: Proc, endpoint: str, n: int) -> None:
        for _ in range(n):
            self.act.connect(self.t, proc, *ENDPOINTS[endpoint].pick(self.rng))
            self.t += ms(self.rng, 30, 600)

    def _writes(self, proc: Proc, paths: list[str]) -> None:
        for path in paths:
            self.act.open_write(self.t, proc, path)
            self.t += ms(self.rng, 1, 40)

    def _apt_install(self, packages: str) -> None:
        rng = self.rng
        if self.upgrade:
            packages = ""
        apt = self._cmd("apt-get update -qq", exepath="/usr/bin/apt-get")
        for _ in range(rng.randint(2, 4)):
            http = self.act.spawn(
                self.t, apt, "/usr/lib/apt/methods/http", exepath="/usr/lib/apt/methods/http", name="http"
            )
            self.act.connect(self.t + ms(rng, 1, 5), http, *ENDPOINTS["debian"].pick(rng))
            self.t += ms(rng, 200, 1500)
        verb = "upgrade -y -qq" if self.upgrade else f"install -y -qq --no-install-recommends {packages}"
        apt = self._cmd(f"apt-get {verb}", exepath="/usr/bin/apt-get")
        http = self.act.spawn(
            self.t, apt, "/usr/lib/apt/methods/http", exepath="/usr/lib/apt/methods/http", name="http"
        )
        self._downloads(http, "debian", rng.randint(1, 3))
        dpkg = self._cmd(
            "/usr/bin/dpkg --status-fd 35 --unpack --auto-deconfigure /var/cache/apt/archives/*.deb",
            parent=apt,
            exepath="/usr/bin/dpkg",
        )
        libs = [
            "/usr/lib/x86_64-linux-gnu/libpq.so.5.16",
            "/usr/bin/pg_config",
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/bin/openssl",
            "/usr/lib/x86_64-linux-gnu/libcurl.so.4.8.0",
            "/usr/bin/curl",
        ]
        n = rng.randint(5, 9) if self.upgrade else rng.randint(2, 4)
        self._writes(dpkg, [rng.choice(libs) + ".dpkg-new" for _ in range(n)])
        self.act.open_write(self.t, dpkg, "/var/lib/dpkg/status-new")
        self.act.rename(self.t + ms(rng, 1, 5), dpkg, "/var/lib/dpkg/status-new", "/var/lib/dpkg/status")
        self.t += ms(rng, 10, 100)
        self._cmd("/sbin/ldconfig", parent=apt, exepath="/sbin/ldconfig")

    def _python(self) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            self._apt_install("libpq-dev gcc")
        pip = self._cmd(
            "pip install --no-cache-dir -r requirements.txt -r requirements-dev.txt",
            exepath="/usr/local/bin/python3.12",
        )
        self._downloads(pip, "pypi", rng.randint(3, 7))
        site = "/usr/local/lib/python3.12/site-packages"
        pkgs = ["django", "psycopg", "celery", "redis", "requests", "pytest", "boto3", "urllib3", "ruff"]
        self._writes(pip, [f"{site}/{rng.choice(pkgs)}/__init__.py" for _ in range(rng.randint(2, 5))])
        self.t += seconds(rng, 3, 20)
        self._secret_scan()
        self._cmd("ruff check .", exepath="/usr/local/bin/ruff")
        test = self._cmd(
            "python -m pytest -q --junitxml=report.xml", exepath="/usr/local/bin/python3.12", gap=(10, 90)
        )
        self.act.open_write(self.t, test, f"{self.workdir}/report.xml")

    def _secret_scan(self) -> None:
        # A pre-merge check that no private key was committed.
        if self.rng.random() < 0.2:
            self._cmd(
                "grep -rIl BEGIN RSA PRIVATE KEY --exclude-dir=node_modules --exclude-dir=.git .",
                exepath="/bin/grep",
            )

    def _node(self) -> None:
        rng = self.rng
        npm = self._cmd("npm ci --no-audit --prefer-offline", exepath="/usr/local/bin/node", gap=(0.1, 0.3))
        self._downloads(npm, "npm", rng.randint(3, 7))
        self._writes(npm, [f"{self.workdir}/node_modules/.package-lock.json"])
        if rng.random() < 0.6:
            # Install scripts of dependencies run through a shell.
            sh = self.act.spawn(
                self.t, npm, "sh -c node install.js", cwd=f"{self.workdir}/node_modules/esbuild"
            )
            self.act.spawn(self.t + ms(rng, 2, 10), sh, "node install.js")
            self.t += seconds(rng, 1, 4)
        self._secret_scan()
        self._cmd("npm run build", exepath="/usr/local/bin/node", gap=(5, 40))
        self._cmd(
            "npm test -- --ci --reporters=default --reporters=jest-junit",
            exepath="/usr/local/bin/node",
            gap=(10, 60),
        )

    def _go(self) -> None:
        rng = self.rng
        go = self._cmd("go mod download", exepath="/usr/local/go/bin/go", gap=(0.1, 0.5))
        self._downloads(go, "golang-proxy", rng.randint(2, 5))
        build = self._cmd(
            "go build -trimpath -o bin/server ./cmd/server", exepath="/usr/local/go/bin/go", gap=(0.1, 0.3)
        )
        for tool in ("compile", "compile", "asm", "link"):
            self.act.spawn(
                self.t,
                build,
                f"/usr/local/go/pkg/tool/linux_amd64/{tool} -o $WORK/b001/_pkg_.a -trimpath",
                exepath=f"/usr/local/go/pkg/tool/linux_amd64/{tool}",
            )
            self.t += seconds(rng, 0.5, 4)
        self.act.open_write(self.t, build, f"{self.workdir}/bin/server")
        self._cmd("go test ./...", exepath="/usr/local/go/bin/go", gap=(5, 60))

    def _docker(self) -> None:
        rng, act = self.rng, self.act
        dind = self.pod.role("dind")[0]
        t = dind.start_ns + ms(rng, 100, 400)
        # The dind entrypoint mounts securityfs and starts dockerd.
        mount = act.spawn(t, dind, "mount -t securityfs none /sys/kernel/security", exepath="/bin/mount")
        act.syscall(
            t + ms(rng, 1, 3),
            mount,
            "mount",
            dev="none",
            dir="/sys/kernel/security",
            type="securityfs",
            flags=0,
        )
        dockerd = act.spawn(
            t + ms(rng, 20, 80),
            dind,
            "dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2376 "
            "--tlsverify --tlscacert /certs/server/ca.pem",
            exepath="/usr/local/bin/dockerd",
        )
        act.spawn(
            t + ms(rng, 200, 500),
            dockerd,
            "containerd --config /var/run/docker/containerd/containerd.toml",
            exepath="/usr/local/bin/containerd",
        )
        tag = hex_id(rng, 8)
        image = f"registry.example.com/{self.project}:{tag}"
        self._cmd(f"docker build --pull -t {image} .", exepath="/usr/local/bin/docker", gap=(0.2, 1))
        self.t = max(self.t, t + seconds(rng, 1, 3))
        self._downloads(dockerd, "dockerhub", rng.randint(2, 4))
        self._writes(
            dockerd,
            [
                f"/var/lib/docker/overlay2/{hex_id(rng, 64)}/diff/app/{f}"
                for f in ("package.json", "server.js")
            ],
        )
        self.t += seconds(rng, 10, 60)
        self._cmd(f"docker push {image}", exepath="/usr/local/bin/docker", gap=(0.2, 1))
        registry = f"10.0.{rng.randint(16, 63)}.{rng.randint(4, 250)}"
        for _ in range(rng.randint(1, 3)):
            act.connect(self.t, dockerd, registry, 443)
            self.t += ms(rng, 200, 2000)

    def _deploy(self) -> None:
        rng, act = self.rng, self.act
        if rng.random() < 0.5:
            version = rng.choice(("v1.29.2", "v1.29.3"))
            curl = self._cmd(
                f"curl -fsSLO https://dl.k8s.io/release/{version}/bin/linux/amd64/kubectl", gap=(0.01, 0.05)
            )
            act.connect(self.t, curl, *ENDPOINTS["dl-k8s"].pick(rng))
            self.t += seconds(rng, 1, 4)
            written = self.t
            act.open_write(written, curl, f"{self.workdir}/kubectl")
            self.t += ms(rng, 200, 900)
            chmod = self._cmd("chmod +x kubectl", exepath="/bin/chmod", gap=(0.001, 0.01))
            act.chmod(self.t, chmod, f"{self.workdir}/kubectl", "0755")
            self.t += ms(rng, 10, 60)
            binary, exe = "./kubectl", f"{self.workdir}/kubectl"
        else:
            curl = self._cmd(
                "curl -fsSL -o helm.tar.gz https://get.helm.sh/helm-v3.14.3-linux-amd64.tar.gz",
                gap=(0.01, 0.05),
            )
            act.connect(self.t, curl, *ENDPOINTS["helm"].pick(rng))
            self.t += seconds(rng, 1, 3)
            tar = self._cmd("tar -xzf helm.tar.gz", exepath="/bin/tar", gap=(0.001, 0.01))
            written = self.t
            act.open_write(written, tar, f"{self.workdir}/linux-amd64/helm")
            self.t += ms(rng, 100, 400)
            binary, exe = "./linux-amd64/helm", f"{self.workdir}/linux-amd64/helm"
        for args in self._deploy_args(binary):
            proc = act.spawn(
                self.t,
                self.shell,
                f"{binary} {args}",
                exepath=exe,
                dropped_at=written,
                name="kubectl" if "kubectl" in binary else "helm",
            )
            act.connect(self.t + ms(rng, 5, 40), proc, "10.96.0.1", 443)
            self.t += seconds(rng, 1, 8)

    def _deploy_args(self, binary: str) -> list[str]:
        app = self.project.split("/")[-1]
        if "kubectl" in binary:
            return [f"apply -n shop -f k8s/{app}/", f"rollout status -n shop deployment/{app} --timeout=300s"]
        return [f"upgrade --install {app} charts/{app} -n shop --atomic --timeout 5m -f values-prod.yaml"]

    def _apt(self) -> None:
        self._apt_install(self.rng.choice(("curl ca-certificates", "postgresql-client", "jq git")))
        self._cmd("make check", exepath="/usr/bin/make", gap=(2, 20))


def ci_jobs(ctx: Ctx, budget: int) -> None:
    rng = ctx.rng("ci_jobs")
    act = ctx.benign(rng, "ci_job")
    profile = ctx.profiles["office"]
    kinds = ("python", "python", "node", "node", "go", "docker", "deploy", "apt")
    while act.count < budget:
        t = profile.sample(rng)
        if t > ctx.t1 - 10 * 60 * NS_PER_S:
            continue
        job = CiJob(ctx, act, rng.choice(kinds), t)
        end = job.run()
        job.pod.end_ns = end


# ---------------------------------------------------------------------------------------------

# Budget shares of the routine sources (they sum to 1).
BASELINE_SHARES: Final = {
    "web_traffic": 0.30,
    "data_background": 0.08,
    "exec_probes": 0.13,
    "controllers": 0.08,
    "prometheus_scrapes": 0.06,
    "log_shipping": 0.05,
    "node_networking": 0.06,
    "dns_traffic": 0.07,
    "gitops": 0.03,
    "host_daemons": 0.02,
    "cron_jobs": 0.04,
    "ci_jobs": 0.08,
}

SOURCES: Final[dict[str, Callable[[Ctx, int], None]]] = {
    "web_traffic": web_traffic,
    "data_background": data_background,
    "exec_probes": exec_probes,
    "controllers": controllers,
    "prometheus_scrapes": prometheus_scrapes,
    "log_shipping": log_shipping,
    "node_networking": node_networking,
    "dns_traffic": dns_traffic,
    "gitops": gitops,
    "host_daemons": host_daemons,
    "cron_jobs": cron_jobs,
    "ci_jobs": ci_jobs,
}
