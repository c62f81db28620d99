"""Data-free INT8 fixes (mapgate/convert/dfq.py) on a small real ONNX graph run by ONNX Runtime:
cross-layer equalization keeps the FP32 function and equalizes the channel ranges; bias correction
removes the quantized convolutions' mean output error, without touching the Q/DQ form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mapgate.convert import dfq  # noqa: E402

C = 8


def _separable_block(rng: np.random.Generator, act: str = "LeakyRelu", fanout: bool = False) -> onnx.ModelProto:
    """pointwise conv -> act -> depthwise 3x3 -> act -> pointwise conv, channels scaled 1000x apart
    (what folding a BatchNorm into a convolution leaves behind)."""
    spread = np.logspace(-1.5, 1.5, C).astype(np.float32)
    w1 = rng.normal(size=(C, 3, 1, 1)).astype(np.float32) * spread[:, None, None, None]
    w2 = rng.normal(size=(C, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None]
    w3 = rng.normal(size=(4, C, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (rng.normal(size=C).astype(np.float32), "b1"),
                                                      (w2, "w2"), (np.zeros(C, np.float32), "b2"),
                                                      (w3, "w3"), (np.zeros(4, np.float32), "b3"))]
    act_attrs = {"alpha": 0.1} if act == "LeakyRelu" else {}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="pw1"),
             helper.make_node(act, ["y1"], ["a1"], name="act1", **act_attrs) if act != "Clip"
             else helper.make_node("Clip", ["y1", "lo", "hi"], ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["y2"], name="dw", group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y2"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["out"], name="pw2")]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if act == "Clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    if fanout:  # y1 read twice: scaling pw1 would change the second reader
        outputs.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray, name: str = "out") -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run([name], {"x": x})[0]


def _inputs(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=(1, 3, 12, 12)).astype(np.float32) for _ in range(n)]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_equalization_keeps_the_fp32_function_and_equalizes_each_pair() -> None:
    model = _separable_block(np.random.default_rng(0))
    eq, pairs = dfq.equalize(model)
    assert [(p.first, p.second, p.activation) for p in pairs] == [("pw1", "dw", "LeakyRelu"), ("dw", "pw2", "Relu")]
    for x in _inputs(3):
        ref, got = _run(model, x), _run(eq, x)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    def ranges(w: np.ndarray) -> np.ndarray:
        return np.abs(w).reshape(len(w), -1).max(axis=1)

    before, after = ranges(_weights(model)["w1"]), ranges(_weights(eq)["w1"])
    assert before.max() / before.min() > 100
    assert after.max() / after.min() < before.max() / before.min() / 10  # the 1000x channel spread is gone
    assert np.isfinite(ranges(_weights(eq)["w2"])).all()


def test_equalization_makes_per_tensor_int8_weights_lose_less() -> None:
    model = _separable_block(np.random.default_rng(0))
    eq, _ = dfq.equalize(model)

    def worst_channel_error(w: np.ndarray) -> float:
        """Relative error of the worst output channel under one per-tensor int8 scale: a small
        channel beside a large one rounds to almost nothing."""
        scale = np.abs(w).max() / 127.0
        err = (np.round(w / scale) * scale - w).reshape(len(w), -1)
        return float((np.linalg.norm(err, axis=1) / np.linalg.norm(w.reshape(len(w), -1), axis=1)).max())

    before, after = _weights(model), _weights(eq)
    assert worst_channel_error(before["w1"]) > 0.2
    assert worst_channel_error(after["w1"]) < worst_channel_error(before["w1"]) / 5


@pytest.mark.parametrize(("act", "fanout"), [("Clip", False), ("LeakyRelu", True)])
def test_pairs_that_equalization_would_break_are_left_alone(act: str, fanout: bool) -> None:
    """ReLU6 (Clip) is not positively homogeneous; a tensor with a second reader would see the scale."""
    model = _separable_block(np.random.default_rng(0), act=act, fanout=fanout)
    pairs = {(p.first, p.second) for p in dfq.equalizable_pairs(model)}
    assert ("pw1", "dw") not in pairs and ("dw", "pw2") in pairs
    eq, _ = dfq.equalize(model)
    x = _inputs(1)[0]
    names = ["out", "y1"] if fanout else ["out"]
    for name in names:
        ref = _run(model, x, name)
        assert np.abs(_run(eq, x, name) - ref).max() <= 1e-4 * np.abs(ref).max()
    np.testing.assert_array_equal(_weights(eq)["w1"], _weights(model)["w1"])


def _quantized(model: onnx.ModelProto, tmp_path: Path, batches: list[np.ndarray]) -> onnx.ModelProto:
    """TensorRT-form Q/DQ (symmetric int8, per-tensor weights, float bias), as mapgate's recipe builds it."""
    from onnxruntime import quantization as q

    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(src))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {"x": b}

    q.quantize_static(str(src), str(out), Reader(), quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, per_channel=False,
                      extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return onnx.load(str(out))


def _qdq_form(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...]]]:
    return [(n.op_type, tuple(n.input[:2])) for n in model.graph.node]


def test_bias_correction_removes_the_mean_output_error_and_keeps_the_qdq_form(tmp_path: Path) -> None:
    model = _separable_block(np.random.default_rng(0))
    calib, held_out = _inputs(16, seed=2), _inputs(16, seed=3)
    qdq = _quantized(model, tmp_path, calib)
    corrected, changed = dfq.correct_bias(qdq, model, iter(calib))
    assert sorted(changed) == ["dw", "pw1", "pw2"]
    assert _qdq_form(corrected) == _qdq_form(qdq)  # only float bias values moved
    moved = {k for k, v in _weights(corrected).items() if not np.array_equal(v, _weights(qdq)[k])}
    assert moved == {"b1", "b2", "b3"}

    def mean_bias(m: onnx.ModelProto) -> float:  # the per-channel mean error on images it was not fitted on
        diff = np.concatenate([_run(m, x) - _run(model, x) for x in held_out])
        return float(np.abs(diff.mean(axis=(0, 2, 3))).mean())

    assert mean_bias(corrected) < mean_bias(qdq) / 2


def test_bias_correction_without_quantized_convolutions_changes_nothing() -> None:
    model = _separable_block(np.random.default_rng(0))
    same, changed = dfq.correct_bias(model, model, iter(_inputs(2)))
    assert changed == [] and same.SerializeToString() == model.SerializeToString()
