"""Checks of a model's manifest entry against its own files, made before any model runs.

A wrong ``class_space`` or ``input_size`` does not crash anything: an 80-class model read as
``coco90`` shifts every id past 11 and scores AP near 0 (4.7 instead of 24.6 on val2017-mini for
an Ultralytics export) and its FP32 gate still passes, original and optimized being equally wrong.
So the facts the files state are read here and compared with the manifest:

* Darknet: the ``.cfg`` (``[net]`` width/height, the ``[yolo]`` heads' classes) and the
  ``.weights`` size the cfg implies;
* ONNX: the static input shape and the output shapes, from the graph's declared value infos
  (``onnx.load`` without external data: no session is created);
* TFLite: the input and output shapes from the interpreter's tensor details.

How many classes output shapes mean is the family's knowledge: each family declares it as
``Family.classes_in`` (mapgate/postprocess/family.py). A fact that cannot be read (a symbolic
dimension, a framework not installed) is not checked; a contradiction is a ConfigError naming
the manifest, the model, the field and the fix.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from mapgate import darknet_cfg
from mapgate.errors import BackendUnavailable, ConfigError
from mapgate.files import resolve_role
from mapgate.manifest import ModelSpec
from mapgate.optional import require
from mapgate.postprocess.family import Shape, all_families

__all__ = ["Shapes", "check", "class_space_hint", "model_shapes"]

Shapes = tuple[dict[str, Shape], dict[str, Shape]]  # (inputs, outputs): name -> dims (None = not static)


def check(model: ModelSpec) -> None:
    """Raise ConfigError when the manifest entry contradicts the model's files."""
    if model.format == "darknet":
        _check_darknet(model)
        return
    shapes = model_shapes(model)
    if shapes is None:
        return
    inputs, outputs = shapes
    _check_input_size(model, inputs)
    family = all_families()[model.family][0] if model.family in all_families() else None
    classes = family.classes_in(outputs, model) if family is not None and family.classes_in else None
    if classes is not None:
        _check_class_space(model, classes, f"the outputs of {resolve_role(model, 'model').name}")


def model_shapes(model: ModelSpec) -> Shapes | None:
    """Static input and output shapes of an ONNX or TFLite model file (None: not readable here)."""
    if model.format not in ("onnx", "tflite") or "model" not in model.files:
        return None
    path = resolve_role(model, "model")
    st = path.stat()
    try:
        reader = _onnx_shapes if model.format == "onnx" else _tflite_shapes
        return reader(str(path.resolve()), st.st_mtime_ns, st.st_size)
    except BackendUnavailable:
        return None  # the framework that reads it is not installed: its backend is a skip anyway


def _check_darknet(model: ModelSpec) -> None:
    cfg, weights = resolve_role(model, "cfg"), resolve_role(model, "weights")
    darknet_cfg.check_weights_size(cfg, weights, model.input_size)
    sections = darknet_cfg.parse_cfg(cfg)
    cfg_size = darknet_cfg.net_size(sections)
    if tuple(cfg_size) != tuple(model.input_size) and not model.postprocess.decoder.get("resize_network", False):
        raise ConfigError(
            f"{model.manifest_path}: model {model.name!r}, field 'input_size': {list(model.input_size)} but "
            f"{cfg.name}'s [net] height/width are {list(cfg_size)}. Use input_size = {list(cfg_size)}, or set "
            "postprocess.decoder.resize_network = true to run the cfg at another size on purpose")
    classes = {h.num_classes for h in darknet_cfg.yolo_heads(sections, model.input_size)}
    if len(classes) == 1:
        _check_class_space(model, classes.pop(), cfg.name)


def _check_input_size(model: ModelSpec, inputs: dict[str, Shape]) -> None:
    image_inputs = [(name, dims) for name, dims in inputs.items() if len(dims) == 4]
    if len(image_inputs) != 1:
        return  # several or no image-shaped inputs: which one the image feeds is the backend's business
    name, dims = image_inputs[0]
    hw = dims[2:4] if model.preprocess.layout == "NCHW" else dims[1:3]
    if None in hw or tuple(hw) == tuple(model.input_size):
        return
    raise ConfigError(
        f"{model.manifest_path}: model {model.name!r}, field 'input_size': {list(model.input_size)} but "
        f"{resolve_role(model, 'model').name} has a static {model.preprocess.layout} input {name!r} of shape "
        f"{[d if d is not None else '?' for d in dims]}. Use input_size = {list(hw)} (or check preprocess.layout)")


def _check_class_space(model: ModelSpec, classes: int, source: str) -> None:
    space = model.postprocess.class_space
    if space == "coco90" and classes == 80:
        fix, why = "coco80", "class indices would map to the wrong COCO ids (AP near 0)"
    elif space == "coco80" and classes in (90, 91):
        fix, why = "coco90", "indices past 79 would be dropped and the rest mapped to the wrong COCO ids"
    else:
        return
    raise ConfigError(f"{model.manifest_path}: model {model.name!r}, field 'postprocess.class_space': \"{space}\" "
                      f"but {source} give {classes} classes: {why}. Use class_space = \"{fix}\"")


def class_space_hint(model: ModelSpec, detections: list[dict[str, Any]]) -> None:
    """A warning, not an error, for what the files could not tell: a 90-way model may legitimately
    never emit the last ten ids on a small image set, but an 80-class model read as coco90 shifts
    every id past 11 and scores near 0."""
    if model.postprocess.class_space != "coco90" or not detections:
        return
    top = max(d["category_id"] for d in detections)
    if top <= 80:
        warnings.warn(f"model {model.name!r} ({model.manifest_path}): class_space = \"coco90\" but no detection has a "
                      f"COCO id above {top}; an 80-class model needs class_space = \"coco80\" (else ids past 11 are "
                      "shifted and AP is near 0)", UserWarning, stacklevel=3)


# keyed by path, mtime and size: one read per file per process, re-read when the file changes
@lru_cache(maxsize=32)
def _onnx_shapes(path: str, _mtime_ns: int, _size: int) -> Shapes:
    onnx = require("onnx")
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError/ValueError/...; the backend reports it too
        raise ConfigError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    initializers = {t.name for t in graph.initializer}

    def dims(value: Any) -> Shape:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            return ()
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)

    inputs = {v.name: dims(v) for v in graph.input if v.name not in initializers}
    return inputs, {v.name: dims(v) for v in graph.output}


@lru_cache(maxsize=32)
def _tflite_shapes(path: str, _mtime_ns: int, _size: int) -> Shapes:
    litert = require("ai_edge_litert.interpreter", "tflite")
    try:
        interpreter = litert.Interpreter(model_path=path)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: not a readable TFLite model ({exc})") from exc

    def table(details: list[dict[str, Any]]) -> dict[str, Shape]:
        # shape_signature marks dynamic dimensions with -1 where shape shows 1
        return {d["name"]: tuple(int(x) if x > 0 else None for x in d.get("shape_signature", d["shape"]))
                for d in details}

    return table(interpreter.get_input_details()), table(interpreter.get_output_details())

