"""Data-free INT8 fixes on ONNX graphs (Nagel et al., ICCV 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction"), in the form the gate's Q/DQ recipe keeps:

* :func:`equalize` (``convert.int8_cle``): cross-layer equalization of consecutive convolutions
  joined by a positively homogeneous activation (ReLU, LeakyReLU, PReLU, or none), e.g. the
  pointwise -> depthwise -> pointwise chains of depthwise-separable blocks. Output channel i of
  the first convolution is divided by s_i and input channel i of the second multiplied by it,
  s_i = sqrt(r1_i / r2_i), so both channels' weight ranges become sqrt(r1_i r2_i): the FP32
  function is unchanged, per-tensor and per-channel INT8 weights lose less.
* :func:`correct_bias` (``convert.int8_bias_correction``): empirical bias correction on the
  calibration images. Each quantized convolution gets a float twin fed the same (pre-Q)
  activation with the float weights; the per-channel mean of (quantized - float) output is
  subtracted from the convolution's float bias. The error is measured layer-locally (each
  convolution against its own input), so every layer is corrected in one pass.

Both only change float initializers: the Q/DQ placement, zero points and scales the quantizer
chose stay as they are, so the file TensorRT builds from is still TensorRT's explicit form.
Hand-written because NNCF's ONNX backend has no cross-layer equalization (its ChannelAlignment is
OpenVINO-only) and applies bias correction only inside its own ``quantize()`` with its own Q/DQ
placement, which is not the gate's convolutions-only TensorRT form.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapgate.cpu import CALIBRATION_THREADS
from mapgate.optional import require

# ops f with f(s x) = s f(x) for s > 0, per channel: scaling passes through them unchanged
_HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "Identity"}
CLE_ITERATIONS = 20
CLE_TOLERANCE = 1e-4  # stop when no scale moves by more than this (relative)
_SCALE_RANGE = (1e-3, 1e3)  # an extreme scale only hides a dead channel; clip it


@dataclass(frozen=True)
class EqualizedPair:
    first: str
    second: str
    activation: str  # op between them, "" when the convolutions are directly joined


def _initializers(proto: Any) -> dict[str, Any]:
    return {i.name: i for i in proto.graph.initializer}


def equalizable_pairs(proto: Any) -> list[EqualizedPair]:
    """Conv -> [homogeneous activation] -> Conv where each intermediate tensor has exactly one reader,
    both convolutions have initializer weights used by no other node, and the first one's output
    channels are the second one's input channels."""
    inits = _initializers(proto)
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            readers[name].append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    uses = defaultdict(int)
    for node in proto.graph.node:
        for name in node.input:
            uses[name] += 1

    def own_weight(conv: Any) -> bool:
        return (len(conv.input) > 1 and conv.input[1] in inits and uses[conv.input[1]] == 1
                and (len(conv.input) < 3 or not conv.input[2] or (conv.input[2] in inits and uses[conv.input[2]] == 1)))

    def sole_reader(tensor: str) -> Any:
        r = readers.get(tensor, [])
        return r[0] if len(r) == 1 and tensor not in graph_outputs else None

    pairs = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or not own_weight(conv):
            continue
        nxt, act = sole_reader(conv.output[0]), ""
        if nxt is not None and nxt.op_type in _HOMOGENEOUS:
            if nxt.op_type == "PRelu" and (len(nxt.input) < 2 or nxt.input[1] not in inits):
                continue
            act, nxt = nxt.op_type, sole_reader(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or not own_weight(nxt) or nxt.input[0] != (
                conv.output[0] if not act else readers[conv.output[0]][0].output[0]):
            continue
        pairs.append(EqualizedPair(conv.name, nxt.name, act))
    return pairs


def _group(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def equalize(proto: Any, iterations: int = CLE_ITERATIONS) -> tuple[Any, list[EqualizedPair]]:
    """A copy of ``proto`` with every equalizable pair equalized (repeated over chains until the
    scales settle); the pairs it changed."""
    numpy_helper = require("onnx.numpy_helper", "onnx")
    proto = copy.deepcopy(proto)
    pairs = equalizable_pairs(proto)
    if not pairs:
        return proto, []
    inits = _initializers(proto)
    nodes = {n.name: n for n in proto.graph.node}
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for p in pairs for conv in (nodes[p.first], nodes[p.second]) for name in conv.input[1:3] if name}
    for _ in range(iterations):
        moved = 0.0
        for p in pairs:
            first, second = nodes[p.first], nodes[p.second]
            w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
            c = w1.shape[0]
            groups = _group(second)
            per_group_in = w2.shape[1]
            if per_group_in * groups != c:
                continue  # not channel-aligned (e.g. a reshape hidden in the weights): leave it
            r1 = np.abs(w1.reshape(c, -1)).max(axis=1)
            out_per_group = w2.shape[0] // groups
            # input channel i of the second conv: group i // per_group_in, local index i % per_group_in
            r2 = np.array([np.abs(w2[(i // per_group_in) * out_per_group:(i // per_group_in + 1) * out_per_group,
                                     i % per_group_in]).max() for i in range(c)])
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / r2), 1.0)
            s = np.clip(s, *_SCALE_RANGE)
            moved = max(moved, float(np.abs(s - 1.0).max()))
            w1 /= s.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(first.input) > 2 and first.input[2]:
                arrays[first.input[2]] /= s
            for i in range(c):
                g, j = divmod(i, per_group_in)
                w2[g * out_per_group:(g + 1) * out_per_group, j] *= s[i]
        if moved < CLE_TOLERANCE:
            break
    for name, arr in arrays.items():
        init = inits[name]
        init.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(init).dtype), name))
    return proto, pairs


