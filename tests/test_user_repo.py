"""A user's own repository: examples/user-repo copied to a temporary folder (a mapgate.toml, the model
files, CI files; no test file, no conftest) and gated by the installed plugin in a pytest subprocess,
as `pip install mapgate` + `pytest -m accuracy` would: collection by node id, a pass with its session
table, report.md, PNGs, the step summary and JUnit properties, a forced fail shown as its comparison
table, and --update-baselines writing beside the manifest and nothing into mapgate.

On the first 20 images of val2017-mini, so each run takes seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "user-repo"
PACKAGE = ROOT / "mapgate"
MODEL = "acme-detector-320"
FAST = "--max-images=20"


@pytest.fixture()
def user_repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return pytester


def package_files() -> dict[str, float]:
    return {str(p.relative_to(PACKAGE)): p.stat().st_mtime for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name")] = {p.get("name"): p.get("value") for p in case.iter("property")}
    return cases


def test_the_manifest_is_collected_as_one_case_per_optimized_target(user_repo: pytest.Pytester) -> None:
    result = user_repo.runpytest_subprocess("--co", "-q", "-m", "accuracy")
    assert result.ret == 0, result.stdout.str()
    ids = [line for line in result.stdout.lines if line.startswith("mapgate.toml::")]
    assert ids == [f"mapgate.toml::{MODEL}::onnxruntime:fp32", f"mapgate.toml::{MODEL}::tensorrt:fp16"]


@pytest.mark.slow
def test_a_passing_gate_prints_the_table_and_writes_the_report_junit_and_step_summary(
        user_repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, require_backend) -> None:  # noqa: ANN001
    require_backend("opencv")
    require_backend("onnxruntime")
    summary = user_repo.path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = user_repo.runpytest_subprocess("-m", "accuracy", FAST, "--junitxml=j.xml")
    out = result.stdout.str()
    assert result.ret == 0, out
    result.assert_outcomes(passed=1, skipped=1)
    # the session table: one row per case, the numbers and the verdict
    assert "mapgate accuracy gate" in out
    row = next(line for line in result.stdout.lines if line.startswith(MODEL) and "onnxruntime:fp32" in line)
    assert re.search(r"opencv\s+onnxruntime:fp32\s+\d+\.\d\d\s+\d+\.\d\d\s+[+-]\d\.\d\d\s+\[", row), row
    assert row.split()[-4:] == ["pass", "passed", "none", "recorded"]  # the baseline column: none recorded yet
    assert re.search(rf"{MODEL}\s+opencv\s+tensorrt:fp16\s+.*skipped", out)
    assert "no baseline recorded" in out  # a fresh repository: the report says so
    # reports/<run-id>/: report.md linking each case's summary and pictures
    [report] = (user_repo.path / "reports").glob("*/report.md")
    text = report.read_text()
    case = report.parent / MODEL / "onnxruntime-fp32"
    assert f"[summary]({MODEL}/onnxruntime-fp32/summary.md)" in text
    for name in ("summary.md", "comparison.json", "pr-curves.png", "per-class-dap.png"):
        assert (case / name).is_file(), name
        if name.endswith(".png"):
            assert f"({MODEL}/onnxruntime-fp32/{name})" in text
            assert (case / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.read_text().startswith("earlier step\n# mapgate accuracy gate")  # appended, not replaced
    # JUnit properties per case
    props = junit_properties(user_repo.path / "j.xml")["onnxruntime:fp32"]
    assert set(props) == {"delta_ap", "ci_low", "ci_high", "tolerance", "verdict", "expected", "result", "baseline"}
    assert props["result"] == "pass" and props["baseline"] == "missing"
    assert props["verdict"] == "pass" and float(props["tolerance"]) == 0.1
    assert float(props["ci_low"]) <= float(props["delta_ap"]) <= float(props["ci_high"])
    assert float(props["ci_low"]) > -0.1


@pytest.mark.slow
def test_a_failing_case_shows_its_table_and_update_baselines_writes_beside_the_manifest(
        user_repo: pytest.Pytester, require_backend) -> None:  # noqa: ANN001
    require_backend("opencv")
    require_backend("onnxruntime")
    manifest = user_repo.path / "mapgate.toml"
    # INT8 loses accuracy on these images; with no loss allowed the point estimate is below -tolerance
    text = manifest.read_text().replace('optimized = ["onnxruntime:fp32", "tensorrt:fp16"]',
                                        'optimized = ["onnxruntime:fp32", "onnxruntime:int8"]\ntolerance.int8 = 0.0')
    manifest.write_text(text)
    before = package_files()
    bundled = (ROOT / "fixtures" / "mapgate-baselines.json").read_bytes()

    failed = user_repo.runpytest_subprocess("-m", "accuracy", FAST, "--backends=onnxruntime:int8")
    out = failed.stdout.str()
    assert failed.ret == 1, out
    failed.assert_outcomes(failed=1)
    assert "assert" not in out.lower().replace("asserts", "")  # a report, not an assertion diff
    for says in ("95% CI dAP", "agreement", "tolerance     0 points (manifest mapgate.toml, int8)",
                 "verdict       fail (expected pass) -> fail", "loses more than the tolerance of 0 points",
                 f"artifacts     {user_repo.path / 'reports'}"):
        assert says in out, says
    assert re.search(rf"{MODEL}\s+opencv\s+onnxruntime:int8\s.*\s+fail\s+failed", out)

    updated = user_repo.runpytest_subprocess("-m", "accuracy", FAST, "--backends=onnxruntime:fp32",
                                             "--update-baselines")
    assert updated.ret == 0, updated.stdout.str()
    written = user_repo.path / "mapgate-baselines.json"
    assert f"baselines rewritten in {written}" in updated.stdout.str()

    baselines = json.loads(written.read_text())
    assert set(baselines[MODEL]) == {"opencv", "onnxruntime:fp32"}
    assert baselines[MODEL]["opencv"]["dataset"] == "val2017-mini subset (first 20 of 206 images)"
    assert package_files() == before, "nothing is written into the installed package"
    assert (ROOT / "fixtures" / "mapgate-baselines.json").read_bytes() == bundled

    checked = user_repo.runpytest_subprocess("-m", "accuracy", FAST, "--backends=onnxruntime:fp32")
    assert checked.ret == 0, checked.stdout.str()
    assert "no baseline recorded" not in checked.stdout.str()


@pytest.mark.slow
def test_the_data_set_named_in_the_manifest_is_relative_to_it_and_coco_root_overrides_it(
        user_repo: pytest.Pytester) -> None:
    manifest = user_repo.path / "mapgate.toml"
    manifest.write_text(manifest.read_text().replace('# [dataset]\n# coco_root = "data/coco"',
                                                     '[dataset]\ncoco_root = "data/coco"'))
    named = user_repo.runpytest_subprocess("-m", "accuracy", "--backends=onnxruntime:fp32")
    assert named.ret == 1
    named.stdout.fnmatch_lines([f"*DataError: COCO root {user_repo.path / 'data' / 'coco'} "
                                f"({user_repo.path / 'mapgate.toml'} [[]dataset[]]) does not exist*"])
    other = user_repo.path / "elsewhere"
    overridden = user_repo.runpytest_subprocess("-m", "accuracy", "--backends=onnxruntime:fp32", f"--coco-root={other}")
    # --coco-root wins over the manifest's folder, and a missing one is one usage error (exit 4)
    assert overridden.ret == 4
    overridden.stderr.fnmatch_lines([f"*argument --coco-root: folder {other} does not exist*"])
    assert "Traceback" not in overridden.stdout.str() + overridden.stderr.str()
