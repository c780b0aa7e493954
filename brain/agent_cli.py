"""`aerie agent run NAME`: one agent as its own process, serving A2A over mutual TLS.

Registered into the `aerie` command by `register`. Handlers import the agents lazily: ``aerie --help``
must not pay for the A2A SDK.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from aerie.brain.cli import CliError, option

if TYPE_CHECKING:
    pass

_EPILOG = """\
The agent listens on https://HOST:PORT (mutual TLS: callers need a certificate from the CA in
DIR/ca.crt) and serves the A2A agent card at /.well-known/agent-card.json, JSON-RPC at / and a
health check at /healthz. Only callers whose certificate identity is on --allow may send it work
(403 otherwise); any CA-verified peer may read the card. Once listening it prints one line,
"aerie agent NAME listening on URL", to stdout; logs are JSON lines on stderr. With --ops-port it
also serves plain HTTP on HOST:OPS_PORT for Prometheus and the kubelet: /metrics (the agent's
aerie_agent_* series), /healthz (the process answers), /readyz (the agent is serving); the bound
port is in the "agent listening" log line (ops_port). SIGTERM or SIGINT stops it after the requests
in flight (exit status 0). Exit status 2: bad options, unreadable certificates, a port in use, an
unusable --state-dir.

With --mcp-attack the analyst maps ATT&CK through the aerie-attack MCP server (`aerie mcp run attack`),
presenting its own certificate; when that server cannot be reached the analysis says so at confidence
0, which the reviewer escalates. Without it the analyst reads the same table in process.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `aerie agent run` to the `aerie` command."""
    from aerie.proto.agents import AGENTS

    agent = sub.add_parser("agent", help="run one brain agent as its own process").add_subparsers(
        dest="agent_command", required=True, metavar="COMMAND"
    )
    run = agent.add_parser(
        "run",
        help="serve one agent (A2A 1.0 over mutual TLS)",
        description="Serve one agent of the brain as an A2A 1.0 service over HTTPS with mutual TLS, "
        "authorising callers by their SPIFFE identity.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("name", metavar="NAME", choices=AGENTS, help=f"the agent: {', '.join(AGENTS)}")
    option(
        run,
        "--certs",
        env="AERIE_AGENT_CERTS",
        type=Path,
        required=True,
        metavar="DIR",
        help="certificates as `aerie certs init DIR` writes them: ca.crt and agent-NAME.crt/.key",
    )
    option(run, "--host", env="AERIE_AGENT_HOST", default="127.0.0.1", help="address to listen on")
    option(
        run,
        "--port",
        env="AERIE_AGENT_PORT",
        type=int,
        metavar="PORT",
        help="port to listen on; 0 picks a free one (default: the agent's own, 7101..7105)",
    )
    option(
        run,
        "--ops-port",
        env="AERIE_AGENT_OPS_PORT",
        type=int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz over plain HTTP on HOST:PORT; 0 picks a free one "
        "(default: off)",
    )
    option(
        run,
        "--state-dir",
        env="AERIE_AGENT_STATE_DIR",
        type=Path,
        metavar="DIR",
        help="where remediate and notify keep their idempotency records (required for those two)",
    )
    option(
        run,
        "--allow",
        env="AERIE_AGENT_ALLOW",
        type=lambda s: [p for p in s.split(",") if p.strip()],
        metavar="ID,...",
        help="callers allowed to send work: SPIFFE URIs or component names "
        "(default: spiffe://aerie/brain,spiffe://aerie/cli)",
    )
    option(
        run,
        "--public-url",
        env="AERIE_AGENT_PUBLIC_URL",
        metavar="URL",
        help="URL the agent card advertises (default: https://HOST:PORT), e.g. a Kubernetes Service",
    )
    option(
        run,
        "--grace",
        env="AERIE_AGENT_GRACE",
        type=int,
        default=5,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may hold the stop",
    )
    option(
        run,
        "--mcp-attack",
        env="AERIE_AGENT_MCP_ATTACK",
        metavar="URL",
        help="analyst only: map ATT&CK through the aerie-attack MCP server at this https:// URL "
        "(e.g. https://127.0.0.1:7201/mcp), calling with the agent's own certificate (default: the "
        "local table, no MCP)",
    )
    option(run, "--log-level", env="AERIE_LOG_LEVEL", default="INFO", help="log level of aerie's loggers")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from aerie.brain.agents.logic import AgentLogic, build_logic
    from aerie.brain.agents.registry import DEFAULT_ALLOWED, parse_identities, spec
    from aerie.brain.agents.service import AgentService, ServiceError
    from aerie.brain.metrics import BrainMetrics
    from aerie.brain.serve_command import serve_until_signalled
    from aerie.edge.errors import TlsError
    from aerie.edge.tls import ServerTls
    from aerie.proto.logs import configure
    from aerie.proto.serving import ServeError

    name: str = args.name
    agent = spec(name)
    certs: Path = args.certs
    if not certs.is_dir():
        raise CliError(f"--certs: {certs} is not a directory")
    try:
        tls = ServerTls(
            cert=str(certs / f"{agent.component}.crt"),
            key=str(certs / f"{agent.component}.key"),
            ca=str(certs / "ca.crt"),
        )
    except TlsError as exc:
        raise CliError(f"--certs: {exc} (run `aerie certs init {certs}`)") from None
    try:
        allowed = parse_identities(args.allow) if args.allow is not None else DEFAULT_ALLOWED
    except ValueError as exc:
        raise CliError(f"--allow: {exc}") from None
    for flag_name, port in (("--port", args.port), ("--ops-port", args.ops_port)):
        if port is not None and not 0 <= port <= 65535:
            raise CliError(f"{flag_name}: {port} is not a port number")
    if args.grace < 0:
        raise CliError(f"--grace: {args.grace} is negative")
    if agent.needs_state and args.state_dir is None:
        raise CliError(f"--state-dir is required for {name}: its idempotency records must survive restarts")
    mcp_attack: str | None = args.mcp_attack
    if mcp_attack is not None:
        if name != "analyst":
            raise CliError(f"--mcp-attack: only the analyst maps ATT&CK, not {name}")
        if not mcp_attack.startswith("https://"):
            raise CliError(
                f"--mcp-attack: {mcp_attack!r} is not an https:// URL (MCP servers speak mutual TLS)"
            )
    configure(agent.identity, level=args.log_level)
    # One registry for the process; the ops endpoint (/metrics) exposes service.metrics.
    metrics = BrainMetrics()
    if mcp_attack is not None:
        from aerie.brain.agents.logic import ATTACK_SERVER, AnalystLogic
        from aerie.brain.mcp.client import McpCaller

        try:
            caller = McpCaller.from_certs(
                certs, component=agent.component, servers={ATTACK_SERVER: mcp_attack}, metrics=metrics
            )
        except TlsError as exc:
            raise CliError(f"--certs: {exc} (run `aerie certs init {certs}`)") from None
        logic: AgentLogic = AnalystLogic(mcp=caller)
    else:
        logic = build_logic(name, state_dir=args.state_dir)
    service = AgentService(
        logic,
        metrics=metrics,
        tls=tls,
        host=args.host,
        port=args.port,
        allowed=allowed,
        public_url=args.public_url,
        graceful_timeout_s=args.grace,
    )
    try:
        asyncio.run(
            serve_until_signalled(
                service,
                kind="agent",
                key="agent",
                label=f"agent {service.name}",
                ops_port=args.ops_port,
                details={"allowed": sorted(service.allowed)},
                logger=logging.getLogger("aerie.brain.agent_cli"),
            )
        )
    except (ServiceError, ServeError) as exc:
        raise CliError(str(exc)) from None
    return 0
