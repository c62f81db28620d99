"""Side by side: mapgate's ``int8-repair`` vs NNCF's ``quantize_with_accuracy_control``.

For each model, both searches get the same inputs:

* the same FP32 ONNX (what ``mapgate.convert.onnx_for`` builds: the Darknet -> ONNX conversion);
* the same calibration images (the bundled calib-val2017, 100 images), split the same way
  (``mapgate.sensitivity.split_calibration``: 67 calibrate, 33 held out for validation);
* the same metric and tolerance: pseudo-AP on the held-out images against the FP32 model's own
  confident detections (``mapgate.sensitivity.Proxy``), at most ``--proxy-tolerance`` points lost
  (NNCF: ``max_drop`` = the tolerance, ``drop_type`` ABSOLUTE; its initial metric is the FP32
  model's own pseudo-AP, about 100);
* the same float-layer budget (``--max-float-layers``: mapgate's ``max_float_layers``, NNCF's
  ``max_num_iterations``).

NNCF runs with its defaults otherwise (preset PERFORMANCE: symmetric, as mapgate's Q/DQ), its
ranking in metric mode (NNCF 3.4 supports no other for ONNX: the validation function returns each
image's own pseudo-AP) on ``--ranking-subset`` images.

Then both are verified once, the same way, with mapgate's gate on the evaluation set
(val2017-mini, 206 images): dAP with its paired-bootstrap CI and verdict, and the engine-only speed
beside ONNX Runtime FP32 in the same run. The NNCF file goes in as a ``prebuilt`` onnxruntime:int8.

    nice -n 10 python benchmarks/bench_int8_vs_nncf.py [--models yolov3-tiny-416,yolo-fastest-1.1-320] [--out DIR]

Writes ``DIR/int8_vs_nncf.json`` (atomically, after every model) and prints the table. Without NNCF
installed (``pip install 'mapgate[nncf]'``) it prints the reason and exits 0 (skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.errors import BackendUnavailable
from mapgate.fsutil import write_json_atomic
from mapgate.int8_repair import DEFAULT_MIN_SPEEDUP, NO_RECIPE
from mapgate.optional import require

DEFAULT_MODELS = ("yolov3-tiny-416", "yolo-fastest-1.1-320")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET = "onnxruntime:int8"
RECORD_NAME = "int8_vs_nncf.json"


def nncf_missing() -> str | None:
    """None when NNCF imports, else the one-line reason naming the missing module."""
    try:
        require("nncf")
    except BackendUnavailable as exc:
        return exc.reason
    return None


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a"


def render_table(rows: Sequence[dict[str, Any]], dataset: str) -> str:
    """The markdown table of the side-by-side record (one row per model and method)."""
    head = (f"| model | method | proxy pseudo-AP lost (tolerance) | {dataset} dAP | CI (95%) | verdict | "
            "float convs / convs | speed vs FP32 (ORT CPU) | search s |")
    lines = [head, "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['method']} | error: {r['error']} | | | | | | |")
            continue
        v = r["verification"]
        speed = v.get("speedup_vs_fp32")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['proxy_lost']:.1f} ({r['proxy_tolerance']:g}) | "
            f"{v['delta_ap']:+.2f} | {_fmt_ci(v['ci'])} | {v['verdict']} | {r['float_layers']} / {r['convs']} | "
            f"{'x%.2f' % speed if speed is not None else 'n/a'} | {r['search_seconds']:.0f} |")
    return "\n".join(lines)


def write_record(out_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(out_dir) / RECORD_NAME
    write_json_atomic(path, record)
    return path


def float_convs(proto: Any) -> tuple[int, int]:
    """(convolutions left in float, all convolutions) of a Q/DQ ONNX: a convolution is INT8 when its
    weight comes out of a DequantizeLinear (its input's Q/DQ may sit upstream of a MaxPool or Concat,
    where NNCF puts it; reverting a layer removes both)."""
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    floats = [n for n in convs if len(n.input) < 2 or producer.get(n.input[1]) != "DequantizeLinear"]
    return len(floats), len(convs)


def _pseudo_ap_subset(proxy: Any, outputs: list[dict[str, np.ndarray]], dets: list[dict[str, Any]],
                      idx: Sequence[int]) -> float:
    """Pseudo-AP of a candidate on some of the proxy images (NNCF validates subsets while ranking)."""
    from mapgate.evaluate import ContractWarning, evaluate

    if len(idx) == len(proxy.inputs):
        return proxy.compare(outputs, dets).pseudo_ap
    ids = {proxy.ids[k] for k in idx}
    gt = proxy._pseudo_gt
    sub = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    if not dets or not sub["annotations"]:
        return 100.0 if not dets and not sub["annotations"] else 0.0
    with warnings.catch_warnings():
        # a single image's detections often all score high: the mAP-threshold warning says nothing here
        warnings.simplefilter("ignore", ContractWarning)
        stats = evaluate(sub, dets, label="proxy").stats
    return 100.0 * max(stats["AP"], 0.0)


def validation_fn_for(proxy: Any, model: Any) -> Callable[[Any, Iterable[int]], tuple[float, list[float]]]:
    """NNCF's ``validation_fn(model, validation_data) -> (metric, per-item metric)`` on the proxy
    images: data items are indices into them. NNCF 3.4 ranks ONNX models in metric mode only (its
    output-difference ranking raises UnsupportedBackendError for ONNX), so each item's value is
    that image's own pseudo-AP."""
    from mapgate.backends.base import canonical_name
    from mapgate.postprocess import postprocess

    ort = require("onnxruntime", "onnxruntime")

    def validate(onnx_model: Any, items: Iterable[int]) -> tuple[float, list[float]]:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out_names = [o.name for o in session.get_outputs()]
        idx = [int(k) for k in items]
        outputs, dets, per_item = [], [], []
        for k in idx:
            batch, transform = proxy.inputs[k].tensor, proxy.inputs[k].transform
            values = session.run(out_names, {name: batch})
            out = {canonical_name(n): v for n, v in zip(out_names, values)}
            outputs.append(out)
            mine = postprocess(out, model, transform, proxy.ids[k])
            per_item.append(_pseudo_ap_subset(proxy, [out], mine, [k]) if len(proxy.inputs) > 1 else 0.0)
            dets.extend(mine)
        return _pseudo_ap_subset(proxy, outputs, dets, idx), per_item

    return validate


