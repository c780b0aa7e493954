"""`aerie mcp run NAME`: one of aerie's MCP servers as its own process, over mutual TLS.

Registered into the `aerie` command by `register`. Handlers import the MCP SDK lazily: ``aerie --help``
must not pay for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from aerie.brain.cli import CliError, flag, option

if TYPE_CHECKING:
    pass

SERVERS = ("attack",)
"""The MCP servers `aerie mcp run` can serve."""

_EPILOG = """\
The server listens on https://HOST:PORT/mcp (MCP streamable HTTP, stateless, JSON responses; mutual
TLS: callers need a certificate from the CA in DIR/ca.crt) and answers a health check at /healthz.
Only callers whose certificate identity is on --allow may call it (403 otherwise). Every tool has an
input and an output schema; arguments that break the input schema get a tool error naming the
constraint. Each tool call is logged as one JSON line on stderr with the tool, the caller's identity
and the trace id of the traceparent it came with (params._meta, else the HTTP header). Once
listening it prints one line, "aerie mcp NAME listening on URL", to stdout. With --ops-port it also
serves plain HTTP on HOST:OPS_PORT: /healthz, /readyz and /metrics (calls served, refusals, latency).
SIGTERM or SIGINT stops it after the requests in flight (exit status 0). Exit status 2: bad options,
unreadable certificates, a port in use.

--insecure-http serves plain HTTP without certificates or identities, for running the MCP
conformance suite locally, and only on a loopback --host.
"""


def _identities(text: str) -> list[str]:
    return [p for p in text.split(",") if p.strip()]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `aerie mcp run` to the `aerie` command."""
    mcp = sub.add_parser("mcp", help="run one of aerie's MCP servers").add_subparsers(
        dest="mcp_command", required=True, metavar="COMMAND"
    )
    run = mcp.add_parser(
        "run",
        help="serve one MCP server (streamable HTTP over mutual TLS)",
        description="Serve one of aerie's MCP servers over streamable HTTP with mutual TLS, "
        "authorising callers by their SPIFFE identity.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "name",
        metavar="NAME",
        choices=SERVERS,
        help=f"the server: {', '.join(SERVERS)} (attack: MITRE ATT&CK)",
    )
    option(
        run,
        "--certs",
        env="AERIE_MCP_CERTS",
        type=Path,
        metavar="DIR",
        help="certificates as `aerie certs init DIR` writes them: ca.crt and mcp-NAME.crt/.key "
        "(required unless --insecure-http)",
    )
    option(run, "--host", env="AERIE_MCP_HOST", default="127.0.0.1", help="address to listen on")
    option(
        run,
        "--port",
        env="AERIE_MCP_PORT",
        type=int,
        metavar="PORT",
        help="port to listen on; 0 picks a free one (default: the server's own, attack 7201)",
    )
    option(
        run,
        "--allow",
        env="AERIE_MCP_ALLOW",
        type=_identities,
        metavar="ID,...",
        help="callers allowed: SPIFFE URIs or component names (default for attack: "
        "spiffe://aerie/agent/analyst)",
    )
    option(
        run,
        "--ops-port",
        env="AERIE_MCP_OPS_PORT",
        type=int,
        metavar="PORT",
        help="serve /healthz and /readyz over plain HTTP on HOST:PORT for the kubelet; 0 picks a free "
        "one (default: off)",
    )
    option(
        run,
        "--grace",
        env="AERIE_MCP_GRACE",
        type=int,
        default=5,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may hold the stop",
    )
    flag(
        run,
        "--insecure-http",
        env="AERIE_MCP_INSECURE_HTTP",
        help="plain HTTP, no certificates, no identities: local conformance runs only, loopback --host only",
    )
    option(run, "--log-level", env="AERIE_LOG_LEVEL", default="INFO", help="log level of aerie's loggers")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from aerie.brain.agents.registry import parse_identities
    from aerie.brain.mcp import attack_server
    from aerie.brain.mcp.serving import McpService, McpServiceError, is_loopback
    from aerie.brain.serve_command import serve_until_signalled
    from aerie.edge.errors import TlsError
    from aerie.edge.tls import ServerTls
    from aerie.proto.identity import spiffe_id
    from aerie.proto.logs import configure
    from aerie.proto.serving import ServeError

    component, port, default_allowed = (
        attack_server.COMPONENT,
        attack_server.DEFAULT_PORT,
        attack_server.DEFAULT_ALLOWED,
    )
    for flag_name, value in (("--port", args.port), ("--ops-port", args.ops_port)):
        if value is not None and not 0 <= value <= 65535:
            raise CliError(f"{flag_name}: {value} is not a port number")
    if args.grace < 0:
        raise CliError(f"--grace: {args.grace} is negative")
    tls: ServerTls | None = None
    if args.insecure_http:
        if not is_loopback(args.host):
            raise CliError(f"--insecure-http: only on a loopback --host, not {args.host}")
        if args.certs is not None:
            raise CliError("--insecure-http and --certs exclude each other")
    else:
        certs: Path | None = args.certs
        if certs is None:
            raise CliError("--certs is required (or --insecure-http for a local conformance run)")
        if not certs.is_dir():
            raise CliError(f"--certs: {certs} is not a directory")
        try:
            tls = ServerTls(
                cert=str(certs / f"{component}.crt"),
                key=str(certs / f"{component}.key"),
                ca=str(certs / "ca.crt"),
            )
        except TlsError as exc:
            raise CliError(f"--certs: {exc} (run `aerie certs init {certs}`)") from None
    try:
        allowed = parse_identities(args.allow) if args.allow is not None else default_allowed
    except ValueError as exc:
        raise CliError(f"--allow: {exc}") from None
    configure(spiffe_id(component), level=args.log_level)
    try:
        service = McpService(
            attack_server.build_server(),
            tls=tls,
            host=args.host,
            port=port if args.port is None else args.port,
            allowed=allowed,
            graceful_timeout_s=args.grace,
            insecure_http=args.insecure_http,
        )
        asyncio.run(
            serve_until_signalled(
                service,
                kind="mcp server",
                key="server",
                label=f"mcp {args.name}",
                ops_port=args.ops_port,
                details={
                    "allowed": sorted(service.allowed) if service.tls is not None else None,
                    "insecure_http": service.tls is None,
                },
                logger=logging.getLogger("aerie.brain.mcp_cli"),
            )
        )
    except (McpServiceError, ServeError) as exc:
        raise CliError(str(exc)) from None
    return 0
