"""Post-processing cost per bundled model: decode+NMS per image vs the model's CPU inference.

For each bundled model, runs its original backend on the calibration images and times, per
image, the inference and the shared postprocessor (decode, threshold, NMS, top-K, mapping back,
COCO records). Prints the share and exits 1 if any model's postprocessing exceeds --max-share
(default 10%) of its inference time.

    .venv/bin/python benchmarks/bench_postprocess.py [--images 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images
from mapgate.dataset import read_image
from mapgate.catalog import load_models
from mapgate.postprocess import postprocess
from mapgate.preprocess import preprocess


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--max-share", type=float, default=0.10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    images = [read_image(p) for p in calibration_images(limit=args.images)]
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BuildContext(engines_dir=Path(tmp))
        for model in load_models().values():
            backend = get_backend(model.reference_backend)
            if not backend.availability().ok:
                print(f"{model.name}: skipped ({backend.availability().reason})")
                continue
            with backend.runner(model, None, ctx) as runner:
                batch, transform = preprocess(images[0], model)
                postprocess(runner.infer(batch), model, transform, 0)  # warm-up: JIT, lazy allocations
                infer_t, post_t, n_dets = [], [], 0
                for i, image in enumerate(images):
                    batch, transform = preprocess(image, model)
                    t0 = time.perf_counter()
                    outputs = runner.infer(batch)
                    t1 = time.perf_counter()
                    n_dets += len(postprocess(outputs, model, transform, i))
                    t2 = time.perf_counter()
                    infer_t.append(t1 - t0)
                    post_t.append(t2 - t1)
            inf_ms, post_ms = 1000 * float(np.median(infer_t)), 1000 * float(np.median(post_t))
            share = post_ms / inf_ms
            ok &= share <= args.max_share
            rows.append({"model": model.name, "backend": model.reference_backend, "inference_ms": inf_ms,
                         "postprocess_ms": post_ms, "share": share, "detections_per_image": n_dets / len(images)})
    print(f"{'model':30} {'backend':12} {'infer ms':>9} {'post ms':>8} {'share':>7} {'dets/img':>9}")
    for r in rows:
        print(f"{r['model']:30} {r['backend']:12} {r['inference_ms']:9.2f} {r['postprocess_ms']:8.2f} "
              f"{100 * r['share']:6.1f}% {r['detections_per_image']:9.1f}")
    print(f"target: postprocessing <= {100 * args.max_share:g}% of inference (median per image): "
          + ("met" if ok else "MISSED"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
