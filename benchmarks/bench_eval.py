"""COCO bbox evaluation speed and memory: pycocotools vs faster-coco-eval vs mapgate.

    .venv/bin/python benchmarks/bench_eval.py [--generator PATH] [--workdir DIR] [--json OUT]

On val2017-scale synthetic data (5,000 images, 36,781 boxes, ~475k detections, written by
the shared generator and reused from ``--workdir``), each tool runs in its own subprocess
so its peak RSS (``ru_maxrss``) is its own; every timing goes from ground truth and
detections already in memory (parsed JSON) to the 12 stats. Then the paired bootstrap
(1,000 resamples) is timed against one mapgate evaluation in the same process.

Exit status 1 when a target is missed: mapgate slower than 0.5x faster-coco-eval, peak
memory >= 1.5 GB, any stat or per-category AP not identical to pycocotools, or the
bootstrap costing more than 3 evaluations.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GENERATOR = REPO.parent / "shared" / "bench" / "make_coco_scale.py"
DEFAULT_WORKDIR = REPO / ".cache" / "bench"
GT_NAME = "gt_val2017_synth.json"
DT_NAME = "dt_val2017_synth.json"

SPEED_TARGET = 0.5  # mapgate seconds / faster-coco-eval seconds
BOOT_TARGET = 3.0  # paired bootstrap seconds / one mapgate evaluation
MEM_LIMIT_BYTES = 1.5e9
N_RESAMPLES = 1000


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _load(workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with open(workdir / GT_NAME) as f:
        gt = json.load(f)
    with open(workdir / DT_NAME) as f:
        dt = json.load(f)
    return gt, dt


def _per_cat_ap(precision: Any, cat_ids: list[int]) -> dict[str, float]:
    import numpy as np

    out = {}
    for k, cid in enumerate(cat_ids):
        s = precision[:, :, k, 0, 2]
        out[str(cid)] = -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))
    return out


# ------------------------------------------------------------------ workers (one per process)


def _worker_pycocotools(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes(dt)
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    sec = time.perf_counter() - t0
    return {"seconds": sec, "stats": [float(x) for x in ev.stats],
            "per_category_ap": _per_cat_ap(ev.eval["precision"], list(ev.params.catIds))}


def _worker_faster_coco_eval(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, Any]:
    from faster_coco_eval import COCO, COCOeval_faster

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(gt)
        cd = cg.loadRes(dt)
        ev = COCOeval_faster(cg, cd, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    sec = time.perf_counter() - t0
    return {"seconds": sec, "stats": [float(x) for x in ev.stats],
            "per_category_ap": _per_cat_ap(ev.eval["precision"], list(ev.params.catIds))}


def _worker_mapgate(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, Any]:
    import warnings

    from mapgate.evaluate import STAT_NAMES, evaluate

    warnings.simplefilter("ignore")  # the synthetic set has images with 100 detections
    t0 = time.perf_counter()
    m = evaluate(gt, dt)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        m = evaluate(gt, dt)
        warm.append(time.perf_counter() - t0)
    return {"seconds": min(warm), "seconds_runs": warm, "first_call_seconds": first,
            "stats": [m.stats[k] for k in STAT_NAMES],
            "per_category_ap": {str(k): v.ap for k, v in m.per_category.items()}}


def _worker_mapgate_cold(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, Any]:
    import warnings

    from mapgate.bootstrap import paired_bootstrap, per_image_results
    from mapgate.evaluate import evaluate

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    evaluate(gt, dt)
    sec = time.perf_counter() - t0
    small = per_image_results(gt, dt[:5000])
    t0 = time.perf_counter()
    paired_bootstrap(small, small, n_resamples=10)
    return {"seconds": sec, "bootstrap_first_call_seconds": time.perf_counter() - t0}


def _perturbed(dt: list[dict[str, Any]], seed: int = 7) -> list[dict[str, Any]]:
    """A plausible 'optimized model': boxes jittered by ~2% of their size, scores by ~10%."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(dt)
    box = np.array([d["bbox"] for d in dt], dtype=np.float64)
    wh = np.repeat(box[:, 2:], 2, axis=1)
    box = box + rng.normal(0.0, 0.02, (n, 4)) * wh
    box[:, 2:] = np.maximum(box[:, 2:], 0.0)
    score = np.clip(np.array([d["score"] for d in dt]) * np.exp(rng.normal(0.0, 0.1, n)), 0.0, 1.0)
    return [{"image_id": d["image_id"], "category_id": d["category_id"],
             "bbox": [round(v, 2) for v in b], "score": round(s, 5)}
            for d, b, s in zip(dt, box.tolist(), score.tolist())]


