"""Careless command lines: every bad option value is one usage error (exit 2) naming the option,
before a model is loaded or a file is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_helpers import Sandbox, cli

MODEL = "yolox-nano-416"
EVAL = ["eval", "--model", MODEL, "--no-progress", "--max-images", "1"]
COMPARE = ["compare", "--model", MODEL, "--opt", "tflite:fp16", "--no-progress", "--max-images", "1"]


def _read_only() -> Path:
    ro = Path("/sys")  # writable by nobody, root included
    try:
        (ro / ".mapgate-probe").touch()
    except OSError:
        return ro
    (ro / ".mapgate-probe").unlink()
    pytest.skip("no read-only folder on this machine")


@pytest.mark.parametrize(("argv", "option", "says"), [
    ([*EVAL, "--backend", ""], "--backend", "expected BACKEND or BACKEND:PRECISION"),   # used to run the reference
    ([*EVAL, "--backend", ":fp32"], "--backend", "expected BACKEND"),
    ([*EVAL, "--backend", "onnxruntime:fp8"], "--backend", "precision fp32, fp16, int8"),
    ([*COMPARE, "--tolerance", "nan"], "--tolerance", "finite"),                      # was written as NaN into JSON
    ([*COMPARE, "--tolerance", "inf"], "--tolerance", "finite"),
    ([*COMPARE, "--tolerance", "-1"], "--tolerance", ">= 0"),
    ([*COMPARE, "--tolerance", "one"], "--tolerance", "expected a number"),
    ([*COMPARE, "--ref", ""], "--ref", "empty"),
    ([*COMPARE, "--resamples", "0"], "--resamples", "at least 1"),
    ([*EVAL, "--backend", "onnxruntime", "--coco-root", "/nonexistent"], "--coco-root", "does not exist"),
    ([*EVAL, "--backend", "onnxruntime", "--mirror", "/nonexistent"], "--mirror", "does not exist"),
    ([*EVAL, "--backend", "onnxruntime", "--calib-dir", "/nonexistent"], "--calib-dir", "does not exist"),
    ([*EVAL, "--backend", "onnxruntime", "--models-file", "/nonexistent.toml"], "--models-file", "does not exist"),
])
def test_a_bad_option_value_is_one_usage_error_naming_the_option(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                 argv: list[str], option: str, says: str) -> None:
    code, err = cli(capsys, *argv)
    assert code == 2
    assert f"argument {option}" in err and says in err
    assert err.count("error:") == 1
    sandbox.assert_only_new_under()


def test_coco_root_that_is_a_file_or_not_a_coco_layout(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    f = sandbox.root / "in" / "file"
    f.parent.mkdir()
    f.write_text("x")
    code, err = cli(capsys, *EVAL, "--backend", "onnxruntime", "--coco-root", f)
    assert code == 2 and "--coco-root" in err and "is a file" in err
    code, err = cli(capsys, *EVAL, "--backend", "onnxruntime", "--coco-root", f.parent)
    assert code == 2 and "not a COCO layout" in err and "instances_val2017.json" in err
    sandbox.assert_only_new_under("in")


@pytest.mark.parametrize("option", ["--out", "--engines-dir"])
def test_an_output_folder_that_is_a_file_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                          option: str) -> None:
    f = sandbox.root / "in" / "taken"
    f.parent.mkdir()
    f.write_text("mine")
    code, err = cli(capsys, *EVAL, "--backend", "onnxruntime", option, f)
    assert code == 2 and f"argument {option}" in err and "is a file" in err
    assert f.read_text() == "mine"
    sandbox.assert_only_new_under("in")


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_an_output_folder_in_a_read_only_place_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                command: str) -> None:
    ro = _read_only()
    argv = [*EVAL, "--backend", "onnxruntime"] if command == "eval" else COMPARE
    code, err = cli(capsys, *argv, "--out", ro / "reports")
    assert code == 2 and "--out" in err and "not writable" in err
    sandbox.assert_only_new_under()


def test_a_folder_given_as_models_file_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    code, err = cli(capsys, *EVAL, "--backend", "onnxruntime", "--models-file", sandbox.root)
    assert code == 2 and "--models-file" in err and "is a folder" in err
    sandbox.assert_only_new_under()


def test_ref_naming_a_backend_is_the_backend_even_if_a_file_of_that_name_exists(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend names win; write ./opencv for a file called opencv (documented in `compare --help`)."""
    monkeypatch.chdir(sandbox.root)
    (sandbox.root / "opencv").write_text("[]")
    code, err = cli(capsys, *COMPARE, "--ref", "opencv", "--out", sandbox.root / "out" / "reports")
    assert code == 2 and "backend 'opencv' cannot run model 'yolox-nano-416'" in err  # read as the backend
    code, err = cli(capsys, *COMPARE, "--ref", "./opencv", "--out", sandbox.root / "out" / "reports")
    assert code == 2 and "stored reference opencv" in err and "metrics.json" in err  # read as a path
    sandbox.assert_only_new_under("opencv", "out/reports")


@pytest.mark.parametrize(("argv", "says"), [
    (["eval", "--model", "nosuch", "--backend", "onnxruntime"], "unknown model 'nosuch'"),
    (["eval", "--model", MODEL, "--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["compare", "--model", MODEL, "--opt", "nosuch:int8"], "unknown backend 'nosuch'"),
])
def test_unknown_names_are_errors_listing_the_known_ones(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                         argv: list[str], says: str) -> None:
    code, err = cli(capsys, *argv, "--no-progress", "--out", sandbox.root / "out" / "x")
    assert code == 2 and says in err and "known" in err
    sandbox.assert_only_new_under("out")


def test_the_compare_help_documents_how_ref_is_read(capsys: pytest.CaptureFixture) -> None:
    from mapgate.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A backend name always means the backend" in text and "./opencv" in text
