"""The one `aerie` command.

Each part registers its own subcommands in its own cli module (``register(subparsers)``), so adding a
command touches that part and one line of `_PARTS`. Handlers import their heavy dependencies
lazily: ``aerie --help`` must stay fast.

Every option can also come from an environment variable, named in its ``--help``; a bad value from
either place is refused at start-up with the flag and the variable named.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CliError", "build_parser", "flag", "main", "option"]

# One line per part that contributes subcommands.
_PARTS = (
    "aerie.models.cli",
    "aerie.edge.cli",
    "aerie.brain.commands",
    "aerie.brain.case_cli",
    "aerie.brain.agent_cli",
    "aerie.brain.mcp_cli",
)


class CliError(Exception):
    """A problem the user can fix: printed as ``aerie: error: ...`` with exit status 2."""


def option(
    parser: argparse.ArgumentParser,
    *flags: str,
    env: str,
    type: Callable[[str], Any] = str,  # shadows the builtin on purpose: mirrors argparse
    default: Any = None,
    help: str,  # shadows the builtin on purpose: mirrors argparse
    **kwargs: Any,
) -> None:
    """`parser.add_argument` whose default may come from the environment variable ``env``."""
    raw = os.environ.get(env)
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (TypeError, ValueError) as exc:
            parser.error(f"environment variable {env}={raw!r} for {flags[0]}: {exc}")
    required = kwargs.pop("required", False) and default is None
    shown = "" if default is None else f"; default {default}"
    parser.add_argument(
        *flags,
        type=type,
        default=default,
        required=required,
        help=f"{help} [env {env}{shown}]",
        **kwargs,
    )


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def flag(parser: argparse.ArgumentParser, *flags: str, env: str, help: str) -> None:
    """A boolean switch, off unless given on the command line or set true in ``env``."""
    raw = os.environ.get(env, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        parser.error(f"environment variable {env}={raw!r} for {flags[0]}: expected true or false")
    parser.add_argument(*flags, action="store_true", default=raw in _TRUE, help=f"{help} [env {env}]")


def build_parser() -> argparse.ArgumentParser:
    """The whole `aerie` parser. Options read their environment variables while it is built."""
    parser = argparse.ArgumentParser(
        prog="aerie",
        description="Runtime security for Kubernetes on top of Falco.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for part in _PARTS:
        importlib.import_module(part).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return handler(args) or 0
    except CliError as exc:
        print(f"aerie: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
