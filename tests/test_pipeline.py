"""Pre- and post-processing shared by every backend of a model, on hand-made inputs whose right
answer is known: resize/letterbox and its inverse, colour order, the YOLOX/SSD/OD-API decoders,
NMS (checked against a naive greedy NMS), the COCO results records, and COCO id mapping."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, decoder_for, postprocess, select, top_k_per_class
from mapgate.postprocess.coco_ids import COCO80_TO_ID, VALID_IDS, to_coco_ids
from mapgate.postprocess.nms import nms, nms_dense
from mapgate.preprocess import Transform, preprocess


def with_pre(model: ModelSpec, input_size: tuple[int, int] | None = None, **pre: object) -> ModelSpec:
    return dataclasses.replace(model, preprocess=dataclasses.replace(model.preprocess, **pre),
                               input_size=input_size or model.input_size)


def with_post(model: ModelSpec, **post: object) -> ModelSpec:
    return dataclasses.replace(model, postprocess=dataclasses.replace(model.postprocess, **post))


def identity(model: ModelSpec) -> Transform:
    h, w = model.input_size
    return Transform(1.0, 1.0, 0.0, 0.0, w, h)


def solid(h: int, w: int, bgr: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bgr
    return img


# ============================================================================ preprocess


def test_plain_resize_gives_the_manifest_shape_dtype_and_layout(bundled_models) -> None:
    image = solid(480, 640, (10, 20, 30))
    ssd = bundled_models["ssdlite_mobilenet_v2_coco"]  # NHWC uint8 300x300
    batch, t = preprocess(image, ssd)
    assert batch.shape == (1, 300, 300, 3) and batch.dtype == np.uint8
    assert batch.flags.c_contiguous
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (300 / 640, 300 / 480, 0.0, 0.0)
    assert (t.orig_width, t.orig_height) == (640, 480)
    tiny = bundled_models["yolov3-tiny-416"]  # NCHW float32 /255
    batch, _ = preprocess(image, tiny)
    assert batch.shape == (1, 3, 416, 416) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, :, 0, 0], np.array([30, 20, 10]) / 255.0, rtol=1e-6)  # RGB


def test_preprocess_does_not_modify_the_image(bundled_models) -> None:
    image = np.random.default_rng(0).integers(0, 256, (123, 77, 3), dtype=np.uint8)
    before = image.copy()
    for model in bundled_models.values():
        preprocess(image, model)
    np.testing.assert_array_equal(image, before)


def test_letterbox_topleft_pads_with_114_at_right_and_bottom(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]  # letterbox topleft, BGR, NCHW float32, raw 0..255
    wide = solid(100, 200, (7, 8, 9))  # r = 416/200 = 2.08 -> 416 x 208, pad below
    batch, t = preprocess(wide, yolox)
    assert batch.shape == (1, 3, 416, 416) and batch.dtype == np.float32
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (2.08, 2.08, 0.0, 0.0)
    assert (batch[0, :, 208:, :] == 114).all()
    assert (batch[0, :, :208, :] == np.array([7, 8, 9], np.float32)[:, None, None]).all()  # BGR kept
    tall = solid(200, 100, (7, 8, 9))  # pad at the right
    batch, _ = preprocess(tall, yolox)
    assert (batch[0, :, :, 208:] == 114).all()
    assert (batch[0, :, :, :208] != 114).all()


def test_letterbox_width_truncates_like_yolox(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    batch, t = preprocess(solid(300, 301, (1, 1, 1)), yolox)  # r = 416/301; new h = int(300*r) = 414
    new_h = int(300 * (416 / 301))
    assert new_h == 414 and t.scale_y == 416 / 301
    assert (batch[0, :, new_h:, :] == 114).all() and (batch[0, :, :new_h, :] == 1).all()


def test_letterbox_to_original_inverts_a_box_exactly(bundled_models) -> None:
    for align in ("topleft", "center"):
        model = with_pre(bundled_models["yolox-nano-416"], letterbox_align=align)
        _, t = preprocess(solid(375, 500, (0, 0, 0)), model)
        box = np.array([[12.25, 30.5, 480.0, 360.75], [0.0, 0.0, 500.0, 375.0]])
        net = np.empty_like(box)
        net[:, 0::2] = box[:, 0::2] * t.scale_x + t.pad_x
        net[:, 1::2] = box[:, 1::2] * t.scale_y + t.pad_y
        np.testing.assert_allclose(t.to_original(net), box, rtol=0, atol=1e-9)


def test_to_original_clips_to_the_image() -> None:
    t = Transform(0.5, 0.5, 10.0, 20.0, 100, 80)
    out = t.to_original(np.array([[0.0, 0.0, 500.0, 500.0]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0, 100.0, 80.0]])


def test_letterbox_center_pads_both_sides_equally(bundled_models) -> None:
    model = with_pre(bundled_models["yolox-nano-416"], letterbox_align="center")
    batch, t = preprocess(solid(100, 200, (7, 8, 9)), model)  # 416 x 208 -> 104 rows above and below
    assert (t.pad_x, t.pad_y) == (0.0, 104.0)
    assert (batch[0, :, :104, :] == 114).all() and (batch[0, :, 312:, :] == 114).all()
    assert (batch[0, :, 104:312, :] == np.array([7, 8, 9], np.float32)[:, None, None]).all()
    batch, t = preprocess(solid(200, 100, (7, 8, 9)), model)
    assert (t.pad_x, t.pad_y) == (104.0, 0.0)
    assert (batch[0, :, :, :104] == 114).all() and (batch[0, :, :, 312:] == 114).all()


def test_letterbox_pad_value_comes_from_the_manifest(bundled_models) -> None:
    model = with_pre(bundled_models["yolox-nano-416"], pad_value=0.0)
    batch, _ = preprocess(solid(100, 200, (7, 8, 9)), model)
    assert (batch[0, :, 208:, :] == 0).all()


@pytest.mark.parametrize(("color", "expected"), [("RGB", (0, 0, 255)), ("BGR", (255, 0, 0))])
def test_colour_order_follows_the_manifest(bundled_models, color: str, expected: tuple) -> None:
    blue = solid(32, 32, (255, 0, 0))  # OpenCV BGR: pure blue
    for layout in ("NCHW", "NHWC"):
        model = with_pre(bundled_models["yolov3-tiny-416"], (32, 32), color=color, layout=layout, scale=1.0)
        batch, _ = preprocess(blue, model)
        pixel = batch[0, :, 5, 5] if layout == "NCHW" else batch[0, 5, 5, :]
        assert tuple(pixel.tolist()) == expected


def test_scale_mean_and_std_are_applied_in_that_order(bundled_models) -> None:
    model = with_pre(bundled_models["yolov3-tiny-416"], (8, 8), color="BGR", scale=0.5,
                     mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    batch, _ = preprocess(solid(8, 8, (10, 20, 30)), model)
    np.testing.assert_allclose(batch[0, :, 0, 0], [(5 - 1) / 2, (10 - 2) / 4, (15 - 3) / 8])


# ============================================================================ decoders


YOLOX_ROWS = 52 * 52 + 26 * 26 + 13 * 13  # strides 8, 16, 32 at 416x416


def yolox_raw(rows: dict[int, list[float]]) -> np.ndarray:
    raw = np.zeros((1, YOLOX_ROWS, 85), np.float32)
    for i, values in rows.items():
        raw[0, i, : len(values)] = values
    return raw


def stride16_row(col: int, row: int) -> int:
    return 52 * 52 + row * 26 + col


def test_yolox_decodes_one_row_at_a_known_cell_and_stride(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    cls = [0.0] * 80
    cls[2] = 0.8  # car
    i = stride16_row(col=3, row=5)
    raw = yolox_raw({i: [0.5, 0.25, math.log(2.0), 0.0, 0.9, *cls]})
    cand = decoder_for("yolox").decode({"output": raw}, yolox)
    # cx = (3 + 0.5) * 16 = 56, cy = (5 + 0.25) * 16 = 84, w = 2 * 16 = 32, h = 1 * 16 = 16
    np.testing.assert_allclose(cand.boxes[i], [40.0, 76.0, 72.0, 92.0], rtol=1e-6)
    assert cand.scores.shape == (YOLOX_ROWS, 80)
    assert cand.scores[i, 2] == pytest.approx(0.72, rel=1e-6)
    assert np.count_nonzero(cand.scores) == 1
    records = postprocess({"output": raw}, yolox, identity(yolox), image_id=42)
    assert len(records) == 1
    r = records[0]
    assert r["image_id"] == 42 and r["category_id"] == 3  # coco80 index 2 -> COCO id 3
    assert r["bbox"] == pytest.approx([40.0, 76.0, 32.0, 16.0], rel=1e-6)
    assert r["score"] == pytest.approx(0.72, rel=1e-6)


def test_yolox_first_and_last_rows_use_stride_8_and_32(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    raw = yolox_raw({0: [0.0, 0.0, 0.0, 0.0, 0.9, 0.9], YOLOX_ROWS - 1: [0.0, 0.0, 0.0, 0.0, 0.9, 0.9]})
    cand = decoder_for("yolox").decode({"output": raw}, yolox)
    np.testing.assert_allclose(cand.boxes[0], [-4.0, -4.0, 4.0, 4.0])  # cell (0,0), stride 8
    np.testing.assert_allclose(cand.boxes[-1], [12 * 32 - 16, 12 * 32 - 16, 12 * 32 + 16, 12 * 32 + 16])


def test_yolox_wrong_row_count_is_an_error_naming_the_model(bundled_models) -> None:
    from mapgate.errors import ConfigError

    with pytest.raises(ConfigError, match="yolox-nano-416"):
        decoder_for("yolox").decode({"output": np.zeros((1, 100, 85), np.float32)}, bundled_models["yolox-nano-416"])


def test_yolox_is_single_label_keeping_the_best_class(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    cls = [0.0] * 80
    cls[0], cls[16] = 0.6, 0.7  # person 0.54, dog 0.63
    raw = yolox_raw({stride16_row(10, 10): [0.5, 0.5, 0.0, 0.0, 0.9, *cls]})
    records = postprocess({"output": raw}, yolox, identity(yolox), 1)
    assert [r["category_id"] for r in records] == [18]  # coco80 16 = dog = id 18


def ssd_outputs(boxes: list[list[float]], scores: dict[tuple[int, int], float]) -> dict[str, np.ndarray]:
    n = len(boxes)
    s = np.zeros((1, n, 90), np.float32)
    for (row, col), v in scores.items():
        s[0, row, col] = v
    return {"Postprocessor/ExpandDims_1": np.array(boxes, np.float32).reshape(1, n, 1, 4),
            "Postprocessor/Slice": s}


def test_ssd_boxes_are_normalised_ymin_xmin_ymax_xmax(bundled_models) -> None:
    ssd = bundled_models["ssdlite_mobilenet_v2_coco"]  # 300 x 300
    out = ssd_outputs([[0.1, 0.2, 0.5, 0.6]], {(0, 0): 0.9})
    cand = decoder_for("ssd").decode(out, ssd)
    np.testing.assert_allclose(cand.boxes, [[60.0, 30.0, 180.0, 150.0]], rtol=1e-6)
    assert cand.scores.shape == (1, 90)


def test_ssd_score_column_c_is_coco_id_c_plus_1_and_unused_ids_never_reach_the_output(
        bundled_models) -> None:
    ssd = bundled_models["ssdlite_mobilenet_v2_coco"]
    boxes = [[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]]
    # column 11 is COCO id 12, which val2017 does not use; it has the best score of all
    out = ssd_outputs(boxes, {(0, 0): 0.8, (1, 11): 0.99, (2, 89): 0.7, (3, 2): 0.6})
    records = postprocess(out, ssd, identity(ssd), 5)
    assert [r["category_id"] for r in records] == [1, 90, 3]
    assert all(r["category_id"] in VALID_IDS for r in records)
    assert records[0]["bbox"] == pytest.approx([0.0, 0.0, 60.0, 60.0], abs=1e-4)


def test_od_api_detections_honour_the_count_and_the_class_offset(bundled_models) -> None:
    quant = bundled_models["ssd_mobilenet_v1_quant_coco"]  # class_offset 1, 300x300, at most 10 rows
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, :3] = [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]
    classes = np.zeros((1, 10), np.float32)
    classes[0, :3] = [0, 2, 17]
    scores = np.zeros((1, 10), np.float32)
    scores[0, :3] = [0.9, 0.8, 0.95]
    out = {"TFLite_Detection_PostProcess": boxes, "TFLite_Detection_PostProcess:1": classes,
           "TFLite_Detection_PostProcess:2": scores, "TFLite_Detection_PostProcess:3": np.array([2.0], np.float32)}
    records = postprocess(out, quant, identity(quant), 9)
    assert [r["category_id"] for r in records] == [1, 3]  # row 3 (count 2) never appears
    assert records[0]["bbox"] == pytest.approx([60.0, 30.0, 120.0, 120.0], rel=1e-6)
    assert records[0]["score"] == pytest.approx(0.9, rel=1e-6)
    offset0 = with_post(quant, class_offset=0)  # tensorrt_demos' full graphs: classes are COCO ids
    assert [r["category_id"] for r in postprocess(out, offset0, identity(quant), 9)] == [2]  # id 0 is dropped


def test_od_api_detections_keep_the_top_max_detections_by_score(bundled_models) -> None:
    quant = with_post(bundled_models["ssd_mobilenet_v1_quant_coco"], max_detections=2, score_threshold=0.1)
    n = 5
    out = {"TFLite_Detection_PostProcess": np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (1, n, 1)),
           "TFLite_Detection_PostProcess:1": np.zeros((1, n), np.float32),
           "TFLite_Detection_PostProcess:2": np.float32([[0.05, 0.5, 0.9, 0.5, 0.3]]),
           "TFLite_Detection_PostProcess:3": np.float32([n])}
    records = postprocess(out, quant, identity(quant), 1)
    assert [r["score"] for r in records] == pytest.approx([0.9, 0.5])


# ============================================================================ NMS


def naive_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, thr: float, max_keep: int,
              agnostic: bool) -> list[int]:
    """Textbook greedy NMS: visit by descending score (ties: lower index first), keep a box unless
    a kept box (of its class) overlaps it by IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if len(kept) == max_keep:
            break
        ok = True
        for j in kept:
            if not agnostic and classes[i] != classes[j]:
                continue
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            union = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                     + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter)
            if inter / union > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize(("n", "max_keep", "thr"), [(2000, 2000, 0.45), (2000, 100, 0.65), (12000, 100, 0.5)])
