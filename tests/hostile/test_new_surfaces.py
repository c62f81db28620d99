"""Issue 22: the bad-input tests of the inputs this round's other issues added: the manifest's
``[dataset]`` table, ``mapgate doctor``'s options and the wheel's package data. Each is one line naming
the file and the field (or the option), exit code 2, nothing written outside the chosen folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mapgate.dataset
from hostile_helpers import ROOT, Sandbox, cli

EXAMPLE = ROOT / "examples" / "user-repo"


def _repo(sandbox: Sandbox, dataset: str) -> Path:
    repo = sandbox.root / "repo"
    shutil.copytree(EXAMPLE, repo)
    manifest = repo / "mapgate.toml"
    manifest.write_text(dataset + "\n" + manifest.read_text())
    return manifest


@pytest.mark.parametrize(("dataset", "says"), [
    ('dataset = "data/coco"', "[dataset] must be a table"),
    ('[dataset]\nimgs = "x"', "field 'dataset.imgs' is not known"),
    ('[dataset]\nimages = 5\nannotations = "a.json"', "field 'dataset.images' must be"),
    ('[dataset]\nimages = "val"', "field 'dataset.annotations' is required with 'dataset.images'"),
    ('[dataset]\nlabel = "two\\nlines"', "field 'dataset.label' must be one line of text"),
])
def test_a_bad_dataset_table_is_one_line_naming_the_manifest_and_the_field(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, dataset: str, says: str) -> None:
    manifest = _repo(sandbox, dataset)
    code, err = cli(capsys, "models", "--models-file", manifest)
    assert code == 2 and str(manifest) in err and says in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("dataset", "missing"), [
    ('[dataset]\nimages = "nowhere"\nannotations = "a.json"', "nowhere"),
    ('[dataset]\ncoco_root = "no-coco"', "no-coco"),
])
def test_a_dataset_folder_that_is_not_there_is_named_with_the_manifest_before_any_model_runs(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, dataset: str, missing: str) -> None:
    manifest = _repo(sandbox, dataset)
    code, err = cli(capsys, "eval", "--model", "acme-detector-320", "--backend", "opencv", "--models-file", manifest,
                    "--no-progress")
    assert code == 2 and missing in err and "[dataset]" in err, err
    sandbox.assert_only_new_under("repo")


@pytest.mark.parametrize(("argv", "says"), [
    (["--run", "--max-images", "0"], "--max-images"),
    (["--run", "--max-images", "x"], "--max-images"),
    (["--run", "--model", "no-such-model"], "no-such-model"),
])
def test_bad_doctor_options_are_usage_errors_naming_the_option(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, argv: list[str], says: str) -> None:
    code, err = cli(capsys, "doctor", *argv, "--out", sandbox.root / "out" / "doctor")
    assert code == 2 and says in err, err
    assert not (sandbox.root / "out" / "doctor").exists() or not any((sandbox.root / "out" / "doctor").rglob("*.json"))


def test_doctor_out_that_is_a_file_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    blocker = sandbox.root / "a-file"
    blocker.write_text("mine\n")
    code, err = cli(capsys, "doctor", "--run", "--out", blocker)
    assert code == 2 and str(blocker) in err, err
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("which", ["BUNDLED_IMAGES", "BUNDLED_ANNOTATIONS"])
def test_bundled_data_missing_from_the_installed_package_says_so_and_how_to_fix_it(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """A wheel installed without its package data (or a damaged install): one line naming the path,
    that it is the package's, and the fix (reinstall, or name a data set)."""
    monkeypatch.setattr(mapgate.dataset, which, sandbox.root / "site-packages" / "mapgate" / "data" / "gone")
    code, err = cli(capsys, "eval", "--model", "yolo-fastest-1.1-320", "--backend", "opencv", "--no-progress",
                    "--max-images", 1)
    assert code == 2 and "gone" in err and "reinstall mapgate" in err, err
    assert len(err.strip().splitlines()) == 1, err
