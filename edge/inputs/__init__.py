"""Falco inputs: one module per transport, each yielding `FalcoEvent`s through `FalcoInput`."""

from aerie.edge.inputs.base import FalcoInput, InputError, InputStats

__all__ = ["FalcoInput", "InputError", "InputStats"]