def _verification(v: Any) -> dict[str, Any]:
    ci = v.ci
    s = v.speed or {}
    return {"dataset": v.dataset, "delta_ap": v.delta_ap, "ci": [ci["low_points"], ci["high_points"]] if ci else None,
            "verdict": v.verdict, "passed": v.passed, "tolerance": v.tolerance,
            "opt_AP": 100.0 * v.opt_stats["AP"], "ref_AP": 100.0 * v.ref_stats["AP"],
            "fp32_ms": s.get("fp32_ms"), "optimized_ms": s.get("optimized_ms"),
            "speedup_vs_fp32": s.get("speedup_vs_fp32"), "speed": s or None}


def _compare_with(gate: Any, name: str, spec: Any) -> Any:
    original = gate.models[name]
    gate.models[name] = spec
    gate._sides.pop((name, TARGET), None)  # the INT8 side is rebuilt from the new spec
    try:
        return gate.compare(name, TARGET)
    finally:
        gate.models[name] = original
        gate._sides.pop((name, TARGET), None)


def run_mapgate(gate: Any, name: str, tolerance: float, max_float: int, say: Callable[[str], None],
                min_speedup: float = DEFAULT_MIN_SPEEDUP) -> dict[str, Any]:
    from mapgate.convert import ort_quant, onnx_for
    from mapgate.int8_repair import RepairConfig, repair
    from mapgate.sensitivity import conv_nodes

    cfg = RepairConfig(target=TARGET, proxy_tolerance=tolerance, max_float_layers=max_float, min_speedup=min_speedup)
    result = repair(gate, name, cfg, verify=False, say=lambda m: say(f"mapgate: {m}"))
    model = gate.model(name)
    v = _compare_with(gate, name, result.recipe.apply(model, TARGET))
    proto = ort_quant.load_for_quantization(onnx_for(model, gate.build_context()))
    convs = conv_nodes(proto)
    keep = set(ort_quant.keep_float_nodes(proto, result.recipe.keep_float))
    method = "mapgate int8-repair" + ("" if min_speedup == DEFAULT_MIN_SPEEDUP else f" --min-speedup {min_speedup:g}")
    return {"model": name, "method": method, "min_speedup": min_speedup, "proxy_lost": 100.0 - result.proxy_after.pseudo_ap,
            "proxy_tolerance": tolerance, "proxy_met": result.proxy_met, "status": result.status,
            "float_layers": len([c for c in convs if c in keep]), "convs": len(convs),
            "recipe": dataclasses.asdict(result.recipe), "search_seconds": result.search_seconds,
            "proxy_speedup_vs_fp32": result.to_dict()["speed"].get("speedup_vs_fp32"),
            "verification": _verification(v)}


