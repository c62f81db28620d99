"""Which file a backend executes for a model at a precision, converting (and caching) as needed.

Routes are data: (source format, target) -> converter. The original file of the manifest is
used when the target is the model's own format; a manifest ``prebuilt`` entry (vendor files,
e.g. YOLOX-nano's FP16/INT8 TFLite) wins over converting.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapgate.errors import ConfigError
from mapgate.files import resolve, resolve_role, verified_sha256
from mapgate.manifest import ModelSpec

@dataclass
class BuildContext:
    """Where conversions/engines are cached and which images may calibrate INT8."""

    engines_dir: Path
    calib_images: list[Path] = field(default_factory=list)
    evaluated_image_ids: frozenset[int] = frozenset()
    calib_image_ids: frozenset[int] = frozenset()
    max_calib_images: int = 100
    progress: bool = True


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


def artifact_for(model: ModelSpec, target: str | None, ctx: BuildContext, *, from_onnx: bool = False) -> Path:
    """The file to execute: ``target`` None means the original model file itself.

    In order: a manifest ``prebuilt`` file, a converter route (format, target), a converter from
    the model's ONNX, and, when the target's backend builds from ONNX (``from_onnx``: its
    ``facts.builds_from_onnx``, passed by the backend), the model's ONNX itself."""
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
    if from_onnx and has_onnx(model):
        return onnx_for(model, ctx)
    raise ConfigError(
        f"model {model.name!r}: no way to make {target} from format {model.format!r} "
        f"(no converter{', no ONNX route' if from_onnx else ''}, and no 'prebuilt.\"{target}\"' "
        f"file in {model.manifest_path})"
    )


def can_make(model: ModelSpec, target: str, *, from_onnx: bool = False) -> bool:
    """Whether :func:`artifact_for` has a route for ``target`` (without running it)."""
    if target in model.prebuilt or (model.format, target) in _ROUTES:
        return True
    return has_onnx(model) and (target in _FROM_ONNX or from_onnx)


def artifact_identity(model: ModelSpec, target: str | None, ctx: BuildContext, *,
                      from_onnx: bool = False) -> dict[str, Any]:
    """The default engine identity: the file ``target`` executes (None: the original) and its hash.
    The gate adds the backend's framework versions (``facts.version_modules``)."""
    artifact = artifact_for(model, target, ctx, from_onnx=from_onnx)
    return {"artifact": str(artifact), "artifact_sha256": verified_sha256(artifact),
            "model_files": {r: f.sha256 for r, f in model.files.items()}}
