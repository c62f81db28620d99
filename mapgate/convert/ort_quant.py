"""ONNX -> ONNX Runtime INT8: static QDQ quantization (onnxruntime.quantization), calibrated on
the calibration images only, through the model's own preprocessing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_batches, calibration_images, calibration_set_hash, check_disjoint, image_ids_of
from mapgate.cache import cached_artifact
from mapgate.files import verified_sha256
from mapgate.fsutil import fault_point
from mapgate.manifest import ModelSpec
from mapgate.optional import require, version_of

QDQ_MIN_OPSET = 13  # per-channel DequantizeLinear needs the 'axis' attribute of opset 13
# Measured on val2017-mini: quantizing every op type (MinMax) cost SSDLite 6.8 AP points; quantizing
# only convolutions and keeping the output tail (decode, sigmoid, concat after the last conv) in float
# costs it 1.1 and YOLOv3-tiny 0.6. Element-wise ops gain little speed from INT8 on CPU anyway.
# TensorRT's explicit-quantization form (int8, zero point 0, symmetric, per-channel weights, float bias), so
# the file onnxruntime:int8 evaluates is the one TensorRT's strongly typed INT8 engine is built from.
# Symmetric int8 activations with MinMax cost SSDLite 2.43 and YOLOv3-tiny 1.47 AP points on val2017-mini;
# Percentile (99.999) calibration brings them to 0.94 and 0.92 (yolo-fastest 3.24 -> 1.94, expected to fail).
SETTINGS = {"format": "QDQ", "activations": "QInt8", "weights": "QInt8", "per_channel": True, "method": "Percentile",
            "op_types": ["Conv"], "float_tail": True, "symmetric": True, "quantize_bias": False}
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    from mapgate.convert import onnx_for

    source = onnx_for(model, ctx)
    images = ctx.calib_images or calibration_images(limit=ctx.max_calib_images)
    check_disjoint(ctx.calib_image_ids or image_ids_of(images), ctx.evaluated_image_ids,
                   f"INT8 calibration of {model.name} for onnxruntime:int8")
    inputs = {
        "onnx_sha256": verified_sha256(source),
        "converter": f"onnxruntime.quantization/{version_of('onnxruntime')}",
        "settings": SETTINGS,
        "calibration_set": calibration_set_hash(images),
        "calibration_images": len(images),
        "preprocess": repr(model.preprocess),
        "keep_float": list(model.convert.int8_keep_float),
        "opset_min": QDQ_MIN_OPSET,
    }

    def _build(out: Path) -> dict[str, Any]:
        q = require("onnxruntime.quantization", "onnxruntime")
        ort = require("onnxruntime", "onnxruntime")
        onnx = require("onnx", "onnxruntime")
        input_name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        proto = onnx.load(str(source))
        if _opset(proto) < QDQ_MIN_OPSET:
            proto = onnx.version_converter.convert_version(proto, QDQ_MIN_OPSET)
        keep_float = sorted(float_tail(proto) | {n.name for n in proto.graph.node
                                                 if any(n.name.startswith(p) for p in model.convert.int8_keep_float)})

        class Reader(q.CalibrationDataReader):
            def __init__(self) -> None:
                self.batches: Iterator[np.ndarray] = calibration_batches(model, images)

            def get_next(self) -> dict[str, np.ndarray] | None:
                fault_point("convert")
                batch = next(self.batches, None)
                return None if batch is None else {input_name: batch}

        q.quantize_static(
            proto, str(out), Reader(), nodes_to_exclude=keep_float, op_types_to_quantize=SETTINGS["op_types"], quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, per_channel=True,
            calibrate_method=q.CalibrationMethod.Percentile,
            # QuantizeBias False: TensorRT refuses an int32 bias DequantizeLinear (NVIDIA/TensorRT#3360)
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        return {"source": str(source), "kept_float_nodes": len(keep_float), "calibration_image_names": [p.name for p in images]}

    return cached_artifact(ctx.engines_dir, model.name, "ort-int8", inputs, _build, ".onnx")


def _opset(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def float_tail(proto: Any) -> set[str]:
    """Names of the nodes between the last compute ops (convs) and the graph outputs: box decoding,
    sigmoids, concats of heads with very different ranges, which 8 bits cannot hold together."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    tail: set[str] = set()
    stack = [o.name for o in proto.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in tail or node.op_type in _COMPUTE_OPS:
            continue
        tail.add(node.name)
        stack.extend(node.input)
    return tail
