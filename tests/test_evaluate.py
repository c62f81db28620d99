"""mapgate.evaluate: COCO bbox metrics bit-identical to pycocotools, VOC AP, contract checks.

Everything runs on the bundled val2017-mini ground truth (206 real val2017 images, official
category ids) and is checked against pycocotools itself.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mapgate.errors import ConfigError, ContractError, DataError
from mapgate.evaluate import (
    STAT_NAMES,
    ContractWarning,
    Metrics,
    check_contract,
    evaluate,
    load_detections,
    load_ground_truth,
)

# Hand-made cases use few, confident detections; the low-threshold advice is beside the point
# there (pytest.warns still sees the warning where a test asks for it).
pytestmark = pytest.mark.filterwarnings("ignore:no detection scores:mapgate.evaluate.ContractWarning")

GT_PATH = (Path(__file__).resolve().parent.parent / "mapgate" / "data" / "coco" / "val2017-mini" / "annotations"
           / "instances_val2017_subset.json")


# ------------------------------------------------------------------ helpers and fixtures


@pytest.fixture(scope="module")
def gt() -> dict[str, Any]:
    return json.loads(GT_PATH.read_text())


def jittered(gt: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Detector-like results: 0-2 jittered copies per object (some with the wrong class),
    hits on crowd regions, background boxes, coarse scores (many exact ties), and one
    image/category with 120 detections (past COCOeval's 100 per image and category)."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    dets: list[dict[str, Any]] = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, 3))):
            cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h),
                                  w * math.exp(rng.normal(0, 0.1)), h * math.exp(rng.normal(0, 0.1))],
                         "score": round(float(rng.random()), 2)})
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 25))):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cats)),
                         "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 400)),
                                  float(rng.uniform(1, 200)), float(rng.uniform(1, 200))],
                         "score": round(float(rng.random()) * 0.3, 2)})
    crowded = next(a for a in gt["annotations"] if a["iscrowd"])
    for _ in range(120):
        x, y, w, h = crowded["bbox"]
        dets.append({"image_id": crowded["image_id"], "category_id": crowded["category_id"],
                     "bbox": [x + rng.uniform(0, w / 2), y + rng.uniform(0, h / 2), w / 3, h / 3],
                     "score": round(float(rng.random()), 2)})
    return dets


@pytest.fixture(scope="module")
def dets(gt: dict[str, Any]) -> list[dict[str, Any]]:
    return jittered(gt)


def pycoco(dets: list[dict[str, Any]], img_ids: list[int] | None = None) -> Any:
    """pycocotools' COCOeval after summarize(); an empty result set gets an empty results
    index (pycocotools' own loadRes([]) raises IndexError)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cg = COCO(str(GT_PATH))
        if dets:
            cd = cg.loadRes(copy.deepcopy(dets))
        else:
            cd = COCO()
            cd.dataset = {"images": cg.dataset["images"], "categories": cg.dataset["categories"], "annotations": []}
            cd.createIndex()
        ev = COCOeval(cg, cd, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(out := io.StringIO()):
        ev.summarize()
    ev.summary_text = out.getvalue()
    return ev


def pycoco_per_category(ev: Any) -> dict[int, tuple[float, float]]:
    res = {}
    for k, cid in enumerate(ev.params.catIds):
        ap, ap50 = ev.eval["precision"][:, :, k, 0, 2], ev.eval["precision"][0, :, k, 0, 2]
        res[cid] = (float(np.mean(ap[ap > -1])) if (ap > -1).any() else -1.0,
                    float(np.mean(ap50[ap50 > -1])) if (ap50 > -1).any() else -1.0)
    return res


def quiet_evaluate(*args: Any, **kwargs: Any) -> Metrics:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        return evaluate(*args, **kwargs)


def assert_same_as_pycocotools(m: Metrics, ev: Any) -> None:
    # Bit-identical, not merely close: same float64 operations in the same order.
    assert [m.stats[k] for k in STAT_NAMES] == [float(s) for s in ev.stats]
    assert np.array_equal(m.precision, ev.eval["precision"])
    assert np.array_equal(m.recall, ev.eval["recall"])
    assert {c: (v.ap, v.ap50) for c, v in m.per_category.items()} == pycoco_per_category(ev)


# ------------------------------------------------------------------ agreement with pycocotools


@pytest.mark.slow
def test_ground_truth_fed_back_as_detections_scores_ap_1(gt: dict[str, Any]) -> None:
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"] if not a["iscrowd"]]
    m = quiet_evaluate(gt, perfect)
    assert m.stats["AP"] == m.stats["AP50"] == m.stats["AP75"] == 1.0
    # voc_eval.py sums p / 11 eleven times: 1.0000000000000002, faithfully.
    assert m.voc07_ap50 == pytest.approx(1.0, abs=1e-12) and m.voc_area_ap50 == 1.0
    with_gt = {c for c, v in m.per_category.items() if v.n_gt > 0}
    # A one-object category scores 1/(1 + np.spacing(1)) in pycocotools too ('hot dog' here).
    assert all(m.per_category[c].ap == pytest.approx(1.0, abs=1e-12) for c in with_gt)
    assert all(v.ap == -1.0 for c, v in m.per_category.items() if c not in with_gt)
    assert_same_as_pycocotools(m, pycoco(perfect))


@pytest.mark.slow
def test_jittered_detections_match_pycocotools_bit_for_bit(gt: dict[str, Any], dets: list[dict[str, Any]]) -> None:
    m = quiet_evaluate(gt, dets)
    ev = pycoco(dets)
    assert_same_as_pycocotools(m, ev)
    assert 0.05 < m.stats["AP"] < 0.9  # a realistic, non-degenerate case
    # The summary is the text pycocotools prints, character for character.
    assert m.summary_lines() == ev.summary_text.splitlines()


def test_img_ids_evaluates_exactly_that_subset(gt: dict[str, Any], dets: list[dict[str, Any]]) -> None:
    ids = sorted(im["id"] for im in gt["images"])[::4]
    m = quiet_evaluate(GT_PATH, dets, img_ids=ids)
    assert_same_as_pycocotools(m, pycoco(dets, img_ids=ids))
    assert list(m.dataset.image_ids) == ids
    assert m.dataset.label == f"val2017-mini subset ({len(ids)} images)"
    assert m.dataset.n_detections == sum(d["image_id"] in set(ids) for d in dets)
    assert m.dataset.n_detections_input == len(dets)


def test_empty_detections_give_what_accumulate_gives_without_detections(gt: dict[str, Any]) -> None:
    m = evaluate(gt, [])
    assert_same_as_pycocotools(m, pycoco([]))
    # 0 wherever the area range has ground truth; -1 is reserved for "no ground truth".
    assert all(m.stats[k] == 0.0 for k in STAT_NAMES)
    assert m.voc07_ap50 == m.voc_area_ap50 == 0.0
    assert m.dataset.n_detections == 0


def test_detections_are_not_mutated(gt: dict[str, Any], dets: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(dets)
    ids = [id(d) for d in dets]
    gt_before = copy.deepcopy(gt)
    quiet_evaluate(gt, dets)
    assert dets == before and [id(d) for d in dets] == ids  # no 'area'/'id'/'segmentation' added
    assert gt == gt_before  # pycocotools adds 'ignore' to gt annotations; we do not


# ------------------------------------------------------------------ VOC AP, hand-worked


def tiny_gt(boxes: list[list[float]], crowd: list[list[float]] = ()) -> dict[str, Any]:
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)]
    anns += [{"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 1}
             for i, b in enumerate(crowd)]
    return {"images": [{"id": 1, "width": 1000, "height": 1000}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}], "info": {"description": "hand-made"}}


def det(box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": 1, "category_id": 1, "bbox": box, "score": score}


A, B, C = [0, 0, 100, 100], [200, 0, 100, 100], [400, 0, 100, 100]
MISS = [700, 700, 50, 50]


def test_voc_metrics_agree_when_every_detection_is_a_hit() -> None:
    m = evaluate(tiny_gt([A, B]), [det(A, 0.9), det(B, 0.8)])
    assert m.voc07_ap50 == pytest.approx(1.0, abs=1e-12)
    assert m.voc_area_ap50 == pytest.approx(1.0, abs=1e-12)
    assert m.stats["AP50"] == pytest.approx(1.0, abs=1e-12)


def test_voc07_and_area_ap_differ_on_a_hit_miss_hit_ranking() -> None:
    # 3 objects; detections by score: hit (0.9), miss (0.8), hit (0.7).
    #   recall    = 1/3, 1/3, 2/3      precision = 1, 1/2, 2/3
    # VOC2007 11-point: max precision at recall >= t for t = 0, .1, ..., 1:
    #   t <= 0.3 -> 1 (4 points), t = .4 .5 .6 -> 2/3 (3 points), t >= .7 -> 0 (4 points)
    #   AP = (4 * 1 + 3 * 2/3) / 11 = 6/11 = 0.5454...
    # VOC2010+ area: envelope 1 up to recall 1/3, then 2/3 up to recall 2/3, 0 after:
    #   AP = 1/3 * 1 + 1/3 * 2/3 = 5/9 = 0.5555...
    # COCO AP50 (101 points): 34 thresholds 0..0.33 at 1, 33 thresholds .34...66 at 2/3 -> 56/101.
    m = evaluate(tiny_gt([A, B, C]), [det(A, 0.9), det(MISS, 0.8), det(B, 0.7)])
    assert m.voc07_ap50 == pytest.approx(6 / 11, abs=1e-12)
    assert m.voc_area_ap50 == pytest.approx(5 / 9, abs=1e-12)
    assert m.stats["AP50"] == pytest.approx(56 / 101, abs=1e-12)


def test_voc_ignores_crowd_boxes_and_detections_matched_to_them() -> None:
    # A crowd region adds no positive, and a detection on it is neither hit nor miss:
    # the numbers equal the hit-miss-hit case above.
    crowd = [600, 0, 300, 300]
    m = evaluate(tiny_gt([A, B, C], crowd=[crowd]),
                 [det(A, 0.9), det([610, 10, 100, 100], 0.85), det(MISS, 0.8), det(B, 0.7)])
    assert m.voc07_ap50 == pytest.approx(6 / 11, abs=1e-12)
    assert m.voc_area_ap50 == pytest.approx(5 / 9, abs=1e-12)
    assert m.dataset.n_gt_boxes == 3 and m.dataset.n_gt_crowd == 1


# ------------------------------------------------------------------ contract errors


def contract_error(gt: dict[str, Any], dets: list[Any]) -> str:
    with pytest.raises(ContractError) as info:
        check_contract(gt, dets)
    with pytest.raises(ContractError):
        evaluate(gt, dets)  # evaluate checks before evaluating
    return str(info.value)


def good(gt: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    return [{"image_id": gt["images"][i]["id"], "category_id": 1, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.01}
            for i in range(n)]


def test_category_ids_outside_the_ground_truth_suggest_an_index_mix_up(gt: dict[str, Any]) -> None:
    bad = good(gt) + [dict(good(gt)[0], category_id=0), dict(good(gt)[0], category_id=91)]
    msg = contract_error(gt, bad)
    assert "[0, 91]" in msg and "80-index vs COCO-id mix-up?" in msg


def test_image_ids_outside_the_ground_truth_are_named(gt: dict[str, Any]) -> None:
    msg = contract_error(gt, good(gt) + [dict(good(gt)[0], image_id=999_999_999)])
    assert "999999999" in msg and "not in the ground truth" in msg


@pytest.mark.parametrize("field,value,needle", [
    ("bbox", [1.0, float("nan"), 3.0, 4.0], "non-finite bbox"),
    ("bbox", [1.0, 2.0, float("inf"), 4.0], "non-finite bbox"),
    ("bbox", [1.0, 2.0, -3.0, 4.0], "negative width/height"),
    ("bbox", [1.0, 2.0, 3.0, -0.5], "negative width/height"),
    ("score", float("nan"), "non-finite score"),
])
def test_bad_numbers_name_the_first_offending_index(gt: dict[str, Any], field: str, value: Any, needle: str) -> None:
    dets = good(gt, 5)
    dets[3] = dict(dets[3], **{field: value})
    dets[4] = dict(dets[4], **{field: value})
    msg = contract_error(gt, dets)
    assert needle in msg and "detections[3]" in msg


@pytest.mark.parametrize("missing", ["image_id", "category_id", "bbox", "score"])
def test_missing_keys_are_named(gt: dict[str, Any], missing: str) -> None:
    dets = good(gt)
    del dets[1][missing]
    msg = contract_error(gt, dets)
    assert "detections[1]" in msg and missing in msg


def test_non_object_entries_and_malformed_boxes_are_errors(gt: dict[str, Any]) -> None:
    assert "detections[2] is a list" in contract_error(gt, good(gt, 2) + [[1, 1, [0, 0, 1, 1], 0.5]])
    assert "not [x, y, w, h]" in contract_error(gt, good(gt, 2) + [dict(good(gt)[0], bbox=[1, 2, 3])])
    assert "integer id" in contract_error(gt, good(gt, 2) + [dict(good(gt)[0], image_id=139.5)])


# ------------------------------------------------------------------ contract warnings


def test_a_high_lowest_score_warns(gt: dict[str, Any]) -> None:
    dets = [dict(d, score=0.3) for d in good(gt)]
    with pytest.warns(ContractWarning, match="a high confidence threshold depresses mAP") as rec:
        warns = check_contract(gt, dets)
    assert len(warns) == 1 and "0.3" in warns[0] and "tensorrt_demos" in warns[0]
    assert str(rec[0].message) == warns[0]
    assert Path(rec[0].filename).name == "test_evaluate.py"  # points at the caller


def test_more_than_100_detections_on_an_image_warns(gt: dict[str, Any]) -> None:
    dets = good(gt, 1) * 101
    with pytest.warns(ContractWarning, match="COCOeval keeps only the top 100 per image"):
        warns = check_contract(gt, dets)
    assert any(str(gt["images"][0]["id"]) in w and "101" in w for w in warns)
    with pytest.warns(ContractWarning, match="top 100"):
        evaluate(gt, dets)


def test_clean_detections_do_not_warn(gt: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_contract(gt, good(gt)) == []


# ------------------------------------------------------------------ files, results, labels


def test_load_detections_names_the_file(tmp_path: Path) -> None:
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert load_detections(ok)[0]["score"] == 0.5
    cases = {"missing.json": None, "broken.json": "[{", "dict.json": '{"a": 1}', "ints.json": "[1, 2]"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(DataError, match=name):
            load_detections(path)


def test_ground_truth_problems_are_data_errors(tmp_path: Path, gt: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="nope.json"):
        load_ground_truth(tmp_path / "nope.json")
    bad = copy.deepcopy(gt)
    del bad["annotations"][5]["area"]
    with pytest.raises(DataError, match=r"annotations\[5\] has no 'area'"):
        load_ground_truth(bad)
    with pytest.raises(DataError, match="annotations"):
        load_ground_truth({"images": [], "categories": []})


def test_img_ids_must_exist_in_the_ground_truth(gt: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="123456789"):
        evaluate(gt, [], img_ids=[139, 123456789])
    with pytest.raises(ConfigError, match="empty"):
        evaluate(gt, [], img_ids=[])


def test_to_dict_is_json_with_the_documented_keys(gt: dict[str, Any], dets: list[dict[str, Any]]) -> None:
    m = quiet_evaluate(GT_PATH, dets)
    d = json.loads(json.dumps(m.to_dict()))
    assert set(d) == {"stats", "voc07_ap50", "voc_area_ap50", "per_category", "dataset"}
    assert list(d["stats"]) == list(STAT_NAMES) and d["stats"]["AP"] == m.stats["AP"]
    assert d["per_category"]["1"]["name"] == "person" and d["per_category"]["1"]["AP"] == m.per_category[1].ap
    ds = d["dataset"]
    assert ds["label"] == "val2017-mini (206 images)" and ds["n_images"] == 206
    assert ds["n_gt_boxes"] + ds["n_gt_crowd"] == 1786 and ds["n_gt_crowd"] == 21
    assert ds["n_detections"] == len(dets) and len(ds["image_ids"]) == 206


def test_dataset_labels(gt: dict[str, Any]) -> None:
    assert evaluate(gt, []).dataset.label == "val2017-mini (206 images)"
    assert evaluate(gt, [], label="val2017-mini").dataset.label == "val2017-mini (206 images)"
    # A label that already carries its size (mapgate.dataset.CocoDataset.label) is kept as is.
    assert evaluate(gt, [], label="val2017 subset (first 206 of 5000 images)").dataset.label == \
        "val2017 subset (first 206 of 5000 images)"
    other = copy.deepcopy(gt)
    other["images"] = other["images"][:10]
    assert evaluate(other, []).dataset.label == "val2017 subset (10 images)"
    assert evaluate(tiny_gt([A]), []).dataset.label == "hand-made (1 image)"
