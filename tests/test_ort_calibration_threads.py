"""ONNX Runtime's calibration session runs with mapgate's engine thread count (mapgate.cpu.engine_threads),
made exactly as ONNX Runtime makes it otherwise; the Q/DQ file does not depend on the thread count."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import calibrate

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images
from mapgate.convert import onnx_for, ort_quant
from mapgate.cpu import CALIBRATION_THREADS


def _one_conv(path: Path) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _calibrator(model: Path, tmp_path: Path) -> calibrate.CalibraterBase:
    return calibrate.create_calibrator(model, ["conv"], augmented_model_path=str(tmp_path / "augmented.onnx"))


def test_inside_the_block_the_calibration_session_has_the_given_threads_and_no_graph_optimisation(tmp_path: Path) -> None:
    model = _one_conv(tmp_path / "m.onnx")
    with ort_quant.calibration_threads(1):
        opts = _calibrator(model, tmp_path).infer_session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_without_a_thread_count_onnx_runtime_makes_its_own_session(tmp_path: Path) -> None:
    original = calibrate.CalibraterBase.create_inference_session
    with ort_quant.calibration_threads(None):
        assert calibrate.CalibraterBase.create_inference_session is original
        assert _calibrator(_one_conv(tmp_path / "m.onnx"), tmp_path).infer_session.get_session_options() \
            .intra_op_num_threads == 0  # 0: ORT picks, one per core


def test_onnx_runtimes_own_method_is_back_after_the_block_even_after_an_error() -> None:
    original = calibrate.CalibraterBase.create_inference_session
    with contextlib.suppress(RuntimeError), ort_quant.calibration_threads(1):
        assert calibrate.CalibraterBase.create_inference_session is not original
        raise RuntimeError("a failed build")
    assert calibrate.CalibraterBase.create_inference_session is original


def test_the_input_name_is_the_first_graph_input_that_is_not_an_initializer(tmp_path: Path) -> None:
    proto = onnx.load(_one_conv(tmp_path / "m.onnx"))
    proto.graph.input.insert(0, helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    assert ort_quant.graph_input_name(proto) == "x"
    del proto.graph.input[:]
    with pytest.raises(ort_quant.ConversionError, match="no input"):
        ort_quant.graph_input_name(proto)


@pytest.mark.slow  # three MinMax INT8 builds of yolo-fastest on 2 calibration images, ~4 s
def test_an_int8_file_does_not_depend_on_the_engine_threads_or_xdist(bundled_models, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # yolo-fastest's ranges differ between 1 and 2 ONNX Runtime threads (optimisations off), so a calibration
    # that followed MAPGATE_THREADS or the xdist worker count would give each setting its own file
    model = bundled_models["yolo-fastest-1.1-320"]
    source = onnx_for(model, BuildContext(engines_dir=tmp_path / "e", progress=False))
    images = calibration_images()[:2]
    built = []
    for env in ({"MAPGATE_THREADS": "1"}, {"MAPGATE_THREADS": "2"}, {"PYTEST_XDIST_WORKER_COUNT": "2"}):
        for name in ("MAPGATE_THREADS", "PYTEST_XDIST_WORKER_COUNT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        out = tmp_path / f"{len(built)}.onnx"
        ort_quant.quantize(source, out, model, images)
        built.append(out.read_bytes())
    assert built[0] == built[1] == built[2]


def test_quantize_calibrates_with_the_fixed_calibration_thread_count(tmp_path: Path, bundled_models,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    collect = calibrate.MinMaxCalibrater.collect_data

    def spy(self, data_reader) -> None:  # noqa: ANN001
        seen.append(self.infer_session.get_session_options().intra_op_num_threads)
        collect(self, data_reader)

    monkeypatch.setattr(calibrate.MinMaxCalibrater, "collect_data", spy)
    monkeypatch.setenv("MAPGATE_THREADS", "2")
    model = bundled_models["yolo-fastest-1.1-320"]
    source = onnx_for(model, BuildContext(engines_dir=tmp_path / "e", progress=False))
    ort_quant.quantize(source, tmp_path / "q.onnx", model, calibration_images()[:1])
    assert seen == [CALIBRATION_THREADS] == [1]
