"""`mapgate doctor`: what this machine can run; `doctor --run`'s checks, driven against the TensorRT
stand-in (tests/trt_standin) through the real Polygraphy, as tests/test_tensorrt_contract.py does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapgate.calibration import calibration_images
from mapgate.cli import main
from mapgate.doctor import Check, judge, parse_trtexec_ms, ran_nothing, run_record

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "trt_standin"
DRIVER = ROOT / "tests" / "doctor_standin_driver.py"
MODEL = "yolox-nano-416"


def test_doctor_prints_every_backend_and_the_fix_for_tensorrt(capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for backend in ("onnxruntime", "opencv", "tensorrt", "tflite"):
        assert f"\n{backend} " in out
    assert "CPU INT8 dot product" in out and "TensorRT typing per version" in out and "GPU: " in out
    if "tensorrt     missing" in out:
        assert "fix: pip install 'mapgate[trt]'" in out


def test_doctor_run_without_tensorrt_says_nothing_to_run_and_exits_2(capsys: pytest.CaptureFixture,
                                                                     tmp_path: Path) -> None:
    pytest.importorskip("polygraphy")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    assert main(["doctor", "--run", "--max-images", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nothing to run" in err and "TensorRT" in err
    assert not (tmp_path / "r").exists()


def test_judge_applies_each_bound() -> None:
    assert judge(Check("m", "fp32", "onnxruntime:fp32", dap=-0.1)).status == "pass"
    assert judge(Check("m", "fp32", "onnxruntime:fp32", dap=0.11)).status == "fail"
    assert judge(Check("m", "fp16", "onnxruntime:fp32", dap=-0.6)).status == "fail"
    assert judge(Check("m", "int8", "onnxruntime:int8", qdq=True, agreement=0.79, dap=0.0)).status == "fail"
    assert judge(Check("m", "int8", "onnxruntime:int8", qdq=True, agreement=0.95, dap=-3.0)).status == "pass"
    # INT8 on either typing is the Q/DQ file: low agreement fails, weakly typed too
    assert judge(Check("m", "int8", "onnxruntime:int8", typing="weakly typed", qdq=True, agreement=0.2,
                       dap=-3.0)).status == "fail"


def test_trtexec_summary_is_parsed() -> None:
    log = ("[12/07/2026-03:00:00] [I] GPU Compute Time: min = 1.10 ms, max = 2.31 ms, mean = 1.234 ms, "
           "median = 1.2 ms, percentile(90%) = 1.3 ms\n")
    assert parse_trtexec_ms(log) == pytest.approx(1.234)
    assert parse_trtexec_ms("[E] Error[1]: engine deserialization failed") is None


# --- against the stand-in ------------------------------------------------------------------------
pytest.importorskip("polygraphy", reason="polygraphy is not installed: pip install 'mapgate[trt]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'mapgate[onnx]'")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(engines dir shared by the runs: conversions made once, a calibration folder of 3 real images)."""
    root = tmp_path_factory.mktemp("doctor-standin")
    calib = root / "calib"
    calib.mkdir()
    for image in calibration_images()[:3]:
        (calib / image.name).symlink_to(image)
    return root / "engines", calib


def _doctor(version: str, shared: tuple[Path, Path], out: Path, plant: str | None = None) -> tuple[int, dict, str]:
    engines, calib = shared
    env = {k: v for k, v in os.environ.items() if k not in ("MAPGATE_TRT_TYPING", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]), MAPGATE_STANDIN_TRT_VERSION=version)
    args = [sys.executable, str(DRIVER), "doctor", "--run", "--model", MODEL, "--max-images", "3", "--out", str(out),
            "--engines-dir", str(engines), "--calib-dir", str(calib), "--no-cache", "--no-progress", "--workers", "0"]
    done = subprocess.run(args + (["--plant", plant] if plant else []), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    reports = sorted(out.glob("*/doctor.json"))
    assert len(reports) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert (reports[0].parent / "doctor.md").is_file()
    return done.returncode, json.loads(reports[0].read_text()), done.stdout + done.stderr


@pytest.mark.slow
def test_doctor_run_on_the_strongly_typed_standin_checks_every_precision_and_agrees(
        shared: tuple[Path, Path], tmp_path: Path) -> None:
    code, record, log = _doctor("11.1.0", shared, tmp_path / "r")
    checks = {c["precision"]: c for c in record["checks"]}
    assert set(checks) == {"fp32", "fp16", "int8"}, log[-2000:]
    assert all(c["typing"] == "strongly typed" for c in checks.values())
    assert checks["fp32"]["status"] == "pass" and checks["fp32"]["dap"] == pytest.approx(0.0, abs=1e-9), log[-3000:]
    assert checks["fp32"]["agreement"] == 1.0  # the stand-in engine runs the same ONNX as onnxruntime:fp32
    assert checks["int8"]["qdq"] and checks["int8"]["reference"] == "onnxruntime:int8"
    assert checks["int8"]["agreement"] is not None and checks["fp16"]["dap"] is not None
    assert all(c["engine_ms"] is not None and c["engine"] for c in checks.values())
    assert record["machine"]["tensorrt"]["version"] == "11.1.0"
    assert code == (0 if record["passed"] else 1)
    assert record["passed"] == all(c["status"] == "pass" for c in checks.values())


@pytest.mark.slow
def test_doctor_run_fails_on_a_planted_fp32_disagreement(shared: tuple[Path, Path], tmp_path: Path) -> None:
    code, record, log = _doctor("11.1.0", shared, tmp_path / "r", plant="fp32-outputs-off")
    fp32 = next(c for c in record["checks"] if c["precision"] == "fp32")
    assert fp32["status"] == "fail" and abs(fp32["dap"]) > 0.1, log[-3000:]
    assert code == 1 and not record["passed"]
    assert "| tensorrt:fp32 |" in (next((tmp_path / "r").glob("*/doctor.md"))).read_text()


@pytest.mark.slow
def test_doctor_run_on_the_weakly_typed_standin_judges_int8_against_onnxruntime_int8(
        shared: tuple[Path, Path], tmp_path: Path) -> None:
    code, record, log = _doctor("10.3.0", shared, tmp_path / "r")
    checks = {c["precision"]: c for c in record["checks"]}
    assert checks["fp32"]["status"] == "pass", log[-3000:]
    assert checks["int8"]["typing"] == "weakly typed" and checks["int8"]["qdq"]
    assert checks["int8"]["reason"].startswith("agreement with onnxruntime:int8"), checks["int8"]
    assert record["machine"]["tensorrt"]["int8"].startswith("explicit Q/DQ: the onnxruntime:int8 ONNX (INT8 flag")


def test_a_run_where_every_check_was_skipped_proves_nothing() -> None:
    skipped = [Check("m", p, "onnxruntime:fp32", reason="converter missing") for p in ("fp32", "fp16")]
    record = run_record({}, skipped, "val2017-mini (206 images)")
    assert ran_nothing(record) and not record["passed"]
    one = run_record({}, [*skipped, judge(Check("m", "fp32", "onnxruntime:fp32", dap=0.0))], "d")
    assert not ran_nothing(one) and one["passed"]
    failed = run_record({}, [judge(Check("m", "fp32", "onnxruntime:fp32", dap=0.5))], "d")
    assert not failed["passed"]
