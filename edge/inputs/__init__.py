"""Falco inputs: one module per transport, each yielding `FalcoEvent`s through `FalcoInput`.

`INPUTS` maps each input's configuration name (its `FalcoInput.name`) to its class: a new input is
one module here and one entry in that table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from aerie.edge.inputs.base import FalcoInput, InputError, InputStats
from aerie.edge.inputs.grpc import GrpcInput
from aerie.edge.inputs.http import HttpInput
from aerie.edge.inputs.jsonlines import JsonLinesInput

__all__ = ["INPUTS", "FalcoInput", "GrpcInput", "HttpInput", "InputError", "InputStats", "JsonLinesInput"]

INPUTS: Final[Mapping[str, type[FalcoInput]]] = MappingProxyType(
    {cls.name: cls for cls in (GrpcInput, HttpInput, JsonLinesInput)}
)
"""Input name (``grpc``, ``http``, ``jsonlines``) → class."""
