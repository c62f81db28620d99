"""ONNX -> ONNX Runtime INT8: static QDQ quantization (onnxruntime.quantization), calibrated on
the calibration images only, through the model's own preprocessing.

The recipe is TensorRT's explicit-quantization form (signed INT8, symmetric, zero point 0,
per-channel weights), so the ORT Q/DQ model is the model the TensorRT builder would build too:
one INT8 recipe, whichever engine runs it. Manifest knobs: ``convert.int8_keep_float`` (node
names/prefixes left in float), ``convert.int8_calibration`` (minmax | percentile | entropy) and
``convert.int8_per_channel``; ``mapgate int8-repair`` searches them.

On a CPU whose int8 dot product saturates (x86 without VNNI: :mod:`mapgate.cpu`), ONNX Runtime's fused
INT8 kernels lose points to int16 overflow (measured here, AVX2 EPYC: YOLOv3-tiny -9.84 AP, while the same
file run unfused loses under 1); there the ``onnxruntime:int8`` file gets 7-bit weights (``reduce_range``,
ONNX Runtime's documented remedy; OpenVINO documents the same). The file TensorRT builds from never does.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.convert import BuildContext, dfq, onnx_for
from mapgate.convert.ort_histogram import fast_percentile_histograms
from mapgate.calibration import calibration_batches, calibration_set_hash, check_disjoint, image_ids_of, quantization_images
from mapgate.cache import cached_artifact
from mapgate.cpu import CALIBRATION_THREADS, this_cpu
from mapgate.fsutil import fault_point, write_bytes_atomic
from mapgate.errors import ConfigError, ConversionError, MapgateError
from mapgate.files import verified_sha256
from mapgate.manifest import INT8_ACTIVATION_TYPES, INT8_CALIBRATIONS, INT8_OPS, ModelSpec
from mapgate.optional import require, version_of

QDQ_MIN_OPSET = 13  # per-channel DequantizeLinear needs the 'axis' attribute of opset 13
# Measured on val2017-mini: quantizing every op type (MinMax) cost SSDLite 6.8 AP points; quantizing
# only convolutions and keeping the output tail (decode, sigmoid, concat after the last conv) in float
# costs it 1.1 and YOLOv3-tiny 0.6. Element-wise ops gain little speed from INT8 on CPU anyway.
SETTINGS = {"format": "QDQ", "activations": "QInt8", "weights": "QInt8", "symmetric": True,
            "op_types": ["Conv"], "float_tail": True, "float_inputs_of_kept_nodes": True}
# zero point 0, as TensorRT requires; QuantizeBias False: TensorRT refuses an int32 bias DequantizeLinear
# (NVIDIA/TensorRT#3360), so the bias stays float in the file both engines run
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
_METHOD_NAMES = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
assert set(_METHOD_NAMES) == set(INT8_CALIBRATIONS)
# convert.int8_ops -> quantize_static's op_types_to_quantize (None: every op type it has a QDQ rule for)
_OP_TYPES: dict[str, list[str] | None] = {"conv": ["Conv"], "all": None}
assert set(_OP_TYPES) == set(INT8_OPS) and INT8_ACTIVATION_TYPES == ("s8", "u8")
TENSORRT_FORM = {"ops": "conv", "activation_type": "s8"}


def form_of(model: ModelSpec) -> dict[str, str]:
    """The Q/DQ form of the model's INT8 recipe (convert.int8_ops, convert.int8_activation_type)."""
    return {"ops": model.convert.int8_ops, "activation_type": model.convert.int8_activation_type}


