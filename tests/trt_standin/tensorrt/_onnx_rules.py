"""What the stand-in's ONNX parser and builder accept: TensorRT's rules, each with its source.

:func:`lower` reads a real ONNX file the way TensorRT's ONNX parser (onnx-tensorrt) builds a
network: one layer per node named after the node, uniquified with ``_<n>``
(ImporterContext::registerLayer / generateUniqueName), no layer for ``Constant`` nodes (their
values become weights), an ``IConstantLayer`` named after the weights wherever a node takes an
initializer as a tensor (``convertToTensor``: elementwise, Concat, Gather data, Q/DQ inputs),
and an unnamed ``IShuffleLayer`` ("(Unnamed Layer* N) [Shuffle]", TensorRT's default name) where
broadcasting needs a rank expansion (``broadcastTensor``, registered with no name). So mapgate's
layer pinning sees the names a real network has, not one name per node.
:func:`lower` raises :class:`ParseError` where the real parser refuses the graph, and
:func:`builder_errors` lists what ``IBuilder::buildSerializedNetwork`` refuses.

Sources, cited at each rule:
  [OTRT86]  onnx/onnx-tensorrt at the commit TensorRT v8.6.1 pins (6ba67d34), builtin_op_importers.cpp
            ``QuantDequantLinearHelper`` and docs/operators.md (QuantizeLinear / DequantizeLinear:
            "`y_zero_point` must be 0"; later releases' operators.md keep the rule). Branch 8.6-GA, same
            helper: "This version of TensorRT requires 3 inputs for the INT8 QuantizeLinear/DequantizeLinear
            operator" (8.5-GA: "... requires 3 inputs for the DequantizeLinear operator").
  [OTRT10]  onnx/onnx-tensorrt branches 10.0-GA / 10.1-GA, onnxOpImporters.cpp ``QuantDequantLinearHelper``:
            the zero point is optional ("if (inputs.size() > 2)"); a UINT8 zero point is a warning
            ("TensorRT doesn't support QuantizeLinear/DequantizeLinear with UINT8 zero_point. TensorRT will
            use INT8 instead."), still subject to the all-zeros rule.
  [HDR]     NVIDIA/TensorRT include/NvInfer.h, ``class IDequantizeLayer`` / ``IQuantizeLayer`` doc
            comments (identical at v8.6.1, v10.3.0, v11.1), and include/NvInferRuntimeBase.h,
            ``DataType::kUINT8``.
  [DG-EQ]   TensorRT developer guide, "Explicit Quantization"
            (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
  [QDQ-INT8] A weakly typed Q/DQ network needs BuilderFlag.INT8: TensorRT 8.x developer guide, "Explicit
            Quantization" ("A Q/DQ network must be built with the INT8-precision builder flag enabled");
            NVIDIA/TensorRT#4021 (a Q/DQ ONNX built with --fp16 alone fails: "you must at least set --int8").
            A calibrator on a Q/DQ network is not used: NVIDIA/TensorRT#1837 ("Calibrator won't be used in
            explicit precision mode"); Polygraphy does not even set it (backend/trt/config.py, "No Q/DQ
            layers means that we will need to calibrate").
  [DG-ST]   TensorRT developer guide, "Precision Control" > "Strongly Typed Networks"
            (docs.nvidia.com/deeplearning/tensorrt/11.0.0/inference-library/precision-control.html), and
            include/NvInfer.h ``NetworkDefinitionCreationFlag::kSTRONGLY_TYPED`` (v10.3.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16",
               11: "DOUBLE"}
_LAYER_TYPES = {"Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Relu": "ACTIVATION",
                "Sigmoid": "ACTIVATION", "LeakyRelu": "ACTIVATION", "Clip": "ACTIVATION", "HardSigmoid": "ACTIVATION",
                "Tanh": "ACTIVATION", "MaxPool": "POOLING", "AveragePool": "POOLING", "GlobalAveragePool": "REDUCE",
                "Concat": "CONCATENATION", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE",
                "Squeeze": "SHUFFLE", "Unsqueeze": "SHUFFLE", "Shape": "SHAPE", "Resize": "RESIZE",
                "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Cast": "CAST", "Slice": "SLICE",
                "Exp": "UNARY", "Sqrt": "UNARY", "Log": "UNARY", "Gather": "GATHER", "MatMul": "MATRIX_MULTIPLY",
                "Gemm": "MATRIX_MULTIPLY", "Softmax": "SOFTMAX", "ReduceMax": "REDUCE", "ReduceMean": "REDUCE",
                "ReduceSum": "REDUCE", "ReduceMin": "REDUCE", "TopK": "TOPK", "Pad": "PADDING", "Identity": "IDENTITY",
                "Split": "SLICE", "Expand": "SLICE", "Tile": "SLICE"}
# Ops whose inputs onnx-tensorrt turns into tensors with convertToTensor (an initializer -> IConstantLayer)
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less", "And", "Or", "Xor",
                 "Where", "PRelu", "GreaterOrEqual", "LessOrEqual"}
_TENSOR_INPUTS = _BROADCASTING | {"Concat", "MatMul"}
# 8.6's Cast importer maps to an IIdentityLayer (ICastLayer from 10.0): both are the "IdentityLayer"
# [HDR] names for the uint8 conversion; the parser's Identity op maps to the same layer.
_UINT8_CONSUMERS = {"Cast", "Identity"}


class ParseError(Exception):
    """What ``IParser::parse`` reports: the node and the reason (the stand-in's ParserError)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


@dataclass
class Layer:
    name: str
    type: str  # a LayerType member name
    inputs: list[str]
    outputs: list[tuple[str, str]]  # (tensor name, DataType member name)


@dataclass
class Lowered:
    inputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    outputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)


