"""Backends, looked up by name.

Each module in this package that defines ``BACKEND`` is a backend; dropping in a new
module adds one and touches nothing else. Importing a backend module is cheap: frameworks
are imported inside ``availability()``/``activate()`` through :mod:`mapgate.optional`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from mapgate.backends.base import PRECISIONS, Availability, Backend, BuildContext, Runner
from mapgate.errors import ConfigError

__all__ = ["Availability", "Backend", "BuildContext", "Runner", "all_backends", "get_backend", "parse_target"]


@lru_cache(maxsize=1)
def all_backends() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        backend = getattr(module, "BACKEND", None)
        if backend is not None:
            found[backend.name] = backend
    return found


def get_backend(name: str) -> Backend:
    backends = all_backends()
    if name not in backends:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(sorted(backends))}")
    return backends[name]


def parse_target(target: str) -> tuple[str, str]:
    """'onnxruntime:int8' -> ('onnxruntime', 'int8'); errors say the expected form."""
    name, sep, precision = target.partition(":")
    if not sep or precision not in PRECISIONS:
        raise ConfigError(f"optimized backend {target!r} must look like BACKEND:PRECISION with precision "
                          f"one of {', '.join(PRECISIONS)} (e.g. onnxruntime:fp32)")
    backend = get_backend(name)
    if precision not in backend.precisions:
        raise ConfigError(f"backend {name!r} has no precision {precision!r}; it has {', '.join(backend.precisions)}")
    return name, precision