def recipe_of(model: ModelSpec) -> dict[str, Any]:
    """The model's INT8 recipe as data: what the cache key and a repair report both show."""
    c = model.convert
    recipe = {"calibration": c.int8_calibration, "per_channel": c.int8_per_channel,
              "keep_float": list(c.int8_keep_float)}
    # the data-free fixes enter the key only when on, so recipes without them keep their cached builds
    recipe.update({k: True for k, on in (("cle", c.int8_cle), ("bias_correction", c.int8_bias_correction)) if on})
    # likewise the Q/DQ form: only a non-default form enters the key (the default is every file built so far)
    recipe.update({f"int8_{k}": v for k, v in form_of(model).items() if v != TENSORRT_FORM[k]})
    return recipe


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    if target.startswith("tensorrt:") and form_of(model) != TENSORRT_FORM:
        raise ConfigError(f"{model.manifest_path}: model {model.name!r}, field 'convert.int8_ops'/"
                          f"'convert.int8_activation_type': {form_of(model)} is not TensorRT's explicit-quantization "
                          f"form {TENSORRT_FORM}; tensorrt:int8 needs the default")
    source = onnx_for(model, ctx)
    # the one list every engine built from this file (tensorrt:int8, either typing) records, in this order
    images = quantization_images(ctx.calib_images, ctx.max_calib_images)
    check_disjoint(ctx.calib_image_ids or image_ids_of(images), ctx.evaluated_image_ids,
                   f"INT8 calibration of {model.name} for onnxruntime:int8")
    recipe = recipe_of(model)
    reduce_range = target.startswith("onnxruntime:") and this_cpu().saturates
    if reduce_range:  # in the key only when used: every 8-bit file keeps the key it had
        recipe = {**recipe, "reduce_range": True}
    inputs = {
        "onnx_sha256": verified_sha256(source),
        "converter": f"onnxruntime.quantization/{version_of('onnxruntime')}",
        "settings": SETTINGS,
        "extra_options": EXTRA_OPTIONS,
        "calibration_set": calibration_set_hash(images),
        "calibration_images": len(images),
        "preprocess": repr(model.preprocess),
        "recipe": recipe,
        "opset_min": QDQ_MIN_OPSET,
    }

    def _build(out: Path) -> dict[str, Any]:
        kept = quantize(source, out, model, images, method=recipe["calibration"], per_channel=recipe["per_channel"],
                        keep_float=model.convert.int8_keep_float, reduce_range=reduce_range, cle=model.convert.int8_cle,
                        bias_correction=model.convert.int8_bias_correction, ops=model.convert.int8_ops,
                        activation_type=model.convert.int8_activation_type)
        return {"source": str(source), "kept_float_nodes": len(kept), "calibration_image_names": [p.name for p in images],
                "reduce_range": reduce_range, "int8_dot_product": this_cpu().to_dict()}

    return cached_artifact(ctx.engines_dir, model.name, "ort-int8", inputs, _build, ".onnx")


def load_for_quantization(source: Path) -> Any:
    """The FP32 ONNX at the opset Q/DQ needs."""
    onnx = require("onnx", "onnxruntime")
    proto = onnx.load(str(source))
    if _opset(proto) < QDQ_MIN_OPSET:
        proto = onnx.version_converter.convert_version(proto, QDQ_MIN_OPSET)
    return normalize_graph(proto)


