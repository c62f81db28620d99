"""TF frozen graph -> ONNX with tf2onnx, input fixed to the manifest size so the original and the
ONNX get the same pre-resized input.

When the manifest names ``convert.resize_loop_output`` (the TF1 OD API's TensorArray resize loop,
an identity on our pre-resized input), the cast image is fed straight to that tensor, exactly as
the TFLite route does: ONNX Runtime, TensorRT and TFLite then all run the same graph, with no
``Loop`` on a uint8 path that TensorRT and ORT's quantizer handle badly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapgate.convert import BuildContext
from mapgate.cache import cached_artifact
from mapgate.errors import ConversionError
from mapgate.files import resolve_role, verified_sha256
from mapgate.manifest import ModelSpec
from mapgate.optional import quiet_tensorflow, require, version_of

OPSET = 13
CONVERTER_VERSION = 2  # 2: the resize-loop bypass


def input_shape(model: ModelSpec) -> list[int]:
    h, w = model.input_size
    return [1, 3, h, w] if model.preprocess.layout == "NCHW" else [1, h, w, 3]


def bypassed_graph(tf: Any, model: ModelSpec, graph: Path, input_name: str, outputs: list[str]) -> tuple[Any, Any, list[Any]]:
    """(tf.Graph, input placeholder, output tensors) with ``resize_loop_output`` fed by the cast
    image. ``input_name`` and ``outputs`` are op names (no ``:0``)."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.read_bytes())
    g = tf.Graph()
    with g.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, input_shape(model), name=input_name)
        fetched = tf.compat.v1.import_graph_def(
            graph_def, input_map={model.convert.resize_loop_output: tf.cast(image, tf.float32)},
            return_elements=[f"{o}:0" for o in outputs], name="")
    return g, image, fetched


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    graph = resolve_role(model, "graph")
    input_name = model.input_name or "image_tensor:0"
    inputs = {
        "graph_sha256": verified_sha256(graph),
        "converter": f"tf2onnx/{version_of('tf2onnx')}",
        "mapgate_converter": CONVERTER_VERSION,
        "tensorflow": version_of("tensorflow"),
        "opset": OPSET,
        "input": input_name,
        "input_shape": input_shape(model),
        "outputs": list(model.output_names),
        "resize_loop_output": model.convert.resize_loop_output,
    }

    def _build(out: Path) -> dict[str, Any]:
        tf = quiet_tensorflow()
        tf2onnx = require("tf2onnx", "onnxruntime")
        if model.convert.resize_loop_output is None:
            graph_def = tf.compat.v1.GraphDef()
            graph_def.ParseFromString(graph.read_bytes())
        else:
            g, _, _ = bypassed_graph(tf, model, graph, input_name.split(":")[0],
                                     [n.split(":")[0] for n in model.output_names])
            graph_def = g.as_graph_def()
        try:
            tf2onnx.convert.from_graph_def(
                graph_def, input_names=[input_name], output_names=list(model.output_names), opset=OPSET,
                shape_override={input_name: input_shape(model)}, output_path=str(out),
            )
        except Exception as exc:  # tf2onnx raises bare Exceptions/ValueErrors from deep inside
            raise ConversionError(f"tf2onnx could not convert {graph} (model {model.name!r}): {exc}") from exc
        return {"source": {"graph": str(graph)}}

    return cached_artifact(ctx.engines_dir, model.name, "tf2onnx", inputs, _build, ".onnx")
