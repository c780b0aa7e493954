"""`aerie.edge.inputs.INPUTS`: every input module is reachable by its configuration name."""

from __future__ import annotations

import pkgutil

import aerie.edge.inputs
from aerie.edge.inputs import INPUTS, FalcoInput


def test_every_input_module_is_registered_under_its_name() -> None:
    modules = {m.name for m in pkgutil.iter_modules(aerie.edge.inputs.__path__)} - {"base"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in INPUTS.values()} == modules
    for name, cls in INPUTS.items():
        assert issubclass(cls, FalcoInput)
        assert cls.name == name
