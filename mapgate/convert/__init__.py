"""Which file a backend executes for a model at a precision, converting (and caching) as needed.

Routes are data: (source format, target) -> converter. The original file of the manifest is
used when the target is the model's own format; a manifest ``prebuilt`` entry (vendor files,
e.g. YOLOX-nano's FP16/INT8 TFLite) wins over converting.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mapgate.backends.base import BuildContext
from mapgate.errors import ConfigError
from mapgate.files import resolve, resolve_role
from mapgate.manifest import ModelSpec

# (source format, target) -> module in mapgate.convert providing build(model, ctx, target) -> Path
_ROUTES: dict[tuple[str, str], str] = {
    ("darknet", "onnx"): "darknet_route",
    ("tf_frozen", "onnx"): "tf_onnx",
    ("tf_frozen", "tflite:fp32"): "tf_tflite",
    ("tf_frozen", "tflite:fp16"): "tf_tflite",
    ("tf_frozen", "tflite:int8"): "tf_tflite",
}
# converters that derive a target from the model's ONNX, whatever the source format
_FROM_ONNX: dict[str, str] = {"onnxruntime:int8": "ort_quant"}


def _runs_onnx(target: str) -> bool:
    """Whether ``target``'s backend declares it builds from the model's ONNX (``builds_from_onnx``)."""
    from mapgate.backends import all_backends

    backend = all_backends().get(target.partition(":")[0])
    return backend is not None and backend.facts.builds_from_onnx


def has_onnx(model: ModelSpec) -> bool:
    return model.format == "onnx" or (model.format, "onnx") in _ROUTES


def onnx_for(model: ModelSpec, ctx: BuildContext) -> Path:
    """The model as ONNX: the original file, or a cached conversion of it."""
    if model.format == "onnx":
        return resolve_role(model, "model")
    route = _ROUTES.get((model.format, "onnx"))
    if route is None:
        raise ConfigError(f"model {model.name!r}: no converter from format {model.format!r} to ONNX")
    return importlib.import_module(f"mapgate.convert.{route}").build(model, ctx, "onnx")


def artifact_for(model: ModelSpec, target: str | None, ctx: BuildContext) -> Path:
    """The file to execute: ``target`` None means the original model file itself.

    In order: a manifest ``prebuilt`` file, a converter route (format, target), a converter from
    the model's ONNX, and for a backend that builds from ONNX the model's ONNX itself."""
    if target is None:
        role = {"onnx": "model", "tflite": "model", "tf_frozen": "graph", "darknet": "weights"}.get(model.format)
        if role is None:
            raise ConfigError(f"model {model.name!r}: format {model.format!r} has no single original file")
        return resolve_role(model, role)
    if target in model.prebuilt:
        return resolve(model, model.prebuilt[target])
    route = _ROUTES.get((model.format, target))
    if route is None and target in _FROM_ONNX:
        route = _FROM_ONNX[target]
    if route is not None:
        return importlib.import_module(f"mapgate.convert.{route}").build(model, ctx, target)
    if _runs_onnx(target) and has_onnx(model):
        return onnx_for(model, ctx)
    raise ConfigError(
        f"model {model.name!r}: no way to make {target} from format {model.format!r} "
        f"(no converter{', no ONNX route' if _runs_onnx(target) else ''}, and no 'prebuilt.\"{target}\"' "
        f"file in {model.manifest_path})"
    )


def can_make(model: ModelSpec, target: str) -> bool:
    """Whether :func:`artifact_for` has a route for ``target`` (without running it)."""
    if target in model.prebuilt or (model.format, target) in _ROUTES:
        return True
    return has_onnx(model) and (target in _FROM_ONNX or _runs_onnx(target))
