"""TF frozen graph -> TFLite FP32/FP16/INT8 with TF's own converter. INT8 is full-integer
quantization with a representative dataset of calibration images (float I/O kept so every
backend of the model takes the same input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapgate.convert import BuildContext
from mapgate.calibration import calibration_batches, calibration_images, calibration_set_hash, check_disjoint, image_ids_of
from mapgate.cache import cached_artifact
from mapgate.convert.tf_onnx import bypassed_graph, input_shape
from mapgate.errors import ConversionError
from mapgate.files import resolve_role, verified_sha256
from mapgate.manifest import ModelSpec
from mapgate.optional import quiet_tensorflow, version_of


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    precision = target.split(":")[1]
    graph = resolve_role(model, "graph")
    input_name = (model.input_name or "image_tensor:0").split(":")[0]
    outputs = [n.split(":")[0] for n in model.output_names]
    inputs: dict[str, Any] = {
        "graph_sha256": verified_sha256(graph),
        "converter": f"tf.lite/{version_of('tensorflow')}",
        "precision": precision,
        "input": input_name,
        "input_shape": input_shape(model),
        "outputs": outputs,
        "resize_loop_output": model.convert.resize_loop_output,
    }
    images: list[Path] = []
    if precision == "int8":
        images = ctx.calib_images or calibration_images(limit=ctx.max_calib_images)
        check_disjoint(ctx.calib_image_ids or image_ids_of(images), ctx.evaluated_image_ids,
                       f"INT8 calibration of {model.name} for tflite:int8")
        inputs.update(calibration_set=calibration_set_hash(images), calibration_images=len(images),
                      preprocess=repr(model.preprocess))

    def _build(out: Path) -> dict[str, Any]:
        tf = quiet_tensorflow()
        conv = _converter(tf, model, graph, input_name, outputs)
        if precision == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([b] for b in calibration_batches(model, images))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            out.write_bytes(conv.convert())
        except Exception as exc:  # the TFLite converter raises ConverterError/RuntimeError/ValueError
            raise ConversionError(f"TFLite {precision} conversion of {graph} (model {model.name!r}) failed: {exc}") from exc
        return {"source": str(graph), "calibration_image_names": [p.name for p in images]}

    return cached_artifact(ctx.engines_dir, model.name, f"tflite-{precision}", inputs, _build, ".tflite")


def _converter(tf: Any, model: ModelSpec, graph: Path, input_name: str, outputs: list[str]) -> Any:
    if model.convert.resize_loop_output is None:
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(graph), input_arrays=[input_name], output_arrays=outputs, input_shapes={input_name: input_shape(model)})
    g, image, fetched = bypassed_graph(tf, model, graph, input_name, outputs)
    sess = tf.compat.v1.Session(graph=g)
    return tf.compat.v1.lite.TFLiteConverter.from_session(sess, [image], fetched)
