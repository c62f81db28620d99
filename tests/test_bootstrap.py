"""mapgate.bootstrap: the paired bootstrap CI of ΔAP equals running pycocotools on every
literally duplicated resample, at a fraction of the cost."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mapgate.bootstrap import BootstrapCI, PerImage, paired_bootstrap, per_image_results, resample_indices
from mapgate.errors import ConfigError
from mapgate.evaluate import ContractWarning, evaluate

GT_PATH = (Path(__file__).resolve().parent.parent / "mapgate" / "data" / "coco" / "val2017-mini" / "annotations"
           / "instances_val2017_subset.json")

pytestmark = pytest.mark.filterwarnings("ignore::mapgate.evaluate.ContractWarning")


@pytest.fixture(scope="module")
def gt() -> dict[str, Any]:
    return json.loads(GT_PATH.read_text())


def detector(gt: dict[str, Any], seed: int, img_ids: set[int] | None = None, *, noise: float = 0.1,
             score_decimals: int = 2) -> list[dict[str, Any]]:
    """Jittered copies of the objects plus background boxes. Coarse scores make exact ties,
    within one image and across images: the cases where resample order matters."""
    rng = np.random.default_rng(seed)
    cats = sorted(c["id"] for c in gt["categories"])
    dets = []
    for a in gt["annotations"]:
        if img_ids is not None and a["image_id"] not in img_ids:
            continue
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, 3))):
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + rng.normal(0, noise * w), y + rng.normal(0, noise * h),
                                  w * math.exp(rng.normal(0, noise)), h * math.exp(rng.normal(0, noise))],
                         "score": round(float(rng.random()), score_decimals)})
    for im in gt["images"]:
        if img_ids is not None and im["id"] not in img_ids:
            continue
        for _ in range(int(rng.integers(0, 10))):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(cats[:5])),
                         "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 400)),
                                  float(rng.uniform(1, 200)), float(rng.uniform(1, 200))],
                         "score": round(float(rng.random()), score_decimals)})
    return dets


def pycocotools_ap_on_duplicated_images(gt: dict[str, Any], dets: list[dict[str, Any]], ids: list[int],
                                        draw: np.ndarray) -> float:
    """The slow, literal definition of one resample: every drawn copy becomes its own image
    (new ids 1..n in sorted original-id order, annotations and detections copied in file
    order), then plain pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = {im["id"]: im for im in gt["images"]}
    new_images, anns, new_dets = [], [], []
    for new_id, idx in enumerate(np.sort(draw), start=1):
        old = ids[idx]
        new_images.append(dict(images[old], id=new_id))
        anns += [dict(a, image_id=new_id, id=len(anns) + 1 + n)
                 for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
        new_dets += [dict(d, image_id=new_id) for d in dets if d["image_id"] == old]
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = {"images": new_images, "annotations": anns, "categories": gt["categories"]}
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(new_dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.slow
def test_resampled_ap_equals_pycocotools_on_the_duplicated_image_sets(gt: dict[str, Any]) -> None:
    ids = sorted(im["id"] for im in gt["images"])[:30]
    ref = detector(gt, 1, set(ids), score_decimals=1)
    opt = detector(gt, 2, set(ids), score_decimals=1)
    ref_pi, opt_pi = per_image_results(gt, ref, ids), per_image_results(gt, opt, ids)
    # The case must contain what makes exactness hard: a detection tied in score with
    # another of its image and category (replayed copy by copy) and ties across images.
    same = (np.diff(ref_pi.det_img) == 0) & (np.diff(ref_pi.det_score) == 0)
    assert same.any()
    assert ((np.diff(ref_pi.det_img) != 0) & (np.diff(ref_pi.det_score) == 0)).any()

    n, seed = 8, 3
    ci = paired_bootstrap(ref_pi, opt_pi, n_resamples=n, seed=seed)
    draws = resample_indices(len(ids), n, seed)
    slow_ref = np.array([pycocotools_ap_on_duplicated_images(gt, ref, ids, d) for d in draws])
    slow_opt = np.array([pycocotools_ap_on_duplicated_images(gt, opt, ids, d) for d in draws])
    np.testing.assert_allclose(ci.ref_resampled_ap, slow_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ci.opt_resampled_ap, slow_opt, rtol=0, atol=1e-12)
    low, high = np.quantile(slow_opt - slow_ref, [0.025, 0.975])
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    # The point estimate is the plain evaluation of all images, bit-identical.
    assert ci.ref_ap == evaluate(gt, ref, img_ids=ids).stats["AP"]
    assert ci.delta_ap == ci.opt_ap - ci.ref_ap


@pytest.fixture(scope="module")
def mini_pair(gt: dict[str, Any]) -> tuple[PerImage, PerImage]:
    return per_image_results(gt, detector(gt, 10)), per_image_results(gt, detector(gt, 11, noise=0.2))


def test_ci_brackets_the_point_delta(mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, opt = mini_pair
    ci = paired_bootstrap(ref, opt, n_resamples=1000, seed=0)
    assert ci.n_resamples == 1000 and ci.deltas.shape == (1000,)
    assert ci.delta_ap < 0  # noisier boxes lose AP
    assert ci.low < ci.delta_ap < ci.high
    assert ci.high - ci.low < 0.1  # paired: image difficulty cancels, the interval is narrow


def test_identical_detection_sets_give_exactly_zero(mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, _ = mini_pair
    ci = paired_bootstrap(ref, ref, n_resamples=200, seed=5)
    assert (ci.delta_ap, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.deltas.any()


def test_seeded_and_reproducible(mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, opt = mini_pair
    a = paired_bootstrap(ref, opt, n_resamples=100, seed=42)
    b = paired_bootstrap(ref, opt, n_resamples=100, seed=42)
    c = paired_bootstrap(ref, opt, n_resamples=100, seed=43)
    assert (a.low, a.high) == (b.low, b.high) and np.array_equal(a.deltas, b.deltas)
    assert not np.array_equal(a.deltas, c.deltas)
    assert resample_indices(206, 3, 42).shape == (3, 206)


def test_per_image_results_carry_the_full_evaluation(gt: dict[str, Any], mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, _ = mini_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        direct = evaluate(gt, detector(gt, 10))
    assert ref.metrics is not None and ref.metrics.stats == direct.stats
    assert ref.ap == direct.stats["AP"] and ref.n_images == 206


def test_to_dict_gives_fractions_and_points(mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, opt = mini_pair
    d = paired_bootstrap(ref, opt, n_resamples=50, seed=1).to_dict()
    json.dumps(d)
    assert d["delta_ap_points"] == pytest.approx(100 * d["delta_ap"])
    assert d["low_points"] == pytest.approx(100 * d["low"]) and d["high_points"] == pytest.approx(100 * d["high"])
    assert (d["n_resamples"], d["seed"], d["confidence"], d["n_images"]) == (50, 1, 0.95, 206)


def test_refuses_sets_matched_on_different_images(gt: dict[str, Any], mini_pair: tuple[PerImage, PerImage]) -> None:
    ref, _ = mini_pair
    ids = sorted(im["id"] for im in gt["images"])[:20]
    sub = per_image_results(gt, detector(gt, 10, set(ids)), ids)
    with pytest.raises(ConfigError, match="different images"):
        paired_bootstrap(ref, sub)
    with pytest.raises(ConfigError, match="n_resamples"):
        paired_bootstrap(ref, ref, n_resamples=0)
    with pytest.raises(ConfigError, match="alpha"):
        paired_bootstrap(ref, ref, alpha=1.5)


def test_bootstrapci_is_a_plain_record() -> None:
    ci = BootstrapCI(0.01, -0.02, 0.03, 10, 0, 0.05, 0.4, 0.41, 5, np.zeros(10), np.zeros(10), np.zeros(10))
    assert ci.confidence == 0.95 and ci.to_dict()["delta_ap_points"] == pytest.approx(1.0)
