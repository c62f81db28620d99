"""Error attribution of dAP (TIDE's error types on mapgate's COCO matching), on val2017-mini's real
ground truth with detections made from it by injecting each error type on purpose."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mapgate.attribution import ERROR_TYPES, _classify, attribute, error_profile, summary_lines
from mapgate.dataset import BUNDLED_ANNOTATIONS
from mapgate.evaluate import evaluate, load_ground_truth

INJECTED = {"cls": 0.1, "loc": 0.1, "dupe": 0.05, "missed": 0.1}  # share of ground-truth boxes


@pytest.fixture(scope="module")
def gt() -> dict[str, Any]:
    return json.loads(BUNDLED_ANNOTATIONS.read_text())


def make_detections(gt: dict[str, Any], seed: int = 0, inject: dict[str, float] = INJECTED,
                    background: int = 100) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """One detection per non-crowd box, with errors injected; returns the detections and, per
    detection index, the error it was made to be (absent: a true positive)."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    dets: list[dict[str, Any]] = []
    made: dict[int, str] = {}
    edges = np.cumsum([inject.get(k, 0.0) for k in ("missed", "cls", "loc", "dupe")])
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        x, y, w, h = a["bbox"]
        r, score, c = rng.random(), float(rng.random()), a["category_id"]
        if r < edges[0]:
            continue
        kind = None
        if r < edges[1]:
            c, kind = int(rng.choice([k for k in cats if k != c])), "cls"
        elif r < edges[2]:
            x, kind = x + 0.6 * w, "loc"  # IoU 0.25 with its own box
        dets.append({"image_id": a["image_id"], "category_id": c, "bbox": [x, y, w, h], "score": score})
        if kind:
            made[len(dets) - 1] = kind
        if edges[2] <= r < edges[3]:
            dets.append({"image_id": a["image_id"], "category_id": c, "bbox": [x, y, w, h], "score": score / 2})
            made[len(dets) - 1] = "dupe"
    for im in gt["images"][:background]:
        made[len(dets)] = "bkg"
        dets.append({"image_id": im["id"], "category_id": 1, "bbox": [0.0, 0.0, 2.0, 2.0], "score": 0.3})
    return dets, made


def test_unfixed_ap50_is_pycocotools_ap50_to_the_last_bit(gt) -> None:
    dets, _ = make_detections(gt)
    assert error_profile(gt, dets).ap50 == evaluate(gt, dets).stats["AP50"]


def test_each_injected_error_is_found_as_its_tide_type(gt) -> None:
    """Crowd-free, so every injected error is a false positive (crowd-matched detections are ignored,
    as pycocotools does); a few injected boxes overlap another box and may land elsewhere."""
    gt = copy.deepcopy(gt)
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    dets, made = make_detections(gt)
    c = _classify(load_ground_truth(gt), dets, load_ground_truth(gt).image_ids)
    names = {1: "cls", 2: "loc", 3: "both", 4: "dupe", 5: "bkg"}
    found = {int(s): names[int(e)] for s, e in zip(c.src, c.err) if e}
    for kind in ("cls", "loc", "dupe", "bkg"):
        mine = [i for i, k in made.items() if k == kind]
        agree = sum(found.get(i) == kind for i in mine)
        assert agree >= 0.9 * len(mine), (kind, agree, len(mine))
    # made right but called an error: only where an injected box took its ground truth first
    assert sum(i not in made for i in found) <= 0.01 * len(dets)


def test_fixing_the_only_error_type_restores_perfect_ap50(gt) -> None:
    gt = copy.deepcopy(gt)
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    for kind in ("cls", "loc", "dupe", "missed"):
        dets, _ = make_detections(gt, inject={kind: 0.15}, background=0)
        p = error_profile(gt, dets)
        assert p.ap50 < 1.0
        assert 100.0 * p.ap50 + p.contributions[kind] == pytest.approx(100.0, abs=2.0), kind  # shifted boxes can hit a neighbour
        assert p.contributions[kind] > 3 * max(v for k, v in p.contributions.items() if k != kind), kind


def test_a_comparison_says_where_the_points_went(gt) -> None:
    ref, _ = make_detections(gt, inject={})
    opt, _ = make_detections(gt, inject={"loc": 0.2})
    a = attribute(gt, ref, opt, ref_metrics=evaluate(gt, ref), opt_metrics=evaluate(gt, opt))
    assert a["where_points_went"][0]["error"] == "loc"
    assert a["difference_dAP50_points"]["loc"] > 5.0
    assert a["delta_AP50_points"] < -5.0
    assert set(a["by_size"]) == {"small", "medium", "large"} and len(a["worst_classes"]) == 5
    json.dumps(a)  # comparison.json material
    text = "\n".join(summary_lines(a))
    assert "localization" in text and "worst classes" in text


def test_detections_are_not_modified(gt) -> None:
    dets, _ = make_detections(gt)
    before = copy.deepcopy(dets)
    error_profile(gt, dets)
    assert dets == before


def test_agrees_with_tidecv_where_matching_agrees(gt, tmp_path: Path) -> None:
    """tidecv (TIDE's own code) on crowd-free ground truth: same error counts; contributions within
    binning noise (its AP omits pycocotools' np.spacing and matches by first, not last, equal IoU)."""
    tidecv = pytest.importorskip("tidecv", reason="tidecv (optional cross-check: pip install tidecv)")
    gt = copy.deepcopy(gt)
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    dets, _ = make_detections(gt)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    tide = tidecv.TIDE()
    tide.evaluate(tidecv.datasets.COCO(str(tmp_path / "gt.json")), tidecv.datasets.COCOResult(str(tmp_path / "dets.json")),
                  mode=tidecv.TIDE.BOX)
    run = next(iter(tide.runs.values()))
    theirs = {k.short_name: len(v) for k, v in run.error_dict.items()}
    main = next(iter(tide.get_all_errors()["main"].values()))
    p = error_profile(gt, dets)
    for mine, short in zip(ERROR_TYPES, ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")):
        assert p.counts[mine] == theirs[short], mine
        assert p.contributions[mine] == pytest.approx(main[short], abs=0.25), mine
    assert 100.0 * p.ap50 == pytest.approx(run.ap, abs=0.1)


def test_an_engine_that_detects_nothing_lost_everything_to_missed_boxes(gt) -> None:
    ref, _ = make_detections(gt, inject={}, background=0)
    a = attribute(gt, ref, [])
    assert a["delta_AP50_points"] == pytest.approx(-100.0 * error_profile(gt, ref).ap50)
    assert a["where_points_went"][0]["error"] == "missed"
    assert a["difference_dAP50_points"]["missed"] == pytest.approx(-a["delta_AP50_points"])
