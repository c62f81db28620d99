"""TF frozen graph -> ONNX with tf2onnx, input fixed to the manifest size so the original and the
ONNX get the same pre-resized input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapgate.backends.base import BuildContext
from mapgate.cache import cached_artifact
from mapgate.errors import ConversionError
from mapgate.files import resolve_role, verified_sha256
from mapgate.manifest import ModelSpec
from mapgate.optional import require, version_of

OPSET = 13


def input_shape(model: ModelSpec) -> list[int]:
    h, w = model.input_size
    return [1, 3, h, w] if model.preprocess.layout == "NCHW" else [1, h, w, 3]


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    graph = resolve_role(model, "graph")
    input_name = model.input_name or "image_tensor:0"
    inputs = {
        "graph_sha256": verified_sha256(graph),
        "converter": f"tf2onnx/{version_of('tf2onnx')}",
        "tensorflow": version_of("tensorflow"),
        "opset": OPSET,
        "input": input_name,
        "input_shape": input_shape(model),
        "outputs": list(model.output_names),
    }

    def _build(out: Path) -> dict[str, Any]:
        from mapgate.backends.tf import quiet_tensorflow

        tf = quiet_tensorflow()
        tf2onnx = require("tf2onnx", "onnxruntime")
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(graph.read_bytes())
        try:
            tf2onnx.convert.from_graph_def(
                graph_def, input_names=[input_name], output_names=list(model.output_names), opset=OPSET,
                shape_override={input_name: input_shape(model)}, output_path=str(out),
            )
        except Exception as exc:  # tf2onnx raises bare Exceptions/ValueErrors from deep inside
            raise ConversionError(f"tf2onnx could not convert {graph} (model {model.name!r}): {exc}") from exc
        return {"source": {"graph": str(graph)}}

    return cached_artifact(ctx.engines_dir, model.name, "tf2onnx", inputs, _build, ".onnx")