def _dims(value_info: Any) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class _Namer:
    """ImporterContext::generateUniqueName: the base name, else base + "_" + a counter shared by all."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.counter = 0

    def unique(self, base: str) -> str:
        candidate = base
        while candidate in self.names:
            candidate = f"{base}_{self.counter}"
            self.counter += 1
        self.names.add(candidate)
        return candidate


def node_name(node: Any) -> str:
    """onnx2trt_utils getNodeName: an unnamed node is "node_of_<first output>"."""
    return node.name if node.name or not node.output else f"node_of_{node.output[0]}"


def lower(path: str, strongly_typed: bool, version: tuple[int, int] = (10, 3)) -> Lowered:
    """``version``: the TensorRT (major, minor) whose parser rules apply (the stand-in's own version)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.output, *g.value_info]
             if v.type.tensor_type.HasField("shape")}
    consts: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    types.update({i.name: i.data_type for i in g.initializer})
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def dtype(name: str) -> str:
        return _ONNX_TYPES.get(types.get(name, 1), "FLOAT")

    out, namer, constant_layers = Lowered(), _Namer(), {}

    def add(name: str, layer_type: str, inputs: list[str], outputs: list[tuple[str, str]]) -> None:
        out.layers.append(Layer(name, layer_type, inputs, outputs))

    def as_tensor(name: str) -> str:
        """convertToTensor: one IConstantLayer per weights name, named after the weights."""
        if name in consts and name not in constant_layers:
            constant_layers[name] = namer.unique(name)
            add(constant_layers[name], "CONSTANT", [], [(name, dtype(name))])
        return name

    for inp in g.input:
        if inp.name not in consts:
            out.inputs.append((inp.name, _dims(inp), dtype(inp.name)))
            if dtype(inp.name) == "UINT8":
                _check_uint8_input(inp.name, consumers.get(inp.name, []))

    for node in g.node:
        name = node_name(node)
        if node.op_type == "Constant":  # "No layer will be added for Constant nodes in ONNX" (registerLayer)
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = numpy_helper.to_array(value.t)
                types[node.output[0]] = value.t.data_type
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, name, consts, ranks, consumers, version)
            inputs = [as_tensor(i) for i in node.input if i]
        elif node.op_type in _TENSOR_INPUTS:
            inputs = [as_tensor(i) for i in node.input if i]
            if node.op_type in _BROADCASTING:
                rank = max((_rank(i, consts, ranks) for i in inputs), default=0)
                for i in inputs:
                    if 0 <= _rank(i, consts, ranks) < rank:
                        # broadcastTensor: an IShuffleLayer that is never registered keeps TensorRT's default name
                        add(namer.unique(f"(Unnamed Layer* {len(out.layers)}) [Shuffle]"), "SHUFFLE", [i],
                            [(f"{i}__broadcast", dtype(i))])
        else:
            inputs = list(node.input)
        add(namer.unique(name), _LAYER_TYPES.get(node.op_type, "ELEMENTWISE"), inputs,
            [(o, dtype(o)) for o in node.output])
    out.outputs = [(o.name, _dims(o), dtype(o.name)) for o in g.output]
    return out


