"""A realistic, labelled corpus of Falco alerts from a simulated Kubernetes cluster.

``aerie corpus generate --out DIR --seed N`` writes three files:

``events.jsonl``
    One Falco alert per line, exactly as Falco's ``json_output`` writes it (``hostname``, ``output``
    with the time and priority prefix and every ``%field`` substituted, typed ``output_fields``,
    ``priority``, ``rule``, ``source``, ``tags``, ``time`` in RFC 3339 with nine fraction digits)
    plus a Falcosidekick-style random ``uuid``. Lines are ordered by time. Each line decodes with
    `aerie.proto.event.decode_json`.
``labels.jsonl``
    One `CorpusLabel` per event, same order, joined by ``line`` and ``uuid``: ``label`` (benign or
    attack), attack ``scenario``/``instance`` and the MITRE ATT&CK ``tactic``/``technique`` of the
    step, ``benign_kind`` (``baseline`` routine or ``rare`` legitimate-but-unusual) and
    ``activity`` (the generator that produced the event). Labels never appear inside events.
``scenarios.json``
    Counts per label, scenario (with its instances: victim pod, node, start), node, rule, priority
    and activity, the options, seed and generator version.

What is simulated. A cluster of ``--nodes`` nodes (default 5) over ``--hours`` (default 24):
ingress-nginx, an nginx storefront, a node.js API, a gunicorn service and a celery worker (meshed
with istio sidecars), postgres, redis and mysql, cron jobs, GitLab CI job pods (pip, npm, go, apt,
docker-in-docker, kubectl/helm deploys), Prometheus, fluent-bit and Loki, cert-manager, argocd,
kube-proxy, cilium, CoreDNS and Falco itself, plus host daemons (kubelet, containerd, sshd, cron).
Every process has one identity (host pid, parent, command line, user, cwd, tty, container, pod)
across its events; pods are replaced by rollouts and restarts with new ids, pids and image tags;
load follows a diurnal curve with bursts. Alerts come from real upstream Falco rules (stable,
incubating, sandbox; names, priorities, tags and output formats of falcosecurity/rules) evaluated
first-match, and from aerie's broad audit rules (`rules.BASELINE_RULES`: process spawned,
connections, writes, sensitive reads, renames, chmod, privileged syscalls) that carry most routine
traffic at Informational/Notice. aerie's Falco configuration appends identity fields to every
syscall alert (`rules.EXTRA_FIELDS`).

Labels. ``attack`` events come from twelve scenarios (`scenarios.SCENARIOS`): reverse shells,
credential access, crypto mining, container escape attempts, API-server access with a stolen
service-account token, drop-and-execute, a staged payload built only from ordinary events, fileless
execution via memfd_create, ptrace injection, log clearing, lateral movement and persistence; about
1% of events by default, spread over nodes, workloads and the day. ``rare`` benign events
(rollouts, ``kubectl exec`` sessions, netshoot debugging, backups, certificate rotation, package
upgrades in CI, log rotation, node SSH maintenance) raise many of the same rules as attacks.

Known limits. The world is one fixed application topology; values vary per seed but the set of
workloads does not. Only syscalls some rule alerts on are simulated (no reads of ordinary files,
few failed syscalls). Upstream rule conditions are re-implemented in Python and simplified; output
fields and ``-pk`` container info follow Falco 0.37-0.38. A process that ``exec``s another is
modelled as a parent and a child with their own pids, and pids are never reused on a node. Some
upstream rules fire only in attacks (the Stratum miner rule, release_agent, memfd execution...), as
they would in a well-tuned cluster. ``--events`` is approximate (within a few percent), and below
about 2000 events the fixed daily maintenance (log rotation, backups) dominates. Attack sequences
are written by hand from public write-ups, so they are plausible rather than observed: a model
scored only on this corpus is scored on its author's imagination, which is why it is also evaluated
on public labelled syscall data.
"""

from __future__ import annotations

from .generate import (
    DEFAULT_START,
    GENERATOR_VERSION,
    Corpus,
    CorpusLabel,
    CorpusOptions,
    generate,
    write_corpus,
)
from .rules import BASELINE_RULES, EXTRA_FIELDS, STOCK_RULES, Rule

__all__ = [
    "BASELINE_RULES",
    "DEFAULT_START",
    "EXTRA_FIELDS",
    "GENERATOR_VERSION",
    "STOCK_RULES",
    "Corpus",
    "CorpusLabel",
    "CorpusOptions",
    "Rule",
    "generate",
    "write_corpus",
]