def test_nms_equals_a_naive_greedy_nms_on_random_boxes(n: int, max_keep: int, thr: float, agnostic: bool) -> None:
    rng = np.random.default_rng(n + max_keep)
    boxes = random_boxes(rng, n)
    scores = np.round(rng.uniform(0, 1, n), 2)  # 2 decimals: many exact ties
    classes = rng.integers(0, 5, n)
    kept = nms(boxes, scores, classes, thr, max_keep, agnostic=agnostic)
    expected = naive_nms(boxes, scores, classes, thr, max_keep, agnostic)
    assert kept.tolist() == expected
    assert len(expected) > 20  # the case is not trivial


@pytest.mark.parametrize("agnostic", [False, True])
def test_dense_multilabel_nms_equals_naive_nms_over_every_box_class_pair(agnostic: bool) -> None:
    rng = np.random.default_rng(7)
    n_boxes, n_classes = 400, 5  # 2000 candidates
    boxes = random_boxes(rng, n_boxes)
    scores = np.round(rng.uniform(0, 1, (n_boxes, n_classes)), 2)
    thr_score = 0.3
    box_idx, cls_idx = nms_dense(boxes, scores, thr_score, 0.5, 100, agnostic=agnostic)
    cand_box, cand_cls = np.nonzero(scores > thr_score)  # row-major: the documented candidate order
    kept = naive_nms(boxes[cand_box], scores[cand_box, cand_cls], cand_cls, 0.5, 100, agnostic)
    assert list(zip(box_idx.tolist(), cls_idx.tolist())) == [(int(cand_box[k]), int(cand_cls[k])) for k in kept]


