"""Families, found the way backends are: each module in ``mapgate/postprocess/`` that defines
``FAMILY`` is one. The declaration says what a manifest may put in ``postprocess.decoder`` for
it (names, types, defaults) and whether NMS runs inside the graph, so the manifest validates
decoder settings, ``mapgate models`` lists families, and adding a family is one new file.

The setting types live in :mod:`mapgate.manifest` (which parses them); mapgate.catalog hands
these declarations to the parser, so parsing a manifest imports no family.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType

from mapgate.manifest import REQUIRED, ModelSpec, Setting

__all__ = ["REQUIRED", "ClassesIn", "Family", "Setting", "Shape", "all_families", "family_names"]

Shape = tuple[int | None, ...]  # a tensor's dims as the model file declares them; None = not static
# output name -> dims, the model -> how many classes the outputs carry (None: the shapes do not tell)
ClassesIn = Callable[[dict[str, Shape], ModelSpec], int | None]


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    nms_in_graph: bool  # True: the graph already ran NMS; the manifest's postprocess.nms must be "none"
    decoder: dict[str, Setting] = field(default_factory=dict)
    # How many classes a model's static output shapes carry, so mapgate/preflight.py can refuse a
    # class_space that contradicts them before anything runs (None: the family cannot tell).
    classes_in: ClassesIn | None = None


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
