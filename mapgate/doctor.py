"""``mapgate doctor``: what this machine can run, and (``--run``) a TensorRT self-check to attach to an issue.

* :func:`machine_facts`: backends and their framework versions, the fix for each missing one (its
  pip extra), the GPU, the TensorRT typing mode, trtexec, the CPU's INT8 dot product.
* :func:`run_checks`: every buildable TensorRT precision of every model, each judged against ONNX
  Runtime on the same images (:func:`judge`, a pure function): FP32 within :data:`FP32_MAX_DAP` AP
  points of ``onnxruntime:fp32``; FP16 within :data:`FP16_MAX_DAP`; the Q/DQ INT8 engine (either typing:
  built from the file ``onnxruntime:int8`` runs) reproducing :data:`INT8_MIN_AGREEMENT` of its confident
  detections. Engine-only time per image beside ``trtexec``'s GPU compute time, when trtexec is on PATH.

Rendering (text, Markdown) lives in :mod:`mapgate.report`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mapgate.backends import all_backends
from mapgate.backends import tensorrt as trt_backend
from mapgate.compare import detection_agreement
from mapgate.cpu import this_cpu
from mapgate.errors import BackendUnavailable, MapgateError
from mapgate.gate import Gate

FP32_MAX_DAP = 0.1  # AP points: the same FP32 graph on two engines differs only by kernel rounding
FP16_MAX_DAP = 0.5  # AP points: the manifest default FP16 tolerance
# Share of onnxruntime:int8's confident detections (score >= 0.3) the Q/DQ engine reproduces at IoU >= 0.9.
# The same graph and scales; TensorRT fuses Q/DQ into its kernels and rounds its own way, so not 1.0.
# A first bound, to be confirmed by the first device runs.
INT8_MIN_AGREEMENT = 0.8
REFERENCE = {"fp32": "onnxruntime:fp32", "fp16": "onnxruntime:fp32", "int8": "onnxruntime:int8"}
STATUS_PASS, STATUS_FAIL, STATUS_ERROR, STATUS_SKIPPED = "pass", "fail", "error", "skipped"
NOTHING_TO_RUN = "nothing to run"


def _typing_env() -> str | None:
    return os.environ.get(trt_backend.TYPING_ENV) or None


def machine_facts() -> dict[str, Any]:
    """What this machine can run, with the fix for what it cannot (no engine is built)."""
    rows = []
    for name, backend in sorted(all_backends().items()):
        status = backend.availability()
        facts = backend.facts
        rows.append({"backend": name, "available": status.ok, "reason": status.reason or None,
                     "versions": facts.versions(), "precisions": list(facts.precisions),
                     "fix": None if status.ok else f"pip install 'mapgate[{facts.extra}]'" if facts.extra else None})
    version, where = trt_backend.installed_version()
    tensorrt: dict[str, Any] = {"version": version, "where": where, "typing_env": _typing_env()}
    if version is not None:
        try:
            tensorrt["typing"] = trt_backend.select_mode(trt_backend.parse_version(version))
        except MapgateError as exc:
            tensorrt["typing"], tensorrt["typing_error"] = None, str(exc)
        if tensorrt.get("typing"):
            tensorrt["int8"] = trt_backend.int8_kind(trt_backend.parse_version(version), tensorrt["typing"])
        tensorrt["precisions"] = {p: (lambda s: {"ok": s.ok, "reason": s.reason or None})(
            trt_backend.BACKEND.build_support(p)) for p in trt_backend.BACKEND.precisions}
    count, why = trt_backend.cuda_device_count()
    gpu: dict[str, Any] = {"cuda_devices": count, "reason": why or None}
    if count and version is not None:
        gpu.update(trt_backend.probe_device_info(version).as_dict())
    return {"backends": rows, "tensorrt": tensorrt, "gpu": gpu, "trtexec": shutil.which("trtexec"),
            "cpu_int8_dot_product": this_cpu().to_dict()}


def tensorrt_missing(facts: dict[str, Any]) -> str | None:
    """Why ``doctor --run`` has nothing to run here, or None when TensorRT is usable."""
    row = next((r for r in facts["backends"] if r["backend"] == trt_backend.NAME), None)
    if row is None:
        return "the tensorrt backend is not registered"
    return None if row["available"] else row["reason"]


@dataclass
class Check:
    """One model at one TensorRT precision beside its ONNX Runtime reference."""

    model: str
    precision: str
    reference: str
    status: str = STATUS_SKIPPED
    reason: str = ""
    typing: str | None = None
    qdq: bool = False  # an INT8 engine: built from the onnxruntime:int8 Q/DQ file (explicit quantization)
    ap: float | None = None
    reference_ap: float | None = None
    dap: float | None = None
    agreement: float | None = None
    engine_ms: float | None = None
    reference_engine_ms: float | None = None
    trtexec_ms: float | None = None
    engine: str | None = None
    images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def judge(check: Check) -> Check:
    """Pass/fail of a measured check (pure): the bounds in this module's docstring."""
    if check.precision == "fp32":
        ok, why = abs(check.dap) <= FP32_MAX_DAP, f"abs dAP {abs(check.dap):.2f} vs <= {FP32_MAX_DAP} AP points"
    elif check.precision == "fp16":
        ok, why = abs(check.dap) <= FP16_MAX_DAP, f"abs dAP {abs(check.dap):.2f} vs <= {FP16_MAX_DAP} AP points"
    else:  # INT8, either typing: the Q/DQ file onnxruntime:int8 runs
        ok = check.agreement is not None and check.agreement >= INT8_MIN_AGREEMENT
        why = f"agreement with onnxruntime:int8 {check.agreement:.3f} vs >= {INT8_MIN_AGREEMENT}"
        if check.extra.get("same_onnx_as_reference") is False:
            why += ("; onnxruntime:int8 ran another file (7-bit weights: this CPU's int8 dot product saturates), "
                    "so the two differ by more than the engine")
    check.status, check.reason = (STATUS_PASS if ok else STATUS_FAIL), why
    return check


