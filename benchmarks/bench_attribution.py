"""Error attribution (TIDE types, mapgate.attribution) vs one COCO evaluation, on val2017-mini.

Two detection sets of ~100 detections per image (the shape a real comparison has: every ground
truth box jittered, misclassified, shifted or duplicated, plus low-scored background boxes) on
the 206 bundled images; times ``attribute()`` (both sides: classification plus 7 oracle
re-accumulations each) against one ``evaluate()``. Exits 1 above --max-seconds (default 1.0).

    .venv/bin/python benchmarks/bench_attribution.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from mapgate.attribution import attribute
from mapgate.dataset import BUNDLED_ANNOTATIONS
from mapgate.evaluate import evaluate, load_ground_truth


def detections(gt: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(3):
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            c = a["category_id"] if rng.random() < 0.8 else int(rng.choice(cats))
            out.append({"image_id": a["image_id"], "category_id": c, "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
                        "score": float(rng.random())})
    for im in gt["images"]:
        for _ in range(60):
            x, y = rng.random(2) * [im["width"] - 40, im["height"] - 40]
            out.append({"image_id": im["id"], "category_id": int(rng.choice(cats)), "bbox": [x, y, 30.0, 30.0],
                        "score": float(rng.random()) * 0.2})
    return out


def best(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    args = ap.parse_args()
    gt_json = json.loads(BUNDLED_ANNOTATIONS.read_text())
    gt = load_ground_truth(gt_json)
    ref, opt = detections(gt_json, 0), detections(gt_json, 1)
    rm, om = evaluate(gt, ref), evaluate(gt, opt)  # also compiles the kernels
    attribute(gt, ref, opt, ref_metrics=rm, opt_metrics=om)
    t_eval = best(lambda: evaluate(gt, opt))
    t_attr = best(lambda: attribute(gt, ref, opt, ref_metrics=rm, opt_metrics=om))
    n = (len(ref) + len(opt)) // 2
    print(f"val2017-mini (206 images), {n} detections per side: evaluate {t_eval:.3f} s, "
          f"attribute (both sides) {t_attr:.3f} s = {t_attr / t_eval:.2f}x one evaluation")
    return 0 if t_attr <= args.max_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
