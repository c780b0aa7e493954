"""Model subcommands: `aerie corpus generate`, `aerie train`, `aerie score`, `aerie evaluate`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the model's subcommands to the `aerie` command."""
