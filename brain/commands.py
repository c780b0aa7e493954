"""Brain subcommands: `aerie certs init`, `aerie demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from aerie.brain.cli import CliError, flag, option


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the brain's subcommands to the `aerie` command."""
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
    flag(init, "--force", env="AERIE_CERTS_FORCE", help="replace an existing CA and its certificates")
    init.set_defaults(handler=_certs_init)

    demo = sub.add_parser(
        "demo",
        help="the whole system on one machine, on embedded defaults",
        description="Generate a scenario corpus, replay it like Falco through every input "
        "(gRPC, http_output, JSON lines) and print what arrived.",
    )
    option(demo, "--seed", env="AERIE_DEMO_SEED", type=int, default=7, help="scenario seed")
    option(demo, "--events", env="AERIE_DEMO_EVENTS", type=int, default=6000, help="events to replay")
    option(demo, "--workdir", env="AERIE_DEMO_WORKDIR", type=Path, help="keep files here (default: temp dir)")
    demo.set_defaults(handler=_demo)


def _certs_init(args: argparse.Namespace) -> int:
    from aerie.brain.certs import DEFAULT_COMPONENTS, init_pki, spiffe_id

    directory: Path = args.dir
    if (directory / "ca.key").exists() and not args.force:
        raise CliError(f"{directory}/ca.key exists; pass --force to replace the CA and every certificate")
    components = args.component or list(DEFAULT_COMPONENTS)
    issued = init_pki(directory, components)
    for name, pki in issued.items():
        print(f"{name:<16} {spiffe_id(name):<34} {pki.cert}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from aerie.brain.demo import run_demo

    return run_demo(seed=args.seed, events=args.events, workdir=args.workdir)
