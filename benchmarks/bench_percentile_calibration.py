"""Percentile INT8 calibration: ONNX Runtime's histogram calibration vs mapgate's (same bytes, less
time, less memory).

For each bundled model whose recipe calibrates with Percentile, builds its ``onnxruntime:int8``
Q/DQ file twice in this run, each in a fresh process: with ONNX Runtime's own ``collect_data`` and
``HistogramCollector`` (every image's outputs held, then histogrammed), and with
``mapgate.convert.ort_histogram``'s (two passes, one image's outputs held; one-pass histograms), on
the same calibration images; prints both build times and peak resident memory, their ratios, and
whether the two files are byte-identical. Exits 1 if any pair differs or mapgate's is not faster
(``--min-ratio``, default 1.0).

    .venv/bin/python benchmarks/bench_percentile_calibration.py [--images 100] [--models a,b]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images
from mapgate.catalog import load_models
from mapgate.convert import onnx_for, ort_quant


def _build(name: str, source: Path, out: Path, n_images: int, fast: bool) -> tuple[float, float]:
    """(seconds, peak resident MB) of one build, run in this (fresh) process."""
    model = load_models()[name]
    images = calibration_images(limit=n_images)
    if not fast:
        ort_quant.fast_percentile_histograms = contextlib.nullcontext
    started = time.perf_counter()
    ort_quant.quantize(source, out, model, images, method="percentile",
                       keep_float=model.convert.int8_keep_float, per_channel=model.convert.int8_per_channel)
    return time.perf_counter() - started, _peak_mb()


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report at least
    # this benchmark's own peak; VmHWM belongs to the child's own address space
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def _in_a_fresh_process(*args: object) -> tuple[float, float]:
    # peak memory is per process: each build gets its own (spawn: nothing inherited from this one)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_build, *args).result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="calibration images (default: 100, as the recipes)")
    ap.add_argument("--models", help="comma-separated model names (default: every Percentile recipe)")
    ap.add_argument("--min-ratio", type=float, default=1.0, help="fail below this ORT/mapgate time ratio")
    args = ap.parse_args()
    models = load_models()
    names = args.models.split(",") if args.models else \
        [n for n, m in models.items() if m.convert.int8_calibration == "percentile" and "onnxruntime:int8" in m.optimized]
    ok = True
    print(f"{'model':28} {'ORT s':>7} {'mapgate s':>9} {'ratio':>6} {'ORT MB':>7} {'mapgate MB':>10} "
          f"{'ratio':>6}  identical")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BuildContext(engines_dir=Path(tmp) / "engines", progress=False)
        for name in names:
            source = onnx_for(models[name], ctx)
            ort_out, fast_out = Path(tmp) / f"{name}.ort.onnx", Path(tmp) / f"{name}.fast.onnx"
            ort_s, ort_mb = _in_a_fresh_process(name, source, ort_out, args.images, False)
            fast_s, fast_mb = _in_a_fresh_process(name, source, fast_out, args.images, True)
            same = ort_out.read_bytes() == fast_out.read_bytes()
            ratio = ort_s / fast_s
            ok &= same and ratio >= args.min_ratio
            print(f"{name:28} {ort_s:7.1f} {fast_s:9.1f} {ratio:5.2f}x {ort_mb:7.0f} {fast_mb:10.0f} "
                  f"{ort_mb / fast_mb:5.1f}x  {'yes' if same else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
