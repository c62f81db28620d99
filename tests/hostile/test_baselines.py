"""Hostile mapgate-baselines.json files: a baseline that cannot be compared must never switch the baseline
check off (only the pytest gate reads baselines). Each is one line naming the file and the field, a
collection error like a broken manifest's (exit 1), and a real regression of both sides (a score
threshold raised in the manifest) fails on its baseline with good baselines and never passes silently
with broken ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mapgate.baselines import BASELINES_FILE, load_baselines
from mapgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "user-repo"
MODEL = "acme-detector-320"
FAST = "--max-images=20"
GOOD = {"AP": 0.1368, "AP50": 0.25, "dataset": "d"}

BAD = [  # (the file's text, the field the error must name, what it must say)
    (f'{{"{MODEL}": {{"opencv": {{"AP": NaN, "AP50": 0.25}}}}}}', "'AP'", "nan"),
    (json.dumps({MODEL: {"opencv": {**GOOD, "AP": -5}}}), "'AP'", "-5"),
    (json.dumps({MODEL: {"opencv": {**GOOD, "AP": 100.0}}}), "'AP'", "from 0 to 1"),
    (json.dumps({MODEL: {"opencv": {"AP50": 0.25, "dataset": "d"}}}), "'AP'", "is missing"),
    (json.dumps({MODEL: {"opencv": {**GOOD, "AP": "13.68"}}}), "'AP'", "'13.68'"),
    (json.dumps({MODEL: {"opencv": {**GOOD, "AP50": True}}}), "'AP50'", "True"),
    (f'{{"{MODEL}": {{"opencv": {{"AP": 0.13, "AP50": Infinity}}}}}}', "'AP50'", "inf"),
    (json.dumps({MODEL: {"opencv": [0.13, 0.25]}}), f"{MODEL} opencv", "expected an object"),
    (json.dumps({MODEL: {"opencv": {**GOOD, "dataset": 7}}}), "'dataset'", "7"),
]


@pytest.mark.parametrize(("text", "field", "says"), BAD)
def test_a_baseline_that_cannot_be_compared_is_a_one_line_error_naming_file_and_field(
        tmp_path: Path, text: str, field: str, says: str) -> None:
    path = tmp_path / BASELINES_FILE
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_baselines(path)
    msg = str(exc.value)
    assert str(path) in msg and field in msg and says in msg and "\n" not in msg, msg


def test_a_baselines_path_that_is_a_folder_is_an_error_not_no_baseline(tmp_path: Path) -> None:
    (tmp_path / BASELINES_FILE).mkdir()
    with pytest.raises(ConfigError, match=f"{BASELINES_FILE} is a folder"):
        load_baselines(tmp_path / BASELINES_FILE)


def test_good_baselines_and_no_file_still_load(tmp_path: Path) -> None:
    assert load_baselines(tmp_path / BASELINES_FILE) == {}
    (tmp_path / BASELINES_FILE).write_text(json.dumps({MODEL: {"opencv": GOOD}}))
    assert load_baselines(tmp_path / BASELINES_FILE) == {MODEL: {"opencv": GOOD}}


# ------------------------------------------------------------------------------- under pytest
@pytest.fixture()
def user_repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return pytester


@pytest.mark.slow
@pytest.mark.parametrize(("text", "field", "says"), [BAD[0], BAD[3], BAD[4]])
def test_a_broken_baselines_file_is_a_collection_error_naming_it_and_exit_1(
        user_repo: pytest.Pytester, text: str, field: str, says: str) -> None:
    (user_repo.path / BASELINES_FILE).write_text(text)
    result = user_repo.runpytest_subprocess("--co", "-q", "-m", "accuracy")
    out = result.stdout.str()
    # a collection error like a broken manifest's: the rest of the session still runs, pytest exits 1
    assert result.ret == 1, out
    assert "Traceback" not in out and f"ConfigError: baselines file {user_repo.path / BASELINES_FILE}" in out
    assert field in out and says in out


@pytest.mark.slow
def test_a_folder_named_like_the_baselines_file_is_a_collection_error_and_exit_1(user_repo: pytest.Pytester) -> None:
    (user_repo.path / BASELINES_FILE).mkdir()
    result = user_repo.runpytest_subprocess("--co", "-q", "-m", "accuracy")
    assert result.ret == 1 and "is a folder" in result.stdout.str(), result.stdout.str()


@pytest.mark.slow
def test_a_regression_on_both_sides_fails_on_its_baseline_and_never_passes_with_nan_baselines(
        user_repo: pytest.Pytester, require_backend) -> None:  # noqa: ANN001
    """The issue's scenario: the score threshold raised in the manifest moves original and engine
    together (the gate itself passes), so only the baseline can catch it."""
    require_backend("opencv")
    require_backend("onnxruntime")
    args = ("-m", "accuracy", FAST, "--backends=onnxruntime:fp32")
    recorded = user_repo.runpytest_subprocess(*args, "--update-baselines")
    assert recorded.ret == 0, recorded.stdout.str()
    path = user_repo.path / BASELINES_FILE
    good = json.loads(path.read_text())
    manifest = user_repo.path / "mapgate.toml"
    manifest.write_text(manifest.read_text().replace("score_threshold = 0.005", "score_threshold = 0.5"))

    regressed = user_repo.runpytest_subprocess(*args)
    out = regressed.stdout.str()
    assert regressed.ret == 1, out
    verdict_line = next(line for line in out.splitlines() if line.lstrip().startswith("verdict"))
    assert verdict_line.split(None, 1)[1].startswith("fail: AP"), verdict_line
    assert "points below its baseline" in verdict_line
    row = next(line for line in out.splitlines() if line.split()[:3] == [MODEL, "opencv", "onnxruntime:fp32"])
    assert row.split()[-1] == "regressed", row
    [comparison] = (user_repo.path / "reports").glob(f"*/{MODEL}/onnxruntime-fp32/comparison.json")
    baseline = json.loads(comparison.read_text())["baseline"]
    assert baseline["status"] == "regressed" and baseline["drop"] > 0.1

    text = json.dumps(good, allow_nan=True).replace(json.dumps(good[MODEL]["opencv"]["AP"]), "NaN")
    assert text.count("NaN") == 2  # both sides: the AP recorded for opencv and onnxruntime:fp32
    path.write_text(text)
    with_nan = user_repo.runpytest_subprocess(*args)
    assert with_nan.ret in (1, 2), with_nan.stdout.str()
    assert f"{path}" in with_nan.stdout.str() and "'AP'" in with_nan.stdout.str()

    # an intended change is re-recorded: the gate passes, so --update-baselines records it
    path.write_text(json.dumps(good))
    rerecorded = user_repo.runpytest_subprocess(*args, "--update-baselines")
    assert rerecorded.ret == 0, rerecorded.stdout.str()
    assert json.loads(path.read_text())[MODEL]["onnxruntime:fp32"]["AP"] < good[MODEL]["onnxruntime:fp32"]["AP"]


@pytest.mark.slow
def test_update_baselines_refuses_a_failing_case_with_exit_2(user_repo: pytest.Pytester, require_backend) -> None:  # noqa: ANN001
    require_backend("opencv")
    require_backend("onnxruntime")
    manifest = user_repo.path / "mapgate.toml"
    manifest.write_text(manifest.read_text().replace(
        'optimized = ["onnxruntime:fp32", "tensorrt:fp16"]',
        'optimized = ["onnxruntime:fp32", "onnxruntime:int8"]\ntolerance.int8 = 0.0'))
    result = user_repo.runpytest_subprocess("-m", "accuracy", FAST, "--update-baselines")
    out = result.stdout.str()
    assert result.ret == 2, out  # README: a refused update ends the run with exit code 2
    assert f"--update-baselines refused to record 1 failing case(s) ({MODEL} onnxruntime:int8)" in out
    recorded = json.loads((user_repo.path / BASELINES_FILE).read_text())
    assert set(recorded[MODEL]) == {"opencv", "onnxruntime:fp32"}  # the passing case is recorded, the failing not
