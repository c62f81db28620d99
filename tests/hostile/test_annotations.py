"""Damaged ground truth: `mapgate evaluate --gt` and `mapgate eval --coco-root` give the same clean
error (exit 2, naming the file and the entry) for the same damage; what pycocotools accepts but is
probably wrong is a warning naming the annotation ids."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hostile_helpers import Sandbox, cli, coco_root, perfect_detections, small_gt, write_json
from mapgate.evaluate import GroundTruthWarning

MODEL = "yolox-nano-416"


def _image_id_as_string(gt: dict) -> None:
    gt["images"][0]["id"] = str(gt["images"][0]["id"])


def _image_entry_as_int(gt: dict) -> None:
    gt["images"][1] = gt["images"][1]["id"]


def _duplicate_image_entry(gt: dict) -> None:
    gt["images"].append(copy.deepcopy(gt["images"][0]))


def _two_images_share_an_id(gt: dict) -> None:
    gt["images"][1]["id"] = gt["images"][0]["id"]


def _annotation_bbox_as_string(gt: dict) -> None:
    gt["annotations"][2]["bbox"] = "1234"


def _annotation_bbox_with_bool(gt: dict) -> None:
    gt["annotations"][2]["bbox"] = [True, 2.0, 3.0, 4.0]


def _annotation_image_id_as_string(gt: dict) -> None:
    gt["annotations"][2]["image_id"] = str(gt["annotations"][2]["image_id"])


def _annotation_without_area(gt: dict) -> None:
    del gt["annotations"][2]["area"]


def _category_id_as_float_string(gt: dict) -> None:
    gt["categories"][0]["id"] = "1"


def _iscrowd_as_word(gt: dict) -> None:
    gt["annotations"][2]["iscrowd"] = "yes"


def _images_not_a_list(gt: dict) -> None:
    gt["images"] = {"0": gt["images"][0]}


def _annotation_id_bool(gt: dict) -> None:
    gt["annotations"][2]["id"] = True


# damage, what the message must name
DAMAGE: list[tuple[Callable[[dict], None], str]] = [
    (_image_id_as_string, "images[0].id"),
    (_image_entry_as_int, "images[1] is a int"),
    (_duplicate_image_entry, "appear more than once"),
    (_two_images_share_an_id, "appear more than once"),
    (_annotation_bbox_as_string, "annotations[2]"),
    (_annotation_bbox_with_bool, "annotations[2]"),
    (_annotation_image_id_as_string, "annotations[2].image_id"),
    (_annotation_without_area, "annotations[2] has no 'area'"),
    (_category_id_as_float_string, "categories[0].id"),
    (_iscrowd_as_word, "iscrowd"),
    (_images_not_a_list, "'images'"),
    (_annotation_id_bool, "annotations[2].id"),
]


@pytest.mark.parametrize(("damage", "names"), DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_damaged_annotations_are_an_error_naming_file_and_entry_in_evaluate(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, damage: Callable[[dict], None], names: str) -> None:
    gt = small_gt()
    dets = write_json(sandbox.root / "in" / "dets.json", perfect_detections(gt))
    damage(gt)
    gt_path = write_json(sandbox.root / "in" / "gt.json", gt)
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", dets, "--out", sandbox.root / "out" / "m.json")
    assert code == 2
    assert str(gt_path) in err and names in err
    assert not (sandbox.root / "out" / "m.json").exists()
    sandbox.assert_only_new_under("in")


@pytest.mark.parametrize(("damage", "names"), DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_the_same_damage_under_coco_root_is_the_same_clean_error(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, damage: Callable[[dict], None], names: str) -> None:
    gt = small_gt()
    damage(gt)
    root = coco_root(sandbox.root / "coco", gt)
    code, err = cli(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--coco-root", root,
                    "--no-progress", "--out", sandbox.root / "out" / "side")
    assert code == 2
    assert str(root / "annotations" / "instances_val2017.json") in err and names in err
    sandbox.assert_only_new_under("coco")  # not even the output folder: the error comes before any backend runs


@pytest.mark.parametrize(("field", "value"), [("height", "426"), ("width", 0), ("file_name", "../escape.jpg"),
                                              ("file_name", 42)])
def test_coco_root_image_fields_must_be_usable(capsys: pytest.CaptureFixture, sandbox: Sandbox, field: str,
                                               value: Any) -> None:
    gt = small_gt()
    gt["images"][0][field] = value
    root = coco_root(sandbox.root / "coco", gt)
    code, err = cli(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--coco-root", root, "--no-progress")
    assert code == 2
    assert f"images[0] (id {gt['images'][0]['id']}).{field}" in err and "instances_val2017.json" in err
    sandbox.assert_only_new_under("coco")


@pytest.mark.parametrize(("content", "says"), [(b"\xff\xfe{not json", "cannot read"), (b"", "not valid JSON"),
                                               (b"[1, 2, 3]", "COCO instances object")])
def test_an_unreadable_annotation_file_is_an_error_naming_it(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                             content: bytes, says: str) -> None:
    gt_path = sandbox.root / "in" / "gt.json"
    gt_path.parent.mkdir()
    gt_path.write_bytes(content)
    dets = write_json(sandbox.root / "in" / "dets.json", [])
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", dets)
    assert code == 2 and str(gt_path) in err and says in err
    sandbox.assert_only_new_under("in")


def _nan_box(gt: dict) -> int:
    gt["annotations"][0]["bbox"][2] = float("nan")
    return gt["annotations"][0]["id"]


def _negative_box(gt: dict) -> int:
    gt["annotations"][0]["bbox"][3] = -5.0
    return gt["annotations"][0]["id"]


def _nan_area(gt: dict) -> int:
    gt["annotations"][0]["area"] = float("nan")
    return gt["annotations"][0]["id"]


def _unknown_category(gt: dict) -> int:
    gt["annotations"][0]["category_id"] = 9999
    return gt["annotations"][0]["id"]


def _unlisted_image(gt: dict) -> int:
    gt["annotations"][0]["image_id"] = 123456789
    return gt["annotations"][0]["id"]


@pytest.mark.parametrize(("damage", "says"), [
    (_nan_box, "non-finite (NaN/inf) bbox"), (_negative_box, "negative bbox width/height"), (_nan_area, "non-finite area"),
    (_unknown_category, "categories not listed"), (_unlisted_image, "images not listed"),
], ids=["nan-box", "negative-box", "nan-area", "unknown-category", "unlisted-image"])
def test_ground_truth_pycocotools_accepts_is_evaluated_with_a_warning_naming_the_annotation(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, damage: Callable[[dict], int], says: str) -> None:
    """Left as warnings: pycocotools evaluates these files, and real COCO exports contain such
    entries; refusing them would make mapgate disagree with the reference implementation."""
    gt = small_gt()
    dets = write_json(sandbox.root / "in" / "dets.json", perfect_detections(small_gt()))
    ann_id = damage(gt)
    gt_path = sandbox.root / "in" / "gt.json"
    gt_path.write_text(json.dumps(gt))  # NaN written as JSON's common NaN extension, as Python and pycocotools read it
    with pytest.warns(GroundTruthWarning) as rec:
        code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", dets, "--out", sandbox.root / "out" / "m.json")
    assert code == 0, err
    text = " ".join(str(w.message) for w in rec)
    assert says in text and str(ann_id) in text and str(gt_path) in text
    sandbox.assert_only_new_under("in", "out")