def test_nms_iou_threshold_is_strict() -> None:
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # intersection 50, union 100: IoU 0.5
    scores, classes = np.array([0.9, 0.8]), np.array([0, 0])
    assert nms(boxes, scores, classes, 0.5, 100).tolist() == [0, 1]  # IoU 0.5 is not > 0.5: both kept
    assert nms(boxes, scores, classes, 0.49, 100).tolist() == [0]


def test_per_class_nms_keeps_overlapping_boxes_of_other_classes_agnostic_does_not() -> None:
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])  # IoU 0.818
    scores, classes = np.array([0.9, 0.8]), np.array([0, 1])
    assert nms(boxes, scores, classes, 0.45, 100).tolist() == [0, 1]
    assert nms(boxes, scores, classes, 0.45, 100, agnostic=True).tolist() == [0]
    same = np.array([0, 0])
    assert nms(boxes, scores, same, 0.45, 100).tolist() == [0]


def test_nms_stops_at_max_detections_keeping_the_best() -> None:
    boxes = np.array([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(10)])  # disjoint
    scores = np.linspace(0.1, 1.0, 10)
    kept = nms(boxes, scores, np.zeros(10, int), 0.5, 3)
    assert kept.tolist() == [9, 8, 7]


def test_nms_orders_equal_scores_by_index() -> None:
    boxes = np.array([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(6)])
    scores = np.array([0.5, 0.7, 0.5, 0.7, 0.5, 0.7])
    assert nms(boxes, scores, np.zeros(6, int), 0.5, 100).tolist() == [1, 3, 5, 0, 2, 4]
    assert nms(boxes, scores, np.zeros(6, int), 0.5, 4).tolist() == [1, 3, 5, 0]


