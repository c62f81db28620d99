"""The Ultralytics family: YOLOv5 [1, N, 5+C] and YOLOv8 / YOLO11 [1, 4+C, N] exports.

YOLOv5n is bundled and runs for real (its AP is in tests/accuracy/test_reference_models.py). No real
YOLOv8 / YOLO11 model is available here, so the v8 layout is tested on outputs computed with
numpy from a known box set.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.catalog import load_manifest
from mapgate.postprocess import decoder_for, select
from mapgate.preprocess import preprocess

# (cx, cy, w, h) in input pixels, class, class score, objectness
KNOWN = [((100.0, 120.0, 40.0, 60.0), 0, 0.9, 0.95), ((400.0, 300.0, 200.0, 100.0), 56, 0.8, 0.7),
         ((402.0, 301.0, 198.0, 101.0), 56, 0.5, 0.6), ((50.0, 600.0, 30.0, 30.0), 79, 0.4, 0.5)]
N_ROWS = 25200


def entry(tmp_path: Path, manifest_copy, head: str = "v5", extra: dict[str, str] | None = None) -> ModelSpec:
    replace = {'decoder = { head = "v5", output = "output" }': f'decoder = {{ head = "{head}", output = "output0" }}',
               "nms_iou = 0.6": "nms_iou = 0.7" if head == "v8" else "nms_iou = 0.6", **(extra or {})}
    return load_manifest(manifest_copy(tmp_path / "u.toml", "yolov5n-640", replace))["yolov5n-640"]


def v5_rows() -> np.ndarray:
    rng = np.random.default_rng(1)
    rows = np.zeros((N_ROWS, 85), np.float32)
    rows[:, :4] = rng.uniform(5, 600, (N_ROWS, 4))
    rows[:, 4] = rng.uniform(0, 0.0009, N_ROWS)  # background: objectness below the 0.001 threshold
    rows[:, 5:] = rng.uniform(0, 1, (N_ROWS, 80))
    for i, (box, c, score, obj) in enumerate(KNOWN):
        rows[1000 * i, :4] = box
        rows[1000 * i, 4] = obj
        rows[1000 * i, 5:] = 0.0
        rows[1000 * i, 5 + c] = score
    return rows


def xyxy(box: tuple[float, float, float, float]) -> list[float]:
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_v5_scores_are_objectness_times_class_and_boxes_are_decoded_pixels(tmp_path: Path, manifest_copy) -> None:
    model = entry(tmp_path, manifest_copy, "v5", {'output = "output0"': 'output = "output"'})
    boxes, scores, classes = select(decoder_for("ultralytics").decode({"output": v5_rows()[None]}, model), model)
    # the third box overlaps the second (IoU ~0.97 > 0.6, same class): suppressed
    want = [KNOWN[0], KNOWN[1], KNOWN[3]]
    assert classes.tolist() == [c for _, c, _, _ in want]
    np.testing.assert_allclose(scores, [s * o for _, _, s, o in want], rtol=1e-6)
    np.testing.assert_allclose(boxes, [xyxy(b) for b, _, _, _ in want], atol=1e-3)


@pytest.mark.parametrize("transposed", [False, True])
def test_v8_has_no_objectness_and_comes_classes_by_rows(tmp_path: Path, manifest_copy, transposed: bool) -> None:
    """YOLOv8 / YOLO11 layout [1, 84, N] (and [1, N, 84] as some exports transpose it)."""
    model = entry(tmp_path, manifest_copy, "v8")
    assert model.postprocess.nms_iou == 0.7  # Ultralytics v8 val: iou 0.7
    rows = v5_rows()
    v8 = np.concatenate((rows[:, :4], rows[:, 5:] * 0.001), axis=1)  # background class scores < 0.001
    for i, (_, c, score, _) in enumerate(KNOWN):
        v8[1000 * i, 4 + c] = score
    raw = v8[None] if transposed else v8.T[None]
    boxes, scores, classes = select(decoder_for("ultralytics").decode({"output0": raw}, model), model)
    want = [KNOWN[0], KNOWN[1], KNOWN[3]]
    np.testing.assert_allclose(scores, [s for _, _, s, _ in want], rtol=1e-6)
    np.testing.assert_allclose(boxes, [xyxy(b) for b, _, _, _ in want], atol=1e-3)
    assert classes.tolist() == [0, 56, 79]


def test_v8_multi_label_keeps_two_classes_of_one_box(tmp_path: Path, manifest_copy) -> None:
    model = entry(tmp_path, manifest_copy, "v8")
    raw = np.zeros((1, 84, 10), np.float32)
    raw[0, :4, 3] = (320, 320, 100, 100)
    raw[0, 4 + 2, 3], raw[0, 4 + 7, 3] = 0.6, 0.3  # a car that may be a truck: both kept, as Ultralytics val does
    _, scores, classes = select(decoder_for("ultralytics").decode({"output0": raw}, model), model)
    assert classes.tolist() == [2, 7] and scores.tolist() == pytest.approx([0.6, 0.3])


def test_wrong_head_for_the_output_is_an_error_saying_what_it_needs(tmp_path: Path, manifest_copy) -> None:
    model = entry(tmp_path, manifest_copy, "v8")
    with pytest.raises(ConfigError, match=r"v8 output has shape \[1, 25200, 85\].*\[1, 84, N\]"):
        decoder_for("ultralytics").decode({"output0": v5_rows()[None]}, model)


def test_head_is_required_and_checked(tmp_path: Path, manifest_copy) -> None:
    path = manifest_copy(tmp_path / "u.toml", "yolov5n-640", {'head = "v5", ': ""})
    with pytest.raises(ConfigError, match=r"field 'postprocess.decoder.head': is required"):
        load_manifest(path)
    path = manifest_copy(tmp_path / "u.toml", "yolov5n-640", {'head = "v5"': 'head = "v7"'})
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.head': must be one of v5, v8"):
        load_manifest(path)


def test_letterbox_equals_yolov5s_own_for_a_640_wide_image(bundled_models) -> None:
    """YOLOv5 val.py (rect=False, one image): long side already 640, so no resize; pad 114 centred,
    top = round(dh - 0.1) as its letterbox() computes it."""
    from mapgate.dataset import BUNDLED_ROOT

    image = cv2.imread(str(BUNDLED_ROOT / "val2017" / "000000000139.jpg"))  # 640x426
    h, w = image.shape[:2]
    assert w == 640 and h < 640
    dh = (640 - h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    theirs = cv2.copyMakeBorder(image, top, bottom, 0, 0, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    theirs = theirs[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    batch, t = preprocess(image, bundled_models["yolov5n-640"])
    np.testing.assert_allclose(batch, theirs, atol=1e-6)
    assert (t.pad_y, t.pad_x, t.scale_x) == (top, 0.0, 1.0)
