"""Edge subcommands: `aerie falco replay`.

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