_GPU_COMPUTE = re.compile(r"GPU Compute Time:.*?mean = ([0-9.eE+-]+) ms")


def parse_trtexec_ms(log: str) -> float | None:
    """trtexec's mean GPU compute time (ms per inference) from its summary, or None."""
    m = _GPU_COMPUTE.search(log)
    return float(m.group(1)) if m else None


def trtexec_time(engine: str, trtexec: str, timeout_s: float = 300.0) -> tuple[float | None, str]:
    """(mean GPU compute ms of ``trtexec --loadEngine``, why not)."""
    try:
        done = subprocess.run([trtexec, f"--loadEngine={engine}", "--warmUp=500", "--duration=3"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"trtexec did not run: {exc}"
    ms = parse_trtexec_ms(done.stdout + done.stderr)
    return ms, "" if ms is not None else f"trtexec exited {done.returncode} without a GPU Compute Time line"


def _mode_here() -> str | None:
    version, _ = trt_backend.installed_version()
    return None if version is None else trt_backend.select_mode(trt_backend.parse_version(version))


def run_checks(gate: Gate, models: Sequence[str], say: Callable[[str], None] = lambda m: None,
               trtexec: str | None = None) -> list[Check]:
    """Build, run and judge every buildable TensorRT precision of ``models`` on the gate's images."""
    mode = _mode_here()
    checks = []
    for name in models:
        for precision in trt_backend.BACKEND.precisions:
            check = Check(name, precision, REFERENCE[precision], typing=mode,
                          qdq=precision == "int8", images=len(gate.dataset.image_ids))
            checks.append(check)
            support = trt_backend.BACKEND.precision_availability(precision)
            if not support.ok:
                check.reason = support.reason
                continue
            say(f"{name} tensorrt:{precision} vs {check.reference}")
            try:
                trt = gate.side(name, f"tensorrt:{precision}")
                ref = gate.side(name, check.reference)
            except BackendUnavailable as exc:  # e.g. a converter's module missing on this machine: not a defect
                check.reason = str(exc)
                continue
            except MapgateError as exc:
                check.status, check.reason = STATUS_ERROR, str(exc)
                continue
            check.ap, check.reference_ap = 100 * trt.metrics.stats["AP"], 100 * ref.metrics.stats["AP"]
            check.dap = check.ap - check.reference_ap
            check.agreement = detection_agreement(ref.detections, trt.detections).matched_share
            check.engine_ms = trt.timings_ms.get("inference")
            check.reference_engine_ms = ref.timings_ms.get("inference")
            check.engine = trt.identity.get("artifact")
            if check.qdq:
                check.extra["same_onnx_as_reference"] = trt.identity.get("onnx_sha256") == ref.identity.get(
                    "artifact_sha256")
            judge(check)
            if trtexec and check.engine:
                check.trtexec_ms, why = trtexec_time(check.engine, trtexec)
                if why:
                    check.extra["trtexec"] = why
    return checks


def ran_nothing(record: dict[str, Any]) -> bool:
    """Every check was skipped: nothing was proven (``doctor --run`` exits 2, as without TensorRT)."""
    return record["counts"][STATUS_SKIPPED] == len(record["checks"])


def run_record(facts: dict[str, Any], checks: Sequence[Check], dataset: str) -> dict[str, Any]:
    """The report ``doctor --run`` writes (JSON), the Markdown's source."""
    counts = {s: sum(c.status == s for c in checks) for s in (STATUS_PASS, STATUS_FAIL, STATUS_ERROR, STATUS_SKIPPED)}
    return {"machine": facts, "dataset": dataset, "bounds": {"fp32_max_dap": FP32_MAX_DAP, "fp16_max_dap": FP16_MAX_DAP,
                                                             "int8_min_agreement": INT8_MIN_AGREEMENT},
            "checks": [asdict(c) for c in checks], "counts": counts,
            "passed": counts[STATUS_FAIL] == 0 and counts[STATUS_ERROR] == 0 and counts[STATUS_PASS] > 0}
