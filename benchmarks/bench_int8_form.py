"""INT8 latency vs FP32 by Q/DQ form (``convert.int8_ops`` x ``convert.int8_activation_type``), ONNX Runtime CPU.

Each form is built by the gate's own converter (mapgate.convert.ort_quant, the 7-bit weights it uses on a
saturating CPU included) from the model's manifest recipe with only the form changed, calibrated on the
first ``--calib`` calibration images (the ranges do not change the kernels, hence not the speed). The
sessions are ONNX Runtime's defaults, as the gate's runner makes them; rounds are interleaved over the
models so a shared machine's load drifts over all alike; each number is the best round's median ms.

    .venv/bin/python benchmarks/bench_int8_form.py --model yolov3-tiny-416 [--images 20 --rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.catalog import CHECKOUT, load_models
from mapgate.convert import onnx_for, ort_quant
from mapgate.dataset import read_image
from mapgate.gate import DEFAULT_ENGINES
from mapgate.optional import require
from mapgate.preprocess import preprocess

FORMS = (("conv", "s8"), ("all", "s8"), ("all", "u8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calib", type=int, default=20)
    ap.add_argument("--engines-dir", type=Path, default=CHECKOUT / DEFAULT_ENGINES)
    args = ap.parse_args()
    ort = require("onnxruntime", "onnxruntime")
    model = load_models()[args.model]
    images = calibration_images()[: args.calib]
    ctx = BuildContext(engines_dir=args.engines_dir, calib_images=images, calib_image_ids=frozenset(image_ids_of(images)),
                       progress=False)
    files = {"fp32": onnx_for(model, ctx)}
    for ops, act in FORMS:
        form = dataclasses.replace(model, convert=dataclasses.replace(model.convert, int8_ops=ops,
                                                                      int8_activation_type=act))
        files[f"int8 {ops}/{act}"] = ort_quant.build(form, ctx, "onnxruntime:int8")
    batches = [preprocess(read_image(p), model)[0] for p in calibration_images()[-args.images:]]
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
    print(f"{args.model} (ONNX Runtime CPU, {args.images} images, best of {args.rounds} interleaved rounds):")
    for name, ms in best.items():
        print(f"  {name:16} {ms:7.2f} ms/image  speedup vs FP32 x{best['fp32'] / ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
