"""`mapgate convert`: the ONNX an engine is built from and its build recipe, written on a CPU machine
without TensorRT or a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapgate.cli import main
from mapgate.convert.export import parse_opt, resolve_typing, trtexec_command
from mapgate.errors import ConfigError

onnx = pytest.importorskip("onnx")


def _convert(tmp_path: Path, model: str, opt: str, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / "out"
    assert main(["convert", "--model", model, "--opt", opt, "--out", str(out), *extra]) == 0
    onnx_files = sorted(out.glob("*.onnx"))
    json_files = sorted(out.glob("*.json"))
    assert len(onnx_files) == 1 and len(json_files) == 1, sorted(p.name for p in out.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted([onnx_files[0].name, json_files[0].name])  # no cache left
    return onnx_files[0], json.loads(json_files[0].read_text())


@pytest.mark.slow
def test_convert_writes_the_strong_fp16_onnx_of_ssdlite_with_uint8_input_and_float32_outputs(tmp_path: Path) -> None:
    path, recipe = _convert(tmp_path, "ssdlite_mobilenet_v2_coco", "tensorrt:fp16", "--trt-typing", "strong")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    T = onnx.TensorProto
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [T.UINT8]
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {T.FLOAT}
    assert any(init.data_type == T.FLOAT16 for init in proto.graph.initializer)  # FP16 compute inside
    assert recipe["typing"] == "strong" and recipe["recipe"]["mode"] == "strongly typed"
    assert recipe["recipe"]["flags"] == [] and recipe["fp32_layers"] == []
    assert "--stronglyTyped" in recipe["trtexec"] and f"--onnx={path.name}" in recipe["trtexec"]
    assert "--fp16" not in recipe["trtexec"]  # precision is in the graph: a flag would be refused
    assert recipe["io_types"]["image_tensor:0"] == "UINT8"


@pytest.mark.slow
def test_convert_onnxruntime_int8_writes_the_qdq_onnx_and_its_calibration(tmp_path: Path) -> None:
    path, recipe = _convert(tmp_path, "yolox-nano-416", "onnxruntime:int8")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert recipe["qdq"]["settings"]["format"] == "QDQ" and recipe["calibration"]["count"] > 0
    assert len(recipe["calibration"]["images"]) == recipe["calibration"]["count"]


def test_weak_int8_trtexec_line_is_the_int8_flag_alone_on_the_qdq_onnx() -> None:
    """Weakly typed INT8 builds the Q/DQ file (explicit quantization): no calibration cache, no FP16
    fallback, no pins (what the file leaves in float runs FP32); the weak FP16 line pins the float layers."""
    cmd = trtexec_command("m.onnx", "m.engine", "int8", "weak", "images", [1, 3, 416, 416], True, 512)
    assert cmd[:5] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--noTF32", "--memPoolSize=workspace:512"]
    assert "--minShapes=images:1x3x416x416" in cmd and "--int8" in cmd
    assert not any(a.startswith(("--fp16", "--calib", "--precisionConstraints", "--layerPrecisions")) for a in cmd)
    fp16 = trtexec_command("m.onnx", "m.engine", "fp16", "weak", "images", [1, 3, 416, 416], False, 512,
                           ["Conv_9", "Sigmoid_3"])
    assert "--fp16" in fp16 and "--precisionConstraints=obey" in fp16
    assert "--layerPrecisions=Conv_9:fp32,Sigmoid_3:fp32" in fp16
    strong = trtexec_command("m.onnx", "m.engine", "int8", "strong", "images", [1, 3, 416, 416], False, 512)
    assert "--stronglyTyped" in strong and not any(a.startswith(("--int8", "--fp16", "--calib")) for a in strong)


def test_typing_defaults_to_the_installed_tensorrt_and_without_one_to_strong() -> None:
    assert resolve_typing(None, None) == "strong"
    assert resolve_typing(None, "8.6.1") == "weak"
    assert resolve_typing(None, "11.1.0") == "strong"
    assert resolve_typing("weak", None) == "weak"


def test_parse_opt_takes_only_targets_built_from_an_onnx() -> None:
    assert parse_opt("tensorrt:int8").name == "tensorrt:int8"
    with pytest.raises(ConfigError, match="tensorrt:fp16"):
        parse_opt("tflite:int8")


def test_weak_fp16_recipe_names_the_pinned_layers_and_the_fp32_onnx(tmp_path: Path) -> None:
    """yolox-nano's ONNX is bundled: no conversion, so this is fast."""
    path, recipe = _convert(tmp_path, "yolox-nano-416", "tensorrt:fp16", "--trt-typing", "weak")
    assert path.name == "yolox-nano-416.tensorrt-fp16-weak.onnx"
    assert recipe["recipe"]["flags"] == ["fp16"] and recipe["recipe"]["precision_constraints"] == "obey"
    assert recipe["fp32_layers"] and recipe["recipe"]["fp32_layers"] == len(recipe["fp32_layers"])
    nodes = {n.name for n in onnx.load(str(path)).graph.node}
    assert set(recipe["fp32_layers"]) <= nodes  # the tail of this very file
    assert "--fp16" in recipe["trtexec"] and "--stronglyTyped" not in recipe["trtexec"]
    assert set(recipe["io_types"].values()) == {"FLOAT"}
