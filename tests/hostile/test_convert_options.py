"""Careless `mapgate convert` command lines: each is one error (exit 2) naming what is wrong, and
nothing is written (not in --out, not anywhere else)."""

from __future__ import annotations

import pytest

from hostile_helpers import Sandbox, cli

MODEL = "yolox-nano-416"


def test_an_unknown_model_is_one_error_naming_it(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "onnx"
    code, err = cli(capsys, "convert", "--model", "no-such-model", "--opt", "tensorrt:fp16", "--out", out)
    assert code == 2 and err.count("error:") == 1 and "'no-such-model'" in err and MODEL in err
    assert not any(out.iterdir()) if out.exists() else True
    sandbox.assert_only_new_under()


@pytest.mark.parametrize("opt", ["tensorrt", "tensorrt:", "tensorrt:int4", "tflite:fp16", ":fp16", "onnxruntime:fp16",
                                 "tensorrt:FP16"])
def test_a_bad_opt_is_one_error_listing_the_targets(capsys: pytest.CaptureFixture, sandbox: Sandbox, opt: str) -> None:
    out = sandbox.root / "onnx"
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", opt, "--out", out)
    assert code == 2 and err.count("error:") == 1 and "--opt" in err and "tensorrt:fp16" in err
    assert len(err.strip().splitlines()) == 1
    sandbox.assert_only_new_under()


def test_a_bad_typing_is_refused_by_the_parser(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", "tensorrt:fp16", "--trt-typing", "explicit",
                    "--out", sandbox.root / "onnx")
    assert code == 2 and "argument --trt-typing" in err
    sandbox.assert_only_new_under()


def test_out_being_a_file_is_refused_and_the_file_kept(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "notes.txt"
    out.write_text("mine")
    sandbox.before.add("notes.txt")
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", "tensorrt:fp16", "--out", out)
    assert code == 2 and "argument --out" in err and "is a file" in err
    assert out.read_text() == "mine"
    sandbox.assert_only_new_under()


def test_a_non_empty_out_needs_force(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    out = sandbox.root / "onnx"
    out.mkdir()
    (out / "keep.onnx").write_bytes(b"user's file")
    sandbox.before.update({"onnx", "onnx/keep.onnx"})
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", "onnxruntime:fp32", "--out", out)
    assert code == 2 and err.count("error:") == 1 and "--force" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.onnx"]
    sandbox.assert_only_new_under()


def test_force_writes_into_a_non_empty_out_and_nowhere_else(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    """The bundled FP32 ONNX needs no conversion, so this is fast; the private cache is gone afterwards."""
    out = sandbox.root / "onnx"
    out.mkdir()
    (out / "keep.onnx").write_bytes(b"user's file")
    sandbox.before.update({"onnx", "onnx/keep.onnx"})
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", "onnxruntime:fp32", "--out", out, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.onnx", f"{MODEL}.onnxruntime-fp32.json",
                                                     f"{MODEL}.onnxruntime-fp32.onnx"]
    assert (out / "keep.onnx").read_bytes() == b"user's file"
    sandbox.assert_only_new_under(out)


def test_trt_typing_with_an_onnxruntime_target_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    code, err = cli(capsys, "convert", "--model", MODEL, "--opt", "onnxruntime:int8", "--trt-typing", "weak",
                    "--out", sandbox.root / "onnx")
    assert code == 2 and err.count("error:") == 1 and "--trt-typing" in err and "tensorrt targets only" in err
    sandbox.assert_only_new_under()
