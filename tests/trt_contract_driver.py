"""Drives mapgate's TensorRT path with the REAL Polygraphy against the stand-in ``tensorrt``
(tests/trt_standin, first on PYTHONPATH) and writes what was called as JSON.

Run by tests/test_tensorrt_contract.py in a fresh process per TensorRT version (Polygraphy
imports ``tensorrt`` once per process). What is replaced, and nothing else:

* the CUDA runtime under Polygraphy's CUDA wrapper (``standin_cuda``: streams, device buffers and
  copies on host memory, every pointer checked);
* mapgate's two CUDA device probes (``cuda_device_count``, ``probe_device_info``: driver facts).

Two phases per process: **builds** (fp32, fp16, int8, int8 again with another workspace: a second
engine from the same Q/DQ file) through ``_build_engine``/``EngineCache``, then **runs**: for each
precision, mapgate's ``TensorRTRunner`` activate -> infer (a real preprocessed image) -> deactivate,
which loads the cached engine through ``EngineFromBytes`` and runs it through Polygraphy's
``TrtRunner``; the stand-in engine computes with ONNX Runtime on the bytes Polygraphy copied.

    python tests/trt_contract_driver.py OUT.json ENGINES_DIR [--plant NAME]

``--plant`` injects one defect (see :data:`PLANTS`) to show the checks below catch it. The checks
are pure functions of the report, shared by the contract tests and the planted-defect tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "yolox-nano-416"
CALIB_IMAGES = 3
PLANTS = {
    "skip-deactivate": "mapgate's runner drops its TrtRunner without calling deactivate()",
    "nonzero-zero-point": "the INT8 Q/DQ ONNX gets a QuantizeLinear zero point of 1",
    "nonzero-zero-point-unchecked": "the same, with mapgate's own Q/DQ form check switched off (the parser's turn)",
    "no-zero-point": "the INT8 Q/DQ ONNX loses its zero points (a form TensorRT 10 parses and 8.6 refuses)",
    "no-zero-point-unchecked": "the same, with mapgate's own Q/DQ form check switched off (the parser's turn)",
    "int8-from-fp32-onnx": "tensorrt:int8 builds the FP32 ONNX (TensorRT's implicit quantization, the old weak path)",
    "uint8-into-conv": "the strong FP16 ONNX takes a uint8 image straight into the first Conv",
}


def _plant_no_zero_point(path: Path, out_dir: Path) -> Path:
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            del node.input[2]
    planted = out_dir / f"planted-nozp-{path.name}"
    onnx.save(proto, str(planted))
    return planted


def _plant_qdq_zero_point(path: Path, out_dir: Path) -> Path:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2)
    zp = inits[q.input[2]]
    zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + np.int8(1), zp.name))
    planted = out_dir / f"planted-zp-{path.name}"
    onnx.save(proto, str(planted))
    return planted


def _plant_uint8_input(path: Path, out_dir: Path) -> Path:
    import onnx

    proto = onnx.load(str(path))
    inp = proto.graph.input[0]
    inp.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    # remove what converts the input (a Cast to float16 the converter added) so it feeds the graph directly
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and list(n.input) == [inp.name]]
    for cast in casts:
        for node in proto.graph.node:
            node.input[:] = [inp.name if i == cast.output[0] else i for i in node.input]
        proto.graph.node.remove(cast)
    planted = out_dir / f"planted-u8-{path.name}"
    onnx.save(proto, str(planted))
    return planted


def main(out: Path, engines: Path, plant: str | None = None) -> None:
    import standin_cuda

    standin_cuda.install()  # before anything creates a Polygraphy stream
    import tensorrt

    import mapgate.backends.tensorrt as backend
    from mapgate.backends._tensorrt_engine import DeviceInfo, EngineCache
    from mapgate.backends.base import BuildContext
    from mapgate.calibration import calibration_batches, calibration_images, image_ids_of
    from mapgate.catalog import load_manifest

    assert Path(tensorrt.__file__).parent.parent.name == "trt_standin", tensorrt.__file__
    backend.probe_device_info = lambda version, ordinal=0: DeviceInfo(version, "stand-in GPU", "8.7")
    backend.cuda_device_count = lambda: (1, "")

    if plant == "skip-deactivate":
        def deactivate_without_polygraphy(self: Any) -> None:  # the defect: references dropped, nothing freed
            self._trt_runner = None
            self.cache_result = None
            self._runtime = None
        backend.TensorRTRunner.deactivate_impl = deactivate_without_polygraphy
    elif plant in ("nonzero-zero-point", "nonzero-zero-point-unchecked", "no-zero-point", "no-zero-point-unchecked"):
        real_int8 = backend.build_int8  # the names the backend calls (imported into it)
        edit = _plant_qdq_zero_point if plant.startswith("nonzero") else _plant_no_zero_point
        backend.build_int8 = lambda model, ctx: edit(real_int8(model, ctx), out.parent)
        if plant.endswith("-unchecked"):
            backend.check_qdq_form = lambda path, version=None: None
    elif plant == "int8-from-fp32-onnx":
        real_onnx_for = backend._onnx_for
        backend._onnx_for = lambda model, ctx, precision="fp32", mode=backend.WEAK, version=None: (
            real_onnx_for(model, ctx, "fp32", mode, version))
    elif plant == "uint8-into-conv":
        real_fp16 = backend.build_fp16
        backend.build_fp16 = lambda model, ctx: _plant_uint8_input(real_fp16(model, ctx), out.parent)
    elif plant is not None:
        raise SystemExit(f"unknown plant {plant!r}; known: {sorted(PLANTS)}")

    model = load_manifest(ROOT / "fixtures" / "models.toml")[MODEL]
    calib = calibration_images()[:CALIB_IMAGES]
    ctx = BuildContext(engines_dir=engines, calib_images=calib, calib_image_ids=frozenset(image_ids_of(calib)),
                       max_calib_images=CALIB_IMAGES, progress=False)
    report: dict[str, Any] = {"version": tensorrt.__version__, "plant": plant, "describe": backend.BACKEND.describe(),
                              "builds": {}, "runs": {}}
    for precision, workspace in (("fp32", 256), ("fp16", 256), ("int8", 256), ("int8", 512)):
        start = len(tensorrt.CALLS)
        entry: dict[str, Any] = report["builds"].setdefault(f"{precision}-{workspace}", {})
        try:
            runner = backend.TensorRTRunner(model, precision, ctx, workspace_mb=workspace)
            spec, mode, pinned = runner.engine_spec()
            result = EngineCache(engines).get_or_build(
                spec, build=lambda job: backend._build_engine(model, spec.onnx_path, job, mode, pinned),
                load=lambda data: data)
            entry.update({"mode": mode, "onnx": spec.onnx_path.name, "recipe": dict(spec.recipe),
                          "key_fields": spec.key_fields(), "kept_nodes": pinned[0],
                          "calibration": result.provenance.get("calibration")})
        except Exception as exc:  # noqa: BLE001 - recorded: the checks below say what went wrong
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["calls"] = [[what, args] for what, args in tensorrt.CALLS[start:]]

    # the runtime half: the same runner a gate run uses, on one real preprocessed image
    batch = next(calibration_batches(model, calib[:1]))
    for precision in ("fp32", "fp16", "int8"):
        report["runs"][precision] = run_once(tensorrt, standin_cuda, backend, model, precision, ctx, batch)
    report["unknown"] = tensorrt.UNKNOWN
    report["unmodeled"] = tensorrt.UNMODELED
    out.write_text(json.dumps(report, indent=1, default=str))


def run_once(tensorrt: Any, standin_cuda: Any, backend: Any, model: Any, precision: str, ctx: Any,
             batch: np.ndarray) -> dict[str, Any]:
    """activate -> infer -> deactivate of mapgate's runner, with every TensorRT, CUDA and lifetime event."""
    import onnxruntime

    calls0, cuda0, life0, bad0 = (len(tensorrt.CALLS), len(standin_cuda.EVENTS), len(tensorrt.LIFETIME),
                                  len(standin_cuda.VIOLATIONS))
    entry: dict[str, Any] = {}
    marks: list[tuple[str, int, int]] = []  # (phase, index into LIFETIME, index into CUDA events)

    def mark(phase: str) -> None:
        marks.append((phase, len(tensorrt.LIFETIME) - life0, len(standin_cuda.EVENTS) - cuda0))

    try:
        runner = backend.TensorRTRunner(model, precision, ctx, workspace_mb=256)
        mark("activate")
        runner.activate()
        mark("infer")
        outputs = runner.infer(batch)
        mark("deactivate")
        runner.deactivate()
        onnx_path = Path(runner.cache_result.provenance["onnx"]["path"]) if runner.cache_result else None
        del runner
        gc.collect()
        mark("end")
        entry["outputs"] = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in outputs.items()}
        # the stand-in engine computes with ONNX Runtime on the ONNX it was built from: the bytes
        # that came back through Polygraphy's copies must be exactly ORT's on the same input
        source = onnx_path
        if source is not None:
            session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: batch.astype(_ort_dtype(session), copy=False)}
            expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
            entry["max_abs_diff_vs_onnxruntime"] = max(
                float(np.max(np.abs(outputs[k].astype(np.float64) - expected[k].astype(np.float64))))
                for k in outputs)
    except Exception as exc:  # noqa: BLE001 - recorded for the checks
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-2000:]
        gc.collect()
        mark("end")
    entry["calls"] = [[w, a] for w, a in tensorrt.CALLS[calls0:]]
    entry["lifetime"] = [[what, ident] for what, ident in tensorrt.LIFETIME[life0:]]
    entry["cuda"] = [[w, a] for w, a in standin_cuda.EVENTS[cuda0:]]
    entry["marks"] = marks
    entry["cuda_violations"] = standin_cuda.VIOLATIONS[bad0:]
    # Polygraphy 0.53.6's TrtRunner.deactivate_impl frees its input buffers and stream but not the
    # output allocator's DeviceArrays (runner.py: no free of output_allocator.buffers; DeviceArray has
    # no __del__): a known upstream leak, kept apart so it does not hide mapgate's own.
    outputs = {f"{a['ptr']:#x}" for w, a in entry["calls"] if w == "IOutputAllocator.reallocate"}
    leaks = standin_cuda.leaks(since=cuda0)
    entry["polygraphy_output_buffer_leaks"] = [x for x in leaks if x.split()[2] in outputs]
    entry["leaks"] = [x for x in leaks if x.split()[2] not in outputs]
    return entry


