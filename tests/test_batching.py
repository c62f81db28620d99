"""--batch-size: batches of N give the detections of batch 1, per backend, within that
backend's own numeric noise:

* opencv (OpenCV DNN, Darknet): byte-identical detections;
* onnxruntime with a dynamic batch dim (the Darknet->ONNX conversion with its batch dim renamed
  'N'): byte-identical detections;
* tf (frozen graph, None batch dim): raw outputs within 1e-6 (measured: 2.3e-10 on scores, 1.2e-7
  on box encodings), detections equal after rounding (bbox 0.1 px, score 1e-3), AP identical;
* tflite: the bundled graphs have a fixed batch of one baked into a Reshape or into
  TFLite_Detection_PostProcess, so the runner says no and the loop runs batch 1;
* tensorrt: ``supports_batch`` is the hook for an optimization profile (not here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext
from mapgate.dataset import CocoDataset
from mapgate.detections import run_detections, split_outputs
from mapgate.preprocess import preprocess

ENGINES = Path(__file__).resolve().parent.parent / "engines"


def _runs(model, runner, data, *sizes):  # noqa: ANN001, ANN202
    return [run_detections(model, runner, data, progress=False, workers=2, batch_size=n) for n in sizes]


def test_opencv_batches_give_byte_identical_detections(bundled_models, require_backend) -> None:
    require_backend("opencv")
    model = bundled_models["yolo-fastest-1.1-320"]
    with get_backend("opencv").runner(model, None, BuildContext(engines_dir=ENGINES)) as runner:
        one, four = _runs(model, runner, CocoDataset(max_images=14), 1, 4)  # 14 = 3 full batches + a short one
    assert four.batch_size == 4
    assert orjson.dumps(four.detections) == orjson.dumps(one.detections)


def test_onnxruntime_with_a_dynamic_batch_dim_gives_byte_identical_detections(bundled_models, require_backend,
                                                                               tmp_path: Path, monkeypatch) -> None:
    require_backend("onnxruntime")
    import onnx

    import mapgate.backends.base as backends_base
    import mapgate.convert as convert

    model = bundled_models["yolo-fastest-1.1-320"]
    ctx = BuildContext(engines_dir=ENGINES)
    fixed = convert.artifact_for(model, "onnxruntime:fp32", ctx, from_onnx=True)
    proto = onnx.load(str(fixed))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"  # every op of the conversion is batch-agnostic
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(proto, str(dynamic))
    data = CocoDataset(max_images=14)

    with get_backend("onnxruntime").runner(model, "fp32", ctx) as runner:
        assert not runner.supports_batch(4)  # the converter's own output: batch 1 fixed
        (fixed_run,) = _runs(model, runner, data, 4)
    monkeypatch.setattr(backends_base, "artifact_for", lambda *a, **k: dynamic)
    with get_backend("onnxruntime").runner(model, "fp32", ctx) as runner:
        assert runner.supports_batch(4)
        one, four = _runs(model, runner, data, 1, 4)
    assert fixed_run.batch_size == 1 and four.batch_size == 4
    assert orjson.dumps(four.detections) == orjson.dumps(one.detections) == orjson.dumps(fixed_run.detections)


@pytest.mark.slow
def test_tf_batches_match_batch_one_within_float_noise(bundled_models, require_backend) -> None:
    require_backend("tf")
    from mapgate.evaluate import evaluate, load_ground_truth

    model = bundled_models["ssdlite_mobilenet_v2_coco"]
    data = CocoDataset(max_images=12)
    with get_backend("tf").runner(model, None, BuildContext(engines_dir=ENGINES)) as runner:
        assert runner.supports_batch(4)
        xs = [preprocess(data.load(i).image, model)[0] for i in data.image_ids[:4]]
        singles = [runner.infer(x) for x in xs]
        batched = split_outputs(runner.infer(np.concatenate(xs)), 4)
        one, four = _runs(model, runner, data, 1, 4)
    worst = max(float(np.abs(s[k] - b[k]).max()) for s, b in zip(singles, batched) for k in s)
    assert worst < 1e-6, f"max |batch 4 - batch 1| of raw outputs {worst:.3g}"

    def rounded(dets):  # noqa: ANN001, ANN202
        return [(d["image_id"], d["category_id"], [round(v, 1) for v in d["bbox"]], round(d["score"], 3)) for d in dets]

    assert rounded(four.detections) == rounded(one.detections)
    gt = load_ground_truth(data.gt)
    assert evaluate(gt, four.detections).stats == evaluate(gt, one.detections).stats


@pytest.mark.parametrize("model_name,precision", [("ssd_mobilenet_v1_quant_coco", None), ("yolox-nano-416", "fp16")])
def test_tflite_graphs_with_a_fixed_batch_fall_back_to_batch_one(bundled_models, require_backend,
                                                                 model_name, precision) -> None:
    require_backend("tflite")
    model = bundled_models[model_name]
    data = CocoDataset(max_images=5)
    with get_backend("tflite").runner(model, precision, BuildContext(engines_dir=ENGINES)) as runner:
        assert not runner.supports_batch(4)
        one, four = _runs(model, runner, data, 1, 4)  # the refused probe left the interpreter at batch 1
    assert four.batch_size == 1
    assert orjson.dumps(four.detections) == orjson.dumps(one.detections)


def test_outputs_without_a_batch_dimension_are_not_split() -> None:
    with pytest.raises(ValueError, match="no batch dimension"):
        split_outputs({"count": np.zeros((1, 10))}, 4)
    parts = split_outputs({"a": np.arange(8).reshape(4, 2)}, 4)
    assert [p["a"].tolist() for p in parts] == [[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]
