"""The stand-in's ONNX parser and builder refuse what TensorRT's refuse (tests/trt_standin/tensorrt/
_onnx_rules.py cites the source of each rule), name layers the way the real parser does, and
accept the ONNX files mapgate really generates. Small graphs are built here with onnx.helper;
the planted-defect runs go through the contract driver (real Polygraphy, mapgate's build path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'mapgate[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "tests" / "trt_standin" / "tensorrt" / "_onnx_rules.py"


def _load_rules() -> Any:
    # by path: putting tests/trt_standin on sys.path would make `import tensorrt` find the stand-in here
    spec = importlib.util.spec_from_file_location("trt_standin_onnx_rules", RULES_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


rules = _load_rules()


def qdq_conv(tmp_path: Path, *, zero_point: Any = np.int8(0), weight_axis: int = 0, weight_scales: int = 4,
             act_zero_point_given: bool = True,
             act_scale: Any = np.float32(0.02), scale_as_input: bool = False, input_type: int = TensorProto.FLOAT,
             cast_input_to: int | None = None) -> str:
    """x -> [Cast] -> Q -> DQ -> Conv(W = DQ(int8 weights, per-channel)) -> y: the form ORT's QDQ quantizer writes."""
    k, c = 4, 3
    nodes, inits, inputs = [], [], [helper.make_tensor_value_info("x", input_type, [1, c, 8, 8])]
    src = "x"
    if cast_input_to is not None:
        nodes.append(helper.make_node("Cast", ["x"], ["x_f"], name="cast_in", to=cast_input_to))
        src = "x_f"
    zp = np.asarray(zero_point)
    inits += [numpy_helper.from_array(zp, "zp")]
    if scale_as_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    else:
        inits.append(numpy_helper.from_array(np.asarray(act_scale, dtype=np.float32), "s"))
    zp_in = ["zp"] if act_zero_point_given else []
    nodes += [helper.make_node("QuantizeLinear", [src, "s", *zp_in], ["xq"], name="q_in"),
              helper.make_node("DequantizeLinear", ["xq", "s", *zp_in], ["xd"], name="dq_in")]
    w = np.arange(k * c * 9, dtype=np.int8).reshape(k, c, 3, 3) % 7
    size = [k, c, 3, 3][weight_axis]
    inits += [numpy_helper.from_array(w, "w"),
              numpy_helper.from_array(np.full(weight_scales if weight_scales != 4 else size, 0.01, np.float32), "ws"),
              numpy_helper.from_array(np.zeros(weight_scales if weight_scales != 4 else size, np.int8), "wzp"),
              numpy_helper.from_array(np.zeros(k, np.float32), "b")]
    nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="dq_w", axis=weight_axis),
              helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def refused(path: str, strongly_typed: bool = True, version: tuple[int, int] = (10, 3)) -> tuple[str, str]:
    with pytest.raises(rules.ParseError) as err:
        rules.lower(path, strongly_typed, version)
    return err.value.node, str(err.value)


def test_the_legal_qdq_form_is_accepted_and_lowered_with_its_constant_layers(tmp_path: Path) -> None:
    lowered = rules.lower(qdq_conv(tmp_path), True)
    names = [(layer.name, layer.type) for layer in lowered.layers]
    # the scale and zero point become IConstantLayers named after the initializers, once each (convertToTensor)
    assert names == [("s", "CONSTANT"), ("zp", "CONSTANT"), ("q_in", "QUANTIZE"), ("dq_in", "DEQUANTIZE"),
                     ("w", "CONSTANT"), ("ws", "CONSTANT"), ("wzp", "CONSTANT"), ("dq_w", "DEQUANTIZE"),
                     ("conv", "CONVOLUTION")]


def test_a_non_zero_zero_point_is_refused(tmp_path: Path) -> None:
    node, message = refused(qdq_conv(tmp_path, zero_point=np.int8(3)))
    assert node == "q_in" and "only supports symmetric quantization" in message and "[3]" in message


def test_a_uint8_zero_point_is_refused_by_86_and_turned_into_int8_by_10(tmp_path: Path) -> None:
    path = qdq_conv(tmp_path, zero_point=np.uint8(0))
    node, message = refused(path, False, (8, 6))
    assert node == "q_in" and "zero point is uint8" in message
    rules.WARNINGS.clear()
    rules.lower(path, False, (10, 3))  # [OTRT10]: a warning, and INT8 anyway
    assert any("UINT8 zero_point. TensorRT will use INT8 instead" in w for w in rules.WARNINGS)
    node, message = refused(qdq_conv(tmp_path, zero_point=np.uint8(128)), False, (10, 3))
    assert "only supports symmetric quantization" in message  # what asymmetric uint8 activations look like


@pytest.mark.parametrize("strongly_typed", [False, True])
def test_a_qdq_without_zero_point_is_refused_by_86_only(tmp_path: Path, strongly_typed: bool) -> None:
    path = qdq_conv(tmp_path, act_zero_point_given=False)
    node, message = refused(path, False, (8, 6))
    assert node == "q_in" and "requires 3 inputs for the INT8 QuantizeLinear/DequantizeLinear" in message
    assert [layer.name for layer in rules.lower(path, strongly_typed, (10, 3)).layers][:2] == ["s", "q_in"]