def _ort_dtype(session: Any) -> Any:
    kind = session.get_inputs()[0].type
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(kind, np.float32)


# ---------------------------------------------------------------------------------------------
# Checks (pure functions of a report)
# ---------------------------------------------------------------------------------------------
def contract_violations(report: dict[str, Any], mapgate_dir: str, polygraphy_probes: set[tuple[str, str]]) -> list[str]:
    """Everything a TensorRT of this version would not accept: unknown names, errors, failed builds."""
    found = [f"mapgate used {o}.{a}, which TensorRT {report['version']} does not have ({where})"
             for o, a, where in report["unknown"] if where.startswith(mapgate_dir)]
    found += [f"Polygraphy probed {o}.{a} outside its guarded probes ({where})"
              for o, a, where in report["unknown"] if not where.startswith(mapgate_dir) and (o, a) not in polygraphy_probes]
    found += [f"{o}.{a} is real in TensorRT {report['version']} but the stand-in does not model it ({where})"
              for o, a, where in report["unmodeled"]]
    for name, build in report["builds"].items():
        if "error" in build:
            found.append(f"build {name} failed: {build['error']}")
        found += [f"build {name}: TensorRT error: {c['message']}" for w, c in build["calls"] if w == "error"]
        found += [f"build {name}: ONNX parser error: {c['message']}" for w, c in build["calls"] if w == "parser_error"]
    for name, run in report["runs"].items():
        if "error" in run:
            found.append(f"run {name} failed: {run['error']}")
    return found


