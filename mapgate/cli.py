"""The ``mapgate`` command line. Exit codes: 0 success/pass, 1 gate failed, 2 usage or input error."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mapgate import __version__
from mapgate.argtypes import (
    coco_root,
    existing_dir,
    existing_file,
    non_empty,
    one_line,
    non_negative_float,
    non_negative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    shard_spec,
    target,
)
from mapgate.backends import all_backends
from mapgate.backends.base import BuildContext
from mapgate.backends.tensorrt import installed_version
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.catalog import Catalog, cli_manifests, load_catalog
from mapgate.compare import outcome
from mapgate.convert.export import (
    check_out_dir,
    check_typing_applies,
    export,
    parse_opt,
    private_cache,
    remove_tree,
    resolve_typing,
)
from mapgate.cpu import this_cpu
from mapgate.dataset import DataSource
from mapgate.doctor import NOTHING_TO_RUN, machine_facts, ran_nothing, run_checks, run_record, tensorrt_missing
from mapgate.errors import ConfigError, ContractError, DataError, MapgateError
from mapgate.evaluate import class_index_hint, evaluate, load_detections, load_ground_truth
from mapgate.files import missing_files
from mapgate.fsutil import mark_complete, mark_incomplete, write_bytes_atomic, write_json_atomic
import mapgate.gate  # DEFAULT_ENGINES/DEFAULT_REPORTS read at call time: tests point them elsewhere
from mapgate.gate import Gate
from mapgate.history import run_history
from mapgate.int8_repair import NO_RECIPE, RepairConfig, recipe_toml, repair
from mapgate.manifest import INT8_ACTIVATION_TYPES, INT8_CALIBRATIONS, INT8_OPS
from mapgate.merge import merge_shards
from mapgate.postprocess.family import all_families
from mapgate.report import case_text, doctor_markdown, doctor_text, plot_int8_pareto

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


MODELS_FILE_HELP = ("a TOML model manifest (repeatable; includes are read). Default: mapgate.toml in the working "
                    "directory (in a mapgate checkout without one: mapgate's own demo manifest)")


def _add_manifest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-file", type=existing_file, action="append", default=[], metavar="FILE",
                   help=MODELS_FILE_HELP)
    p.add_argument("--mirror", type=existing_dir, metavar="DIR",
                   help="folder holding downloaded model files for air-gapped use (or set MAPGATE_MIRROR)")


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    """The data set, as a manifest's [dataset] names it (these override it; default: the bundled sets)."""
    p.add_argument("--coco-root", type=coco_root, metavar="DIR",
                   help="a COCO layout: DIR/val2017/*.jpg and DIR/annotations/instances_val2017.json (another "
                        "annotation file: add --annotations FILE). Default: the manifest's [dataset], else the "
                        "bundled val2017-mini (206 images)")
    p.add_argument("--images", type=existing_dir, metavar="DIR", help="the evaluated images (with --annotations)")
    p.add_argument("--annotations", type=existing_file, metavar="FILE",
                   help="their COCO instance annotations (with --images or --coco-root)")
    p.add_argument("--dataset-label", type=one_line, metavar="NAME",
                   help="the data set's name in reports (default: the annotation file's stem)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    _add_dataset_options(p)
    p.add_argument("--max-images", type=positive_int, metavar="N", help="evaluate only the first N image ids")
    _add_manifest_options(p)
    p.add_argument("--engines-dir", type=output_dir, metavar="DIR",
                   help="conversion/engine/detection cache (default: engines/ beside the manifest, the folder "
                        "pytest uses too)")
    p.add_argument("--calib-dir", type=existing_dir, metavar="DIR",
                   help="INT8 calibration images, read only for INT8 targets (default: the manifest's [dataset] "
                        "calib_images, else the bundled calib-val2017, which is part of val2017: with the full "
                        "val2017 give images from outside the evaluated set)")
    p.add_argument("--no-cache", action="store_true", help="recompute detections even if a cached run matches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_loop_options(p)


def _add_loop_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=non_negative_int, metavar="N",
                   help="threads decoding and preprocessing images ahead of the engine (default: one per core; "
                        "0 = the sequential loop); the detections are the same bytes either way")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="images per engine call where the engine has a batch dimension (else 1); default 1")
    p.add_argument("--shard", type=shard_spec, metavar="I/N",
                   help="run only shard I of N of the image ids (round-robin); join shards with `mapgate merge`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapgate",
        description="Prove an optimized object detector (TensorRT, ONNX Runtime, TFLite) is as accurate as the "
                    "model it came from: same images, same pre/post-processing, COCO mAP via pycocotools, a verdict "
                    "with a confidence interval, and JSON artifacts anyone can re-check.",
        epilog="Exit codes: 0 ok/pass, 1 gate failed, 2 usage or input error. Run `mapgate COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"mapgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("evaluate", help="COCO-evaluate a detections JSON against annotations",
                       description="Evaluate detections in the COCO results format (list of {image_id, category_id, "
                                   "bbox:[x,y,w,h], score}) against COCO instance annotations. Prints the 12-line "
                                   "pycocotools summary; --out writes the metrics JSON (stats, voc07_ap50, "
                                   "voc_area_ap50, per_category, dataset).")
    p.add_argument("--gt", type=Path, required=True, metavar="ANNOTATIONS.json", help="COCO instance annotations")
    p.add_argument("--dets", type=Path, required=True, metavar="DETECTIONS.json", help="COCO results-format detections")
    p.add_argument("--out", type=output_file, metavar="METRICS.json",
                   help="write the metrics JSON here (never one of the input files)")
    p.add_argument("--label", help="data set label for the report (default: derived from the annotations)")

    p = sub.add_parser("models", help="list the models of the manifest and whether each can run here",
                       description="List manifest models: name, family, original backend, and whether that backend "
                                   "is available (or exactly what is missing); also every optimized target. "
                                   "The tensorrt_demos write-up's models: --models-file fixtures/models-tensorrt-demos.toml")
    _add_manifest_options(p)

    p = sub.add_parser("eval", help="run one model on one backend and evaluate it (like tensorrt_demos' eval_ssd.py)",
                       description="Run MODEL on BACKEND over the images with a progress bar, write DIR/detections.json "
                                   "and DIR/metrics.json, and print the pycocotools summary.")
    p.add_argument("--model", required=True, help="a model name from `mapgate models`")
    p.add_argument("--backend", required=True, type=target, metavar="BACKEND[:PRECISION]",
                   help="e.g. tf, opencv, onnxruntime (the original file), or onnxruntime:int8, tflite:fp16, tensorrt:fp16")
    p.add_argument("--out", type=output_dir, metavar="DIR",
                   help="output folder (default reports/<run-id>/<model>/<backend>, reports/ beside the manifest)")
    _add_data_options(p)

    p = sub.add_parser("compare", help="the accuracy gate: original vs optimized, exit 0 pass / 1 fail",
                       description="Run the reference and the optimized engine on the same images, compare COCO AP "
                                   "(delta, paired bootstrap 95%% CI over images, detection agreement) and decide. "
                                   "Writes comparison.json and summary.md.")
    p.add_argument("--model", required=True, help="a model name from `mapgate models`")
    p.add_argument("--ref", type=non_empty, metavar="BACKEND|DETECTIONS.json",
                   help="reference backend (default: the manifest's reference_backend) or a stored "
                        "detections.json (or its folder) from `mapgate eval`, with its metrics.json beside it. "
                        "A backend name always means the backend, even if a file of that name exists: write "
                        "./opencv for such a file")
    p.add_argument("--opt", required=True, metavar="BACKEND:PRECISION",
                   help="e.g. onnxruntime:fp32, tensorrt:int8")
    p.add_argument("--tolerance", type=non_negative_float, metavar="POINTS",
                   help="AP points (>= 0) the optimized model may lose (default: manifest, else fp32 0.1, fp16 0.5, int8 1.5)")
    p.add_argument("--out", type=output_dir, metavar="DIR",
                   help="reports folder (default: reports/ beside the manifest); a run-id subfolder is made")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--inconclusive", choices=("fail", "pass"),
                   help="exit code of an inconclusive verdict (the CI reaches below -tolerance but dAP does not): "
                        "fail = 1, pass = 0 (default: fail when the CI environment variable is set, else a "
                        "warning and 0)")
    _add_data_options(p)

    p = sub.add_parser("merge", help="join shard runs (--shard I/N) and gate the union, exit 0 pass / 1 fail",
                       description="Check that the shard run folders (each a `mapgate compare --shard I/N` run folder, "
                                   "or a folder holding several) are of the same model, targets, contract and data set, "
                                   "with disjoint image sets that together are the whole set; then evaluate and gate the "
                                   "union exactly as an unsharded run would (same stats, bootstrap CI and verdict). "
                                   "Writes a new run folder with both sides, comparison.json, summary.md and merge.json.")
    p.add_argument("dirs", nargs="+", type=existing_dir, metavar="DIR", help="shard run folders (or folders holding them)")
    p.add_argument("--inconclusive", choices=("fail", "pass"),
                   help="exit code of an inconclusive verdict, as for `mapgate compare`")
    p.add_argument("--out", type=output_dir, metavar="DIR",
                   help="reports folder (default: reports/ beside the manifest); a run-id subfolder is made")
    _add_dataset_options(p)  # the data set the shards ran on, checked by content
    p.add_argument("--models-file", type=existing_file, action="append", default=[], metavar="FILE",
                   help="the TOML model manifest(s) given to the shard runs (default: as for compare)")

    p = sub.add_parser("int8-repair", help="find the fastest INT8 recipe that passes the gate (calibration images only)",
                       description="When INT8 fails the gate: split the calibration images into calibrate/proxy sets "
                                   "and build candidate recipes, each scored by a proxy (agreement with the FP32 "
                                   "model's detections on the held-out calibration images) and timed beside FP32 "
                                   "(engine only, batch 1, interleaved). The options that cost no speed come first "
                                   "(calibration method minmax/percentile/entropy, per-channel, more images; then "
                                   "the data-free fixes convert.int8_cle and convert.int8_bias_correction); only "
                                   "then do convolutions go back to float, chosen by sensitivity per millisecond "
                                   "they cost. The fastest candidate that meets the proxy tolerance at "
                                   "--min-speedup or more is verified once on the evaluation set and written to "
                                   "--out (convert.int8_* keys with their numbers), with a Pareto plot of every "
                                   "candidate (--plot). When none does, it says so and writes the best points "
                                   "found. The evaluated images are never read by the search. The search starts "
                                   "from the manifest's current recipe and adds layers to its int8_keep_float: "
                                   "when the verification is inconclusive, commit the recipe and re-run with a "
                                   "smaller --proxy-tolerance.")
    p.add_argument("--model", required=True, help="a model name from `mapgate models`")
    p.add_argument("--target", default="onnxruntime:int8", metavar="BACKEND:int8",
                   help="onnxruntime:int8 (default) or tensorrt:int8 (needs TensorRT for the verification; with "
                        "--no-verify the search runs without it and its timings are a CPU proxy)")
    p.add_argument("--out", type=output_file, required=True, metavar="FILE.toml",
                   help="where to write the recipe (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite --out, --json and --plot if they exist")
    p.add_argument("--proxy-tolerance", type=non_negative_float, metavar="POINTS",
                   help="pseudo-AP points vs the FP32 detections the repaired model may lose on the proxy images "
                        "(default 30)")
    p.add_argument("--min-speedup", type=positive_float, default=1.0, metavar="X",
                   help="the recipe must run at least X times as fast as FP32 on the target engine (default 1.0: "
                        "not slower); when no candidate both meets the proxy and pays, the search says so")
    p.add_argument("--max-float-layers", type=positive_int, metavar="N", help="at most N layers back to float (default 12)")
    p.add_argument("--max-candidates", type=positive_int, metavar="N",
                   help="score only the first N convolutions (default: all; a quick run for CI)")
    p.add_argument("--methods", metavar="LIST", help="calibration methods to try, comma-separated (default "
                                                     "minmax,percentile,entropy)")
    p.add_argument("--forms", metavar="LIST",
                   help="Q/DQ forms (convert.int8_ops/int8_activation_type) to try, comma-separated OPS/ACT "
                        "(default for onnxruntime:int8: conv/s8,conv/u8,all/s8,all/u8; tensorrt:int8 tries its "
                        "only form, conv/s8)")
    p.add_argument("--no-data-free", action="store_true",
                   help="do not try cross-layer equalization and bias correction")
    p.add_argument("--no-verify", action="store_true", help="skip the verification on the evaluation set")
    p.add_argument("--json", type=output_file, metavar="FILE.json", help="also write the full search record as JSON")
    p.add_argument("--plot", type=output_file, metavar="FILE.png",
                   help="the Pareto plot of every candidate (default: --out with .pareto.png)")
    _add_data_options(p)

    p = sub.add_parser("convert", help="write the exact ONNX an engine is built from and its build recipe (no GPU)",
                       description="Write, on any machine and without a GPU, the ONNX file BACKEND:PRECISION is built "
                                   "from (OUT/<model>.<backend>-<precision>[-<typing>].onnx) and a JSON of its build "
                                   "recipe beside it: builder flags, typing mode, FP32-pinned layers, calibration "
                                   "images and cache, the Q/DQ settings, and an equivalent trtexec command line.")
    p.add_argument("--model", required=True, help="a model name from `mapgate models`")
    p.add_argument("--opt", required=True, metavar="BACKEND:PRECISION",
                   help="tensorrt:fp32|fp16|int8 or onnxruntime:fp32|int8")
    p.add_argument("--trt-typing", choices=("weak", "strong"),
                   help="TensorRT build mode (default: the installed TensorRT's, see `mapgate doctor`; without "
                        "TensorRT: strong, the only mode of TensorRT 11)")
    p.add_argument("--out", required=True, type=output_dir, metavar="DIR",
                   help="folder to write into (created if missing; refused if not empty, unless --force)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (same-named files replaced)")
    p.add_argument("--calib-dir", type=existing_dir, metavar="DIR",
                   help="INT8 calibration images (default: the bundled calib-val2017)")
    p.add_argument("--engines-dir", type=output_dir, metavar="DIR",
                   help="reuse this conversion cache (default: a private one inside --out, removed afterwards)")
    _add_manifest_options(p)

    p = sub.add_parser("doctor", help="what this machine can run; --run: a TensorRT self-check report for an issue",
                       description="Print the backends found (with framework versions, and the pip extra that fixes a "
                                   "missing one), the GPU, the TensorRT version and typing mode, trtexec, and the "
                                   "CPU's INT8 dot product. With --run: build every buildable TensorRT precision of "
                                   "every model, run it on the images, and check it against ONNX Runtime (FP32 "
                                   "|dAP| <= 0.1 and FP16 <= 0.5 AP points vs onnxruntime:fp32, Q/DQ INT8 agreement "
                                   "with onnxruntime:int8 >= 0.8), with engine-only times beside trtexec's where it "
                                   "is on PATH; writes doctor.json and doctor.md. Exit codes: 0 ok, 1 a check "
                                   "failed, 2 (with --run) TensorRT cannot run here: nothing to run.")
    p.add_argument("--run", action="store_true", help="build, run and check the TensorRT engines (needs TensorRT and a GPU)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="with --run: only this model (repeatable; default: every model of the manifest)")
    p.add_argument("--out", type=output_dir, metavar="DIR",
                   help="with --run: reports folder (default: reports/ beside the manifest); a run-id subfolder is made")
    _add_data_options(p)

    p = sub.add_parser("history", help="benchmark history: a table per model/backend and a PNG trend plot",
                       description="Read pytest-benchmark runs saved with --benchmark-autosave and show images/s and "
                                   "p99 latency over time, per device fingerprint.")
    p.add_argument("--storage", type=Path, default=Path(".benchmarks"), metavar="DIR",
                   help="pytest-benchmark storage folder (default .benchmarks)")
    p.add_argument("--out", type=output_file, default=Path("reports/benchmark-history.png"), metavar="PNG",
                   help="where to write the trend plot")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except MapgateError as exc:
        print(f"mapgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a full disk, a read-only or vanished folder: name the path, no traceback
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
        print(f"mapgate: error: cannot write or read {where}: {exc.strerror or exc}. Free space, fix the "
              "folder's permissions, or choose another --out/--engines-dir", file=sys.stderr)
        return EXIT_USAGE


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out is not None:
        for role, src in (("--gt", args.gt), ("--dets", args.dets)):
            if _same_file(args.out, src):
                raise ConfigError(f"--out {args.out} is the {role} input file; writing the metrics there would "
                                  "destroy it. Give another file name, e.g. metrics.json")
    gt = load_ground_truth(args.gt)
    dets = load_detections(args.dets)
    try:
        metrics = evaluate(gt, dets, label=args.label)
    except ContractError as exc:
        raise DataError(f"{args.dets} against {args.gt}: {exc}") from exc
    print("\n".join(metrics.summary_lines()))
    print(f"data set: {metrics.dataset.label}")
    hint = class_index_hint(gt, dets)
    if hint is not None:
        print(f"mapgate: hint: {args.dets}: {hint}", file=sys.stderr)
    if args.out:
        write_json_atomic(args.out, metrics.to_dict())
        print(f"metrics written to {args.out}")
    return EXIT_OK


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file (through symlinks, hard links and ``..``)."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _cmd_models(args: argparse.Namespace) -> int:
    models = _catalog(args).models
    backends = all_backends()
    status = {name: b.availability() for name, b in backends.items()}
    missing = {name: st.reason for name, st in status.items() if not st.ok}

    def state_of(target: str) -> str:
        backend, _, precision = target.partition(":")
        st = status.get(backend)
        if st is None:
            return "unknown backend"
        if not st.ok:
            return f"unavailable ({backend}: see below)"
        # optional hook: a precision this device cannot run although the backend can (TensorRT INT8 ...)
        per_precision = getattr(backends[backend], "precision_availability", None)
        if precision and per_precision is not None:
            pst = per_precision(precision)
            if not pst.ok:
                return f"unavailable ({pst.reason})"
        return "available"

    print(f"{'model':30} {'family':18} {'original':12} status")
    for m in models.values():
        print(f"{m.name:30} {m.family:18} {m.reference_backend:12} {state_of(m.reference_backend)}")
        for line in missing_files(m, mirror=args.mirror):
            print(f"{'':30}   files missing: {line}")
        for opt in m.optimized:
            owner = backends.get(opt.partition(":")[0])
            makeable = owner is not None and owner.facts.can_make(m, opt)
            how = "prebuilt" if opt in m.prebuilt else ("converted" if makeable else "no route")
            expected = m.expected_verdict(opt, this_cpu().saturates)
            expect = f", expected verdict {expected}" if expected != "pass" else ""
            print(f"{'':30}   -> {opt:18} {how:9} {state_of(opt)}{expect}")

    print(f"\n{'backend':12} {'precisions':16} {'runs originals':25} {'pytest -m':12} status")
    for name, b in sorted(backends.items()):
        f = b.facts
        originals = ", ".join(f.original_formats) or ("(from ONNX)" if f.builds_from_onnx else "-")
        line = f"{name:12} {','.join(f.precisions):16} {originals:25} {f.marker:12} " \
               f"{'available' if status[name].ok else 'unavailable'}"
        describe = getattr(b, "describe", None)  # optional: one line of what this device runs
        if status[name].ok and describe is not None:
            line += f"; {describe()}"
        print(line)
    for name, reason in sorted(missing.items()):
        describe = getattr(backends[name], "describe", None)  # e.g. TensorRT's build mode, said even without a GPU
        print(f"\n{describe()}" if describe else f"\n{name} is unavailable: {reason}")
    _print_families()
    return EXIT_OK


def _print_families() -> None:
    print(f"\n{'family':18} {'NMS':9} decoder settings")
    for name, (family, _) in all_families().items():
        where = "in graph" if family.nms_in_graph else "mapgate"
        print(f"{name:18} {where:9} {', '.join(family.decoder) or '-'}")
        print(f"{'':18} {'':9} {family.summary}")
        for key, setting in family.decoder.items():
            if setting.doc:
                print(f"{'':18} {'':9}   {key}: {setting.doc}")


def _catalog(args: argparse.Namespace) -> Catalog:
    return load_catalog(cli_manifests(args.models_file))


def _data_source(args: argparse.Namespace, catalog: Catalog) -> DataSource:
    """The data set exactly as pytest resolves it: the options, else the manifests' [dataset]."""
    return catalog.data_source(coco_root=args.coco_root, images=args.images, annotations=args.annotations,
                               calib_images=getattr(args, "calib_dir", None), label=args.dataset_label)


def _gate(args: argparse.Namespace, reports: Path | None = None, catalog: Catalog | None = None) -> Gate:
    if args.mirror:
        os.environ["MAPGATE_MIRROR"] = str(args.mirror)
    catalog = catalog or _catalog(args)
    source = _data_source(args, catalog)
    dataset = source.open(args.max_images)
    if args.shard:
        dataset = dataset.shard(*args.shard)
    # defaults beside the manifest, where pytest puts them (read at call time: tests redirect them)
    return Gate(models=catalog.models, dataset=dataset,
                engines_dir=args.engines_dir or catalog.base / mapgate.gate.DEFAULT_ENGINES,
                reports_dir=reports or catalog.base / mapgate.gate.DEFAULT_REPORTS,
                use_cache=not args.no_cache, calib_dir=source.calib_images,
                progress=not args.no_progress and sys.stderr.isatty(),  # bars only on a terminal
                workers=args.workers, batch_size=args.batch_size)


def _cmd_eval(args: argparse.Namespace) -> int:
    gate = _gate(args)
    gate.side_dir = args.out
    side = gate.side(args.model, args.backend)
    print("\n".join(side.metrics.summary_lines()))
    print(f"model {args.model} on {side.target}, data set: {side.metrics.dataset.label}")
    t = side.timings_ms
    print("mean ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
          + (" (detections from cache)" if side.from_cache else ""))
    if side.directory is not None:  # a side run by the gate is always written; typed optional for merge
        print(f"written: {side.directory / 'detections.json'}, {side.directory / 'metrics.json'}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    gate = _gate(args, reports=args.out)
    gate.bootstrap_resamples = args.resamples
    mark_incomplete(gate.run_dir, "mapgate compare")  # a kill anywhere below leaves the run marked
    gate.write_env()
    verdict = gate.compare(args.model, args.opt, ref=args.ref, tolerance=args.tolerance)
    mark_complete(gate.run_dir)
    # the command judges the verdict itself: a manifest's expected verdicts are for the test suite
    result = outcome(verdict, args.inconclusive, expected="pass")
    print(case_text(verdict, gate.case_dir(args.model, verdict.opt["target"]), result))
    if result == "warn":
        print("mapgate: warning: the verdict is inconclusive; exit code 0 (use --inconclusive=fail to fail, as "
              "under CI)", file=sys.stderr)
    return EXIT_FAIL if result == "fail" else EXIT_OK


def _cmd_merge(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    gate, verdicts = merge_shards(args.dirs, reports_dir=args.out, catalog=catalog, data=_data_source(args, catalog))

    results = []
    for verdict in verdicts:  # judged as `mapgate compare` judges one: every verdict is expected to pass
        results.append(outcome(verdict, args.inconclusive, expected="pass"))
        print(case_text(verdict, gate.case_dir(verdict.model, verdict.opt["target"]), results[-1]))
    print(f"artifacts: {gate.run_dir}")
    return EXIT_FAIL if "fail" in results else EXIT_OK


def _cmd_int8_repair(args: argparse.Namespace) -> int:
    plot = args.plot or args.out.with_name(args.out.stem + ".pareto.png")
    outputs = {"--out": args.out, "--json": args.json, "--plot": plot}
    named = [(k, v) for k, v in outputs.items() if v is not None]
    for i, (k, a) in enumerate(named):
        for k2, b in named[i + 1:]:
            if a.resolve() == b.resolve() or _same_file(a, b):
                raise ConfigError(f"{k2} {b} is the same file as {k} {a}; give each its own path")
        if a.exists() and not args.force:
            raise ConfigError(f"{k} {a} exists; int8-repair never overwrites a file silently (give --force, "
                              "or another path)")
    cfg = RepairConfig(target=args.target, min_speedup=args.min_speedup, data_free=not args.no_data_free)
    if args.proxy_tolerance is not None:
        cfg.proxy_tolerance = args.proxy_tolerance
    if args.max_float_layers:
        cfg.max_float_layers = args.max_float_layers
    cfg.max_candidates = args.max_candidates
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in INT8_CALIBRATIONS]
        if bad or not methods:
            raise ConfigError(f"--methods: {', '.join(repr(m) for m in bad) or 'empty list'} not in "
                              f"{', '.join(INT8_CALIBRATIONS)}; give e.g. --methods minmax,percentile")
        cfg.methods = tuple(dict.fromkeys(methods))
    if args.forms is not None:
        forms = tuple(tuple(f.strip().split("/", 1)) for f in args.forms.split(",") if f.strip())
        bad = [f for f in forms if len(f) != 2 or f[0] not in INT8_OPS or f[1] not in INT8_ACTIVATION_TYPES]
        if bad or not forms:
            raise ConfigError(f"--forms: {', '.join('/'.join(f) for f in bad) or 'empty list'} is not OPS/ACT with OPS "
                              f"in {', '.join(INT8_OPS)} and ACT in {', '.join(INT8_ACTIVATION_TYPES)}; give e.g. "
                              "--forms conv/s8,all/u8")
        cfg.forms = tuple(dict.fromkeys(forms))  # type: ignore[arg-type]
    gate = _gate(args)
    gate.progress = gate.progress and sys.stderr.isatty()
    say = (lambda msg: print(f"int8-repair: {msg}", file=sys.stderr, flush=True)) if not args.no_progress else \
        (lambda msg: None)
    result = repair(gate, args.model, cfg, verify=not args.no_verify, say=say)
    text = recipe_toml(result)
    record = result.to_dict()
    write_bytes_atomic(args.out, text.encode())
    if args.json:
        write_json_atomic(args.json, record)
    plot_int8_pareto(record, plot)
    print(text)
    print(f"recipe written to {args.out}; Pareto plot {plot}" + (f"; record {args.json}" if args.json else ""))
    if result.status == NO_RECIPE:
        print(f"int8-repair: {NO_RECIPE} (--min-speedup {cfg.min_speedup:g}); the best points are in the record "
              "and the plot", file=sys.stderr)
        return EXIT_FAIL
    v = result.verification
    return EXIT_OK if v is None or v["passed"] else EXIT_FAIL


def _cmd_convert(args: argparse.Namespace) -> int:

    target = parse_opt(args.opt)
    check_typing_applies(target, args.trt_typing)
    check_out_dir(args.out, args.force)
    if args.mirror:
        os.environ["MAPGATE_MIRROR"] = str(args.mirror)
    models = _catalog(args).models
    if args.model not in models:
        raise ConfigError(f"--model {args.model!r} is not in the manifest; known: {', '.join(sorted(models))}")
    model = models[args.model]
    typing = resolve_typing(args.trt_typing, installed_version()[0] if target.backend == "tensorrt" else None)
    calib = calibration_images(args.calib_dir) if target.precision == "int8" else []
    engines = args.engines_dir or private_cache(args.out)
    try:
        ctx = BuildContext(engines_dir=engines, calib_images=calib, calib_image_ids=frozenset(image_ids_of(calib)),
                           progress=False)
        onnx_path, json_path = export(model, target, typing, args.out, ctx)
    finally:
        if args.engines_dir is None:
            remove_tree(engines)
    print(f"{target.name}" + (f" ({typing} typing)" if target.backend == "tensorrt" else "")
          + f" of {model.name}: {onnx_path}; recipe {json_path}")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    facts = machine_facts()
    print(doctor_text(facts))
    if not args.run:
        return EXIT_OK
    catalog = _catalog(args)  # a mistyped --model is named even where TensorRT is missing
    unknown = [m for m in args.model if m not in catalog.models]
    if unknown:
        raise ConfigError(f"--model {unknown[0]!r} is not in the manifest; known: {', '.join(sorted(catalog.models))}")
    missing = tensorrt_missing(facts)
    if missing is not None:
        print(f"mapgate: error: doctor --run: {NOTHING_TO_RUN}: TensorRT cannot run here: {missing}", file=sys.stderr)
        return EXIT_USAGE
    gate = _gate(args, reports=args.out, catalog=catalog)
    say = (lambda msg: print(f"doctor: {msg}", file=sys.stderr, flush=True)) if not args.no_progress else \
        (lambda msg: None)
    checks = run_checks(gate, args.model or list(gate.models), say=say, trtexec=shutil.which("trtexec"))
    record = run_record(facts, checks, gate.dataset.label)
    markdown = doctor_markdown(record)
    write_json_atomic(gate.run_dir / "doctor.json", record)
    write_bytes_atomic(gate.run_dir / "doctor.md", markdown.encode())
    print(markdown)
    print(f"report: {gate.run_dir / 'doctor.json'}, {gate.run_dir / 'doctor.md'}")
    if ran_nothing(record):
        print(f"mapgate: error: doctor --run: {NOTHING_TO_RUN}: every check was skipped (reasons in the report)",
              file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if record["passed"] else EXIT_FAIL


def _cmd_history(args: argparse.Namespace) -> int:
    return run_history(args.storage, args.out)


_COMMANDS = {"evaluate": _cmd_evaluate, "models": _cmd_models, "eval": _cmd_eval, "compare": _cmd_compare,
             "merge": _cmd_merge, "history": _cmd_history, "int8-repair": _cmd_int8_repair,
             "convert": _cmd_convert, "doctor": _cmd_doctor}

if __name__ == "__main__":
    sys.exit(main())