def test_a_scale_that_is_not_a_build_time_constant_is_refused(tmp_path: Path) -> None:
    node, message = refused(qdq_conv(tmp_path, scale_as_input=True))
    assert node == "q_in" and "not a build-time constant" in message


def test_a_two_dimensional_scale_is_refused(tmp_path: Path) -> None:
    _, message = refused(qdq_conv(tmp_path, act_scale=np.full((1, 1), 0.02, np.float32),
                                  zero_point=np.zeros((1, 1), np.int8)))
    assert "scalar (per-tensor) or 1-D (per-channel)" in message


def test_a_non_positive_scale_is_refused(tmp_path: Path) -> None:
    _, message = refused(qdq_conv(tmp_path, act_scale=np.float32(0.0)))
    assert "must all be positive" in message


def test_per_channel_scales_on_an_activation_are_refused(tmp_path: Path) -> None:
    _, message = refused(qdq_conv(tmp_path, act_scale=np.full(3, 0.02, np.float32), zero_point=np.zeros(3, np.int8)))
    assert "per-channel (3 scales) on an activation" in message


def test_weight_scales_along_the_input_channel_axis_are_refused(tmp_path: Path) -> None:
    node, message = refused(qdq_conv(tmp_path, weight_axis=1))
    assert node == "dq_w" and "along the output-channel axis 0" in message


def test_a_scale_count_that_does_not_match_the_axis_is_refused(tmp_path: Path) -> None:
    _, message = refused(qdq_conv(tmp_path, weight_scales=2))
    assert "the number of scales must equal that axis's size" in message


@pytest.mark.parametrize("strongly_typed", [True, False])
def test_a_uint8_input_straight_into_a_conv_is_refused(tmp_path: Path, strongly_typed: bool) -> None:
    node, message = refused(qdq_conv(tmp_path, input_type=TensorProto.UINT8), strongly_typed)
    assert node == "q_in" and "UINT8 network input 'x' feeds a QuantizeLinear" in message


def test_a_uint8_input_cast_to_int32_is_refused_and_cast_to_float_accepted(tmp_path: Path) -> None:
    _, message = refused(qdq_conv(tmp_path, input_type=TensorProto.UINT8, cast_input_to=TensorProto.INT32))
    assert "Cast (IdentityLayer) to FLOAT or HALF" in message
    lowered = rules.lower(qdq_conv(tmp_path, input_type=TensorProto.UINT8, cast_input_to=TensorProto.FLOAT), True)
    assert lowered.inputs == [("x", (1, 3, 8, 8), "UINT8")] and lowered.layers[0].type == "CAST"


def test_a_weakly_typed_qdq_network_without_the_int8_flag_is_refused_by_the_builder() -> None:
    weak = SimpleNamespace(_strongly_typed=False)
    (error,) = rules.builder_errors(weak, ["FP16"], has_qdq=True)
    assert "int8 is not configured in the builder" in error
    assert rules.builder_errors(weak, ["INT8"], has_qdq=True) == [] and rules.builder_errors(weak, ["FP16"]) == []
    assert rules.builder_errors(SimpleNamespace(_strongly_typed=True), [], has_qdq=True) == []


def test_precision_flags_on_a_strongly_typed_network_are_refused_by_the_builder() -> None:
    strong, weak = SimpleNamespace(_strongly_typed=True), SimpleNamespace(_strongly_typed=False)
    assert rules.builder_errors(strong, []) == [] and rules.builder_errors(weak, ["FP16", "INT8"]) == []
    for flag in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "STRICT_TYPES"):
        (error,) = rules.builder_errors(strong, [flag, "TF32"])
        assert f"['{flag}'] are not allowed for a strongly typed network" in error