def _worker_bootstrap(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, Any]:
    import warnings

    from mapgate.bootstrap import paired_bootstrap, per_image_results
    from mapgate.evaluate import evaluate, load_ground_truth

    warnings.simplefilter("ignore")
    opt = _perturbed(dt)
    g = load_ground_truth(gt)
    evaluate(g, dt[:2000])  # load the kernels before timing
    evals = []
    for _ in range(3):
        t0 = time.perf_counter()
        evaluate(gt, dt)
        evals.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref_pi = per_image_results(gt, dt)
    opt_pi = per_image_results(gt, opt)
    t_match = time.perf_counter() - t0
    boots = []
    for _ in range(2):
        t0 = time.perf_counter()
        ci = paired_bootstrap(ref_pi, opt_pi, n_resamples=N_RESAMPLES, seed=0)
        boots.append(time.perf_counter() - t0)
    return {"eval_seconds": min(evals), "per_image_x2_seconds": t_match, "seconds": min(boots),
            "seconds_runs": boots, "ci": ci.to_dict()}


WORKERS = {"pycocotools": _worker_pycocotools, "faster-coco-eval": _worker_faster_coco_eval,
           "mapgate": _worker_mapgate, "mapgate-cold": _worker_mapgate_cold, "bootstrap": _worker_bootstrap}


def _run_worker(name: str, workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(workdir),
               "--result", str(out)]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"bench_eval: worker {name!r} failed (exit {proc.returncode})")
        return json.loads(out.read_text())


def _worker_main(name: str, workdir: Path, result: Path) -> None:
    gt, dt = _load(workdir)
    loaded = _peak_bytes()
    res = WORKERS[name](gt, dt)
    res["peak_bytes"] = _peak_bytes()
    res["loaded_bytes"] = loaded
    result.write_text(json.dumps(res))


# ------------------------------------------------------------------ driver


def _ensure_data(generator: Path, workdir: Path) -> None:
    if (workdir / GT_NAME).exists() and (workdir / DT_NAME).exists():
        return
    if not generator.exists():
        raise SystemExit(f"bench_eval: generator {generator} does not exist (pass --generator PATH)")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating synthetic val2017-scale data in {workdir} ...", flush=True)
    subprocess.run([sys.executable, str(generator), str(workdir)], check=True)


