"""Errors are one line in every channel (issue 24, item 5) and a failed conversion is remembered until
its inputs change (item 3).

A conversion that fails inside a third-party library (here: a corrupt ONNX file read by onnx, and a
failure planted inside ONNX Runtime's quantize_static, below mapgate's call) is a one-line
ConversionError naming the model, the step and the library's message; its traceback is in the
``<kind>-<key16>.failed.json`` record the line names, under --engines-dir. The same inputs raise the
remembered error at once, without converting; changed inputs convert again; environment failures
(Ctrl-C, no memory, a missing package, a full disk, a backend that cannot run) are never remembered.

Under pytest --junitxml, such a case is an ``<error>`` with that one line; a failed gate is a
``<failure>`` and, like a passing case, carries the verdict properties.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from mapgate.backends.base import BuildContext
from mapgate.cache import FAILURE_SUFFIX, RETRY_ENV, cached_artifact
from mapgate.cli import main
from mapgate.convert import ort_quant
from mapgate.errors import BackendUnavailable, ConversionError, StorageError

MODEL = "nanodet-m-320"  # a 3.8 MB ONNX model whose reference is ONNX Runtime: seconds per run
INPUTS = {"onnx_sha256": "0" * 64, "converter": "darknet2onnx/1"}


class Converter:
    """A build callback that counts its calls and does what ``action`` says."""

    def __init__(self, action: Any) -> None:
        self.action, self.calls = action, 0

    def __call__(self, out: Path) -> dict[str, Any]:
        self.calls += 1
        self.action(out)
        return {}


def _corrupt_onnx(tmp_path: Path) -> Converter:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 50)

    def read_it(out: Path) -> None:
        import onnx

        out.write_bytes(onnx.load(str(bad)).SerializeToString())

    return Converter(read_it)


def _convert(engines: Path, build: Converter, inputs: dict[str, Any] = INPUTS) -> Path:
    return cached_artifact(engines, "acme", "darknet-onnx", inputs, build, ".onnx")


# ------------------------------------------------------------------------------- the error line
def test_a_conversion_failing_inside_a_library_is_one_line_naming_model_step_and_library(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    with pytest.raises(ConversionError) as exc:
        _convert(engines, _corrupt_onnx(tmp_path))
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 500, msg  # JUnit keeps 500 characters of a message
    assert msg.startswith("model 'acme', conversion darknet-onnx: onnx failed: DecodeError: "), msg
    [record] = (engines / "acme").glob(f"darknet-onnx-*{FAILURE_SUFFIX}")
    assert f"[traceback: {record}]" in msg
    data = json.loads(record.read_text())
    assert data["message"] == msg and data["key_fields"] == INPUTS
    assert any("onnx" in line and "load" in line for line in data["traceback"]), data["traceback"]
    assert not list((engines / "acme").glob("*.onnx"))  # nothing half-made is left as an artifact


def test_a_remembered_failure_is_raised_again_without_converting(tmp_path: Path) -> None:
    engines, build = tmp_path / "engines", _corrupt_onnx(tmp_path)
    with pytest.raises(ConversionError) as first:
        _convert(engines, build)
    with pytest.raises(ConversionError) as again:
        _convert(engines, build)
    assert build.calls == 1  # the second run did not call the converter
    msg = str(again.value)
    assert msg.startswith(str(first.value)) and "\n" not in msg
    assert "remembered from the build of" in msg and "not retried until" in msg
    record = next((engines / "acme").glob(f"*{FAILURE_SUFFIX}"))
    assert f"delete {record}" in msg and f"{RETRY_ENV}=1" in msg


def test_changed_inputs_convert_again_and_a_fix_is_cached(tmp_path: Path) -> None:
    engines, broken = tmp_path / "engines", _corrupt_onnx(tmp_path)
    with pytest.raises(ConversionError):
        _convert(engines, broken)
    fixed = Converter(lambda out: out.write_bytes(b"onnx bytes"))
    path = _convert(engines, fixed, {**INPUTS, "onnx_sha256": "1" * 64})  # e.g. a re-exported model file
    assert fixed.calls == 1 and path.read_bytes() == b"onnx bytes"
    assert _convert(engines, fixed, {**INPUTS, "onnx_sha256": "1" * 64}) == path and fixed.calls == 1


def test_the_retry_variable_and_deleting_the_record_convert_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    engines, build = tmp_path / "engines", _corrupt_onnx(tmp_path)
    with pytest.raises(ConversionError):
        _convert(engines, build)
    monkeypatch.setenv(RETRY_ENV, "1")
    with pytest.raises(ConversionError, match="onnx failed") as retried:
        _convert(engines, build)
    assert build.calls == 2 and "remembered" not in str(retried.value)
    monkeypatch.delenv(RETRY_ENV)
    next((engines / "acme").glob(f"*{FAILURE_SUFFIX}")).unlink()
    with pytest.raises(ConversionError, match="onnx failed"):
        _convert(engines, build)
    assert build.calls == 3


def _raise(exc: BaseException) -> Any:
    def action(out: Path) -> None:
        raise exc
    return action


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), MemoryError(), ImportError("No module named 'tf2onnx'"),
                                 OSError(5, "Input/output error"), BackendUnavailable("openvino", "not installed"),
                                 StorageError("engines folder is read-only")],
                         ids=lambda e: type(e).__name__)
def test_environment_failures_are_not_remembered(tmp_path: Path, exc: BaseException) -> None:
    engines, build = tmp_path / "engines", Converter(_raise(exc))
    for calls in (1, 2):
        with pytest.raises(type(exc)):
            _convert(engines, build)
        assert build.calls == calls  # tried again: the next run may have the memory, the package, the space
    assert not list(engines.rglob(f"*{FAILURE_SUFFIX}"))


def test_a_damaged_or_foreign_record_is_not_trusted(tmp_path: Path) -> None:
    engines, build = tmp_path / "engines", _corrupt_onnx(tmp_path)
    with pytest.raises(ConversionError):
        _convert(engines, build)
    record = next((engines / "acme").glob(f"*{FAILURE_SUFFIX}"))
    for text in ("{not json", json.dumps({**json.loads(record.read_text()), "key_fields": {"other": 1}})):
        record.write_text(text)
        with pytest.raises(ConversionError) as exc:
            _convert(engines, build)
        assert "remembered" not in str(exc.value)
    assert build.calls == 3


def test_nothing_is_written_outside_the_engines_dir(tmp_path: Path) -> None:
    engines, build = tmp_path / "engines", _corrupt_onnx(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    for _ in range(2):
        with pytest.raises(ConversionError):
            _convert(engines, build)
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(engines in p.parents or p == engines for p in new), sorted(new)
    assert not [p for p in new if p.name.endswith(".part")]


# ------------------------------------------------------------------------------- a real quantizer
@pytest.fixture()
def planted_quantizer_failure(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """ONNX Runtime's quantize_static fails inside itself (its calibrator cannot be made), as it does
    on a graph it cannot handle; returns the list counting the quantizer's attempts."""
    import importlib

    quantize = importlib.import_module("onnxruntime.quantization.quantize")
    attempts: list[int] = []

    def create_calibrator(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        raise ValueError("Unsupported model: planted failure in the calibrator")

    monkeypatch.setattr(quantize, "create_calibrator", create_calibrator)
    return attempts


def test_a_quantizer_failure_is_one_line_remembered_and_retried_when_the_recipe_changes(
        tmp_path: Path, bundled_models: dict[str, Any], planted_quantizer_failure: list[int],
        require_backend: Any) -> None:
    require_backend("onnxruntime")
    model = bundled_models[MODEL]
    ctx = BuildContext(engines_dir=tmp_path / "engines", max_calib_images=4)
    with pytest.raises(ConversionError) as first:
        ort_quant.build(model, ctx, "onnxruntime:int8")
    msg = str(first.value)
    assert "\n" not in msg and f"model {MODEL!r}" in msg and "INT8 quantization" in msg, msg
    assert "ONNX Runtime's quantizer: ValueError: Unsupported model: planted failure in the calibrator" in msg, msg
    assert planted_quantizer_failure == [1]

    with pytest.raises(ConversionError, match="remembered from the build of"):
        ort_quant.build(model, ctx, "onnxruntime:int8")
    assert planted_quantizer_failure == [1]  # not converted again

    # the calibration method enters the INT8 file's key: a changed recipe is another conversion
    minmax = dataclasses.replace(model, convert=dataclasses.replace(model.convert, int8_calibration="minmax"))
    with pytest.raises(ConversionError) as retried:
        ort_quant.build(minmax, ctx, "onnxruntime:int8")
    assert "remembered" not in str(retried.value) and planted_quantizer_failure == [1, 1]


def test_the_cli_prints_a_quantizer_failure_as_one_line_and_exits_2(
        tmp_path: Path, planted_quantizer_failure: list[int], require_backend: Any,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mapgate compare` meets the same failure: one line on stderr naming the model and the quantizer,
    exit 2, no traceback; a second run does not quantize again."""
    require_backend("onnxruntime")
    monkeypatch.delenv(RETRY_ENV, raising=False)
    argv = ["compare", "--model", MODEL, "--opt", "onnxruntime:int8", "--max-images", "2", "--resamples", "20",
            "--engines-dir", str(tmp_path / "engines"), "--out", str(tmp_path / "reports"), "--no-progress"]
    for attempt in (1, 2):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.startswith("mapgate: error:")]
        assert len(lines) == 1 and "Traceback" not in out + err, err
        assert f"model {MODEL!r}" in lines[0] and "planted failure in the calibrator" in lines[0], lines[0]
        assert ("remembered from the build of" in lines[0]) == (attempt == 2), lines[0]
    assert planted_quantizer_failure == [1]


# ------------------------------------------------------------------------------- JUnit under pytest
def _properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


@pytest.fixture()
def gate_repo(pytester: pytest.Pytester, manifest_copy: Any, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A repository with nanodet twice: ``nanodet-m-320`` gates onnxruntime:fp32 (passes) and
    onnxruntime:int8 (its quantizer fails), ``canary`` expects onnxruntime:fp32 to fail (it passes,
    so the case fails)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    manifest = manifest_copy(pytester.path / "mapgate.toml", MODEL, {
        'optimized = ["onnxruntime:int8", "openvino:fp32", "tensorrt:fp32", "tensorrt:fp16", "tensorrt:int8"]':
            'optimized = ["onnxruntime:fp32", "onnxruntime:int8"]'})
    text = manifest.read_text()
    canary = text.replace(f"[models.{MODEL}", "[models.canary").replace(
        'optimized = ["onnxruntime:fp32", "onnxruntime:int8"]',
        'optimized = ["onnxruntime:fp32"]\nexpected_verdicts."onnxruntime:fp32" = "fail"').replace(
        'expected_verdicts."onnxruntime:int8" = "inconclusive"\n', "")
    manifest.write_text(text + "\n" + canary)
    return pytester


@pytest.mark.slow
def test_junit_has_an_error_for_a_conversion_a_failure_for_a_gate_and_properties_for_every_verdict(
        gate_repo: pytest.Pytester, planted_quantizer_failure: list[int], require_backend: Any) -> None:
    require_backend("onnxruntime")
    args = ("-m", "accuracy", "--max-images=3", "-p", "no:cacheprovider")
    result = gate_repo.runpytest_inprocess(*args, "--junitxml=first.xml")
    out = result.stdout.str()
    assert result.ret == 1, out
    by_id = {f"{c.get('classname')}::{c.get('name')}": c for c in ET.parse(gate_repo.path / "first.xml").getroot().iter("testcase")}
    [int8] = [c for k, c in by_id.items() if k.endswith("onnxruntime:int8")]
    [passing] = [c for k, c in by_id.items() if MODEL in k and k.endswith("onnxruntime:fp32")]
    [canary] = [c for k, c in by_id.items() if "canary" in k]

    [error] = int8.findall("error")
    assert not int8.findall("failure")
    text = (error.text or "").strip()  # the whole report: one line (pytest cuts the message attribute at 500)
    assert "\n" not in text and "Traceback" not in text, error.text
    assert text.startswith(f"ConversionError: INT8 quantization of model {MODEL!r}"), text
    message = error.get("message", "")
    assert message.startswith(f'failed on setup with "{text[:200]}'), message
    assert "ONNX Runtime's quantizer: ValueError: Unsupported model: planted failure" in message
    assert not _properties(int8)  # no verdict, no verdict properties
    assert "Traceback" not in out and "ConversionError: INT8 quantization" in out

    [failure] = canary.findall("failure")
    assert not canary.findall("error")
    props = _properties(canary)
    assert props["verdict"] == "pass" and props["expected"] == "fail" and props["result"] == "fail", props
    assert {"delta_ap", "ci_low", "ci_high", "tolerance", "baseline"} <= set(props)
    assert "canary" in failure.get("message", "")

    assert not passing.findall("failure") and not passing.findall("error")
    props = _properties(passing)
    assert props["verdict"] == "pass" and props["result"] == "pass" and float(props["delta_ap"]) == 0.0, props
    assert props["baseline"] == "missing"

    # the second run: the quantizer is not called again, the remembered error says so, still one line
    again = gate_repo.runpytest_inprocess(*args, "--junitxml=second.xml")
    assert again.ret == 1 and planted_quantizer_failure == [1], again.stdout.str()
    [int8] = [c for c in ET.parse(gate_repo.path / "second.xml").getroot().iter("testcase")
              if c.get("name") == "onnxruntime:int8"]
    text = (int8.find("error").text or "").strip()  # type: ignore[union-attr]
    assert "remembered from the build of" in text and "\n" not in text, text
    assert not list(gate_repo.path.glob("*.part")) and not (gate_repo.path / "engines" / ".tmp").exists()