def run_nncf(gate: Any, name: str, tolerance: float, max_float: int, ranking_subset: int, work: Path,
             say: Callable[[str], None]) -> dict[str, Any]:
    from mapgate.convert import onnx_for
    from mapgate.dataset import read_image
    from mapgate.int8_repair import RepairConfig
    from mapgate.manifest import FileRef
    from mapgate.preprocess import preprocess
    from mapgate.sensitivity import ImageLog, Proxy, split_calibration

    nncf = require("nncf")
    onnx = require("onnx", "onnxruntime")
    model = gate.model(name)
    ctx = gate.build_context()
    fp32 = onnx_for(model, ctx)
    calib, proxy_images = split_calibration(ctx.calib_images, RepairConfig().proxy_every)
    started = time.perf_counter()
    proxy = Proxy(model, fp32, proxy_images, ImageLog())
    proto = onnx.load(str(fp32))
    input_name = proto.graph.input[0].name
    calibration = nncf.Dataset(calib, lambda p: {input_name: preprocess(read_image(Path(p)), model)[0]})
    validation = nncf.Dataset(list(range(len(proxy.inputs))))
    say(f"nncf: quantize_with_accuracy_control (max_drop {tolerance:g}, at most {max_float} iterations)")
    quantized = nncf.quantize_with_accuracy_control(
        proto, calibration, validation, validation_fn_for(proxy, model),
        max_drop=tolerance, drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(calib),
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_float, ranking_subset_size=ranking_subset, num_ranking_workers=1))
    seconds = time.perf_counter() - started
    path = work / f"{name}.nncf-int8.onnx"
    onnx.save(quantized, str(path))
    score = proxy.score(path)
    n_float, n_convs = float_convs(quantized)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = dataclasses.replace(model, prebuilt={**model.prebuilt, TARGET: FileRef(role=TARGET, sha256=sha, path=path)})
    v = _compare_with(gate, name, spec)
    return {"model": name, "method": f"NNCF {nncf.__version__} quantize_with_accuracy_control",
            "proxy_lost": 100.0 - score.pseudo_ap, "proxy_tolerance": tolerance,
            "proxy_met": 100.0 - score.pseudo_ap <= tolerance, "float_layers": n_float, "convs": n_convs,
            "settings": {"max_drop": tolerance, "drop_type": "ABSOLUTE", "preset": "PERFORMANCE",
                         "subset_size": len(calib), "max_num_iterations": max_float,
                         "ranking_subset_size": ranking_subset, "ranking": "metric mode (per-image pseudo-AP)"},
            "search_seconds": seconds, "proxy_speedup_vs_fp32": proxy.speed(path).speedup,
            "onnx_sha256": sha, "verification": _verification(v)}


def _gate(out: Path) -> Any:
    from mapgate.catalog import cli_manifests, load_catalog
    from mapgate.gate import DEFAULT_ENGINES, Gate

    catalog = load_catalog(cli_manifests([]))
    source = catalog.data_source()
    return Gate(models=catalog.models, dataset=source.open(None), engines_dir=catalog.base / DEFAULT_ENGINES,
                reports_dir=out / "reports", calib_dir=source.calib_images, progress=False)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for {RECORD_NAME} and the gate's reports")
    ap.add_argument("--proxy-tolerance", type=float, default=15.0,
                    help="pseudo-AP points the proxy may lose: mapgate's --proxy-tolerance, NNCF's max_drop")
    ap.add_argument("--max-float-layers", type=int, default=12,
                    help="float-layer budget: mapgate's max_float_layers, NNCF's max_num_iterations")
    ap.add_argument("--ranking-subset", type=int, default=16, help="NNCF ranking_subset_size (proxy images)")
    ap.add_argument("--accuracy-first", action="store_true",
                    help="where no INT8 recipe both passes and pays (mapgate's default --min-speedup 1), run "
                         "mapgate again with --min-speedup 0: accuracy first, as NNCF always searches")
    args = ap.parse_args(argv)
    reason = nncf_missing()
    if reason:
        print(f"bench_int8_vs_nncf: skipped: {reason}")
        return 0
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    gate = _gate(args.out)
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {"target": TARGET, "dataset": gate.dataset.label, "rows": rows,
                              "proxy_tolerance": args.proxy_tolerance, "max_float_layers": args.max_float_layers}
    with tempfile.TemporaryDirectory(prefix="mapgate-nncf-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(run_nncf(gate, name, args.proxy_tolerance, args.max_float_layers, args.ranking_subset,
                                 Path(tmp), say))
            write_record(args.out, record)
            rows.append(run_mapgate(gate, name, args.proxy_tolerance, args.max_float_layers, say))
            write_record(args.out, record)
            shown = 2
            if args.accuracy_first and rows[-1]["status"] == NO_RECIPE:
                rows.append(run_mapgate(gate, name, args.proxy_tolerance, args.max_float_layers, say, min_speedup=0.0))
                write_record(args.out, record)
                shown = 3
            print(render_table(rows[-shown:], gate.dataset.label), flush=True)
    print(render_table(rows, gate.dataset.label))
    print(f"record: {write_record(args.out, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