def _mb(b: float) -> str:
    return f"{b / 2 ** 20:8.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", type=Path, default=DEFAULT_GENERATOR)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--json", type=Path, default=None, help="write the measured numbers here")
    ap.add_argument("--skip-cold", action="store_true", help="skip the numba compile-from-scratch run")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.workdir, args.result)
        return 0

    _ensure_data(args.generator, args.workdir)
    results: dict[str, Any] = {}
    for name in ("pycocotools", "faster-coco-eval", "mapgate"):
        print(f"running {name} ...", flush=True)
        results[name] = _run_worker(name, args.workdir)
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as cache:
            print("running mapgate with an empty numba cache (compile from scratch) ...", flush=True)
            results["mapgate-cold"] = _run_worker("mapgate-cold", args.workdir, {**os.environ, "NUMBA_CACHE_DIR": cache})
    print("running paired bootstrap ...", flush=True)
    results["bootstrap"] = _run_worker("bootstrap", args.workdir)

    ref, fce, mg, bs = results["pycocotools"], results["faster-coco-eval"], results["mapgate"], results["bootstrap"]
    stats_same = mg["stats"] == ref["stats"]
    cats_same = mg["per_category_ap"] == ref["per_category_ap"]
    fce_same = fce["stats"] == ref["stats"]
    ratio = mg["seconds"] / fce["seconds"]
    boot_ratio = bs["seconds"] / bs["eval_seconds"]
    boot_total_ratio = (bs["seconds"] + bs["per_image_x2_seconds"]) / bs["eval_seconds"]

    print()
    print(f"{'tool':<34}{'seconds':>9}{'peak MB':>9}{'eval MB':>9}{'vs f-c-e':>10}  identical to pycocotools")
    for label, r, same in (("pycocotools 2.0", ref, "(reference)"),
                           ("faster-coco-eval", fce, "12 stats " + ("yes" if fce_same else "NO")),
                           ("mapgate (warm, best of 3)", mg, (f"12 stats {'yes' if stats_same else 'NO'}, "
                                                              f"per-category AP {'yes' if cats_same else 'NO'}"))):
        print(f"{label:<34}{r['seconds']:9.2f}{_mb(r['peak_bytes'])} {_mb(r['peak_bytes'] - r['loaded_bytes'])}"
              f"{r['seconds'] / fce['seconds']:9.2f}x  {same}")
    print(f"{'mapgate first call (numba cache)':<34}{mg['first_call_seconds']:9.2f}")
    if "mapgate-cold" in results:
        cold = results["mapgate-cold"]
        print(f"{'mapgate first call (no cache)':<34}{cold['seconds']:9.2f}  (numba compiles the kernels)")
        print(f"{'bootstrap first call (no cache)':<34}{cold['bootstrap_first_call_seconds']:9.2f}  "
              "(10 resamples; mostly compiling)")
    print(f"{'paired bootstrap, 1000 resamples':<34}{bs['seconds']:9.2f}{_mb(bs['peak_bytes'])}"
          f"{'':>9}{'':>10}  = {boot_ratio:.2f}x one evaluation ({bs['eval_seconds']:.2f} s)")
    print(f"{'  + per-image matching of both':<34}{bs['seconds'] + bs['per_image_x2_seconds']:9.2f}"
          f"{'':>28}  = {boot_total_ratio:.2f}x one evaluation")
    ci = bs["ci"]
    print(f"  delta AP {ci['delta_ap_points']:+.2f} points, 95% CI [{ci['low_points']:+.2f}, {ci['high_points']:+.2f}]")
    print("  (peak MB = process high-water mark incl. the parsed JSON; eval MB = growth during the run)")

    failures = []
    if ratio > SPEED_TARGET:
        failures.append(f"mapgate takes {ratio:.2f}x faster-coco-eval's time (target <= {SPEED_TARGET}x)")
    if mg["peak_bytes"] >= MEM_LIMIT_BYTES:
        failures.append(f"mapgate peak memory {mg['peak_bytes'] / 1e9:.2f} GB (limit 1.5 GB)")
    if bs["peak_bytes"] >= MEM_LIMIT_BYTES:
        failures.append(f"bootstrap peak memory {bs['peak_bytes'] / 1e9:.2f} GB (limit 1.5 GB)")
    if not stats_same:
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(mg["stats"], ref["stats"])) if a != b]
        failures.append(f"mapgate stats differ from pycocotools: {diffs}")
    if not cats_same:
        bad = [k for k in ref["per_category_ap"] if mg["per_category_ap"].get(k) != ref["per_category_ap"][k]]
        failures.append(f"per-category AP differs from pycocotools for categories {bad[:10]}")
    if boot_ratio > BOOT_TARGET:
        failures.append(f"paired bootstrap costs {boot_ratio:.2f}x one evaluation (target <= {BOOT_TARGET}x)")

    if args.json:
        from mapgate.fsutil import write_json_atomic

        write_json_atomic(args.json, {
            "results": results, "mapgate_vs_fce": ratio, "bootstrap_vs_eval": boot_ratio,
            "bootstrap_with_matching_vs_eval": boot_total_ratio, "stats_identical": stats_same,
            "per_category_identical": cats_same, "failures": failures,
            "targets": {"speed": SPEED_TARGET, "bootstrap": BOOT_TARGET, "memory_bytes": MEM_LIMIT_BYTES}})
    if failures:
        print("\nTARGETS MISSED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
