"""The Q/DQ form is a recipe option (convert.int8_ops, convert.int8_activation_type): parsed from the
manifest, part of the INT8 file's cache key, applied by the quantizer, and reported by the gate."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from test_gate import verdict  # the hand-built verdict of the verdict-rule tests

from mapgate import report
from mapgate.convert import ort_quant


def _with_form(model, ops: str, act: str):
    return dataclasses.replace(model, convert=dataclasses.replace(model.convert, int8_ops=ops,
                                                                  int8_activation_type=act))


def test_the_default_form_is_tensorrts_and_keeps_the_key_every_file_was_built_with(bundled_models) -> None:
    model = bundled_models["yolov3-tiny-416"]
    assert ort_quant.form_of(model) == {"ops": "conv", "activation_type": "s8"} == ort_quant.TENSORRT_FORM
    assert "int8_ops" not in ort_quant.recipe_of(model) and "int8_activation_type" not in ort_quant.recipe_of(model)


def test_every_other_form_is_its_own_artifact(bundled_models) -> None:
    model = bundled_models["yolov3-tiny-416"]
    recipes = [ort_quant.recipe_of(_with_form(model, o, a)) for o in ("conv", "all") for a in ("s8", "u8")]
    assert len({repr(r) for r in recipes}) == 4
    assert ort_quant.recipe_of(_with_form(model, "all", "u8"))["int8_ops"] == "all"


def test_tensorrt_int8_refuses_a_cpu_only_form_even_outside_the_manifests_matrix(bundled_models, tmp_path) -> None:
    from mapgate.backends.base import BuildContext
    from mapgate.errors import ConfigError

    model = _with_form(bundled_models["yolov3-tiny-416"], "all", "s8")
    with pytest.raises(ConfigError, match="int8_ops.*not TensorRT's explicit-quantization form"):
        ort_quant.build(model, BuildContext(engines_dir=tmp_path), "tensorrt:int8")


def test_the_gate_reports_which_form_ran() -> None:
    v = verdict(0.0)
    v.opt = {"target": "onnxruntime:int8", "precision": "int8"}
    v.int8_form = {"ops": "all", "activation_type": "u8"}
    assert v.to_dict()["int8_form"] == {"ops": "all", "activation_type": "u8"}
    row = report.CaseRow.from_dict(report.CaseRow.of(v, "passed").to_dict())
    assert "onnxruntime:int8 (all/u8)" in report.run_table([row])
    for render in (report.case_text, report.case_markdown):
        assert 'convert.int8_ops = "all"' in render(v) and "u8 activations" in render(v)


@pytest.mark.slow
def test_all_ops_puts_qdq_beyond_convolutions_and_u8_is_unsigned(bundled_models, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from mapgate.backends.base import BuildContext
    from mapgate.calibration import calibration_images
    from mapgate.convert import onnx_for

    model = bundled_models["yolo-fastest-1.1-320"]
    source = onnx_for(model, BuildContext(engines_dir=tmp_path / "e", progress=False))
    images = calibration_images()[:2]
    forms = {}
    for ops, act in (("conv", "s8"), ("all", "u8")):
        out = tmp_path / f"{ops}-{act}.onnx"
        ort_quant.quantize(source, out, model, images, ops=ops, activation_type=act)
        g = onnx.load(str(out)).graph
        consumers = {i: n.op_type for n in g.node for i in n.input}
        zp = {t.name: t.data_type for t in g.initializer}
        q = [n for n in g.node if n.op_type == "QuantizeLinear"]
        forms[ops] = (Counter(consumers.get(n.output[0]) for n in q), {zp.get(n.input[2]) for n in q if len(n.input) > 2})
    conv_consumers, conv_zp = forms["conv"]
    all_consumers, all_zp = forms["all"]
    assert set(conv_consumers) == {"DequantizeLinear"}  # Q -> DQ pairs, each feeding a Conv
    assert conv_zp == {onnx.TensorProto.INT8} and all_zp == {onnx.TensorProto.UINT8}
    assert sum(all_consumers.values()) > sum(conv_consumers.values())  # more tensors carry Q/DQ
