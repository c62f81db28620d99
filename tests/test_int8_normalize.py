"""Real exports quantize: a Resize carrying both scales and sizes (NanoDet-style opset-11 export) is
cleaned before ONNX Runtime's quantizer sees it, and a quantizer failure is one mapgate error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mapgate.errors import ConversionError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mapgate.convert import ort_quant  # noqa: E402
from mapgate.catalog import load_models  # noqa: E402

NANODET = Path(__file__).resolve().parent.parent / "fixtures" / "models" / "nanodet-m" / "nanodet.onnx"


def _with_scales_and_sizes(proto):  # noqa: ANN001, ANN202
    """NanoDet's Resizes with a non-empty scales tensor next to their sizes, as some exporters write them."""
    for i, node in enumerate(n for n in proto.graph.node if n.op_type == "Resize"):
        name = f"both_scales_{i}"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), name))
        node.input[2] = name
    return proto


def test_a_resize_with_both_scales_and_sizes_keeps_only_sizes() -> None:
    proto = ort_quant.normalize_graph(_with_scales_and_sizes(onnx.load(str(NANODET))))
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert resizes and all(n.input[2] == "" and n.input[3] for n in resizes)


def test_an_empty_scales_input_is_left_alone() -> None:
    proto = ort_quant.normalize_graph(onnx.load(str(NANODET)))
    assert [n.input[2] for n in proto.graph.node if n.op_type == "Resize"] == \
        [n.input[2] for n in onnx.load(str(NANODET)).graph.node if n.op_type == "Resize"]


@pytest.mark.slow
def test_the_nanodet_export_with_both_inputs_quantizes(tmp_path: Path) -> None:
    model = load_models()["nanodet-m-320"]
    src = tmp_path / "both.onnx"
    onnx.save(_with_scales_and_sizes(onnx.load(str(NANODET))), str(src))
    from mapgate.calibration import calibration_images

    ort_quant.quantize(src, tmp_path / "int8.onnx", model, calibration_images()[:2])
    assert (tmp_path / "int8.onnx").stat().st_size > 0


def test_a_quantizer_failure_is_one_line_naming_the_model(tmp_path: Path) -> None:
    model = load_models()["nanodet-m-320"]
    with pytest.raises(ConversionError) as info, ort_quant._one_line_failure(model):
        raise RuntimeError("long traceback text\n...\n[ONNXRuntimeError] : 1 : FAIL : Node (Resize_222) bad input")
    msg = str(info.value)
    assert "\n" not in msg and "'nanodet-m-320'" in msg and "Resize_222" in msg and "int8_keep_float" in msg