def test_layers_get_the_parsers_names(tmp_path: Path) -> None:
    """Node names, "_<n>" when taken, "node_of_<output>" when unnamed, weights-named constants, no layer
    for a Constant node, and TensorRT's default name for a broadcast shuffle."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])
    nodes = [helper.make_node("Constant", [], ["two"], name="c",
                              value=numpy_helper.from_array(np.float32(2.0), "two")),
             helper.make_node("Mul", ["x", "two"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "bias"], ["a"], name="scale"),  # a duplicate node name
             helper.make_node("Relu", ["a"], ["y"])]  # unnamed
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((1, 2, 4), np.float32), "bias")])
    path = tmp_path / "names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    names = [(layer.name, layer.type) for layer in rules.lower(str(path), False).layers]
    assert names == [("two", "CONSTANT"), ("(Unnamed Layer* 1) [Shuffle]", "SHUFFLE"), ("scale", "ELEMENTWISE"),
                     ("bias", "CONSTANT"), ("scale_0", "ELEMENTWISE"), ("node_of_y", "ACTIVATION")]


# ---------------------------------------------------------------------------------------------
# mapgate's real files, and the planted defects through mapgate's build path
# ---------------------------------------------------------------------------------------------
MODELS = ["ssdlite_mobilenet_v2_coco", "yolov3-tiny-416", "yolo-fastest-1.1-320", "yolox-nano-416",
          "nanodet-m-320", "picodet-s-416", "yolov5n-640"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", MODELS)
def test_mapgates_fp32_and_qdq_onnx_files_pass_the_parser(model_name: str, bundled_models: dict[str, Any]) -> None:
    """The FP32 ONNX every engine starts from and the Q/DQ ONNX every INT8 engine builds (the onnxruntime:int8
    file), made by mapgate's own converters into the repository's engines cache; the Q/DQ file in 8.6's
    weakly typed parser as in 10.3's strongly typed one. The Q/DQ file is calibrated on 8 images: the
    number changes its scales, never its form, and 100 made this test 250 s of the suite's worker time."""
    from mapgate.backends.base import BuildContext
    from mapgate.calibration import calibration_images, image_ids_of
    from mapgate.convert import onnx_for
    from mapgate.convert.trt_onnx import build_int8

    model = bundled_models[model_name]
    calib = calibration_images(limit=8)
    ctx = BuildContext(engines_dir=ROOT / "engines", calib_images=calib,
                       calib_image_ids=frozenset(image_ids_of(calib)), progress=False)
    fp32 = rules.lower(str(onnx_for(model, ctx)), False)
    qdq_path = str(build_int8(model, ctx))
    qdq = rules.lower(qdq_path, True)
    assert [layer.name for layer in rules.lower(qdq_path, False, (8, 6)).layers] == [layer.name for layer in qdq.layers]
    assert fp32.inputs[0][2] == qdq.inputs[0][2] == ("UINT8" if model.preprocess.dtype == "uint8" else "FLOAT")
    assert sum(layer.type == "DEQUANTIZE" for layer in qdq.layers) > 0


@pytest.mark.slow
def test_mapgates_strong_fp16_onnx_of_a_uint8_model_passes_the_parser(bundled_models: dict[str, Any]) -> None:
    from mapgate.backends.base import BuildContext
    from mapgate.convert.trt_onnx import build_fp16

    model = bundled_models["ssdlite_mobilenet_v2_coco"]
    lowered = rules.lower(str(build_fp16(model, BuildContext(engines_dir=ROOT / "engines", progress=False))), True)
    assert lowered.inputs[0][2] == "UINT8" and lowered.outputs and all(t == "FLOAT" for _, _, t in lowered.outputs)


def _contract() -> Any:
    spec = importlib.util.spec_from_file_location("test_tensorrt_contract_for_rules",
                                                  ROOT / "tests" / "test_tensorrt_contract.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# Each defect fails where it should: mapgate's own Q/DQ form check (trt_onnx.check_qdq_form) refuses the file
# before TensorRT is reached; with that check switched off ("-unchecked") the stand-in parser refuses it
# through the real Polygraphy, so neither layer is the only one that can catch it.
@pytest.mark.slow
@pytest.mark.parametrize("version,typing,plant,build,needle,by", [
    ("10.13.0", "strong", "nonzero-zero-point", "int8-256", "a non-zero zero point", "mapgate"),
    ("8.6.1", None, "nonzero-zero-point-unchecked", "int8-256", "only supports symmetric quantization", "parser"),
    ("8.6.1", None, "no-zero-point", "int8-256", "TensorRT 8.5/8.6 requires 3 inputs", "mapgate"),
    ("8.6.1", None, "no-zero-point-unchecked", "int8-256", "requires 3 inputs for the INT8 Quantize", "parser"),
    ("10.3.0", None, "int8-from-fp32-onnx", "int8-256", "no Q/DQ layers", "mapgate"),
    ("11.1.0", None, "uint8-into-conv", "fp16-256", "UINT8 network input 'images' feeds a ", "parser"),
])
def test_the_contract_fails_on_a_planted_defect(version: str, typing: str | None, plant: str, build: str,
                                                needle: str, by: str, tmp_path: Path) -> None:
    contract = _contract()
    report = contract.run(version, typing, tmp_path / "engines", plant=plant)
    found = contract.checks.contract_violations(report, contract.MAPGATE_DIR, contract.POLYGRAPHY_PROBES)
    if by == "parser":
        assert any(f.startswith(f"build {build}: ONNX parser error") and needle in f for f in found), found
    else:
        assert not any(f.startswith(f"build {build}: ONNX parser error") for f in found), found
    assert any(f.startswith(f"build {build} failed: ConversionError") and (by == "parser" or needle in f)
               for f in found), found


@pytest.mark.slow
def test_a_qdq_file_without_zero_points_builds_on_tensorrt_10(tmp_path: Path) -> None:
    """The zero point rule is 8.x's, not every release's: the same planted file builds on 10.3."""
    contract = _contract()
    report = contract.run("10.3.0", None, tmp_path / "engines", plant="no-zero-point")
    assert contract.checks.contract_violations(report, contract.MAPGATE_DIR, contract.POLYGRAPHY_PROBES) == []
    assert report["builds"]["int8-256"]["onnx"].startswith("planted-nozp-")
