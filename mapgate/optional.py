"""The one place optional frameworks are imported.

Nothing here runs at import time: each ``require`` imports on first call and turns an
ImportError into :class:`BackendUnavailable` with an install hint, so a missing framework
is a skip with a reason, never an ImportError at test collection. A backend's modules,
distributions and install hint are declared by the backend itself (``BACKEND.facts``, whose
``require`` passes them here); this file knows only the libraries the converters use, and
imports nothing of mapgate but its errors, so every layer may use it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from types import ModuleType

from mapgate.errors import BackendUnavailable

# libraries the converters use outside any one backend: module -> (name shown to users, install hint).
# A backend's own modules get their hint from its facts (BackendFacts.require), so this file needs
# no registry and imports nothing of mapgate but its errors.
_LIBRARIES: dict[str, tuple[str, str]] = {
    "tf2onnx": ("tf2onnx", "pip install 'mapgate[tf]'  (tf2onnx)"),
    "tensorflow": ("tensorflow", "pip install 'mapgate[tf]'"),
    "onnx": ("onnx", "pip install 'mapgate[onnx]'  (onnx)"),
    "onnxruntime": ("onnxruntime", "pip install 'mapgate[onnx]'"),
    "faster_coco_eval": ("faster-coco-eval", "pip install faster-coco-eval"),
    "nncf": ("nncf", "pip install 'mapgate[nncf]'"),
}


def require(module: str, backend: str | None = None, hint: str | None = None) -> ModuleType:
    """Import ``module`` or raise BackendUnavailable naming it and how to install it (``hint``,
    else the library table's, else ``pip install <top-level module>``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        name, default_hint = _LIBRARIES.get(module) or _LIBRARIES.get(top) or (top, f"pip install {top}")
        raise BackendUnavailable(backend or name, f"Python module {module!r} is not installed ({exc}); "
                                                  f"fix: {hint or default_hint}") from exc


def quiet_tensorflow() -> ModuleType:
    """TensorFlow, imported with its C++ logging turned down (it floods pytest output; the variable
    must be set before the first import). The tf backend and the TF converters import it here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", "tf")


@lru_cache(maxsize=1)
def _installed_providers() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def version_of(module: str, distributions: tuple[str, ...] = ()) -> str | None:
    """Installed version of an optional module, or None when it is absent (never raises).

    Read from package metadata, not by importing (importing tf2onnx imports TensorFlow: seconds, on a
    path that only wants a cache key): the distributions given first (a backend's declared order,
    e.g. onnxruntime before onnxruntime-gpu), then those the installed metadata says provide it."""
    top = module.split(".")[0]
    for dist in (*distributions, *sorted(_installed_providers().get(top, ())), top):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a framework that fails to import (NumPy ABI) must not break every run
        return None
    return str(getattr(mod, "__version__", "unknown"))
