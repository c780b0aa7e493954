"""Edge subcommands: `aerie edge run` (the node daemon) and `aerie falco replay`.

Handlers import the edge lazily: ``aerie --help`` must not pay for gRPC, uvicorn or httpx.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aerie.brain.cli import CliError, option

_REPLAY_EPILOG = """\
Exit status: 0 when every alert reached every output; 1 when some did not (refused POSTs, --linger
passed first); 2 on bad options or input (missing file, bad address or URL, TCP without mutual TLS,
unreadable certificates); 130 when interrupted. Lines of FILE that are not Falco alerts are skipped
and counted. The counts are printed at the end.
"""


_RUN_EPILOG = """\
Exit status: 0 after SIGTERM/SIGINT or when a JSON-lines input without --follow ends (everything
read was scored and spooled; what Kafka had not confirmed stays in the spool for the next start);
2 on bad settings or when no valid model bundle can be loaded; 1 when a stage fails at run time.
"""


# ReplaySettings field → the flag that sets it, for messages.
_FLAGS = {
    "events": "--events",
    "grpc": "--grpc",
    "grpc_tls": "--tls-cert/--tls-key/--tls-ca",
    "http": "--http",
    "http_tls": "--http-ca/--http-cert/--http-key",
    "rate": "--rate",
    "linger_s": "--linger",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the edge's subcommands to the `aerie` command."""
    falco = sub.add_parser("falco", help="a Falco-compatible alert source").add_subparsers(
        dest="falco_command", required=True, metavar="COMMAND"
    )
    replay = falco.add_parser(
        "replay",
        help="replay Falco JSON alerts through Falco's gRPC API and/or http_output",
        description="Replay a file of Falco JSON alerts the way Falco delivers them: serve Falco's "
        "gRPC outputs and version services (Falco <= 0.43) until every alert was taken by a "
        "subscriber, and/or POST each alert to an http_output URL (Falco >= 0.44).",
        epilog=_REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    option(
        replay,
        "--events",
        env="AERIE_REPLAY_EVENTS",
        type=Path,
        required=True,
        metavar="FILE",
        help="Falco JSON alerts, one per line (json_output: true)",
    )
    option(
        replay,
        "--grpc",
        env="AERIE_REPLAY_GRPC",
        metavar="ADDR",
        help="serve Falco's gRPC API here: unix:///path/falco.sock, or host:port (port 0: any free "
        "port) with --tls-cert, --tls-key and --tls-ca, since Falco serves TCP only with mutual TLS",
    )
    option(replay, "--tls-cert", env="AERIE_REPLAY_TLS_CERT", metavar="PEM", help="gRPC server certificate")
    option(replay, "--tls-key", env="AERIE_REPLAY_TLS_KEY", metavar="PEM", help="gRPC server private key")
    option(
        replay,
        "--tls-ca",
        env="AERIE_REPLAY_TLS_CA",
        metavar="PEM",
        help="CA that gRPC clients' certificates must chain to",
    )
    option(
        replay,
        "--http",
        env="AERIE_REPLAY_HTTP",
        metavar="URL",
        help="POST each alert here, as Falco's http_output (one alert per request, application/json)",
    )
    option(
        replay,
        "--http-ca",
        env="AERIE_REPLAY_HTTP_CA",
        metavar="PEM",
        help="CA to verify the receiver with (Falco's ca_cert)",
    )
    option(
        replay,
        "--http-cert",
        env="AERIE_REPLAY_HTTP_CERT",
        metavar="PEM",
        help="client certificate for mutual TLS (Falco's client_cert)",
    )
    option(
        replay,
        "--http-key",
        env="AERIE_REPLAY_HTTP_KEY",
        metavar="PEM",
        help="client private key (Falco's client_key)",
    )
    option(
        replay,
        "--rate",
        env="AERIE_REPLAY_RATE",
        type=float,
        default=0.0,
        metavar="EPS",
        help="alerts per second on each output; 0 for as fast as they are taken",
    )
    option(
        replay,
        "--linger",
        env="AERIE_REPLAY_LINGER",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS even if alerts are undelivered (default: serve until every alert "
        "was delivered, or Ctrl-C)",
    )
    replay.set_defaults(handler=_replay)

    edge = sub.add_parser("edge", help="the node daemon").add_subparsers(
        dest="edge_command", required=True, metavar="COMMAND"
    )
    run = edge.add_parser(
        "run",
        help="score Falco events on this node and publish the anomalies to Kafka",
        description="The node daemon: one Falco input (gRPC, http_output or JSON lines) → features → "
        "score → threshold → disk spool → Kafka. Settings come from a TOML file and AERIE_EDGE_* "
        "environment variables (--help-config lists them all).",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    option(run, "--config", env="AERIE_EDGE_CONFIG", type=Path, metavar="FILE", help="TOML settings file")
    run.add_argument(
        "--help-config", action="store_true", help="list every setting, its variable and default, and exit"
    )
    run.add_argument(
        "--print-config", action="store_true", help="print the effective settings as JSON and exit"
    )
    run.set_defaults(handler=_run)


def _replay(args: argparse.Namespace) -> int:
    import asyncio

    from aerie.edge.errors import ReplayError, TlsError
    from aerie.edge.replay_command import ReplaySettings, replay
    from aerie.edge.tls import ClientTls, ServerTls

    server_tls: ServerTls | None = None
    try:
        if args.tls_cert or args.tls_key or args.tls_ca:
            if not (args.tls_cert and args.tls_key and args.tls_ca):
                raise CliError(
                    "--tls-cert, --tls-key and --tls-ca go together: Falco serves gRPC over TCP only "
                    "with mutual TLS"
                )
            server_tls = ServerTls(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)
    except TlsError as exc:
        raise CliError(f"{_FLAGS['grpc_tls']}: {exc}") from None
    client_tls: ClientTls | None = None
    try:
        if args.http_ca or args.http_cert or args.http_key:
            client_tls = ClientTls(ca=args.http_ca, cert=args.http_cert, key=args.http_key)
    except TlsError as exc:
        raise CliError(f"{_FLAGS['http_tls']}: {exc}") from None
    settings = ReplaySettings(
        events=str(args.events),
        grpc=args.grpc,
        grpc_tls=server_tls,
        http=args.http,
        http_tls=client_tls,
        rate=args.rate,
        linger_s=args.linger,
    )
    try:
        report = asyncio.run(replay(settings, status=sys.stderr, names=_FLAGS))
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    for line in report.lines(settings.events):
        print(line)
    if report.outcome == "interrupted":
        return 130
    return 0 if report.complete else 1


def _run(args: argparse.Namespace) -> int:
    import asyncio

    import msgspec

    from aerie.edge.config import ConfigError, describe, load_config
    from aerie.edge.daemon import StartupError, run_edge
    from aerie.proto.identity import spiffe_id
    from aerie.proto.logs import configure

    if args.help_config:
        print(describe())
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.print_config:
        print(msgspec.json.format(msgspec.json.encode(config)).decode())
        return 0
    configure(spiffe_id("edge"), level=config.log_level)
    try:
        return asyncio.run(run_edge(config))
    except StartupError as exc:
        raise CliError(str(exc)) from None
