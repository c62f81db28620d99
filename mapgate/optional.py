"""The one place optional frameworks are imported.

Nothing here runs at import time: each ``require`` imports on first call and turns an
ImportError into :class:`BackendUnavailable` with an install hint, so a missing framework
is a skip with a reason, never an ImportError at test collection. A backend's modules,
distributions and install hint are declared by the backend itself (``BACKEND.facts``);
this file knows only the libraries no backend owns.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mapgate.errors import BackendUnavailable

# libraries that are not a backend: module -> (name shown to users, install hint, distributions)
_LIBRARIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tf2onnx": ("tf2onnx", "pip install 'mapgate[tf]'  (tf2onnx)", ("tf2onnx",)),
    "onnx": ("onnx", "pip install 'mapgate[onnx]'  (onnx)", ("onnx",)),
    "faster_coco_eval": ("faster-coco-eval", "pip install faster-coco-eval", ("faster-coco-eval",)),
}


def _declared(module: str, backend: str | None) -> tuple[str, str]:
    """(name shown to users, install hint) for ``module``: its backend's declaration, else ours."""
    from mapgate.backends import backend_for_module

    owner = backend_for_module(module, prefer=backend)
    if owner is not None:
        return owner.facts.name, owner.facts.hint_for(module)
    name, hint, _ = _LIBRARIES.get(module, (module, f"pip install {module}", ()))
    return name, hint


def require(module: str, backend: str | None = None) -> ModuleType:
    """Import ``module`` or raise BackendUnavailable naming it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name, hint = _declared(module, backend)
        raise BackendUnavailable(backend or name, f"Python module {module!r} is not installed ({exc}); fix: {hint}") from exc


def distributions_of(module: str) -> tuple[str, ...]:
    """Distributions that may provide ``module``, so versions are read without importing it
    (importing tf2onnx imports TensorFlow: seconds, on a path that only wants a cache key)."""
    from mapgate.backends import all_backends

    for b in all_backends().values():
        dists = b.facts.distributions_of(module)
        if dists:
            return dists
    return _LIBRARIES.get(module, ("", "", ()))[2] or (module,)


def version_of(module: str) -> str | None:
    """Installed version of an optional module, or None when it is absent (never raises)."""
    from importlib import metadata

    for dist in distributions_of(module):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a framework that fails to import (NumPy ABI) must not break every run
        return None
    return str(getattr(mod, "__version__", "unknown"))
