"""Edge subcommands: `aerie falco replay`, `aerie edge run`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the edge's subcommands to the `aerie` command."""
