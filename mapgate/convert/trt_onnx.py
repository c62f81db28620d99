"""The ONNX files TensorRT's strongly typed builds start from, where precision lives in the graph.

* ``fp16``: a mixed-precision ONNX: FP16 compute, graph inputs/outputs in the FP32 model's types
  (a uint8 image input stays uint8, float outputs stay float32), and the output tail
  (after the last conv) plus the manifest's ``convert.int8_keep_float`` nodes kept in FP32.
  Made by NVIDIA ModelOpt's AutoCast when it is installed (it is TensorRT's own tool and also
  keeps nodes whose values overflow FP16 in FP32), else by onnxconverter-common's float16
  converter (maintained by the ONNX project, pure Python, runs anywhere, also on a Jetson).
* ``int8`` (weakly and strongly typed alike): the explicit-quantization (Q/DQ) ONNX of
  :mod:`mapgate.convert.ort_quant`, which is already in TensorRT's form (int8, zero point 0,
  symmetric, per-channel weights): the same file ``onnxruntime:int8`` evaluates, so the CPU gate
  measures the graph the engine is built from. :func:`qdq_form_problems` checks it against the Q/DQ
  form each TensorRT release's ONNX parser takes (:data:`QDQ_PARSER_FORMS`) before any build.

Both are cached conversions with provenance, like every other converter.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from mapgate.convert import BuildContext, onnx_for, ort_quant
from mapgate.cache import cached_artifact
from mapgate.convert.ort_quant import QDQ_MIN_OPSET, float_tail
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


# The Q/DQ form each TensorRT release's ONNX parser (onnx-tensorrt) takes, keyed by the first
# (major, minor) it applies from. Sources: onnx-tensorrt docs/operators.md and the Q/DQ importer
# (QuantDequantLinearHelper) on the release branches 8.5-GA, 8.6-GA (builtin_op_importers.cpp) and
# 10.0-GA, 10.1-GA (onnxOpImporters.cpp):
# * 8.5/8.6: "TensorRT 8.x supports operators up to Opset 17"; "This version of TensorRT requires 3 inputs
#   for the INT8 QuantizeLinear/DequantizeLinear operator" (the zero point must be given); a uint8 zero
#   point or input is refused (notInvalidType(..., {"UINT8"})); the scale is read as float32
#   (static_cast<float const*>), so a float16 scale would be misread.
# * 10.0+: "opset 9 to opset 20" (10.0, 10.1; later releases' upper bound is not checked here); the zero
#   point is optional; a uint8 zero point is accepted with a warning and TensorRT quantizes to INT8
#   anyway (a silent change of the numerics: refused here); FP32/FP16/BF16 scales.
# * every release: symmetric (all-zero zero points), constant positive scales, per-channel only on
#   weights along the output-channel axis (axis 0 for Conv). ONNX itself: per-axis Q/DQ (the 'axis'
#   attribute) exists from opset 13.
QDQ_PARSER_FORMS: dict[tuple[int, int], dict[str, Any]] = {
    (8, 5): {"name": "TensorRT 8.5/8.6", "max_opset": 17, "zero_point_required": True, "scale_types": ("FLOAT",)},
    (10, 0): {"name": "TensorRT 10.0/10.1", "max_opset": 20, "zero_point_required": False,
              "scale_types": ("FLOAT", "FLOAT16", "BFLOAT16")},
    (10, 2): {"name": "TensorRT 10.2+", "max_opset": None, "zero_point_required": False,
              "scale_types": ("FLOAT", "FLOAT16", "BFLOAT16")},
}


def qdq_parser_form(version: tuple[int, ...]) -> dict[str, Any]:
    """The Q/DQ form of :data:`QDQ_PARSER_FORMS` that applies to a TensorRT version (8.5 and later)."""
    applies = [v for v in QDQ_PARSER_FORMS if v <= tuple(version)[:2]]
    return QDQ_PARSER_FORMS[max(applies) if applies else min(QDQ_PARSER_FORMS)]


def qdq_form_problems(proto: Any, version: tuple[int, ...] | None = None) -> list[str]:
    """Why a Q/DQ ONNX does not parse (or would silently change meaning) in TensorRT ``version``; with
    no version, against every release's form (``mapgate convert`` on a machine without TensorRT).
    Empty when the file is in the form that release takes. Pure: reads the proto only."""
    from onnx import TensorProto, numpy_helper

    forms = [qdq_parser_form(version)] if version is not None else list(QDQ_PARSER_FORMS.values())
    consts = {i.name: i for i in proto.graph.initializer}
    consts.update({n.output[0]: a.t for n in proto.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    problems: list[str] = []
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return ["it has no QuantizeLinear/DequantizeLinear nodes (TensorRT would need implicit calibration)"]
    if opset < QDQ_MIN_OPSET:
        problems.append(f"opset {opset}: per-channel Q/DQ needs opset >= {QDQ_MIN_OPSET}")
    for form in forms:
        if form["max_opset"] is not None and opset > form["max_opset"]:
            problems.append(f"opset {opset}: {form['name']}'s ONNX parser supports operators up to opset "
                            f"{form['max_opset']}")
    for node in qdq:
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        scale = consts.get(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            problems.append(f"{where}: the scale is not a constant")
            continue
        scale_type = TensorProto.DataType.Name(scale.data_type)
        strict = [form["name"] for form in forms if scale_type not in form["scale_types"]]
        if strict:
            problems.append(f"{where}: a {scale_type} scale ({', '.join(strict)} reads scales as FLOAT)")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if not zp_name:
            strict = [form["name"] for form in forms if form["zero_point_required"]]
            if strict:
                problems.append(f"{where}: no zero point ({', '.join(strict)} requires 3 inputs for INT8 Q/DQ)")
            continue
        zp = consts.get(zp_name)
        if zp is None:
            problems.append(f"{where}: the zero point is not a constant")
        elif zp.data_type != TensorProto.INT8:
            problems.append(f"{where}: a {TensorProto.DataType.Name(zp.data_type)} zero point (TensorRT takes int8; "
                            "8.x refuses uint8, 10.x turns it into int8 with a warning)")
        elif numpy_helper.to_array(zp).any():
            problems.append(f"{where}: a non-zero zero point (TensorRT quantizes symmetrically)")
    return problems


def check_qdq_form(path: Path, version: tuple[int, ...] | None = None) -> None:
    """Refuse, before any build, a Q/DQ ONNX not in the form TensorRT ``version`` takes (one line)."""
    onnx = require("onnx", "tensorrt")
    problems = qdq_form_problems(onnx.load(str(path), load_external_data=False), version)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        release = "TensorRT " + ".".join(map(str, version)) if version is not None else "every TensorRT release"
        raise ConversionError(f"the INT8 Q/DQ ONNX {path} is not in the explicit-quantization form {release} "
                              f"parses: {shown}")


def build_int8(model: ModelSpec, ctx: BuildContext) -> Path:
    """The Q/DQ ONNX: the ``onnxruntime:int8`` artifact's recipe (the same cache entry and bytes, except on a
    CPU whose int8 dot product saturates, where only the ONNX Runtime file gets 7-bit weights)."""
    return ort_quant.build(model, ctx, "tensorrt:int8")
