"""The ONNX files TensorRT's strongly typed builds start from, where precision lives in the graph.

* ``fp16``: a mixed-precision ONNX: FP16 compute, graph inputs/outputs in the FP32 model's types
  (a uint8 image input stays uint8, float outputs stay float32), and the output tail
  (after the last conv) plus the manifest's ``convert.int8_keep_float`` nodes kept in FP32.
  Made by NVIDIA ModelOpt's AutoCast when it is installed (it is TensorRT's own tool and also
  keeps nodes whose values overflow FP16 in FP32), else by onnxconverter-common's float16
  converter (maintained by the ONNX project, pure Python, runs anywhere, also on a Jetson).
* ``int8``: the explicit-quantization (Q/DQ) ONNX of :mod:`mapgate.convert.ort_quant`, which is
  already in TensorRT's form (int8, zero point 0, symmetric, per-channel weights): the same file
  ``onnxruntime:int8`` evaluates, so the CPU gate measures the graph the engine is built from.

Both are cached conversions with provenance, like every other converter.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from mapgate.convert import BuildContext
from mapgate.cache import cached_artifact
from mapgate.errors import BackendUnavailable, ConversionError
from mapgate.files import verified_sha256
from mapgate.manifest import ModelSpec
from mapgate.optional import require, version_of

CONVERTER_VERSION = 3  # 2: FP32 graph outputs restored after onnxconverter-common; 3: uint8 inputs kept


def fp16_converter() -> str | None:
    """The FP16 converter that would run here ("modelopt" or "onnxconverter_common"), or None."""
    for module, name in (("modelopt.onnx.autocast", "modelopt"), ("onnxconverter_common", "onnxconverter_common")):
        try:
            if importlib.util.find_spec(module) is not None:
                return name
        except (ImportError, ValueError):  # a parent package missing
            continue
    return None


FP16_INSTALL_HINT = "pip install onnxconverter-common  (or NVIDIA ModelOpt: pip install nvidia-modelopt[onnx])"


def keep_float_nodes(proto: Any, prefixes: tuple[str, ...]) -> list[str]:
    """Nodes every reduced-precision recipe keeps in float: the output tail and ``int8_keep_float``."""
    from mapgate.convert.ort_quant import float_tail

    return sorted(float_tail(proto) | {n.name for n in proto.graph.node if n.name.startswith(tuple(prefixes))})


def _ensure_node_names(proto: Any) -> None:
    # Block lists address nodes by name; tf2onnx and hand-made graphs can leave some unnamed.
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"mapgate_node_{i}"


def _restore_fp32_outputs(proto: Any) -> Any:
    """onnxconverter-common 1.16 with keep_io_types turns a graph output made by a blocked (FP32)
    node into FP16 (a trailing Cast to FLOAT16); retarget those Casts to FLOAT32, as asked."""
    from onnx import TensorProto

    producers = {o: n for n in proto.graph.node for o in n.output}
    for out in proto.graph.output:
        node = producers.get(out.name)
        if out.type.tensor_type.elem_type == TensorProto.FLOAT16 and node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.FLOAT
                    out.type.tensor_type.elem_type = TensorProto.FLOAT
    return proto


def io_types(proto: Any) -> dict[str, int]:
    """{graph input/output name: ONNX element type (TensorProto code)}."""
    return {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}


def io_dtype_changes(before: dict[str, int], converted: Any) -> dict[str, tuple[int, int]]:
    """Graph inputs/outputs whose element type differs from ``before`` (:func:`io_types` of the
    source) in ``converted``: {name: (source type, converted type)}; a missing one is type 0.

    keep_io_types keeps each graph IO in the source's type: a uint8 image input stays uint8
    (the graph's first Cast turns it into float), float32 stays float32."""
    after = io_types(converted)
    return {name: (t, after.get(name, 0)) for name, t in before.items() if after.get(name, 0) != t}


def _retarget_float_casts(proto: Any) -> Any:
    """onnxconverter-common 1.16 declares the output of a Cast from a non-float tensor (the uint8
    image's ``Cast to=FLOAT``) FLOAT16 but leaves ``to=FLOAT``, so its FP16 consumer gets a float32
    input: an invalid graph (the ONNX checker and a strongly typed TensorRT refuse it). Make the
    Cast produce the FLOAT16 the converted graph declares."""
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    for node in proto.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    return proto


def build_fp16(model: ModelSpec, ctx: BuildContext) -> Path:
    from mapgate.convert import onnx_for

    source = onnx_for(model, ctx)
    converter = fp16_converter()
    if converter is None:
        raise BackendUnavailable("tensorrt", "a strongly typed FP16 engine needs a mixed-precision ONNX and no "
                                             f"converter is installed; fix: {FP16_INSTALL_HINT}")
    dist = {"modelopt": "nvidia-modelopt", "onnxconverter_common": "onnxconverter-common"}[converter]
    inputs = {
        "onnx_sha256": verified_sha256(source),
        "converter": f"{dist}/{version_of(dist)}",
        "mapgate_converter": CONVERTER_VERSION,
        "keep_io_types": True,
        "keep_float": list(model.convert.int8_keep_float),
        "float_tail": True,
    }

    def _build(out: Path) -> dict[str, Any]:
        onnx = require("onnx", "tensorrt")
        proto = onnx.load(str(source))
        _ensure_node_names(proto)
        blocked = keep_float_nodes(proto, model.convert.int8_keep_float)
        source_io = io_types(proto)  # taken first: the converters may edit ``proto`` in place
        try:
            if converter == "modelopt":
                from modelopt.onnx.autocast import convert_to_mixed_precision

                unnamed = out.with_name(out.name + ".named.onnx")
                onnx.save(proto, str(unnamed))
                try:
                    mixed = convert_to_mixed_precision(onnx_path=str(unnamed), low_precision_type="fp16",
                                                       nodes_to_exclude=[f"^{re.escape(n)}$" for n in blocked],
                                                       keep_io_types=True)
                finally:
                    unnamed.unlink(missing_ok=True)
            else:
                from onnxconverter_common import float16

                mixed = _retarget_float_casts(_restore_fp32_outputs(float16.convert_float_to_float16(
                    proto, keep_io_types=True, node_block_list=blocked)))
        except Exception as exc:  # both converters raise assorted errors from deep inside
            raise ConversionError(f"FP16 mixed-precision conversion of {source} (model {model.name!r}) with "
                                  f"{converter} failed: {exc}") from exc
        changed = io_dtype_changes(source_io, mixed)
        if changed:
            raise ConversionError(f"FP16 conversion of {source} (model {model.name!r}) with {converter} changed the "
                                  f"graph input/output types {changed}; every backend feeds and reads the FP32 "
                                  "model's types (a uint8 image stays uint8, float outputs stay float32)")
        try:  # a converter slip (a type mismatch) must fail here, not on the device
            onnx.checker.check_model(mixed, full_check=True)
        except Exception as exc:  # the checker raises ValidationError or shape-inference errors
            raise ConversionError(f"FP16 conversion of {source} (model {model.name!r}) with {converter} made an "
                                  f"invalid ONNX: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        onnx.save(mixed, str(out))
        return {"source": str(source), "fp16_converter": converter, "kept_float_nodes": blocked}

    return cached_artifact(ctx.engines_dir, model.name, "trt-fp16-onnx", inputs, _build, ".onnx")


def build_int8(model: ModelSpec, ctx: BuildContext) -> Path:
    """The Q/DQ ONNX: the ``onnxruntime:int8`` artifact's recipe (the same cache entry and bytes, except on a
    CPU whose int8 dot product saturates, where only the ONNX Runtime file gets 7-bit weights)."""
    from mapgate.convert import ort_quant

    return ort_quant.build(model, ctx, "tensorrt:int8")