def _producers(proto: Any) -> dict[str, Any]:
    return {out: node for node in proto.graph.node for out in node.output}


def quantized_convs(qdq: Any) -> list[tuple[Any, str]]:
    """(conv, its activation before QuantizeLinear) for every convolution of a Q/DQ graph whose
    data input is DequantizeLinear(QuantizeLinear(x))."""
    prod = _producers(qdq)
    out = []
    for node in qdq.graph.node:
        if node.op_type != "Conv":
            continue
        dq = prod.get(node.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            out.append((node, q.input[0]))
    return out


def correct_bias(qdq: Any, float_proto: Any, batches: Iterable[np.ndarray]) -> tuple[Any, list[str]]:
    """A copy of the Q/DQ model ``qdq`` with each quantized convolution's float bias corrected by
    its mean output error on ``batches`` (the calibration images, preprocessed); the corrected
    node names. ``float_proto`` is the float model ``qdq`` was quantized from (same node names)."""
    onnx = require("onnx", "onnx")
    numpy_helper = require("onnx.numpy_helper", "onnx")
    ort = require("onnxruntime", "onnxruntime")
    float_nodes = {n.name: n for n in float_proto.graph.node}
    float_inits = _initializers(float_proto)
    convs = [(c, a) for c, a in quantized_convs(qdq) if c.name in float_nodes
             and float_nodes[c.name].input[1] in float_inits]
    result = copy.deepcopy(qdq)
    if not convs:
        return result, []
    probe = copy.deepcopy(qdq)
    del probe.graph.output[:]
    pairs = []
    for conv, act in convs:
        w_name = f"mapgate_bc_w_{conv.name}"
        probe.graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(float_inits[float_nodes[conv.name].input[1]]), w_name))
        twin_out = f"mapgate_bc_y_{conv.name}"
        twin = onnx.helper.make_node("Conv", [act, w_name, *conv.input[2:3]], [twin_out], name=f"mapgate_bc_{conv.name}")
        twin.attribute.extend(conv.attribute)
        probe.graph.node.append(twin)
        for name in (conv.output[0], twin_out):
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        pairs.append((conv, conv.output[0], twin_out))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # unfused, Q/DQ runs as float fake-quantization: the same rounding of weights and activations the
    # fused integer kernel does, and the twins stay outside any fusion
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = CALIBRATION_THREADS, 1  # why: mapgate.cpu
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [n for _, q, f in pairs for n in (q, f)]
    sums: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        values = dict(zip(names, session.run(names, {input_name: batch})))
        for conv, q, f in pairs:
            diff = (values[q].astype(np.float64) - values[f].astype(np.float64))
            mean = diff.mean(axis=tuple(a for a in range(diff.ndim) if a != 1))
            sums[conv.name] = sums.get(conv.name, 0.0) + mean
        count += 1
    if count == 0:
        return result, []
    inits = _initializers(result)
    nodes = {n.name: n for n in result.graph.node}
    changed = []
    for conv, _, _ in pairs:
        delta = sums[conv.name] / count
        node = nodes[conv.name]
        if len(node.input) > 2 and node.input[2] in inits:
            init = inits[node.input[2]]
            bias = numpy_helper.to_array(init).astype(np.float64) - delta
            init.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), init.name))
        else:
            name = f"{conv.name}_mapgate_bias"
            result.graph.initializer.append(numpy_helper.from_array((-delta).astype(np.float32), name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        changed.append(conv.name)
    return result, changed