def normalize_graph(proto: Any) -> Any:
    """Real exports as the quantizer needs them: a ``Resize`` given both ``scales`` and ``sizes`` (the
    spec allows one; some opset-11 exporters write both) keeps ``sizes``, the one its output shape
    follows, and shapes are inferred where ONNX can (the quantizer reads them for per-channel axes)."""
    onnx = require("onnx", "onnxruntime")
    numpy_helper = require("onnx.numpy_helper", "onnxruntime")
    tensors = {i.name: i for i in proto.graph.initializer}
    tensors.update({n.output[0]: n.attribute[0].t for n in proto.graph.node
                    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for node in proto.graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[2] and node.input[3]:
            scales = tensors.get(node.input[2])
            if scales is not None and numpy_helper.to_array(scales).size == 0:
                continue  # an empty scales tensor already means "not given"
            node.input[2] = ""
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement: the quantizer infers its own
        return proto


def _quantizer_failure(model: ModelSpec, exc: Exception) -> ConversionError:
    """ONNX Runtime's quantizer fails with long tracebacks; the user gets its last line and the node it names."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return ConversionError(f"INT8 quantization of model {model.name!r} ({model.manifest_path}) failed in ONNX "
                           f"Runtime's quantizer: {type(exc).__name__}: {lines[-1] if lines else 'no message'}. "
                           "Keep the node it names in float with convert.int8_keep_float, or re-export the model")


def keep_float_nodes(proto: Any, keep_float: Iterable[str]) -> list[str]:
    """The graph's float tail plus every node named by (or starting with) a ``keep_float`` entry."""
    prefixes = tuple(keep_float)
    return sorted(float_tail(proto) | {n.name for n in proto.graph.node if prefixes and n.name.startswith(prefixes)})


def quantize(source: Path, out: Path, model: ModelSpec, images: Sequence[Path], *, method: str = "minmax",
             per_channel: bool = True, keep_float: Iterable[str] = (), calibration_cache: Path | None = None,
             proto: Any = None, reduce_range: bool = False, cle: bool = False,
             bias_correction: bool = False, ops: str = "conv", activation_type: str = "s8") -> list[str]:
    """Write the Q/DQ INT8 model of ``source`` to ``out``; returns the node names left in float.

    ``calibration_cache``: a file where ONNX Runtime keeps the calibrated tensor ranges, so many
    variants of one model (``mapgate int8-repair``) calibrate once; ignored by ORT versions
    without it (they recalibrate each time, same result, slower).
    ``cle`` / ``bias_correction``: the data-free fixes of :mod:`mapgate.convert.dfq`, before and
    after quantization.
    ``ops`` / ``activation_type``: the Q/DQ form (manifest ``convert.int8_ops`` / ``int8_activation_type``);
    "u8" activations are asymmetric (zero point free), as ONNX Runtime's U8S8 CPU kernels take them.
    """
    q = require("onnxruntime.quantization", "onnxruntime")
    if method not in _METHOD_NAMES:
        raise ConfigError(f"INT8 calibration method {method!r} is not one of {', '.join(_METHOD_NAMES)}")
    if ops not in _OP_TYPES or activation_type not in INT8_ACTIVATION_TYPES:
        raise ConfigError(f"INT8 form ops={ops!r}, activation_type={activation_type!r}: ops must be one of "
                          f"{', '.join(INT8_OPS)}, activation_type one of {', '.join(INT8_ACTIVATION_TYPES)}")
    u8 = activation_type == "u8"
    # quantize_static rewrites the proto it is given (weights become external data): never share one
    proto = copy.deepcopy(proto) if proto is not None else load_for_quantization(source)
    input_name = graph_input_name(proto)
    kept = keep_float_nodes(proto, keep_float)
    if cle:
        proto, _ = dfq.equalize(proto)
    float_proto = copy.deepcopy(proto) if bias_correction else None

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = calibration_batches(model, list(images))

        def rewind(self) -> None:  # the streaming Percentile collector reads the images twice
            self.batches = calibration_batches(model, list(images))

        def get_next(self) -> dict[str, np.ndarray] | None:
            fault_point("convert")
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    kwargs: dict[str, Any] = {}
    if calibration_cache is not None and "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(calibration_cache)
    # the histogram calibrators print() their progress; stdout belongs to mapgate's own output
    with contextlib.redirect_stdout(io.StringIO()), _without_preprocess_advice(), _one_line_failure(model), \
            fast_percentile_histograms(), calibration_threads(CALIBRATION_THREADS):
        q.quantize_static(
            proto, str(out), Reader(), nodes_to_exclude=kept, op_types_to_quantize=_OP_TYPES[ops],
            quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8 if u8 else q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=per_channel, reduce_range=reduce_range, calibrate_method=getattr(q.CalibrationMethod, _METHOD_NAMES[method]),
            extra_options={**EXTRA_OPTIONS, **({"ActivationSymmetric": False} if u8 else {})}, **kwargs,
        )
    onnx = require("onnx", "onnxruntime")
    written = onnx.load(str(out))
    feed_kept_nodes_float(written, kept)
    if float_proto is not None:
        written, _ = dfq.correct_bias(written, float_proto, calibration_batches(model, list(images)))
    write_bytes_atomic(out, written.SerializeToString())
    return kept


def feed_kept_nodes_float(proto: Any, kept: Iterable[str]) -> list[str]:
    """Feed every kept-float node (the output tail, ``int8_keep_float``) the float tensor itself, not
    its Q/DQ copy. ONNX Runtime's quantizer puts a QuantizeLinear/DequantizeLinear pair on each
    quantized Conv's output and on each quantized Conv's input, whoever else reads that tensor, so
    the head convs' outputs reached the "float" tail rounded to 8 bits (and a kept node beside a
    quantized Conv read 8-bit values). Pairs nobody reads any more are removed; the Conv itself
    keeps its Q/DQ inputs (INT8 compute, float output: a form TensorRT and ONNX Runtime both run).
    Edits ``proto`` in place; returns the tensor names whose kept consumers now read them unrounded."""
    kept = set(kept)
    producers = {o: n for n in proto.graph.node for o in n.output}
    initializers = {i.name for i in proto.graph.initializer}
    rewired: list[str] = []
    for node in proto.graph.node:
        if node.name not in kept:
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in initializers:
                continue  # a weight's DQ, or a tensor stored quantized: there is no float tensor to read
            node.input[k] = q.input[0]
            rewired.append(q.input[0])
    _drop_unread_qdq(proto)
    return sorted(set(rewired))


def _drop_unread_qdq(proto: Any) -> None:
    """Remove Q/DQ nodes whose outputs nothing reads (repeat: a Q is unread once its DQs are gone),
    and the scales and zero points only they read (ONNX Runtime warns about each unused initializer)."""
    dropped_inputs: set[str] = set()
    while True:
        read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
        unread = [n for n in proto.graph.node
                  if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)]
        if not unread:
            break
        for n in unread:
            dropped_inputs.update(n.input)
            proto.graph.node.remove(n)
    read = {i for n in proto.graph.node for i in n.input} | {v.name for v in [*proto.graph.input, *proto.graph.output]}
    for init in [i for i in proto.graph.initializer if i.name in dropped_inputs and i.name not in read]:
        proto.graph.initializer.remove(init)


def graph_input_name(proto: Any) -> str:
    """The name of the graph's first input that is not an initializer (what ``InferenceSession.get_inputs()[0]``
    reports), read from the proto: a session would optimise the whole graph only to say it."""
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    if not names:
        raise ConversionError("the ONNX graph has no input to feed calibration images to")
    return names[0]


@contextlib.contextmanager
def calibration_threads(threads: int | None) -> Iterator[None]:
    """While inside, ONNX Runtime's calibrators run their augmented model with ``threads`` intra-op
    threads (None: ORT's default, one per core; mapgate passes :data:`mapgate.cpu.CALIBRATION_THREADS`).
    ``quantize_static`` takes no session options, so the session is made here exactly as
    ``CalibraterBase.create_inference_session`` makes it (ORT 1.32: optimisations off, the
    calibrator's providers); an ORT whose calibrators lack those attributes keeps its own."""
    calibrate = require("onnxruntime.quantization.calibrate", "onnxruntime")
    ort = require("onnxruntime", "onnxruntime")
    base = getattr(calibrate, "CalibraterBase", None)
    original = getattr(base, "create_inference_session", None)
    if threads is None or original is None:
        yield
        return

    def create_inference_session(self: Any) -> None:
        if not (hasattr(self, "augmented_model_path") and hasattr(self, "execution_providers")):
            original(self)
            return
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=opts,
                                                  providers=self.execution_providers)

    base.create_inference_session = create_inference_session
    try:
        yield
    finally:
        base.create_inference_session = original


@contextlib.contextmanager
def _one_line_failure(model: ModelSpec) -> Iterator[None]:
    try:
        yield
    except (MapgateError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside the third-party quantizer becomes one line
        raise _quantizer_failure(model, exc) from exc


class _PreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _without_preprocess_advice() -> Iterator[None]:
    """Drop ONNX Runtime's "run pre-processing before quantization" warning (printed twice per
    model): that step fuses and renames nodes, and ``int8_keep_float`` names the nodes as converted."""
    root, advice = logging.getLogger(), _PreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


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
