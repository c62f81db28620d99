"""What the stand-in's ONNX parser and builder accept: TensorRT's rules, each with its source.

:func:`lower` reads a real ONNX file the way TensorRT's ONNX parser does (onnx-tensorrt's
``ModelImporter``): inputs, outputs and one or more layers per node, and raises
:class:`ParseError` where the real parser refuses the graph. :func:`builder_errors` is what
``IBuilder::buildSerializedNetwork`` refuses on a parsed network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16", 11: "DOUBLE"}
_LAYER_TYPES = {"Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Relu": "ACTIVATION",
                "Sigmoid": "ACTIVATION", "LeakyRelu": "ACTIVATION", "Clip": "ACTIVATION", "HardSigmoid": "ACTIVATION",
                "Tanh": "ACTIVATION", "MaxPool": "POOLING", "AveragePool": "POOLING", "GlobalAveragePool": "REDUCE",
                "Concat": "CONCATENATION", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE",
                "Squeeze": "SHUFFLE", "Unsqueeze": "SHUFFLE", "Constant": "CONSTANT", "Shape": "SHAPE",
                "Resize": "RESIZE", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Cast": "CAST",
                "Slice": "SLICE", "Exp": "UNARY", "Sqrt": "UNARY", "Gather": "GATHER", "MatMul": "MATRIX_MULTIPLY",
                "Gemm": "MATRIX_MULTIPLY", "Softmax": "SOFTMAX", "ReduceMax": "REDUCE", "ReduceMean": "REDUCE",
                "ReduceSum": "REDUCE", "TopK": "TOPK", "Pad": "PADDING", "Identity": "IDENTITY", "Split": "SLICE"}


class ParseError(Exception):
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


def lower(path: str, strongly_typed: bool) -> Lowered:
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    inits = {i.name for i in g.initializer}

    def dtype(name: str) -> str:
        return _ONNX_TYPES.get(types.get(name, 1), "FLOAT")

    out = Lowered()
    for inp in g.input:
        if inp.name not in inits:
            out.inputs.append((inp.name, _dims(inp), dtype(inp.name)))
    for node in g.node:
        out.layers.append(Layer(node.name, _LAYER_TYPES.get(node.op_type, "ELEMENTWISE"), list(node.input),
                                [(o, dtype(o)) for o in node.output]))
    out.outputs = [(o.name, _dims(o), dtype(o.name)) for o in g.output]
    return out


_WEAK_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
               "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "STRICT_TYPES"}


def builder_errors(network: Any, flags: list[str]) -> list[str]:
    errors = []
    if network._strongly_typed and set(flags) & _WEAK_FLAGS:
        errors.append(f"flags {sorted(set(flags) & _WEAK_FLAGS)} are incompatible with a strongly typed network")
    return errors
