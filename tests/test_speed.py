"""Speed beside every dAP: an FP16/INT8 comparison times its engine beside the same backend's FP32 in
the same run on the same images (engine only, batch 1), comparison.json carries ``speed``, the run
table has a speedup column, and an engine slower than FP32 is told so in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from test_gate import verdict  # the hand-built verdict of the verdict-rule tests

from mapgate import report
from mapgate.backends.base import Runner
from mapgate.benchmarking import SpeedVsFp32, speed_vs_fp32
from mapgate.compare import speed_pays

SPEED_KEYS = {"fp32_ms", "optimized_ms", "speedup_vs_fp32", "n_images", "backend", "fp32_backend"}


class _OrtModel(Runner):
    """A tiny real ONNX model run by ONNX Runtime: one convolution of ``channels`` channels."""

    backend = "onnxruntime"

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.channels, self.layers = channels, layers

    def activate_impl(self) -> None:
        ort = pytest.importorskip("onnxruntime")
        onnx = pytest.importorskip("onnx")
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        c, nodes, inits, prev = self.channels, [], [], "x"
        for i in range(self.layers):
            cin = 3 if i == 0 else c
            inits.append(numpy_helper.from_array(rng.normal(size=(c, cin, 3, 3)).astype(np.float32), f"w{i}"))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1]))
            prev = f"y{i}"
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                                  [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.out = prev

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {self.out: self.session.run([self.out], {"x": batch})[0]}


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(0, 1, size=(1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


def test_speed_record_has_exactly_the_documented_keys_and_a_consistent_speedup() -> None:
    with _OrtModel(8, 1) as fp32, _OrtModel(8, 1) as opt:
        s = speed_vs_fp32(fp32, opt, _images(6), "onnxruntime")
    d = s.to_dict()
    assert set(d) == SPEED_KEYS
    assert d["n_images"] == 6 and d["backend"] == "onnxruntime"
    assert d["fp32_ms"] > 0 and d["optimized_ms"] > 0
    assert d["speedup_vs_fp32"] == pytest.approx(d["fp32_ms"] / d["optimized_ms"])
    json.dumps(d)  # comparison.json must hold it as it is


def test_a_slower_engine_is_measured_slower_than_fp32() -> None:
    # 6 layers of 32 channels against 1 layer of 8: over 100x the arithmetic, so no load can hide it
    with _OrtModel(8, 1) as fast, _OrtModel(32, 6) as slow:
        s = speed_vs_fp32(fast, slow, _images(6), "onnxruntime")
    assert s.speedup_vs_fp32 < 1.0 and s.optimized_ms > s.fp32_ms


def test_speed_needs_images() -> None:
    from mapgate.errors import ConfigError

    with _OrtModel(8, 1) as a, pytest.raises(ConfigError, match="at least one image"):
        speed_vs_fp32(a, a, [], "onnxruntime")


def _speed(fp32_ms: float, opt_ms: float) -> dict:
    return SpeedVsFp32(fp32_ms, opt_ms, 20, "onnxruntime").to_dict()


def test_it_pays_at_a_speedup_of_one_or_more_and_not_below() -> None:
    slow = speed_pays(_speed(40.0, 60.8), "int8")
    assert slow is not None and not slow.pays and slow.slower_by == pytest.approx(1.52)
    assert speed_pays(_speed(40.0, 40.0), "int8").pays
    assert speed_pays(_speed(60.0, 40.0), "fp16").pays
    assert speed_pays(None, "int8") is None  # nothing timed: no claim either way


def test_the_does_not_pay_line_names_the_precision_and_how_much_slower() -> None:
    assert report.does_not_pay(speed_pays(_speed(40.0, 60.8), "int8")) == \
        "INT8 does not pay on this backend: 1.52 x slower than FP32"
    assert report.does_not_pay(speed_pays(_speed(10.0, 12.5), "fp16")) == \
        "FP16 does not pay on this backend: 1.25 x slower than FP32"
    assert report.does_not_pay(speed_pays(_speed(40.0, 40.0), "int8")) == ""
    assert report.does_not_pay(None) == ""


def _int8(v_speed: dict | None, d_ap: float = 0.0):
    v = verdict(d_ap)
    v.opt = {"target": "onnxruntime:int8", "precision": "int8"}
    v.speed = v_speed
    return v


def test_the_run_table_shows_the_speedup_next_to_dap_and_says_when_int8_does_not_pay() -> None:
    rows = [report.CaseRow.of(_int8(_speed(40.0, 60.8)), "passed", "m/a"),
            report.CaseRow.of(_int8(_speed(60.0, 40.0)), "passed", "m/b"),
            report.CaseRow.of(verdict(0.0), "passed", "m/c")]  # an fp16 case nobody timed
    rows = [report.CaseRow.from_dict(r.to_dict()) for r in rows]  # as they arrive from xdist workers
    table = report.run_table(rows).splitlines()
    header = table[0].split()
    assert header[header.index("dAP") + 1] == "speedup"
    assert "x0.66" in table[2] and "x1.50" in table[3]
    slow_line = "m onnxruntime:int8: INT8 does not pay on this backend: 1.52 x slower than FP32"
    assert slow_line in table and sum("does not pay" in line for line in table) == 1
    assert f"- {slow_line}" in report.run_markdown(rows)


def test_one_case_shows_its_speed_and_the_does_not_pay_line() -> None:
    slow, fast = _int8(_speed(40.0, 60.8)), _int8(_speed(60.0, 40.0))
    for render in (report.case_text, report.case_markdown):
        assert "INT8 does not pay on this backend: 1.52 x slower than FP32" in render(slow)
        assert "x0.66 FP32 speed" in render(slow) and "20 images" in render(slow)
        assert "does not pay" not in render(fast) and "x1.50 FP32 speed" in render(fast)
    assert "speed" in json.dumps(slow.to_dict()) and slow.to_dict()["speed"]["speedup_vs_fp32"] == \
        pytest.approx(40.0 / 60.8)


@pytest.mark.slow
def test_an_int8_comparison_times_the_backends_fp32_on_the_evaluated_images(tmp_path: Path, bundled_models,
                                                                             require_backend) -> None:
    """The real flow: Yolo-Fastest onnxruntime:int8 (calibrated on 8 images) on 4 images."""
    from mapgate.dataset import CALIB_DIR, CocoDataset
    from mapgate.gate import Gate

    require_backend("onnxruntime")
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted(CALIB_DIR.iterdir())[:8]:
        (calib / p.name).symlink_to(p)
    name = "yolo-fastest-1.1-320"
    gate = Gate(models={name: bundled_models[name]}, dataset=CocoDataset(max_images=4), engines_dir=tmp_path / "e",
                reports_dir=tmp_path / "r", run_id="run", progress=False, bootstrap_resamples=50, calib_dir=calib)
    v = gate.compare(name, "onnxruntime:int8")
    c = json.loads((gate.case_dir(name, "onnxruntime:int8") / "comparison.json").read_text())
    assert set(c["speed"]) == SPEED_KEYS and c["speed"] == v.speed
    assert c["speed"]["n_images"] == 4 and c["speed"]["backend"] == "onnxruntime"
    assert c["speed"]["speedup_vs_fp32"] == pytest.approx(c["speed"]["fp32_ms"] / c["speed"]["optimized_ms"])
    assert math.isfinite(c["speed"]["speedup_vs_fp32"])
    fp32 = gate.compare(name, "onnxruntime:fp32")
    assert fp32.speed is None  # FP32 against FP32 is not a speed question


def test_a_vendor_file_without_an_fp32_of_its_backend_is_timed_beside_the_reference(
        tmp_path: Path, bundled_models, require_backend) -> None:  # noqa: ANN001
    """YOLOX-nano's TFLite INT8 file comes without a TFLite FP32: its speed is measured against the
    reference engine (ONNX Runtime running the original ONNX), and the record and the text say so."""
    from mapgate.dataset import CocoDataset
    from mapgate.gate import Gate

    require_backend("tflite")
    require_backend("onnxruntime")
    name = "yolox-nano-416"
    gate = Gate(models={name: bundled_models[name]}, dataset=CocoDataset(max_images=3), engines_dir=tmp_path / "e",
                reports_dir=tmp_path / "r", run_id="run", progress=False, bootstrap_resamples=20)
    v = gate.compare(name, "tflite:int8")
    assert v.speed is not None and set(v.speed) == SPEED_KEYS
    assert v.speed["backend"] == "tflite" and v.speed["fp32_backend"] == "onnxruntime" and v.speed["n_images"] == 3
    assert v.speed["speedup_vs_fp32"] == pytest.approx(v.speed["fp32_ms"] / v.speed["optimized_ms"])
    assert "vs the reference onnxruntime FP32: tflite has no FP32 file" in report.case_text(v)
    row = report.CaseRow.of(v, "passed")
    assert row.speedup == v.speed["speedup_vs_fp32"]
