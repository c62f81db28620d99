"""The one place optional frameworks are imported.

Nothing here runs at import time: each ``require_*`` imports on first call and turns an
ImportError into :class:`BackendUnavailable` with an install hint, so a missing framework
is a skip with a reason, never an ImportError at test collection.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mapgate.errors import BackendUnavailable

# module name -> (backend name shown to users, install hint)
_HINTS: dict[str, tuple[str, str]] = {
    "tensorflow": ("tf", "pip install 'mapgate[tf]'  (tensorflow-cpu or tensorflow)"),
    "tf2onnx": ("tf2onnx", "pip install 'mapgate[tf]'  (tf2onnx)"),
    "cv2": ("opencv", "pip install 'opencv-python-headless<5'  (5.x has no Darknet reader)"),
    "onnx": ("onnx", "pip install 'mapgate[onnx]'  (onnx)"),
    "onnxruntime": ("onnxruntime", "pip install 'mapgate[onnx]'  (onnxruntime)"),
    "ai_edge_litert.interpreter": ("tflite", "pip install 'mapgate[tflite]'  (ai-edge-litert)"),
    "ai_edge_litert": ("tflite", "pip install 'mapgate[tflite]'  (ai-edge-litert)"),
    "tensorrt": ("tensorrt", "install TensorRT's Python bindings (JetPack ships them; on x86 see NVIDIA's TensorRT install guide)"),
    "polygraphy": ("tensorrt", "pip install 'mapgate[trt]'  (polygraphy)"),
    "faster_coco_eval": ("faster-coco-eval", "pip install faster-coco-eval"),
}


def require(module: str, backend: str | None = None) -> ModuleType:
    """Import ``module`` or raise BackendUnavailable naming it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name, hint = _HINTS.get(module, (module, f"pip install {module}"))
        raise BackendUnavailable(backend or name, f"Python module {module!r} is not installed ({exc}); fix: {hint}") from exc


# module -> distributions that provide it, so versions are read without importing the module
# (importing tf2onnx imports TensorFlow: seconds, on a path that only wants a cache key)
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64"),
    "cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "ai_edge_litert": ("ai-edge-litert",),
    "faster_coco_eval": ("faster-coco-eval",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt_libs"),
}


def version_of(module: str) -> str | None:
    """Installed version of an optional module, or None when it is absent (never raises)."""
    from importlib import metadata

    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a framework that fails to import (NumPy ABI) must not break every run
        return None
    return str(getattr(mod, "__version__", "unknown"))
