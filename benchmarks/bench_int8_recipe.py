"""Speed cost of a model's INT8 recipe (ONNX Runtime CPU): FP32 vs plain INT8 vs the manifest's recipe.

"Plain" is the same symmetric Q/DQ INT8 with MinMax and no extra float layers (what the gate builds
without a recipe); "recipe" is what the manifest's ``convert.int8_*`` fields build. Rounds are
interleaved (FP32, plain, recipe, FP32, ...) over the calibration images so a shared machine's load
drifts over all three alike; each model's number is its best round's median ms per image.

    .venv/bin/python benchmarks/bench_int8_recipe.py --model yolo-fastest-1.1-320 [--images 30 --rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.convert import onnx_for, ort_quant
from mapgate.dataset import read_image
from mapgate.catalog import CHECKOUT, load_models
from mapgate.gate import DEFAULT_ENGINES
from mapgate.optional import require
from mapgate.preprocess import preprocess


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    ort = require("onnxruntime", "onnxruntime")
    model = load_models()[args.model]
    images = calibration_images()
    ctx = BuildContext(engines_dir=CHECKOUT / DEFAULT_ENGINES, calib_images=images, calib_image_ids=frozenset(image_ids_of(images)),
                       progress=False)
    plain = dataclasses.replace(model, convert=dataclasses.replace(
        model.convert, int8_calibration="minmax", int8_per_channel=True,
        int8_keep_float=tuple(k for k in model.convert.int8_keep_float if k.endswith("/"))))
    files = {"fp32": onnx_for(model, ctx), "int8 plain": ort_quant.build(plain, ctx, "onnxruntime:int8"),
             "int8 recipe": ort_quant.build(model, ctx, "onnxruntime:int8")}
    batches = [preprocess(read_image(p), model)[0] for p in images[: args.images]]
    sessions = {}
    for name, f in files.items():
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        sessions[name] = (s, s.get_inputs()[0].name)
        s.run(None, {sessions[name][1]: batches[0]})
    best = {name: float("inf") for name in files}
    for _ in range(args.rounds):
        for name, (s, inp) in sessions.items():
            times = []
            for b in batches:
                t0 = time.perf_counter()
                s.run(None, {inp: b})
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], 1000.0 * float(np.median(times)))
    print(f"{args.model} (ONNX Runtime CPU, {args.images} calibration images, best of {args.rounds} interleaved rounds):")
    for name, ms in best.items():
        print(f"  {name:12} {ms:7.2f} ms/image  x{ms / best['fp32']:.2f} of FP32  x{ms / best['int8 plain']:.2f} of plain INT8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