def _rank(name: str, consts: dict[str, Any], ranks: dict[str, int]) -> int:
    if name in consts:
        return consts[name].ndim
    return ranks.get(name, -1)


def _check_uint8_input(name: str, users: list[Any]) -> None:
    # [HDR] DataType::kUINT8: "Use the IdentityLayer to convert kUINT8 network-level inputs to {kFLOAT, kHALF}
    # prior to use with other TensorRT layers"; onnx-tensorrt docs/operators.md (10.x): "UINT8 is only supported
    # as network input or output tensor types", and the 8.6 importers reject UINT8 operands (notInvalidType).
    # Stated for every TensorRT, so it holds weakly and strongly typed; the strongly typed FP16 path is where a
    # converter (keep_io_types) can leave a uint8 input feeding the graph.
    for user in users:
        to = next((a.i for a in user.attribute if a.name == "to"), None)
        if user.op_type not in _UINT8_CONSUMERS or (user.op_type == "Cast" and to not in (1, 10)):
            raise ParseError(node_name(user), f"UINT8 network input {name!r} feeds a {user.op_type} node "
                                              f"({node_name(user)!r}); TensorRT takes a UINT8 input only into a Cast "
                                              "(IdentityLayer) to FLOAT or HALF")


WARNINGS: list[str] = []  # what the parser logs as a warning and accepts (the stand-in records them)


