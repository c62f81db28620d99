"""Careless pytest command lines: a bad mapgate option is ONE usage error at configure time (pytest
exit code 4), not a failure per test; and the expectation tests honour the selection options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hostile_helpers import ROOT, Sandbox

TARGET = "tests/accuracy/test_expected_results.py"


def _pytest(sandbox: Sandbox, *options: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "pytest", TARGET, "-q", "-rs", "-p", "no:cacheprovider",
            f"--reports-dir={sandbox.root / 'out' / 'reports'}", f"--engines-dir={sandbox.root / 'out' / 'engines'}",
            *options]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return proc.returncode, out


@pytest.mark.parametrize(("option", "says"), [
    ("--coco-root=/nonexistent", "folder /nonexistent does not exist"),   # used to be ten test failures
    ("--max-images=0", "must be at least 1"),
    ("--max-images=ten", "expected a whole number"),
    ("--backends=onnxruntime:fp64", "BACKEND:PRECISION"),
    ("--backends=nosuch", "unknown backend(s) nosuch"),
    ("--models=nosuch", "unknown model(s) nosuch"),
    ("--calib-dir=/nonexistent", "does not exist"),
    ("--models-file=/nonexistent.toml", "does not exist"),
])
@pytest.mark.slow
def test_a_bad_option_is_one_usage_error_with_exit_code_4(sandbox: Sandbox, option: str, says: str) -> None:
    code, out = _pytest(sandbox, option)
    assert code == 4, out
    assert says in out and option.split("=")[0].lstrip("-") in out
    assert "passed" not in out and "failed" not in out
    sandbox.assert_only_new_under()


@pytest.mark.parametrize("which", ["--engines-dir", "--reports-dir"])
def test_an_output_folder_that_is_a_file_is_a_usage_error(sandbox: Sandbox, which: str) -> None:
    f = sandbox.root / "in" / "taken"
    f.parent.mkdir()
    f.write_text("mine")
    code, out = _pytest(sandbox, f"{which}={f}")
    assert code == 4 and which in out and "is a file" in out
    assert f.read_text() == "mine"
    sandbox.assert_only_new_under("in")


def test_a_folder_given_as_models_file_is_a_usage_error(sandbox: Sandbox) -> None:
    code, out = _pytest(sandbox, f"--models-file={sandbox.root}")
    assert code == 4 and "--models-file" in out and "is a folder" in out
    sandbox.assert_only_new_under()


@pytest.mark.parametrize(("options", "says"), [
    (("--models=yolov3-tiny-416", "--backends=tflite"),
     ("is not selected by --models yolov3-tiny-416", "onnxruntime:fp32 is not selected by --backends tflite")),
    (("--models=yolox-nano-416", "--backends=tflite", "--max-images=5"),
     ("--max-images/--coco-root select another image set",)),
])
@pytest.mark.slow
def test_the_expectation_tests_honour_the_selection_options(sandbox: Sandbox, options: tuple[str, ...],
                                                            says: tuple[str, ...]) -> None:
    """Chosen so that every case is skipped before any model runs (no inference here); the run with
    nothing skipped is tests/accuracy/test_expected_results.py itself."""
    code, out = _pytest(sandbox, *options, "-m", "accuracy")
    assert code == 0, out
    assert all(s in out for s in says) and "passed" not in out, out
    sandbox.assert_only_new_under("out")
