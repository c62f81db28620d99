"""The in-graph NMS family (``nms_outputs``): EfficientNMS and ONNX NonMaxSuppression outputs.

The real-graph test appends ONNX ``NonMaxSuppression`` (onnx.helper) to the bundled YOLOv5n:
scores = objectness x class score, boxes cx, cy, w, h (``center_point_box = 1``), IoU 0.6, score
threshold 0.001, 100 boxes per class, the thresholds of the yolov5n-640 entry. The graph ends
with both layouts: NMS's own ``selected_indices`` (+ the boxes and scores it selected from) and
the end2end style with boxes, scores and classes gathered. Run through mapgate's ONNX Runtime
backend, both must give exactly the detections mapgate's own decoder + NMS give from the raw
YOLOv5 output of the same run. Why they can be equal: per-class NMS with a per-class cap of 100
followed by a global top 100 is the same set as mapgate's single greedy pass (see postprocess/nms.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.catalog import load_manifest
from mapgate.postprocess import decoder_for, postprocess, select
from mapgate.preprocess import Transform

ROOT = Path(__file__).resolve().parent.parent
YOLOV5N = ROOT / "fixtures" / "models" / "yolov5n" / "yolov5n.onnx"


def with_onnx_nms(src: Path, dest: Path, iou: float, score: float, per_class: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    g = model.graph
    c = lambda name, vals, typ=TensorProto.INT64: g.initializer.append(  # noqa: E731
        helper.make_tensor(name, typ, [len(vals)], vals))
    c("nms_s0", [0]), c("nms_s4", [4]), c("nms_s5", [5]), c("nms_s85", [85]), c("nms_ax2", [2])
    c("nms_max", [per_class]), c("nms_iou", [iou], TensorProto.FLOAT), c("nms_score", [score], TensorProto.FLOAT)
    g.initializer.append(helper.make_tensor("nms_i1", TensorProto.INT64, [], [1]))
    g.initializer.append(helper.make_tensor("nms_i2", TensorProto.INT64, [], [2]))
    g.node.extend([
        helper.make_node("Slice", ["output", "nms_s0", "nms_s4", "nms_ax2"], ["boxes"]),
        helper.make_node("Slice", ["output", "nms_s4", "nms_s5", "nms_ax2"], ["obj"]),
        helper.make_node("Slice", ["output", "nms_s5", "nms_s85", "nms_ax2"], ["cls"]),
        helper.make_node("Mul", ["obj", "cls"], ["scores_nc"]),
        helper.make_node("Transpose", ["scores_nc"], ["scores"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "nms_max", "nms_iou", "nms_score"],
                         ["selected_indices"], center_point_box=1),
        # end2end style: the selected rows gathered into boxes / scores / classes
        helper.make_node("Gather", ["selected_indices", "nms_i2"], ["box_index"], axis=1),
        helper.make_node("Gather", ["selected_indices", "nms_i1"], ["det_classes"], axis=1),
        helper.make_node("Squeeze", ["boxes"], ["boxes_2d"], axes=[0]),
        helper.make_node("Gather", ["boxes_2d", "box_index"], ["det_boxes"], axis=0),
        helper.make_node("GatherND", ["scores", "selected_indices"], ["det_scores"]),
    ])
    f, i = TensorProto.FLOAT, TensorProto.INT64
    g.output.extend([
        helper.make_tensor_value_info("selected_indices", i, ["M", 3]),
        helper.make_tensor_value_info("boxes", f, [1, 25200, 4]),
        helper.make_tensor_value_info("scores", f, [1, 80, 25200]),
        helper.make_tensor_value_info("det_boxes", f, ["M", 4]),
        helper.make_tensor_value_info("det_scores", f, ["M"]),
        helper.make_tensor_value_info("det_classes", i, ["M"]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return dest


def nms_entries(tmp_path: Path, graph: Path) -> dict[str, ModelSpec]:
    sha = hashlib.sha256(graph.read_bytes()).hexdigest()
    common = f'''
family = "nms_outputs"
format = "onnx"
reference_backend = "onnxruntime"
input_size = [640, 640]
files.model = {{ path = "{graph.name}", sha256 = "{sha}" }}
preprocess = {{ resize = "letterbox", pad_value = 114, interpolation = "area", scale = 0.00392156862745098 }}
'''
    text = f'''
[models.onnx-nms]
{common}
postprocess = {{ score_threshold = 0.001, max_detections = 100, decoder = {{ layout = "selected_indices", box_format = "cxcywh", boxes = "boxes", scores = "scores" }} }}

[models.end2end]
{common}
postprocess = {{ score_threshold = 0.001, max_detections = 100, decoder = {{ layout = "efficient_nms", box_format = "cxcywh", boxes = "det_boxes", scores = "det_scores", classes = "det_classes", count = "" }} }}
'''
    path = tmp_path / "nms.toml"
    path.write_text(text)
    return load_manifest(path)


def test_onnx_nms_appended_to_yolov5n_equals_mapgates_own_decoding(tmp_path: Path, bundled_models,
                                                                   require_backend) -> None:
    from mapgate.backends import get_backend
    from mapgate.backends.base import BuildContext
    from mapgate.dataset import CocoDataset
    from mapgate.preprocess import preprocess

    require_backend("onnxruntime")
    yolov5n = bundled_models["yolov5n-640"]
    post = yolov5n.postprocess
    graph = with_onnx_nms(YOLOV5N, tmp_path / "yolov5n_nms.onnx", post.nms_iou, post.score_threshold,
                          post.max_detections)
    models = nms_entries(tmp_path, graph)
    assert models["onnx-nms"].postprocess.nms == "none"  # the family's NMS runs in the graph
    compared = 0
    with get_backend("onnxruntime").runner(models["onnx-nms"], None,
                                           BuildContext(engines_dir=tmp_path / "engines")) as runner:
        for sample in CocoDataset(max_images=8):
            batch, t = preprocess(sample.image, models["onnx-nms"])
            out = runner.infer(batch)
            assert set(out) >= {"output", "selected_indices", "det_boxes"}
            ours = postprocess({"output": out["output"]}, yolov5n, t, sample.image_id)
            in_graph = postprocess(out, models["onnx-nms"], t, sample.image_id)
            gathered = postprocess(out, models["end2end"], t, sample.image_id)
            for theirs in (in_graph, gathered):
                assert [(d["category_id"], d["score"]) for d in theirs] == [(d["category_id"], d["score"]) for d in ours]
                np.testing.assert_allclose([d["bbox"] for d in theirs], [d["bbox"] for d in ours], atol=1e-3)
            compared += len(ours)
    assert compared > 100  # real detections on real images, not an empty agreement


def efficient(tmp_path: Path, decoder: str) -> ModelSpec:
    path = tmp_path / "e.toml"
    path.write_text(f'''
[models.trt-e2e]
family = "nms_outputs"
format = "onnx"
reference_backend = "onnxruntime"
input_size = [320, 480]
files.model = {{ path = "x.onnx", sha256 = "{'0' * 64}" }}
postprocess = {{ score_threshold = 0.1, max_detections = 3, decoder = {decoder} }}
''')
    return load_manifest(path)["trt-e2e"]


def test_efficientnms_layout_uses_num_dets_and_ignores_the_padding_rows(tmp_path: Path) -> None:
    """TensorRT EfficientNMS: [1, 1] count, [1, K, 4] boxes, [1, K] scores and classes, padded."""
    model = efficient(tmp_path, '{ layout = "efficient_nms", box_format = "yxyx", coordinates = "normalized" }')
    out = {
        "num_dets": np.array([[4]], np.int32),
        "det_boxes": np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.75, 1.0],
                                [0.2, 0.2, 0.3, 0.3], [9, 9, 9, 9]]], np.float32),
        "det_scores": np.array([[0.9, 0.8, 0.3, 0.05, 0.99]], np.float32),
        "det_classes": np.array([[3, 0, 79, 5, 1]], np.int32),
    }
    boxes, scores, classes = select(decoder_for("nms_outputs").decode(out, model), model)
    assert classes.tolist() == [3, 0, 79]  # the padded row (score 0.99) is not real; 0.05 is below 0.1
    np.testing.assert_allclose(boxes, [[96, 32, 288, 160], [0, 0, 480, 320], [240, 160, 480, 240]], atol=1e-4)
    recs = postprocess(out, model, Transform(1.0, 1.0, 0.0, 0.0, 480, 320), image_id=1)
    assert [r["category_id"] for r in recs] == [4, 1, 90]  # coco80 indices -> official ids


def test_xywh_pixels_and_selected_indices_with_boxes_first_scores(tmp_path: Path) -> None:
    model = efficient(tmp_path, '{ layout = "selected_indices", box_format = "xywh", boxes = "b", scores = "s", '
                                'selected_indices = "sel", scores_layout = "boxes_first" }')
    out = {"b": np.array([[[10, 20, 30, 40], [0, 0, 5, 5]]], np.float32),
           "s": np.zeros((1, 2, 80), np.float32), "sel": np.array([[0, 7, 1], [0, 2, 0]], np.int64)}
    out["s"][0, 1, 7], out["s"][0, 0, 2] = 0.4, 0.7
    boxes, scores, classes = select(decoder_for("nms_outputs").decode(out, model), model)
    assert classes.tolist() == [2, 7] and scores.tolist() == pytest.approx([0.7, 0.4])
    np.testing.assert_allclose(boxes, [[10, 20, 40, 60], [0, 0, 5, 5]])


def test_asking_mapgate_to_run_nms_again_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"postprocess.nms'.*family 'nms_outputs'.*set nms = \"none\""):
        efficient(tmp_path, '{ layout = "efficient_nms" }, nms = "per_class"')


def test_mismatched_rows_are_an_error_naming_the_counts(tmp_path: Path) -> None:
    model = efficient(tmp_path, '{ layout = "efficient_nms", count = "" }')
    out = {"det_boxes": np.zeros((1, 5, 4), np.float32), "det_scores": np.zeros((1, 4), np.float32),
           "det_classes": np.zeros((1, 5), np.int32)}
    with pytest.raises(ConfigError, match="boxes 5, scores 4, classes 5"):
        decoder_for("nms_outputs").decode(out, model)