def test_nms_of_nothing_is_nothing() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5, 100).size == 0
    b, c = nms_dense(np.zeros((3, 4)), np.zeros((3, 2)), 0.5, 0.5, 100)
    assert b.size == 0 and c.size == 0


def test_select_without_nms_keeps_top_k_by_score(bundled_models) -> None:
    model = with_post(bundled_models["yolov3-tiny-416"], nms="none", max_detections=2, score_threshold=0.1)
    boxes = np.zeros((3, 4), np.float32)
    scores = np.zeros((3, 80), np.float32)
    scores[0, 0], scores[1, 1], scores[2, 2] = 0.2, 0.9, 0.5
    _, s, c = select(Candidates(boxes, scores), model)
    assert s.tolist() == pytest.approx([0.9, 0.5]) and c.tolist() == [1, 2]


def test_per_class_top_k_keeps_each_classes_best_candidates_lower_index_first_on_ties() -> None:
    scores = np.array([0.5, 0.9, 0.7, 0.7, 0.8, 0.1, 0.7])
    classes = np.array([0, 0, 0, 1, 1, 1, 0])
    # class 0: 0.9 (1), then 0.7 at 2 and 6 tie: index 2 goes first; class 1: 0.8 (4), 0.7 (3)
    assert top_k_per_class(scores, classes, 2).tolist() == [1, 2, 3, 4]
    assert top_k_per_class(scores, classes, 10).tolist() == list(range(7))
    assert top_k_per_class(np.zeros(0), np.zeros(0, int), 3).size == 0