def _check_qdq(node: Any, name: str, consts: dict[str, Any], ranks: dict[str, int],
               consumers: dict[str, list[Any]], version: tuple[int, int] = (10, 3)) -> None:
    import numpy as np

    x, scale_name = node.input[0], node.input[1] if len(node.input) > 1 else ""
    zp_name = node.input[2] if len(node.input) > 2 else ""
    op = node.op_type
    # [OTRT86] 8.x reads inputs.at(2) unconditionally for INT8 Q/DQ; [OTRT10] 10.0 made it optional.
    if version < (10, 0) and not zp_name:
        raise ParseError(name, f"{op} {name!r}: This version of TensorRT requires 3 inputs for the INT8 "
                               "QuantizeLinear/DequantizeLinear operator (no zero point given)")
    # [HDR] "The subgraph which terminates with the scale tensor must be a build-time constant. The same
    # restrictions apply to the zeroPt"; "the only allowed build-time constant scale and zeroPt subgraphs are
    # Constant -> Quantize, Constant -> Cast -> Quantize".
    if scale_name not in consts:
        raise ParseError(name, f"{op} {name!r}: the scale {scale_name!r} is not a build-time constant "
                               "(an initializer or Constant); TensorRT needs constant Q/DQ scales")
    scale = consts[scale_name]
    # [HDR] "Each of scale and zeroPt must be either a scalar, or a 1D tensor"; "All scale coefficients must
    # have positive values". [OTRT86] "Scale coefficients must all be positive".
    if scale.ndim > 1:
        raise ParseError(name, f"{op} {name!r}: the scale has shape {list(scale.shape)}; TensorRT takes a scalar "
                               "(per-tensor) or 1-D (per-channel) scale")
    if scale.size == 0 or not np.all(scale > 0):
        raise ParseError(name, f"{op} {name!r}: scale coefficients must all be positive")
    if zp_name:
        if zp_name not in consts:
            raise ParseError(name, f"{op} {name!r}: the zero point {zp_name!r} is not a build-time constant")
        zp = consts[zp_name]
        # [OTRT86] notInvalidType(zero point, {"UINT8"}); [HDR] "Its data type must be DataType::kINT8".
        # [OTRT10] 10.x accepts a UINT8 zero point with a warning and quantizes to INT8 anyway.
        if zp.dtype == np.uint8 and version >= (10, 0):
            WARNINGS.append(f"{op} {name!r}: TensorRT doesn't support QuantizeLinear/DequantizeLinear with UINT8 "
                            "zero_point. TensorRT will use INT8 instead.")
        elif zp.dtype != np.int8:
            raise ParseError(name, f"{op} {name!r}: the zero point is {zp.dtype}; TensorRT's INT8 Q/DQ takes int8 "
                                   "zero points only (uint8, i.e. asymmetric activations, is refused)")
        # [OTRT86] "TensorRT only supports symmetric quantization. The zero point for the
        # QuantizeLinear/DequantizeLinear operator must be all zeros."; docs/operators.md "must be 0/zero".
        if np.any(zp != 0):
            raise ParseError(name, f"{op} {name!r}: TensorRT only supports symmetric quantization; the zero point "
                                   f"{zp_name!r} must be all zeros, it holds {sorted(set(zp.ravel().tolist()))[:4]}")
        # [HDR] "The size of the scale must match the size of the zeroPt."
        if zp.size != scale.size:
            raise ParseError(name, f"{op} {name!r}: the scale and zero point must have the same volume")
    elif op == "DequantizeLinear" and x in consts and consts[x].dtype != np.int8:
        raise ParseError(name, f"{op} {name!r}: dequantizes {consts[x].dtype} weights; TensorRT's INT8 DQ takes int8")
    if scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = _rank(x, consts, ranks)
        axis = axis + rank if axis < 0 and rank > 0 else axis
        # [HDR] "Per-channel dequantization is supported only for input that is rooted at an IConstantLayer (i.e.
        # weights). Activations cannot be quantized per-channel."
        if x not in consts:
            raise ParseError(name, f"{op} {name!r}: per-channel ({scale.size} scales) on an activation; TensorRT "
                                   "quantizes activations per-tensor only")
        weights = consts[x]
        # [OTRT86] "The number of scales is not equal to the number of output channels" (K = dims[axis]).
        if not 0 <= axis < weights.ndim or weights.shape[axis] != scale.size:
            raise ParseError(name, f"{op} {name!r}: {scale.size} scales on axis {axis} of weights shaped "
                                   f"{list(weights.shape)}; the number of scales must equal that axis's size")
        # [HDR] per-channel example: "a 4D KCRS weights input and K (dimension 0) as the quantization axis";
        # [DG-EQ] weights are quantized per output channel: axis 0 for Conv (KCRS), 1 for ConvTranspose (CKRS).
        for user in consumers.get(node.output[0], []):
            if user.op_type in ("Conv", "ConvTranspose") and list(user.input[1:2]) == [node.output[0]]:
                k_axis = 0 if user.op_type == "Conv" else 1
                if axis != k_axis:
                    raise ParseError(name, f"{op} {name!r}: weights of {user.op_type} {node_name(user)!r} are "
                                           f"quantized along axis {axis}; TensorRT takes per-channel weight scales "
                                           f"along the output-channel axis {k_axis}")


# [DG-ST] "Strongly Typed Networks": the builder infers every type; the precision flags and precision
# constraints are not allowed ([DG-EQ]: "Use explicit quantization with Strong Typing. Precision-control
# build flags are not required and should not be specified"); 8.6's STRICT_TYPES is the older constraint flag.
_WEAK_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
               "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "STRICT_TYPES"}


def builder_errors(network: Any, flags: list[str], has_qdq: bool = False) -> list[str]:
    """What buildSerializedNetwork refuses for this network and config (the messages TensorRT logs)."""
    errors = []
    if network._strongly_typed and set(flags) & _WEAK_FLAGS:
        errors.append(f"4: [network.cpp::validate] Error Code 4: API Usage Error (builder flags "
                      f"{sorted(set(flags) & _WEAK_FLAGS)} are not allowed for a strongly typed network)")
    if has_qdq and not network._strongly_typed and "INT8" not in flags:
        # [QDQ-INT8] the message real builds log for a Q/DQ network without the flag (NVIDIA/TensorRT#4021)
        errors.append("4: [network.cpp::validate] Error Code 4: Internal Error (Int8 precision has been set for a "
                      "layer or layer output, but int8 is not configured in the builder)")
    return errors
