"""Rare but benign activity (``benign_kind="rare"``): what people and schedules do now and then.

Rollouts and restarts (new pods, pids, container ids, image tags), ``kubectl exec`` debugging
sessions (a person runs a shell, ``cat``s files below /etc, ``ps``, ``curl``; sometimes reads the
service-account token, attaches ``strace``/``py-spy`` or installs a package), a netshoot debug pod
full of network tools, nightly database and volume backups, certificate rotation writing below
/etc, CI jobs upgrading packages, daily log rotation on every node (which truncates logs, as log
clearing does), and an administrator's SSH session on a node with ``sudo``.

Many of these raise the same upstream rules as attacks do (Terminal shell in container, PTRACE
attached to process, Read environment variable from /proc files, Clear Log Activities, Launch
Suspicious Network Tool in Container, Write below etc): rarity alone must not tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .activity import Activity
from .behaviour import Ctx, dns_lookup, exec_into, ms, pod_start_events, run_pod, seconds
from .model import NS_PER_S, Node, Proc
from .workloads import CiJob, ensure_workload
from .world import ENDPOINTS, AppSpec, ContainerSpec, Pod, ProcSpec, k8s_suffix, next_tag, s3_ip, start_pod

__all__ = ["RARE"]

_TTY: Final = 34816  # /dev/pts/0
_PEOPLE: Final = ("alice@acme.io", "bob@acme.io", "chen@acme.io", "dmitri@acme.io", "oncall-sre")
_DAY: Final = 24 * 3600 * NS_PER_S


def _audit_exec(
    act: Activity, ctx: Ctx, t: int, pod: Pod, *, command: str, user: str, sub: str = "exec"
) -> None:
    """The API server's audit record of ``kubectl exec``/``attach``, as Falco's k8saudit plugin sees it."""
    proc = ctx.world.host[ctx.world.falco_audit_node.hostname]["kubelet"]
    act.audit(
        t,
        proc,
        {
            "ka.user.name": user,
            "ka.target.name": pod.name,
            "ka.target.resource": "pods",
            "ka.target.namespace": pod.workload.ns,
            "ka.target.subresource": sub,
            "ka.uri.param[command]": command,
        },
    )


def rollouts(ctx: Ctx, n: int) -> None:
    """Deployments rolled to a new image tag (or restarted), one replica after the other."""
    rng = ctx.rng("rollouts")
    act = ctx.benign(rng, "rollout", "rare")
    w = ctx.world
    targets = (
        "storefront",
        "api",
        "orders",
        "orders-worker",
        "api",
        "orders",
        "storefront",
        "argocd-repo-server",
        "cert-manager",
        "loki",
    )
    for t in sorted(ctx.profiles["office"].sample(rng) for _ in range(n)):
        wl = w[rng.choice(targets)]
        restart_only = wl.kind == "StatefulSet" or rng.random() < 0.2
        tag = None if restart_only else next_tag(wl)
        if wl.kind == "Deployment":
            wl.template_hash = k8s_suffix(rng, 10)
        if wl.name in ("api", "orders") and not restart_only:
            _migration(act, ctx, wl.name, t - seconds(rng, 40, 120))
        for i, old in enumerate(wl.pods_at(t)):
            start = t + i * seconds(rng, 12, 45)
            new = start_pod(rng, w, wl, rng.choice(w.nodes), start, ordinal=i, tag=tag)
            pod_start_events(act, w, new)
            old.end_ns = start + seconds(rng, 5, 30)


def _migration(act: Activity, ctx: Ctx, app: str, t: int) -> None:
    rng, w = act.rng, ctx.world
    wl = ensure_workload(ctx, f"{app}-migrate", "shop", "Job", app)
    image = w[app].spec.containers[0]
    spec = AppSpec(
        (ContainerSpec("migrate", image.image, image.tags),),
        (
            ProcSpec(
                "main",
                "migrate",
                "python manage.py migrate --noinput" if app == "orders" else "node dist/migrate.js up",
                "/usr/local/bin/python3.12" if app == "orders" else "/usr/local/bin/node",
                "app" if app == "orders" else "node",
                10001 if app == "orders" else 1000,
                cwd="/srv",
            ),
        ),
    )
    pod = run_pod(act, w, wl, t, spec=spec, tag=image.tags[min(w[app].tag_index, len(image.tags) - 1)])
    main = pod.main()
    t = main.start_ns + ms(rng, 100, 900)
    dns_lookup(act, t, main, w)
    pg = w["postgres"]
    target = pg.pick(rng, t)
    act.connect(t + ms(rng, 2, 10), main, pg.service_ip or "", 5432)
    if target is not None:
        act.accept(t + ms(rng, 10, 15), target.main(), pod.ip, 5432)
    pod.end_ns = t + seconds(rng, 3, 30)


def container_restarts(ctx: Ctx, n: int) -> None:
    """A container killed (OOM, failed liveness) and restarted in the same pod."""
    rng = ctx.rng("container_restarts")
    act = ctx.benign(rng, "container_restart", "rare")
    w = ctx.world
    for _ in range(n):
        t = ctx.profiles["web"].sample(rng)
        wl = w[rng.choice(("api", "orders", "orders-worker", "storefront", "fluent-bit", "loki"))]
        old = wl.pick(rng, t)
        if old is None:
            continue
        old.end_ns = t
        new = start_pod(rng, w, wl, old.node, t + seconds(rng, 1, 20), tag=old.tag, name=old.name)
        new.ip = old.ip
        for c in new.containers.values():
            c.ip = old.ip
        pod_start_events(act, w, new)


_SESSION_TARGETS: Final = (
    "api",
    "orders",
    "orders-worker",
    "storefront",
    "postgres",
    "redis",
    "argocd-repo-server",
    "prometheus-k8s",
    "loki",
    "mysql",
)


def exec_sessions(ctx: Ctx, n: int) -> None:
    """A person debugging a pod through ``kubectl exec -it``."""
    rng = ctx.rng("exec_sessions")
    act = ctx.benign(rng, "kubectl_exec", "rare")
    w = ctx.world
    for _ in range(n):
        t = ctx.profiles["office"].sample(rng)
        pod = w[rng.choice(_SESSION_TARGETS)].pick(rng, t)
        if pod is None:
            continue
        main = pod.main()
        shell_name = "bash" if pod.workload.app not in ("storefront", "redis") else "sh"
        _audit_exec(act, ctx, t - ms(rng, 50, 300), pod, command=shell_name, user=rng.choice(_PEOPLE))
        # The container's first pseudo-terminal, or the next one when a colleague is already in.
        tty = _TTY if rng.random() < 0.8 else _TTY + 1
        shell = exec_into(act, t, pod, shell_name, tty=tty, exepath=f"/bin/{shell_name}")
        home = (
            "/root"
            if main.uid == 0
            else ("/var/lib/postgresql" if main.user == "postgres" else f"/home/{main.user}")
        )
        t = _interactive(act, ctx, shell, pod, t=t, n=rng.randint(4, 11))
        history = f"{home}/.{shell_name}_history" if shell_name == "bash" else f"{home}/.ash_history"
        # On exit the shell appends its history, or rewrites (truncates) it once it is full.
        flags = (
            "O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC"
            if rng.random() < 0.3
            else "O_APPEND|O_CREAT|O_WRONLY|O_CLOEXEC"
        )
        act.open_write(t + seconds(rng, 1, 5), shell, history, flags)


def _interactive(act: Activity, ctx: Ctx, shell: Proc, pod: Pod, *, t: int, n: int) -> int:
    """``n`` commands typed by a person into ``shell``; returns when the last one ended."""
    rng = act.rng
    port = pod.workload.spec.port or 8080
    app = pod.workload.app
    menu: list[Callable[[int], object]] = [
        lambda t: _cmd(act, shell, t, "ls -la"),
        lambda t: _read(act, shell, t, "cat /etc/os-release", "/etc/os-release"),
        lambda t: _read(act, shell, t, "cat /etc/resolv.conf", "/etc/resolv.conf"),
        lambda t: _read(act, shell, t, "cat /etc/hosts", "/etc/hosts"),
        lambda t: _cmd(act, shell, t, "ps aux"),
        lambda t: _cmd(act, shell, t, "env"),
        lambda t: _cmd(act, shell, t, "df -h"),
        lambda t: _cmd(act, shell, t, "top -b -n 1"),
        lambda t: _cmd(act, shell, t, f"curl -s -m 2 localhost:{port}/healthz"),
        lambda t: _lookup(act, ctx, shell, t),
        lambda t: _read(act, shell, t, "tail -n 200 /var/log/app/app.log", "/var/log/app/app.log"),
    ]
    if app in ("api", "orders", "orders-worker"):
        menu.append(lambda t: _psql(act, ctx, shell, pod, t))
    for _ in range(n):
        t += seconds(rng, 2, 35)
        rng.choice(menu)(t)
    t += seconds(rng, 2, 20)
    r = rng.random()
    if r < 0.12:
        _read(
            act,
            shell,
            t,
            "cat /var/run/secrets/kubernetes.io/serviceaccount/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        )
    elif r < 0.22:
        proc = act.spawn(t, shell, "cat /proc/1/environ", exepath="/bin/cat")
        act.open_read(t + ms(rng, 0.2, 1), proc, "/proc/1/environ")
    elif r < 0.36:
        # Profiling a slow process: the tracer attaches to it.
        tracer = (
            act.spawn(t, shell, "py-spy dump --pid 1", exepath="/usr/local/bin/py-spy")
            if app in ("orders", "orders-worker")
            else act.spawn(
                t, shell, "strace -f -tt -p 1 -e trace=network -o /tmp/trace.txt", exepath="/usr/bin/strace"
            )
        )
        request = "PTRACE_ATTACH" if tracer.name == "py-spy" else "PTRACE_SEIZE"
        act.syscall(t + ms(rng, 2, 10), tracer, "ptrace", request=request, pid=1)
        t += seconds(rng, 3, 30)
    elif r < 0.44:
        apt = act.spawn(t, shell, "apt-get install -y procps", exepath="/usr/bin/apt-get")
        act.connect(t + ms(rng, 100, 500), apt, *ENDPOINTS["debian"].pick(rng))
        t += seconds(rng, 3, 10)
    return t


def _cmd(act: Activity, shell: Proc, t: int, command: str) -> Proc:
    return act.spawn(t, shell, command)


def _read(act: Activity, shell: Proc, t: int, command: str, path: str) -> None:
    proc = act.spawn(t, shell, command)
    act.open_read(t + ms(act.rng, 0.2, 1.5), proc, path)


def _lookup(act: Activity, ctx: Ctx, shell: Proc, t: int) -> None:
    target = act.rng.choice(
        ("postgres.data.svc.cluster.local", "redis.data", "api.shop", "kubernetes.default")
    )
    proc = act.spawn(t, shell, f"getent hosts {target}", exepath="/usr/bin/getent")
    dns_lookup(act, t + ms(act.rng, 0.5, 2), proc, ctx.world)


def _psql(act: Activity, ctx: Ctx, shell: Proc, pod: Pod, t: int) -> None:
    rng, w = act.rng, ctx.world
    pg = w["postgres"]
    proc = act.spawn(
        t,
        shell,
        "psql -h postgres.data -U app -d shop -c select count(*) from orders_order",
        exepath="/usr/bin/psql",
    )
    act.connect(t + ms(rng, 2, 10), proc, pg.service_ip or "", 5432)
    target = pg.pick(rng, t)
    if target is not None:
        act.accept(t + ms(rng, 10, 15), target.main(), pod.ip, 5432)


_NETSHOOT: Final = AppSpec(
    (ContainerSpec("tmp-shell", "docker.io/nicolaka/netshoot", ("v0.12", "latest")),),
    (ProcSpec("main", "tmp-shell", "bash", "/bin/bash", "root", 0, cwd="/root"),),
)


def debug_pods(ctx: Ctx, n: int) -> None:
    """``kubectl run tmp-shell --rm -it --image nicolaka/netshoot -- bash``: network debugging."""
    rng = ctx.rng("debug_pods")
    act = ctx.benign(rng, "debug_pod", "rare")
    w = ctx.world
    wl = ensure_workload(ctx, "tmp-shell", "default", "Pod", "storefront")
    for _ in range(n):
        t = ctx.profiles["office"].sample(rng)
        pod = start_pod(
            rng, w, wl, rng.choice(w.nodes), t, spec=_NETSHOOT, name=f"tmp-shell-{k8s_suffix(rng, 5)}"
        )
        shell = pod.main()
        shell.tty = _TTY
        pod_start_events(act, w, pod)
        _audit_exec(
            act, ctx, t + ms(rng, 300, 900), pod, command="bash", user=rng.choice(_PEOPLE), sub="attach"
        )
        t += seconds(rng, 3, 10)
        for _ in range(rng.randint(4, 9)):
            t += seconds(rng, 3, 40)
            _net_debug(act, ctx, shell, t)
        pod.end_ns = t + seconds(rng, 5, 30)


def _net_debug(act: Activity, ctx: Ctx, shell: Proc, t: int) -> None:
    rng, w = act.rng, ctx.world
    wl = w[rng.choice(("postgres", "redis", "api", "orders", "storefront"))]
    port = wl.spec.port or 80
    target = wl.pick(rng, t)
    r = rng.random()
    if r < 0.2:
        proc = act.spawn(t, shell, f"dig +short {wl.name}.{wl.ns}.svc.cluster.local")
        dns_lookup(act, t + ms(rng, 0.5, 2), proc, w)
    elif r < 0.4 and target is not None:
        proc = act.spawn(t, shell, f"nc -zv -w 2 {wl.name}.{wl.ns} {port}")
        act.connect(t + ms(rng, 2, 8), proc, wl.service_ip or target.ip, port)
    elif r < 0.55 and target is not None:
        proc = act.spawn(t, shell, f"curl -sv -m 3 http://{wl.name}.{wl.ns}:{port}/")
        act.connect(t + ms(rng, 2, 8), proc, wl.service_ip or target.ip, port)
    elif r < 0.7:
        act.spawn(t, shell, f"tcpdump -i eth0 -nn -c 200 port {port}")
    elif r < 0.85 and target is not None:
        proc = act.spawn(t, shell, f"nmap -Pn -p {port} {target.ip}")
        act.connect(t + ms(rng, 5, 30), proc, target.ip, port)
    else:
        act.spawn(t, shell, f"ping -c 3 {target.ip if target else '10.96.0.10'}", exepath="/bin/ping")


def nightly_backups(ctx: Ctx, _n: int) -> None:
    """pg_dump of the shop database at ~02:00 and a tar of a volume at ~03:00, every night."""
    rng = ctx.rng("nightly_backups")
    act = ctx.benign(rng, "nightly_backup", "rare")
    day0 = ctx.t0 - ctx.t0 % _DAY
    for day in range(day0, ctx.t1, _DAY):
        t = day + 2 * 3600 * NS_PER_S + seconds(rng, 2, 300)
        if ctx.t0 <= t < ctx.t1 - 600 * NS_PER_S:
            _pg_backup(act, ctx, t)
        t = day + 3 * 3600 * NS_PER_S + seconds(rng, 2, 300)
        if ctx.t0 <= t < ctx.t1 - 600 * NS_PER_S:
            _volume_backup(act, ctx, t)


def _pg_backup(act: Activity, ctx: Ctx, t: int) -> None:
    rng, w = act.rng, ctx.world
    wl = ensure_workload(ctx, "pg-backup", "data", "CronJob", "postgres")
    date = _date(t)
    spec = AppSpec(
        (ContainerSpec("backup", "docker.io/library/postgres", ("16.2",)),),
        (
            ProcSpec(
                "main",
                "backup",
                f"sh -c pg_dump -h postgres.data.svc -U backup -Fc shop | gzip > /backup/shop-{date}.dump.gz "
                f"&& aws s3 cp /backup/shop-{date}.dump.gz s3://acme-db-backups/shop/",
                "/bin/sh",
                "postgres",
                999,
                cwd="/var/lib/postgresql",
            ),
        ),
    )
    pod = run_pod(act, w, wl, t, spec=spec)
    sh = pod.main()
    t = sh.start_ns + ms(rng, 5, 30)
    dump = act.spawn(t, sh, "pg_dump -h postgres.data.svc -U backup -Fc shop")
    act.open_read(t + ms(rng, 1, 3), dump, "/var/lib/postgresql/.pgpass")
    dns_lookup(act, t + ms(rng, 3, 6), dump, w)
    pg = w["postgres"]
    act.connect(t + ms(rng, 6, 12), dump, pg.service_ip or "", 5432)
    target = pg.pick(rng, t)
    if target is not None:
        act.accept(t + ms(rng, 12, 15), target.main(), pod.ip, 5432)
    gz = act.spawn(t + ms(rng, 1, 3), sh, "gzip")
    act.open_write(t + ms(rng, 3, 6), gz, f"/backup/shop-{date}.dump.gz")
    t += seconds(rng, 40, 400)
    aws = act.spawn(
        t,
        sh,
        f"aws s3 cp /backup/shop-{date}.dump.gz s3://acme-db-backups/shop/",
        exepath="/usr/local/bin/python3",
    )
    act.connect(t + ms(rng, 200, 800), aws, *ENDPOINTS["sts"].pick(rng))
    for _ in range(rng.randint(2, 5)):
        t += seconds(rng, 1, 20)
        act.connect(t, aws, s3_ip(rng), 443)
    pod.end_ns = t + seconds(rng, 1, 5)


def _volume_backup(act: Activity, ctx: Ctx, t: int) -> None:
    rng, w = act.rng, ctx.world
    wl = ensure_workload(ctx, "assets-backup", "shop", "CronJob", "storefront")
    date = _date(t)
    spec = AppSpec(
        (ContainerSpec("backup", "docker.io/library/debian", ("bookworm-slim",)),),
        (
            ProcSpec(
                "main",
                "backup",
                f"sh -c tar czf /backup/assets-{date}.tar.gz -C /var/lib/assets . && rclone copy /backup "
                "s3:acme-backups/assets --include *.tar.gz",
                "/bin/sh",
                "root",
                0,
            ),
        ),
    )
    pod = run_pod(act, w, wl, t, spec=spec)
    sh = pod.main()
    t = sh.start_ns + ms(rng, 5, 30)
    tar = act.spawn(t, sh, f"tar czf /backup/assets-{date}.tar.gz -C /var/lib/assets .")
    act.spawn(t + ms(rng, 1, 4), tar, "gzip")
    act.open_write(t + ms(rng, 2, 6), tar, f"/backup/assets-{date}.tar.gz")
    t += seconds(rng, 20, 200)
    if rng.random() < 0.5:
        rclone = act.spawn(
            t, sh, "rclone copy /backup s3:acme-backups/assets --include *.tar.gz", exepath="/usr/bin/rclone"
        )
        for _ in range(rng.randint(2, 5)):
            t += seconds(rng, 1, 15)
            act.connect(t, rclone, s3_ip(rng), 443)
    else:
        backup_host = f"10.0.{rng.randint(0, 15)}.{rng.randint(4, 250)}"
        rsync = act.spawn(t, sh, f"rsync -az --partial /backup/ backup@{backup_host}:/srv/backups/assets/")
        ssh = act.spawn(
            t + ms(rng, 2, 8),
            rsync,
            f"ssh -l backup {backup_host} rsync --server -logDtprze.iLsfxCIvu --partial . /srv/backups/",
        )
        act.connect(t + ms(rng, 8, 20), ssh, backup_host, 22)
        t += seconds(rng, 5, 60)
    pod.end_ns = t + seconds(rng, 1, 5)


def _date(t: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t // NS_PER_S, UTC).strftime("%Y-%m-%d")


def cert_rotations(ctx: Ctx, n: int) -> None:
    """cert-manager renews a certificate; a job installs it below /etc; nginx reloads it."""
    rng = ctx.rng("cert_rotations")
    act = ctx.benign(rng, "cert_rotation", "rare")
    w = ctx.world
    for _ in range(n):
        t = ctx.profiles["office"].sample(rng)
        cm = w["cert-manager"].pick(rng, t)
        if cm is not None:
            controller = cm.main()
            for _ in range(rng.randint(2, 4)):
                act.connect(t, controller, *ENDPOINTS["letsencrypt"].pick(rng))
                t += seconds(rng, 1, 10)
        wl = ensure_workload(ctx, "cert-sync", "shop", "Job", "storefront")
        spec = AppSpec(
            (ContainerSpec("cert-sync", "registry.example.com/platform/cert-sync", ("0.3.1",)),),
            (
                ProcSpec(
                    "main",
                    "cert-sync",
                    "sh -c cp /certs/tls.crt /etc/ssl/certs/shop.crt && cp /certs/tls.key "
                    "/etc/ssl/private/shop.key && shred -u /certs/tls.key.tmp && "
                    "update-ca-certificates --fresh",
                    "/bin/sh",
                    "root",
                    0,
                ),
            ),
        )
        pod = run_pod(act, w, wl, t + seconds(rng, 5, 60), spec=spec)
        sh = pod.main()
        t = sh.start_ns + ms(rng, 5, 20)
        for src, dst in (
            ("/certs/tls.crt", "/etc/ssl/certs/shop.crt"),
            ("/certs/tls.key", "/etc/ssl/private/shop.key"),
        ):
            cp = act.spawn(t, sh, f"cp {src} {dst}")
            act.open_write(t + ms(rng, 0.5, 2), cp, dst)
            t += ms(rng, 3, 20)
        shred = act.spawn(t, sh, "shred -u /certs/tls.key.tmp")
        act.unlink(t + ms(rng, 1, 5), shred, "/certs/tls.key.tmp")
        t += ms(rng, 5, 20)
        upd = act.spawn(t, sh, "update-ca-certificates --fresh", exepath="/usr/sbin/update-ca-certificates")
        act.open_write(t + ms(rng, 50, 200), upd, "/etc/ssl/certs/ca-certificates.crt.new")
        act.rename(
            t + ms(rng, 200, 400),
            upd,
            "/etc/ssl/certs/ca-certificates.crt.new",
            "/etc/ssl/certs/ca-certificates.crt",
        )
        pod.end_ns = t + seconds(rng, 1, 3)
        t += seconds(rng, 10, 60)
        for sf in w["storefront"].pods_at(t):
            exec_into(act, t, sf, "nginx -s reload", exepath="/usr/sbin/nginx", user="root", uid=0)
            act.open_read(t + ms(rng, 5, 40), sf.main(), "/etc/ssl/private/shop.key")
            t += seconds(rng, 1, 5)


def log_rotation(ctx: Ctx, _n: int) -> None:
    """cron.daily's logrotate on every node: renames, compresses and truncates logs."""
    rng = ctx.rng("log_rotation")
    act = ctx.benign(rng, "logrotate", "rare")
    w = ctx.world
    day0 = ctx.t0 - ctx.t0 % _DAY
    for day in range(day0, ctx.t1, _DAY):
        for node in w.nodes:
            t = day + (6 * 3600 + 25 * 60) * NS_PER_S + seconds(rng, 0, 240)
            if not ctx.t0 <= t < ctx.t1:
                continue
            host = w.host[node.hostname]
            cron = act.spawn(t, host["cron"], "/usr/sbin/CRON -f -P", exepath="/usr/sbin/cron", emit=False)
            sh = act.spawn(
                t + ms(rng, 1, 3),
                cron,
                "/bin/sh -c test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }",
            )
            parts = act.spawn(
                t + ms(rng, 3, 6), sh, "run-parts --report /etc/cron.daily", exepath="/bin/run-parts"
            )
            t += ms(rng, 50, 400)
            lr = act.spawn(t, parts, "/usr/sbin/logrotate /etc/logrotate.conf", exepath="/usr/sbin/logrotate")
            for log in ("syslog", "auth.log", "kern.log"):
                t += ms(rng, 2, 20)
                act.rename(t, lr, f"/var/log/{log}.1", f"/var/log/{log}.2")
                act.rename(t + ms(rng, 0.1, 1), lr, f"/var/log/{log}", f"/var/log/{log}.1")
            for log in ("/var/log/kubelet.log", "/var/log/containerd.log"):
                # copytruncate: copy the log, then truncate it in place.
                t += ms(rng, 5, 80)
                act.open_write(t, lr, f"{log}.1")
                act.open_write(t + ms(rng, 10, 200), lr, log, "O_TRUNC|O_WRONLY|O_CLOEXEC")
            gz = act.spawn(t + ms(rng, 5, 20), lr, "/bin/gzip -9 /var/log/syslog.2", exepath="/bin/gzip")
            act.open_write(t + ms(rng, 20, 40), gz, "/var/log/syslog.2.gz")
            act.unlink(t + ms(rng, 200, 900), gz, "/var/log/syslog.2")


