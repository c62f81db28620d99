"""Backends, looked up by name.

Each module in this package that defines ``BACKEND`` is a backend; dropping in a new
module adds one and touches nothing else: what the rest of mapgate knows about a backend
(install hints, versions in cache keys and env.json, `mapgate models`, which targets get the
model's ONNX, pytest markers) comes from its ``BACKEND.facts`` (see :mod:`.base`). Importing
a backend module is cheap: frameworks are imported inside ``availability()``/``activate()``
through :mod:`mapgate.optional`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from mapgate.backends.base import (PRECISIONS, Availability, Backend, BackendFacts, BuildContext, DeclaredBackend,
                                   Runner)
from mapgate.errors import ConfigError

__all__ = ["Availability", "Backend", "BackendFacts", "BuildContext", "DeclaredBackend", "Runner", "all_backends",
           "backend_for_module", "get_backend", "marker_for", "markers", "parse_target"]


@lru_cache(maxsize=1)
def all_backends() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        backend = getattr(module, "BACKEND", None)
        if backend is None:
            continue
        facts = getattr(backend, "facts", None)
        if not isinstance(facts, BackendFacts):  # a developer's mistake: say which file and what it lacks
            raise TypeError(f"{module.__file__}: BACKEND has no 'facts' (a mapgate.backends.base.BackendFacts)")
        if backend.name != facts.name or tuple(backend.precisions) != facts.precisions:
            raise TypeError(f"{module.__file__}: BACKEND's name/precisions differ from its facts")
        if facts.name in found:
            raise TypeError(f"{module.__file__}: a second backend named {facts.name!r}")
        found[facts.name] = backend
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


def markers() -> dict[str, str]:
    """pytest marker -> description, one per backend (registered by the pytest plugin)."""
    return {b.facts.marker: b.facts.marker_help for b in all_backends().values()}


def marker_for(target: str) -> str | None:
    """The pytest marker of the backend of ``target`` ('tensorrt:fp16' -> 'tensorrt'); None if unknown."""
    backend = all_backends().get(target.partition(":")[0])
    return backend.facts.marker if backend is not None else None


def backend_for_module(module: str, prefer: str | None = None) -> Backend | None:
    """The backend declaring ``module`` (``prefer`` first when it declares it too)."""
    backends = all_backends()
    candidates = ([backends[prefer]] if prefer in backends else []) + list(backends.values())
    return next((b for b in candidates if b.facts.declares(module)), None)
