"""The GFL family (NanoDet, PicoDet): one decoder, settings from the manifest.

The bundled ONNX files have fixed input shapes (NanoDet-m [1, 3, 320, 320], PicoDet-S 416), so
the other-size cases build head outputs with numpy from a known box set: per cell, a class map
and four side distributions whose softmax expectation is the box's distance to the cell centre,
then check the decoder recovers the boxes exactly. The bundled sizes run for real in
tests/accuracy/test_reference_models.py (AP on val2017-mini) and once here on one image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.catalog import load_manifest
from mapgate.postprocess import decoder_for, postprocess, select
from mapgate.preprocess import Transform

REG_MAX = 7


def nanodet_at(tmp_path: Path, manifest_copy, size: int, extra: dict[str, str] | None = None) -> ModelSpec:
    """The bundled NanoDet-m entry at another input size: a manifest edit, no code."""
    replace = {"input_size = [320, 320]": f"input_size = [{size}, {size}]", **(extra or {})}
    return load_manifest(manifest_copy(tmp_path / "m.toml", "nanodet-m-320", replace))["nanodet-m-320"]


def _bins(d: float) -> np.ndarray:
    """Logits of 8 bins whose softmax expectation is d (0 <= d <= 7): mass on the two bins around d."""
    lo = min(int(np.floor(d)), REG_MAX - 1)
    f = d - lo
    p = np.full(REG_MAX + 1, 1e-30)
    p[lo], p[lo + 1] = 1.0 - f + 1e-30, f + 1e-30
    return np.log(p)


def synthetic_heads(size: tuple[int, int], strides: list[int], objects: list[tuple[int, int, int, int, float]],
                    offset: float = 0.5, classes: int = 80) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per stride, (N, classes) scores and (N, 32) distributions; each object is (stride index, cell
    index, class, score, and its ltrb distances in stride units drawn at random)."""
    h, w = size
    cls, box = [], []
    for s in strides:
        n = -(-h // s) * -(-w // s)
        cls.append(np.zeros((n, classes), np.float32))
        box.append(np.zeros((n, 4 * (REG_MAX + 1)), np.float32))
    rng = np.random.default_rng(0)
    expected = []
    for level, cell, c, _, score in objects:
        s = strides[level]
        gw = -(-w // s)
        cx, cy = (cell % gw + offset) * s, (cell // gw + offset) * s
        ltrb = rng.uniform(0.2, 6.5, 4)
        cls[level][cell, c] = score
        box[level][cell] = np.concatenate([_bins(d) for d in ltrb])
        x1, y1, x2, y2 = cx - ltrb[0] * s, cy - ltrb[1] * s, cx + ltrb[2] * s, cy + ltrb[3] * s
        expected.append((np.clip([x1, y1, x2, y2], 0, [w, h, w, h]), c, score))
    return (cls, box), expected


OBJECTS = [(0, 5, 0, 0, 0.9), (0, 777, 17, 0, 0.6), (1, 40, 2, 0, 0.8), (2, 3, 79, 0, 0.7)]


def test_nanodet_decoder_at_416_from_the_manifest_entry_alone(tmp_path: Path, manifest_copy) -> None:
    model = nanodet_at(tmp_path, manifest_copy, 416)
    (cls, box), expected = synthetic_heads((416, 416), [8, 16, 32], OBJECTS)
    assert [len(c) for c in cls] == [52 * 52, 26 * 26, 13 * 13]
    # names that say nothing (or lie, as in the bundled file): the maps are found by shape
    names = ["cls_score0", "bbox_pred0", "cls_score1", "bbox_pred1", "cls_score2", "bbox_pred2"]
    outputs = dict(zip(names, [cls[0], cls[1], cls[2], box[0], box[1], box[2]]))
    cand = decoder_for("gfl").decode(outputs, model)
    assert cand.boxes.shape == (1000 + 26 * 26 + 13 * 13, 4)  # NanoDet's top 1000 cells of the 52x52 level
    boxes, scores, classes = select(cand, model)
    assert len(boxes) == len(expected)
    for (want, c, score), got_box, got_score, got_cls in zip(sorted(expected, key=lambda e: -e[2]), boxes, scores,
                                                             classes):
        np.testing.assert_allclose(got_box, want, atol=1e-3)
        assert got_cls == c and got_score == pytest.approx(score)


def test_picodet_decoder_at_320_with_named_outputs(tmp_path: Path, manifest_copy) -> None:
    """PicoDet-S at 320 (a size the bundled 416 file cannot run), four strides, outputs named."""
    names = [f"save_infer_model/scale_{i}.tmp_1" for i in range(8)]
    decoder = (f'decoder = {{ outputs = "by_name", strides = [8, 16, 32, 64], class_outputs = {names[:4]!r}, '
               f'box_outputs = {names[4:]!r}, pre_nms_top_k_per_level = 1000 }}').replace("'", '"')
    path = manifest_copy(tmp_path / "p.toml", "picodet-s-416", {
        "input_size = [416, 416]": "input_size = [320, 320]",
        'decoder = { outputs = "by_shape", strides = [8, 16, 32, 64], reg_max = 7, cell_offset = 0.5, '
        'pre_nms_top_k_per_level = 1000 }': decoder})
    model = load_manifest(path)["picodet-s-416"]
    objects = [(0, 10, 1, 0, 0.5), (3, 24, 5, 0, 0.95)]  # stride 64 on 320: a 5x5 grid (ceil)
    (cls, box), expected = synthetic_heads((320, 320), [8, 16, 32, 64], objects)
    assert [len(c) for c in cls] == [1600, 400, 100, 25]
    outputs = {n: t[None] for n, t in zip(names, cls + box)}  # PaddleDetection's [1, N, K]
    boxes, scores, classes = select(decoder_for("gfl").decode(outputs, model), model)
    assert classes.tolist() == [5, 1]
    np.testing.assert_allclose(boxes, [expected[1][0], expected[0][0]], atol=1e-3)


def test_concatenated_logit_layout_as_nanodet_plus_exports_it(tmp_path: Path, manifest_copy) -> None:
    """One [1, N, C + 32] tensor, raw logits, cell centres at index * stride: settings only."""
    model = nanodet_at(tmp_path, manifest_copy, 416, {
        'decoder = { outputs = "by_shape", strides = [8, 16, 32], reg_max = 7, cell_offset = 0.5, '
        'pre_nms_top_k_per_level = 1000 }':
        'decoder = { outputs = "concatenated", output = "output", cell_offset = 0.0, scores_activated = false }'})
    (cls, box), expected = synthetic_heads((416, 416), [8, 16, 32], OBJECTS, offset=0.0)
    logits = [np.where(c > 0, np.log(np.maximum(c, 1e-6) / (1 - c)), -30.0).astype(np.float32) for c in cls]
    raw = np.concatenate([np.concatenate((lg, b), axis=1) for lg, b in zip(logits, box)])[None]
    boxes, scores, classes = select(decoder_for("gfl").decode({"output": raw}, model), model)
    order = sorted(expected, key=lambda e: -e[2])
    np.testing.assert_allclose(boxes, [e[0] for e in order], atol=1e-3)
    np.testing.assert_allclose(scores, [e[2] for e in order], atol=1e-5)


def test_boxes_come_back_in_original_image_pixels_through_the_centred_letterbox(tmp_path: Path,
                                                                                manifest_copy) -> None:
    model = nanodet_at(tmp_path, manifest_copy, 416)
    (cls, box), expected = synthetic_heads((416, 416), [8, 16, 32], [(1, 26 * 13 + 13, 0, 0, 0.9)])
    outputs = dict(zip("abcdef", cls + box))
    # a 640x480 image in a 416 square: scale 0.65, 26 rows of zero padding above and below
    t = Transform(0.65, 0.65, 0.0, 26.0, 640, 480)
    (rec,) = postprocess(outputs, model, t, image_id=7)
    x1, y1, x2, y2 = expected[0][0]
    np.testing.assert_allclose(rec["bbox"], [x1 / 0.65, (y1 - 26) / 0.65, (x2 - x1) / 0.65, (y2 - y1) / 0.65],
                               atol=1e-3)
    assert rec["category_id"] == 1 and rec["image_id"] == 7


def test_nanodets_per_level_top_k_keeps_the_best_cells_of_each_level(tmp_path: Path, manifest_copy) -> None:
    model = nanodet_at(tmp_path, manifest_copy, 416, {"pre_nms_top_k_per_level = 1000": "pre_nms_top_k_per_level = 2"})
    objects = [(0, 1, 0, 0, 0.3), (0, 2, 0, 0, 0.9), (0, 3, 1, 0, 0.8), (2, 0, 0, 0, 0.2)]
    (cls, box), _ = synthetic_heads((416, 416), [8, 16, 32], objects)
    cand = decoder_for("gfl").decode(dict(zip("abcdef", cls + box)), model)
    assert cand.scores.shape == (2 + 2 + 2, 80)  # two cells per level survive
    assert sorted(cand.scores.max(axis=1).tolist(), reverse=True)[:3] == pytest.approx([0.9, 0.8, 0.2])


def test_a_size_that_does_not_match_the_engine_is_an_error_naming_the_shapes(tmp_path: Path,
                                                                             manifest_copy) -> None:
    model = nanodet_at(tmp_path, manifest_copy, 416)
    (cls, box), _ = synthetic_heads((320, 320), [8, 16, 32], [])
    with pytest.raises(ConfigError, match=r"exactly one \[2704, 80\] map for input \[416, 416\].*\[1600, 80\]"):
        decoder_for("gfl").decode(dict(zip("abcdef", cls + box)), model)


def test_the_bundled_nanodet_runs_for_real_and_finds_the_tv(bundled_models, require_backend) -> None:
    """val2017 000000000139 shows a TV and chairs (the file's own provenance check)."""
    import cv2

    from mapgate.backends import get_backend
    from mapgate.backends.base import BuildContext
    from mapgate.dataset import BUNDLED_ROOT
    from mapgate.preprocess import preprocess

    require_backend("onnxruntime")
    model = bundled_models["nanodet-m-320"]
    image = cv2.imread(str(BUNDLED_ROOT / "val2017" / "000000000139.jpg"))
    batch, t = preprocess(image, model)
    assert batch.shape == (1, 3, 320, 320)
    with get_backend("onnxruntime").runner(model, None, BuildContext(engines_dir=Path("unused"))) as runner:
        outputs = runner.infer(batch)
    recs = postprocess(outputs, model, t, image_id=139)
    assert recs and max(recs, key=lambda r: r["score"])["category_id"] == 72  # tv
    assert {r["category_id"] for r in recs} >= {62, 72}  # chair, tv