def node_maintenance(ctx: Ctx, n: int) -> None:
    """An administrator's SSH session on a node: sudo, crictl, journalctl."""
    rng = ctx.rng("node_maintenance")
    act = ctx.benign(rng, "node_ssh", "rare")
    w = ctx.world
    bastion = f"10.0.{rng.randint(0, 15)}.{rng.randint(4, 250)}"
    for _ in range(n):
        t = ctx.profiles["office"].sample(rng)
        node = rng.choice(w.nodes)
        if rng.random() < 0.5:
            _node_shell(act, ctx, node, t)
            continue
        host = w.host[node.hostname]
        listener = host["sshd"]
        act.accept(t, listener, bastion, 22)
        session = act.spawn(t + ms(rng, 5, 20), listener, "/usr/sbin/sshd -D -R", container=None)
        act.open_read(t + ms(rng, 20, 60), session, "/etc/shadow")
        user = act.spawn(
            t + ms(rng, 200, 600),
            session,
            "-bash",
            exepath="/bin/bash",
            user="admin",
            uid=1000,
            tty=_TTY,
            cwd="/home/admin",
            name="bash",
        )
        user.loginuid = 1000
        t += seconds(rng, 3, 15)
        sudo = act.spawn(t, user, "sudo -i", exepath="/usr/bin/sudo")
        act.syscall(t + ms(rng, 200, 2000), sudo, "setuid", uid=0)
        root = act.spawn(
            t + ms(rng, 2100, 2500),
            sudo,
            "-bash",
            exepath="/bin/bash",
            user="root",
            uid=0,
            cwd="/root",
            name="bash",
        )
        for command in rng.sample(
            [
                "crictl ps",
                "crictl pods --namespace shop",
                "journalctl -u kubelet --since -1h --no-pager",
                "systemctl status containerd",
                "df -h",
                "free -m",
                "crictl stats",
                "uptime",
                "dmesg -T",
                "crontab -l",
            ],
            rng.randint(3, 6),
        ):
            t += seconds(rng, 4, 40)
            act.spawn(t, root, command)
        act.append(t + seconds(rng, 2, 10), root, "/root/.bash_history")


