"""Families, found the way backends are: each module in ``mapgate/postprocess/`` that defines
``FAMILY`` is one. The declaration says what a manifest may put in ``postprocess.decoder`` for
it (names, types, defaults) and whether NMS runs inside the graph, so the manifest validates
decoder settings, ``mapgate models`` lists families, and adding a family is one new file.

This module imports nothing from the rest of mapgate, so :mod:`mapgate.manifest` can use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

REQUIRED: Any = ...  # a Setting without a default must be given by the manifest


@dataclass(frozen=True)
class Setting:
    """One ``postprocess.decoder`` key: its TOML type (``list`` with ``item`` for arrays), default
    (``REQUIRED`` = none), allowed values, and one line saying what it is for."""

    kind: type
    default: Any = REQUIRED
    doc: str = ""
    item: type | None = None  # element type of a list
    choices: tuple[Any, ...] | None = None
    length: int | None = None  # exact list length, when fixed
    minimum: float | None = None  # smallest allowed number (for a list: of each entry)


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    nms_in_graph: bool  # True: the graph already ran NMS; the manifest's postprocess.nms must be "none"
    decoder: dict[str, Setting] = field(default_factory=dict)


@lru_cache(maxsize=1)
def all_families() -> dict[str, tuple[Family, ModuleType]]:
    """name -> (declaration, decoder module with ``decode(outputs, model) -> Candidates``)."""
    package = importlib.import_module("mapgate.postprocess")
    found: dict[str, tuple[Family, ModuleType]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mapgate.postprocess.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found[family.name] = (family, module)
    return dict(sorted(found.items()))


def family_names() -> tuple[str, ...]:
    return tuple(all_families())