def lifetime_violations(run: dict[str, Any]) -> list[str]:
    """The runtime order TensorRT needs: context after engine, everything used only while active,
    everything freed by deactivate (context before engine before runtime), no CUDA misuse."""
    found = list(run.get("cuda_violations", []))
    marks = {phase: (life, cuda) for phase, life, cuda in run.get("marks", [])}
    if "deactivate" not in marks or "end" not in marks:
        return found + [f"the run did not reach deactivate: {run.get('error')}"]
    life = run["lifetime"]

    def index(what: str) -> list[int]:
        return [i for i, (w, _) in enumerate(life) if w == what]

    for kind in ("Runtime", "ICudaEngine", "IExecutionContext"):
        if not index(f"{kind}.created"):
            found.append(f"no {kind} was created")
    ctx_made, ctx_gone = index("IExecutionContext.created"), index("IExecutionContext.destroyed")
    eng_made, eng_gone = index("ICudaEngine.created"), index("ICudaEngine.destroyed")
    rt_gone = index("Runtime.destroyed")
    act_life, act_cuda = marks["activate"]
    inf_life, inf_cuda = marks["infer"]
    dea_life, dea_cuda = marks["deactivate"]
    end_life, end_cuda = marks["end"]
    if ctx_made and eng_made and ctx_made[0] < eng_made[0]:
        found.append("an execution context was created before its engine")
    if ctx_made and not act_life <= ctx_made[0] < inf_life:
        found.append("the execution context was not created by activate()")
    if len(ctx_gone) < len(ctx_made):
        found.append("the execution context was never destroyed: deactivate() did not release it")
    if len(eng_gone) < len(eng_made):
        found.append("the engine was never destroyed: deactivate() did not release it")
    if ctx_gone and eng_gone and max(ctx_gone) > min(eng_gone):
        found.append("the engine was destroyed before its execution context")
    if eng_gone and rt_gone and max(eng_gone) > min(rt_gone):
        found.append("the runtime was destroyed before the engine it deserialized")
    if any(i < dea_life for i in ctx_gone):
        found.append("the execution context was destroyed before deactivate()")
    cuda = run["cuda"]
    executes = [i for i, (w, _) in enumerate(run["calls"]) if w == "IExecutionContext.execute_async_v3"]
    if not executes:
        found.append("execute_async_v3 was never called")
    made = [i for i, (w, _) in enumerate(cuda) if w == "cudaStreamCreate"]
    destroyed = [i for i, (w, _) in enumerate(cuda) if w == "cudaStreamDestroy"]
    if not made or not act_cuda <= made[0] < inf_cuda:
        found.append("activate() did not create the runner's CUDA stream")
    if len(destroyed) < len(made) or any(not dea_cuda <= i < end_cuda for i in destroyed):
        found.append("deactivate() did not destroy the runner's CUDA stream")
    h2d = [i for i, (w, a) in enumerate(cuda) if w.startswith("cudaMemcpy") and a["kind"] == "HostToDevice"]
    d2h = [i for i, (w, a) in enumerate(cuda) if w.startswith("cudaMemcpy") and a["kind"] == "DeviceToHost"]
    if not h2d or not all(inf_cuda <= i < dea_cuda for i in h2d + d2h) or not d2h:
        found.append("the input/output copies did not all happen inside infer()")
    found += run.get("leaks", [])
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("engines", type=Path)
    parser.add_argument("--plant", choices=sorted(PLANTS))
    args = parser.parse_args()
    main(args.out, args.engines, args.plant)
    sys.exit(0)
