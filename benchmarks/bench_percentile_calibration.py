"""Percentile INT8 calibration: ONNX Runtime's histogram collector vs mapgate's (same bytes, less time).

For each bundled model whose recipe calibrates with Percentile, builds its ``onnxruntime:int8``
Q/DQ file twice in this run, with ONNX Runtime's own ``HistogramCollector`` and with
``mapgate.convert.ort_histogram``'s, on the same calibration images; prints both build times,
the ratio, and whether the two files are byte-identical. Exits 1 if any pair differs or the
fast collector is not faster (``--min-ratio``, default 1.0).

    .venv/bin/python benchmarks/bench_percentile_calibration.py [--images 100] [--models a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images
from mapgate.catalog import load_models
from mapgate.convert import onnx_for, ort_quant


def _build(model, source: Path, out: Path, images: list[Path], fast: bool) -> float:  # noqa: ANN001
    started = time.perf_counter()
    saved = ort_quant.fast_percentile_histograms
    if not fast:
        ort_quant.fast_percentile_histograms = contextlib.nullcontext
    try:
        ort_quant.quantize(source, out, model, images, method="percentile",
                           keep_float=model.convert.int8_keep_float, per_channel=model.convert.int8_per_channel)
    finally:
        ort_quant.fast_percentile_histograms = saved
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="calibration images (default: 100, as the recipes)")
    ap.add_argument("--models", help="comma-separated model names (default: every Percentile recipe)")
    ap.add_argument("--min-ratio", type=float, default=1.0, help="fail below this ORT/mapgate time ratio")
    args = ap.parse_args()
    models = load_models()
    names = args.models.split(",") if args.models else \
        [n for n, m in models.items() if m.convert.int8_calibration == "percentile" and "onnxruntime:int8" in m.optimized]
    images = calibration_images(limit=args.images)
    ok = True
    print(f"{'model':28} {'ORT s':>7} {'mapgate s':>9} {'ratio':>6}  identical")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BuildContext(engines_dir=Path(tmp) / "engines", progress=False)
        for name in names:
            model = models[name]
            source = onnx_for(model, ctx)
            ort_s = _build(model, source, Path(tmp) / f"{name}.ort.onnx", images, fast=False)
            fast_s = _build(model, source, Path(tmp) / f"{name}.fast.onnx", images, fast=True)
            same = (Path(tmp) / f"{name}.ort.onnx").read_bytes() == (Path(tmp) / f"{name}.fast.onnx").read_bytes()
            ratio = ort_s / fast_s
            ok &= same and ratio >= args.min_ratio
            print(f"{name:28} {ort_s:7.1f} {fast_s:9.1f} {ratio:5.2f}x  {'yes' if same else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