def test_per_class_top_k_before_nms_drops_a_classes_tail_as_paddles_multiclass_nms_does(bundled_models) -> None:
    """Three disjoint class-0 boxes and one class-1 box: with nms_top_k 2 per class, class 0's worst
    box never reaches its NMS (Paddle's MultiClassNMS), though 100 detections per image would keep it."""
    model = with_post(bundled_models["picodet-s-416"], pre_nms_top_k_per_class=2, score_threshold=0.05)
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], np.float32)
    scores = np.zeros((4, 80), np.float32)
    scores[:3, 0] = [0.9, 0.8, 0.7]
    scores[3, 1] = 0.6
    _, s, c = select(Candidates(boxes, scores), model)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.6]) and c.tolist() == [0, 0, 1]
    _, s_all, _ = select(Candidates(boxes, scores), with_post(model, pre_nms_top_k_per_class=0))
    assert s_all.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])


# ============================================================================ postprocess() records


def busy_yolox_raw(seed: int = 0) -> np.ndarray:
    """Every row a confident candidate: far more than max_detections survive thresholding."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((1, YOLOX_ROWS, 85), np.float32)
    raw[0, :, :2] = rng.uniform(0, 1, (YOLOX_ROWS, 2))
    raw[0, :, 2:4] = rng.uniform(-1, 1, (YOLOX_ROWS, 2))
    raw[0, :, 4] = rng.uniform(0.5, 1, YOLOX_ROWS)
    raw[0, :, 5:] = rng.uniform(0, 1, (YOLOX_ROWS, 80))
    return raw


def test_postprocess_records_are_coco_results_in_original_pixels(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    cls = [0.0] * 80
    cls[79] = 0.5  # toothbrush
    raw = yolox_raw({stride16_row(col=3, row=5): [0.5, 0.25, math.log(2.0), 0.0, 0.9, *cls]})
    _, t = preprocess(solid(416, 832, (0, 0, 0)), yolox)  # r = 0.5: network box (40,76)-(72,92)
    records = postprocess({"output": raw}, yolox, t, image_id=139)
    assert len(records) == 1
    r = records[0]
    assert set(r) == {"image_id", "category_id", "bbox", "score"}
    assert r["bbox"] == pytest.approx([80.0, 152.0, 64.0, 32.0], rel=1e-6)  # [x, y, w, h] in the 832x416 image
    assert r["category_id"] == 90
    assert type(r["score"]) is float and type(r["category_id"]) is int and type(r["image_id"]) is int
    assert all(type(v) is float for v in r["bbox"])


def test_postprocess_returns_at_most_max_detections_best_first(bundled_models) -> None:
    model = bundled_models["yolox-nano-416"]
    records = postprocess({"output": busy_yolox_raw()}, model, identity(model), 1)
    assert len(records) == model.postprocess.max_detections == 100
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    assert {r["category_id"] for r in records} <= VALID_IDS
    small = with_post(model, max_detections=7)
    assert len(postprocess({"output": busy_yolox_raw()}, small, identity(model), 1)) == 7


def test_postprocess_does_not_modify_the_callers_tensors(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    raw = busy_yolox_raw()
    before = raw.copy()
    postprocess({"output": raw}, yolox, identity(yolox), 1)
    np.testing.assert_array_equal(raw, before)

    ssd = bundled_models["ssdlite_mobilenet_v2_coco"]
    rng = np.random.default_rng(1)
    y0x0 = rng.uniform(0, 0.5, (500, 2))
    out = {"Postprocessor/ExpandDims_1": np.concatenate([y0x0, y0x0 + 0.3], 1).astype(np.float32).reshape(1, 500, 1, 4),
           "Postprocessor/Slice": rng.uniform(0, 1, (1, 500, 90)).astype(np.float32)}
    copies = {k: v.copy() for k, v in out.items()}
    assert len(postprocess(out, ssd, identity(ssd), 1)) > 0
    for k, v in out.items():
        np.testing.assert_array_equal(v, copies[k])


def test_a_single_output_with_another_name_is_accepted(bundled_models) -> None:
    """Vendor TFLite conversions rename the one output (e.g. 'PartitionedCall')."""
    yolox = bundled_models["yolox-nano-416"]
    raw = busy_yolox_raw()
    assert postprocess({"PartitionedCall": raw}, yolox, identity(yolox), 1) == \
        postprocess({"output": raw}, yolox, identity(yolox), 1)


# ============================================================================ class ids


def test_coco80_indices_map_to_official_ids_first_last_and_gaps() -> None:
    idx = np.array([0, 10, 11, 23, 24, 25, 39, 40, 59, 60, 61, 62, 72, 73, 79])
    expected = [1, 11, 13, 25, 27, 28, 44, 46, 65, 67, 70, 72, 82, 84, 90]
    assert to_coco_ids(idx, "coco80", 1).tolist() == expected


def test_coco80_table_is_the_80_official_ids_ascending() -> None:
    assert len(COCO80_TO_ID) == 80 and len(VALID_IDS) == 80
    assert (np.diff(COCO80_TO_ID) > 0).all()
    assert sorted(set(range(1, 91)) - VALID_IDS) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


def test_coco80_indices_out_of_range_become_minus_one() -> None:
    assert to_coco_ids(np.array([-1, 80, 90]), "coco80", 1).tolist() == [-1, -1, -1]


def test_coco90_is_index_plus_offset_and_unused_ids_become_minus_one() -> None:
    assert to_coco_ids(np.array([0, 11, 89, 90]), "coco90", 1).tolist() == [1, -1, 90, -1]
    assert to_coco_ids(np.array([1, 12, 90, 0]), "coco90", 0).tolist() == [1, -1, 90, -1]


def test_official_ids_match_the_bundled_annotations_categories() -> None:
    from mapgate.dataset import CocoDataset

    assert sorted(c["id"] for c in CocoDataset().gt["categories"]) == COCO80_TO_ID.tolist()