_NODE_SHELL: Final = AppSpec(
    (ContainerSpec("shell", "docker.io/library/alpine", ("3.19",), privileged=True),),
    (
        ProcSpec(
            "main",
            "shell",
            "nsenter --target 1 --mount --uts --ipc --net --pid -- bash -l",
            "/usr/bin/nsenter",
            "root",
            0,
        ),
    ),
)


def _node_shell(act: Activity, ctx: Ctx, node: Node, t: int) -> None:
    """``kubectl node-shell``: a privileged hostPID pod that nsenters the node's namespaces."""
    rng, w = act.rng, ctx.world
    wl = ensure_workload(ctx, "nsenter", "default", "Pod", "storefront")
    pod = start_pod(rng, w, wl, node, t, spec=_NODE_SHELL, name=f"nsenter-{k8s_suffix(rng, 6)}")
    nsenter = pod.main()
    nsenter.tty = _TTY
    pod_start_events(act, w, pod)
    _audit_exec(
        act, ctx, t + ms(rng, 300, 900), pod, command="nsenter", user=rng.choice(_PEOPLE), sub="attach"
    )
    t = nsenter.start_ns + ms(rng, 2, 10)
    for kind in ("MNT", "UTS", "IPC", "NET", "PID"):
        act.syscall(t, nsenter, "setns", fd=3, nstype=f"CLONE_NEW{kind}")
        t += ms(rng, 0.05, 0.3)
    bash = act.spawn(t, nsenter, "bash -l", exepath="/bin/bash", cwd="/root")
    for command in rng.sample(
        [
            "crictl ps",
            "journalctl -u kubelet --since -1h --no-pager",
            "systemctl status kubelet",
            "df -h",
            "free -m",
            "ls -la /var/lib/kubelet/pods",
            "crictl images",
        ],
        rng.randint(3, 5),
    ):
        t += seconds(rng, 4, 40)
        act.spawn(t, bash, command)
    pod.end_ns = t + seconds(rng, 5, 30)


def ci_upgrades(ctx: Ctx, n: int) -> None:
    """A CI job that upgrades every package of its image."""
    rng = ctx.rng("ci_upgrades")
    act = ctx.benign(rng, "ci_package_upgrade", "rare")
    for _ in range(n):
        t = ctx.profiles["office"].sample(rng)
        if t > ctx.t1 - 10 * 60 * NS_PER_S:
            continue
        job = CiJob(ctx, act, "apt", t, upgrade=True)
        job.pod.end_ns = job.run()


# name: (generator, instances per 100k events; 0 = fixed schedule)
RARE: Final[dict[str, tuple[Callable[[Ctx, int], None], float]]] = {
    "rollouts": (rollouts, 12),
    "container_restarts": (container_restarts, 5),
    "exec_sessions": (exec_sessions, 20),
    "debug_pods": (debug_pods, 4),
    "nightly_backups": (nightly_backups, 0),
    "cert_rotations": (cert_rotations, 3),
    "log_rotation": (log_rotation, 0),
    "node_maintenance": (node_maintenance, 3),
    "ci_upgrades": (ci_upgrades, 3),
}
