"""Is the engine kept fed? Images/s of the detection loop, sequential vs pipelined, against the
engine alone on the same preprocessed inputs (the ceiling), per bundled model on its reference
backend (and any --target given).

    .venv/bin/python benchmarks/bench_pipeline.py [--max-images 60] [--workers N] [--batch-size N]
                                                  [--models a,b] [--target MODEL=BACKEND:PRECISION ...]

One run per row, in one process: the engine is activated once and warmed up, then

* sequential = ``run_detections(workers=0)``: decode, preprocess, infer, postprocess in turn;
* pipelined = ``run_detections(workers=N)``: decode/preprocess threads ahead of the engine,
  postprocessing overlapped (checked byte-identical to sequential on the way);
* engine-only = every image preprocessed first (untimed), then ``infer`` on each in turn: what
  the loop could reach if decoding, preprocessing and postprocessing cost nothing.

Images/s are wall-clock over all images (warm-up excluded). ``ratio`` = pipelined / engine-only;
``speedup`` = pipelined / sequential. On a GPU the engine leaves the CPU cores to the loop and the
goal is ratio >= 0.9; on a CPU-only machine the engine itself uses every core, so the loop's CPU
work competes with it and the ratio is bounded by engine / (engine + pre + post CPU time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mapgate.backends import get_backend  # noqa: E402
from mapgate.backends.base import BuildContext  # noqa: E402
from mapgate.dataset import CocoDataset  # noqa: E402
from mapgate.detections import default_workers, run_detections  # noqa: E402
from mapgate.catalog import CHECKOUT, load_models  # noqa: E402
from mapgate.gate import DEFAULT_ENGINES  # noqa: E402
from mapgate.preprocess import preprocess  # noqa: E402


def engine_only(runner, model, data: CocoDataset, batch_size: int) -> float:  # noqa: ANN001
    """Images/s of ``infer`` alone over the data set's images, preprocessed beforehand."""
    import numpy as np

    tensors = [preprocess(data.load(i).image, model)[0] for i in data.image_ids]
    batches = [np.concatenate(tensors[i : i + batch_size]) if batch_size > 1 else tensors[i]
               for i in range(0, len(tensors), batch_size)]
    runner.infer(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        runner.infer(b)
    return len(tensors) / (time.perf_counter() - t0)


def bench(model, backend: str, precision: str | None, data: CocoDataset, workers: int,  # noqa: ANN001
          batch_size: int) -> dict:
    ctx = BuildContext(engines_dir=CHECKOUT / DEFAULT_ENGINES, progress=False)
    with get_backend(backend).runner(model, precision, ctx) as runner:
        batch = batch_size if runner.supports_batch(batch_size) else 1
        seq = run_detections(model, runner, data, progress=False, workers=0, batch_size=batch)
        piped = run_detections(model, runner, data, progress=False, workers=workers, batch_size=batch)
        ceiling = engine_only(runner, model, data, batch)
    if orjson.dumps(piped.detections) != orjson.dumps(seq.detections):
        raise SystemExit(f"{model.name} {backend}: pipelined detections differ from sequential")
    s, p = 1000.0 / seq.wall_ms_per_image, 1000.0 / piped.wall_ms_per_image
    return {"model": model.name, "target": f"{backend}:{precision}" if precision else backend, "batch": batch,
            "sequential": s, "pipelined": p, "engine_only": ceiling, "speedup": p / s, "ratio": p / ceiling,
            "stages_ms": piped.timings_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-images", type=int, default=60)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--models", help="comma-separated model names (default: every bundled model)")
    ap.add_argument("--target", action="append", default=[], metavar="MODEL=BACKEND:PRECISION",
                    help="an extra row, e.g. yolo-fastest-1.1-320=onnxruntime:fp32")
    args = ap.parse_args(argv)
    models = load_models()
    names = args.models.split(",") if args.models else list(models)
    rows = [(models[n], models[n].reference_backend, None) for n in names]
    for spec in args.target:
        name, _, target = spec.partition("=")
        backend, _, precision = target.partition(":")
        rows.append((models[name], backend, precision or None))
    data = CocoDataset(max_images=args.max_images)
    print(f"{data.label}, workers={args.workers}, batch {args.batch_size}\n")
    print("| model | target | batch | sequential img/s | pipelined img/s | engine-only img/s | speedup | "
          "pipelined / engine-only |")
    print("|---|---|---|---|---|---|---|---|")
    for model, backend, precision in rows:
        if not get_backend(backend).availability().ok:
            print(f"| {model.name} | {backend} | skipped: {get_backend(backend).availability().reason} |")
            continue
        r = bench(model, backend, precision, data, args.workers, args.batch_size)
        print(f"| {r['model']} | {r['target']} | {r['batch']} | {r['sequential']:.1f} | {r['pipelined']:.1f} | "
              f"{r['engine_only']:.1f} | {r['speedup']:.2f}x | {r['ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
