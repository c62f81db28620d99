"""The ONNX files TensorRT builds from, on the real bundled models (no GPU needed).

* the ssdlite ONNX holds no TensorArray resize ``Loop`` (the same bypass as the TFLite route), and
  ONNX Runtime on it still matches TensorFlow exactly;
* the INT8 Q/DQ ONNX (the one file ``onnxruntime:int8`` evaluates and every TensorRT INT8 build,
  weakly or strongly typed, starts from) is in TensorRT's form: every Q/DQ pair int8 with zero
  point 0, per-channel weights, and in the form each release's ONNX parser takes (8.x: zero points
  given, FP32 scales, opset <= 17), checked by ``trt_onnx.qdq_form_problems``;
* the FP16 mixed-precision ONNX keeps float32 graph IO, and its decode tail and
  ``int8_keep_float`` nodes in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mapgate.backends.base import BuildContext
from mapgate.manifest import ModelSpec

SSD = "ssdlite_mobilenet_v2_coco"
YOLO = "yolov3-tiny-416"

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'mapgate[onnx]'")


@pytest.fixture(scope="module")
def shared_engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def _ctx(engines: Path) -> BuildContext:
    from mapgate.calibration import calibration_images, image_ids_of
    from mapgate.dataset import CocoDataset

    calib = calibration_images()
    return BuildContext(engines_dir=engines, calib_images=calib, calib_image_ids=frozenset(image_ids_of(calib)),
                        evaluated_image_ids=frozenset(CocoDataset().image_ids), progress=False)


def _ssd_onnx(require_backend, bundled_models: dict[str, ModelSpec], engines: Path) -> Path:  # noqa: ANN001
    require_backend("tf")
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed: pip install 'mapgate[tf]'")
    from mapgate.convert import onnx_for

    return onnx_for(bundled_models[SSD], _ctx(engines))


@pytest.mark.slow
def test_ssdlite_onnx_has_no_resize_loop(require_backend, bundled_models, shared_engines: Path) -> None:  # noqa: ANN001
    proto = onnx.load(str(_ssd_onnx(require_backend, bundled_models, shared_engines)))
    ops = {n.op_type for n in proto.graph.node}
    assert "Loop" not in ops and "Scan" not in ops
    (inp,) = proto.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the cast image still enters as uint8


@pytest.mark.slow
def test_ssdlite_onnx_still_matches_tensorflow(require_backend, bundled_models, shared_engines: Path,  # noqa: ANN001
                                               tmp_path: Path) -> None:
    require_backend("onnxruntime")
    _ssd_onnx(require_backend, bundled_models, shared_engines)
    from mapgate.dataset import CocoDataset
    from mapgate.gate import Gate

    gate = Gate(models={SSD: bundled_models[SSD]}, dataset=CocoDataset.open(None, 30), engines_dir=shared_engines,
                reports_dir=tmp_path, use_cache=False, progress=False)
    verdict = gate.compare(SSD, "onnxruntime:fp32", ref="tf")
    assert abs(verdict.deltas["AP"]) < 0.005, verdict.deltas  # dAP 0.00 points


def _qdq_pairs(proto) -> list[tuple[str, int, np.ndarray]]:  # noqa: ANN001
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"
              for o in n.output}
    values = {**consts, **inits}
    out = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(node.input) == 3, f"{node.name}: no zero point given (TensorRT needs an explicit int8 0)"
            zp = values[node.input[2]]
            out.append((node.name, int(onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)), zp))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model_name", [YOLO])
def test_int8_onnx_is_in_tensorrt_qdq_form(require_backend, bundled_models, tmp_path: Path, model_name: str) -> None:  # noqa: ANN001
    require_backend("onnxruntime")
    from mapgate.convert import artifact_for, onnx_for
    from mapgate.convert.ort_quant import float_tail

    ctx = _ctx(tmp_path)
    ctx.calib_images = ctx.calib_images[:8]  # the form does not depend on how many images calibrate
    proto = onnx.load(str(artifact_for(bundled_models[model_name], "onnxruntime:int8", ctx)))
    pairs = _qdq_pairs(proto)
    assert pairs, "no Q/DQ nodes: nothing was quantized"
    for name, dtype, zp in pairs:
        assert dtype == onnx.TensorProto.INT8, f"{name}: zero point dtype {dtype}, TensorRT needs int8"
        assert not zp.any(), f"{name}: zero point {zp}, TensorRT needs 0 (symmetric)"
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                 and any(i.name == n.input[0] for i in proto.graph.initializer)]
    scales = {i.name: i for i in proto.graph.initializer}
    assert weight_dq and all(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1
                             for n in weight_dq), "weights must be quantized per output channel"
    source_tail = float_tail(onnx.load(str(onnx_for(bundled_models[model_name], ctx))))
    tail_outputs = {o for n in proto.graph.node if n.name in source_tail for o in n.output}
    requantized = [n.name for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in tail_outputs]
    assert source_tail and not requantized, f"the output tail must compute in float: {requantized}"
    # ... and read float: the head convs' outputs reach the tail unrounded (no Q/DQ pair between them)
    producers = {o: n for n in proto.graph.node for o in n.output}
    rounded = sorted(n.name for n in proto.graph.node if n.name in source_tail for i in n.input
                     if i in producers and producers[i].op_type == "DequantizeLinear")
    assert not rounded, f"tail nodes reading 8-bit copies of the head convs' outputs: {rounded}"
    from mapgate.convert.trt_onnx import qdq_form_problems

    assert qdq_form_problems(proto) == [], "the file must parse on every TensorRT release mapgate supports"


def _qdq_graph(*, opset: int = 13, zero_point: bool = True, zp_type: int = onnx.TensorProto.INT8, zp_value: int = 0,
               scale_type: int = onnx.TensorProto.FLOAT, quantized: bool = True) -> "onnx.ModelProto":
    """x -> Q -> DQ -> Conv(DQ(int8 weights, per channel)): the form ORT's quantizer writes."""
    from onnx import helper, numpy_helper

    zp_np = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}[zp_type]
    sc_np = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}[scale_type]
    inits = [numpy_helper.from_array(np.asarray(0.02, sc_np), "s"), numpy_helper.from_array(np.asarray(zp_value, zp_np), "zp"),
             numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wzp")]
    zp = ["zp"] if zero_point else []
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", *zp], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", *zp], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    if not quantized:
        nodes = [helper.make_node("Conv", ["x", "wf"], ["y"], name="conv")]
        inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "wf")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _head_graph() -> "onnx.ModelProto":
    """What ONNX Runtime's quantizer writes around a head conv: x -> Q/DQ -> Conv(DQ(w)) -> Q/DQ ->
    Sigmoid (the float tail) and, beside the Conv, a kept node reading the conv's input."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(s, np.float32), n) for n, s in (("xs", 0.02), ("ys", 0.05))]
    inits += [numpy_helper.from_array(np.asarray(0, np.int8), n) for n in ("xzp", "yzp")]
    inits += [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w"),
              numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wzp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"], name="x_dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="w_dq", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="head_conv"),
             helper.make_node("QuantizeLinear", ["y", "ys", "yzp"], ["yq"], name="y_q"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yzp"], ["yd"], name="y_dq"),
             helper.make_node("Sigmoid", ["yd"], ["scores"], name="tail_sigmoid"),
             helper.make_node("Relu", ["xd"], ["side"], name="kept_relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 4, 4]),
                               helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_kept_float_nodes_read_the_float_tensor_not_its_qdq_copy() -> None:
    from mapgate.convert.ort_quant import feed_kept_nodes_float

    proto = _head_graph()
    assert feed_kept_nodes_float(proto, {"tail_sigmoid", "kept_relu"}) == ["x", "y"]
    nodes = {n.name: n for n in proto.graph.node}
    assert list(nodes["tail_sigmoid"].input) == ["y"] and list(nodes["kept_relu"].input) == ["x"]
    assert "y_q" not in nodes and "y_dq" not in nodes, "a Q/DQ pair nobody reads is removed"
    assert {i.name for i in proto.graph.initializer} == {"xs", "xzp", "w", "ws", "wzp"}  # ys/yzp went with it
    assert list(nodes["head_conv"].input) == ["xd", "wd"], "the conv itself still computes in INT8"
    onnx.checker.check_model(proto, full_check=True)
    from mapgate.convert.trt_onnx import qdq_form_problems

    assert qdq_form_problems(proto) == []


def test_nodes_not_kept_keep_their_qdq_inputs() -> None:
    from mapgate.convert.ort_quant import feed_kept_nodes_float

    proto = _head_graph()
    assert feed_kept_nodes_float(proto, set()) == []
    assert [n.name for n in proto.graph.node] == [n.name for n in _head_graph().graph.node]


def test_the_qdq_file_calibrates_on_the_images_every_int8_engine_records(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """ort_quant.build takes its calibration list from calibration.quantization_images, the function the
    TensorRT INT8 engine keys and records its calibration with: one list, one order."""
    from mapgate.convert import ort_quant

    seen: list[tuple] = []

    class Read(Exception):
        pass

    def images(given, limit=None):  # noqa: ANN001, ANN202
        seen.append((list(given), limit))
        raise Read

    monkeypatch.setattr(ort_quant, "onnx_for", lambda model, ctx: tmp_path / "m.onnx")
    monkeypatch.setattr(ort_quant, "quantization_images", images)
    given = [tmp_path / "b.jpg", tmp_path / "a.jpg"]
    ctx = BuildContext(engines_dir=tmp_path, calib_images=given, max_calib_images=1, progress=False)
    with pytest.raises(Read):
        ort_quant.build(_u8_model(tmp_path), ctx, "onnxruntime:int8")
    assert seen == [(given, 1)]


def test_the_qdq_form_ort_writes_parses_on_every_release() -> None:
    from mapgate.convert.trt_onnx import qdq_form_problems

    assert qdq_form_problems(_qdq_graph()) == []
    for version in ((8, 5, 0), (8, 6, 1), (10, 3, 0), (10, 13, 0), (11, 1, 0)):
        assert qdq_form_problems(_qdq_graph(), version) == [], version


@pytest.mark.parametrize("graph,refused_by,needle", [
    (dict(zero_point=False), ["8.6.1"], "requires 3 inputs"),  # 8.x QuantDequantLinearHelper
    (dict(opset=18), ["8.6.1"], "up to opset 17"),
    (dict(scale_type=onnx.TensorProto.FLOAT16), ["8.6.1"], "reads scales as FLOAT"),
    (dict(zp_value=1), ["8.6.1", "10.3.0", "11.1.0"], "non-zero zero point"),
    (dict(zp_type=onnx.TensorProto.UINT8), ["8.6.1", "10.3.0", "11.1.0"], "UINT8 zero point"),
    (dict(opset=10), ["8.6.1", "10.3.0", "11.1.0"], "needs opset >= 13"),
    (dict(quantized=False), ["8.6.1", "10.3.0", "11.1.0"], "no QuantizeLinear/DequantizeLinear"),
])
def test_a_qdq_form_a_release_refuses_is_named_for_that_release(graph: dict, refused_by: list[str],
                                                                needle: str) -> None:
    from mapgate.backends.tensorrt import parse_version
    from mapgate.convert.trt_onnx import qdq_form_problems

    proto = _qdq_graph(**graph)
    for version in ("8.6.1", "10.3.0", "11.1.0"):
        found = qdq_form_problems(proto, parse_version(version))
        assert (version in refused_by) == any(needle in p for p in found), (version, found)
    assert any(needle in p for p in qdq_form_problems(proto)), "without a version every release's form applies"


def test_check_qdq_form_is_one_line_naming_the_file_and_release(tmp_path: Path) -> None:
    from mapgate.convert.trt_onnx import check_qdq_form
    from mapgate.errors import ConversionError

    path = tmp_path / "q.onnx"
    onnx.save(_qdq_graph(zero_point=False), str(path))
    check_qdq_form(path, (10, 3, 0))
    with pytest.raises(ConversionError) as err:
        check_qdq_form(path, (8, 6, 1))
    assert str(path) in str(err.value) and "TensorRT 8.6.1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_fp16_mixed_precision_onnx_keeps_io_and_tail_in_float32(require_backend, bundled_models,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    require_backend("onnxruntime")
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed: pip install 'mapgate[trt]'")
    import onnxruntime as ort

    from mapgate.calibration import calibration_images
    from mapgate.convert import onnx_for
    from mapgate.convert.trt_onnx import build_fp16, keep_float_nodes
    from mapgate.dataset import read_image
    from mapgate.preprocess import preprocess

    model = bundled_models[YOLO]
    ctx = _ctx(tmp_path)
    fp32_path, fp16_path = onnx_for(model, ctx), build_fp16(model, ctx)
    assert build_fp16(model, ctx) == fp16_path  # a cached conversion
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_path)))
    g = proto.graph
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*g.input, *g.output])
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output]}
    halves = [n for n in g.node if any(types.get(o) == onnx.TensorProto.FLOAT16 for o in n.output)]
    assert len(halves) > len(g.node) // 3, "most of the network should compute in FP16"
    kept = set(keep_float_nodes(onnx.load(str(fp32_path)), model.convert.int8_keep_float))
    assert kept and all(types.get(o) == onnx.TensorProto.FLOAT for n in g.node if n.name in kept for o in n.output)
    batch, _ = preprocess(read_image(calibration_images()[0]), model)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {g.input[0].name: batch})  # noqa: E731
    for a, b in zip(run(fp32_path), run(fp16_path)):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)


def _u8_model(folder: Path) -> ModelSpec:
    """A model whose ONNX is ``folder/m.onnx`` (uint8 NCHW image input)."""
    from mapgate.manifest import FileRef, Postprocess, Preprocess

    return ModelSpec(name="u8", family="yolox", format="onnx", reference_backend="onnxruntime",
                     files={"model": FileRef(role="model", sha256=None, path=folder / "m.onnx")}, input_size=(8, 8),
                     preprocess=Preprocess(layout="NCHW", dtype="uint8"), postprocess=Postprocess(), tolerances={},
                     optimized=(), prebuilt={}, expected_verdicts={}, manifest_path=folder / "models.toml")


def _uint8_image_graph() -> "onnx.ModelProto":
    """The shape of every TF OD API export: uint8 image -> Cast to float -> conv -> float outputs."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.01, np.float32), "w")
    nodes = [helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Conv", ["image_f", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["conv"], ["scores"], name="relu0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fp16_onnx_of_a_uint8_image_model_keeps_the_uint8_input_and_float32_outputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed: pip install 'mapgate[trt]'")
    from mapgate.convert.trt_onnx import build_fp16

    src = tmp_path / "m.onnx"
    onnx.save(_uint8_image_graph(), str(src))
    out = build_fp16(_u8_model(tmp_path), BuildContext(engines_dir=tmp_path / "engines", progress=False))
    g = onnx.load(str(out)).graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.UINT8]
    assert [o.type.tensor_type.elem_type for o in g.output] == [onnx.TensorProto.FLOAT]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.slow
def test_ssdlite_strong_fp16_onnx_keeps_its_uint8_image_input(require_backend, bundled_models,  # noqa: ANN001
                                                              shared_engines: Path) -> None:
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed: pip install 'mapgate[trt]'")
    from mapgate.convert.trt_onnx import build_fp16

    _ssd_onnx(require_backend, bundled_models, shared_engines)
    g = onnx.load(str(build_fp16(bundled_models[SSD], _ctx(shared_engines)))).graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.UINT8]
    assert {o.type.tensor_type.elem_type for o in g.output} == {onnx.TensorProto.FLOAT}
