"""Brain subcommands: `aerie brain run`, `aerie certs init`, `aerie demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from aerie.brain.cli import CliError, flag, option


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the brain's subcommands to the `aerie` command."""
    from aerie.brain.case_cli import add_agent_options, add_store_options

    brain = sub.add_parser("brain", help="the central brain").add_subparsers(
        dest="brain_command", required=True, metavar="COMMAND"
    )
    run = brain.add_parser(
        "run",
        help="consume anomalies and run each incident through the agents",
        description="Consume the edge's anomalies from Kafka; each becomes an incident that the "
        "coordinator runs through the agents (A2A over mutual TLS) with durable checkpoints.",
    )
    option(
        run,
        "--kafka",
        env="AERIE_KAFKA_BOOTSTRAP_SERVERS",
        default="127.0.0.1:9092",
        metavar="HOST:PORT,...",
        help="Kafka bootstrap servers",
    )
    option(run, "--topic", env="AERIE_KAFKA_TOPIC", default="aerie.anomalies", help="anomalies topic")
    option(
        run,
        "--dlq-topic",
        env="AERIE_KAFKA_DLQ_TOPIC",
        default="aerie.anomalies.dlq",
        help="dead-letter topic",
    )
    option(run, "--group", env="AERIE_KAFKA_GROUP", default="aerie-brain", help="consumer group")
    option(
        run,
        "--session-timeout",
        env="AERIE_KAFKA_SESSION_TIMEOUT_MS",
        type=int,
        default=45_000,
        metavar="MS",
        help="consumer group session timeout: how long a dead brain holds its partitions",
    )
    option(
        run,
        "--heartbeat-interval",
        env="AERIE_KAFKA_HEARTBEAT_INTERVAL_MS",
        type=int,
        default=3_000,
        metavar="MS",
        help="consumer group heartbeat interval (below --session-timeout)",
    )
    option(
        run,
        "--kafka-option",
        env="AERIE_KAFKA_OPTIONS",
        type=_key_values,
        default={},
        metavar="KEY=VALUE,...",
        help="further librdkafka consumer properties (TLS, SASL, fetch.wait.max.ms, ...)",
    )
    add_store_options(run)
    add_agent_options(run, identity="brain")
    option(
        run, "--concurrency", env="AERIE_BRAIN_CONCURRENCY", type=int, default=8, help="incidents run at once"
    )
    option(
        run, "--ops-host", env="AERIE_BRAIN_OPS_HOST", default="0.0.0.0", help="metrics and probes address"
    )
    option(
        run, "--ops-port", env="AERIE_BRAIN_OPS_PORT", type=int, default=9102, help="metrics and probes port"
    )
    option(
        run,
        "--drain-timeout",
        env="AERIE_BRAIN_DRAIN_TIMEOUT",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running incidents may take to reach a verdict",
    )
    option(
        run,
        "--log-level",
        env="AERIE_LOG_LEVEL",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    run.set_defaults(handler=_brain_run)

    certs = sub.add_parser("certs", help="local CA and per-component certificates").add_subparsers(
        dest="certs_command", required=True, metavar="COMMAND"
    )
    init = certs.add_parser(
        "init",
        help="create a CA and one certificate per component in DIR",
        description="Create a local CA and one certificate per component (URI SAN spiffe://aerie/...), "
        "for running outside Kubernetes, where cert-manager issues the same shape.",
    )
    init.add_argument("dir", type=Path, help="directory to write ca.crt/ca.key and <component>.crt/.key")
    option(
        init,
        "--component",
        env="AERIE_CERTS_COMPONENTS",
        type=lambda s: [c for c in s.split(",") if c],
        help="comma-separated components (default: every aerie component)",
    )
    option(
        init,
        "--host",
        env="AERIE_CERTS_HOSTS",
        type=lambda s: [h.strip() for h in s.split(",") if h.strip()],
        metavar="NAME,...",
        help="further DNS names or addresses every certificate is valid for, beyond localhost "
        "(e.g. the Kubernetes Service names peers dial: aerie-agent-detect,aerie-agent-detect.aerie.svc)",
    )
    flag(init, "--force", env="AERIE_CERTS_FORCE", help="replace an existing CA and its certificates")
    init.set_defaults(handler=_certs_init)

    demo = sub.add_parser(
        "demo",
        help="the whole system on one machine, on embedded defaults",
        description="Run the whole system on this machine, each part in its own process: a local CA, "
        "an embedded Kafka broker (Tansu), the five agents, the brain, the edge daemon with a model "
        "trained here, and Falco's http_output replaying a labelled attack scenario over mutual TLS. "
        "Waits until every anomaly the edge published has a verdict or an escalation, prints a report "
        "(verdicts, detection per scenario, ATT&CK tactics, latency, one escalation's whole chain), "
        "approves that escalation as an operator would, and stops every part. Exit status 0 only "
        "when every published anomaly reached a verdict and every part stopped cleanly.",
    )
    option(demo, "--seed", env="AERIE_DEMO_SEED", type=int, default=7, help="scenario seed")
    option(
        demo,
        "--events",
        env="AERIE_DEMO_EVENTS",
        type=int,
        help="alerts in the scenario (default 10000; 2500 with --quick)",
    )
    option(demo, "--workdir", env="AERIE_DEMO_WORKDIR", type=Path, help="keep files here (default: temp dir)")
    flag(demo, "--quick", env="AERIE_DEMO_QUICK", help="a smaller training day and scenario (tests)")
    flag(
        demo,
        "--keep",
        env="AERIE_DEMO_KEEP",
        help="after the report, keep every part running until Ctrl-C (to decide the other cases)",
    )
    demo.set_defaults(handler=_demo)


def _certs_init(args: argparse.Namespace) -> int:
    from aerie.brain.certs import DEFAULT_COMPONENTS, init_pki, spiffe_id

    directory: Path = args.dir
    if (directory / "ca.key").exists() and not args.force:
        raise CliError(f"{directory}/ca.key exists; pass --force to replace the CA and every certificate")
    components = args.component or list(DEFAULT_COMPONENTS)
    issued = init_pki(directory, components, hosts=args.host or ())
    for name, pki in issued.items():
        print(f"{name:<16} {spiffe_id(name):<34} {pki.cert}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from aerie.brain.demo import DemoOptions, run_demo
    from aerie.models.corpus.generate import MAX_EVENTS, MIN_EVENTS

    if args.events is not None and not MIN_EVENTS <= args.events <= MAX_EVENTS:
        raise CliError(f"--events: {args.events} is not within {MIN_EVENTS}..{MAX_EVENTS}")
    if args.quick:
        options = DemoOptions.quick(seed=args.seed, events=args.events, keep=args.keep)
    else:
        options = DemoOptions(seed=args.seed, events=args.events or DemoOptions.events, keep=args.keep)
    return run_demo(options, workdir=args.workdir)


def _brain_run(args: argparse.Namespace) -> int:
    import asyncio

    from aerie.brain.agents.registry import parse_endpoints
    from aerie.brain.audit import StoreError
    from aerie.brain.consumer import ConsumerConfig, ConsumerConfigError
    from aerie.brain.service import BrainSettings, run_brain
    from aerie.edge.errors import TlsError
    from aerie.proto.identity import spiffe_id
    from aerie.proto.logs import configure

    try:
        consumer = ConsumerConfig(
            bootstrap_servers=args.kafka,
            topic=args.topic,
            dlq_topic=args.dlq_topic,
            group_id=args.group,
            session_timeout_ms=args.session_timeout,
            heartbeat_interval_ms=args.heartbeat_interval,
            librdkafka=args.kafka_option,
        )
    except ConsumerConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        endpoints = parse_endpoints(args.agents or "")
    except ValueError as exc:
        raise CliError(f"--agents: {exc}") from None
    if args.concurrency < 1 or args.agent_timeout <= 0:
        raise CliError("--concurrency and --agent-timeout must be positive")
    settings = BrainSettings(
        consumer=consumer,
        audit=args.audit,
        checkpoints=args.checkpoints,
        certs=args.certs,
        identity=args.identity,
        endpoints=endpoints,
        agent_timeout_s=args.agent_timeout,
        concurrency=args.concurrency,
        ops_host=args.ops_host,
        ops_port=args.ops_port,
        drain_timeout_s=args.drain_timeout,
    )
    configure(spiffe_id(args.identity), level=args.log_level)
    try:
        return asyncio.run(run_brain(settings))
    except TlsError as exc:
        raise CliError(f"--certs: {exc} (run `aerie certs init {args.certs}`)") from None
    except StoreError as exc:
        raise CliError(f"--audit/--checkpoints: {exc}") from None


def _key_values(text: str) -> dict[str, str]:
    """``a=1,b=2`` → ``{"a": "1", "b": "2"}``."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError(f"expected KEY=VALUE pairs separated by commas, got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}
