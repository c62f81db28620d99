"""A ``$GITHUB_STEP_SUMMARY`` that cannot be written (issue 22 item 3): a folder, a read-only file, a
missing folder. The session still ends normally: the table is printed, report.md is written, the exit
code is what the verdicts say (0 here) and one warning line names the path and why. And the summary's
own links (issue 24 item 5): none relative to a folder the summary is not in, the run folder named
by its absolute path.

The case is a TensorRT target on a machine without TensorRT: it is skipped with a row in the table
before any model runs, which is all the end of the session needs."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from hostile_helpers import ROOT
from mapgate.backends import get_backend

EXAMPLE = ROOT / "examples" / "user-repo"


@pytest.fixture()
def repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    if get_backend("tensorrt").availability().ok:
        pytest.skip("TensorRT is available here: the case would run a model")
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True)
    manifest = pytester.path / "mapgate.toml"
    manifest.write_text(manifest.read_text().replace('["onnxruntime:fp32", "tensorrt:fp16"]', '["tensorrt:fp16"]'))
    monkeypatch.delenv("CI", raising=False)
    return pytester


def _run(repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, summary: Path,
         prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    if prefix:
        import subprocess
        import sys

        proc = subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "accuracy"],
                              cwd=repo.path, capture_output=True, text=True, timeout=300, check=False)
        return proc.returncode, proc.stdout + proc.stderr
    result = repo.runpytest_subprocess("-p", "no:cacheprovider", "-m", "accuracy")
    return result.ret, result.stdout.str() + result.stderr.str()


def _assert_session_survived(code: int, out: str, repo: pytest.Pytester, summary: Path, why: str) -> None:
    assert "Traceback" not in out, out
    assert code == 0, out
    assert "mapgate accuracy gate" in out and "tensorrt:fp16" in out  # the table
    assert list((repo.path / "reports").glob("*/report.md")), "report.md must still be written"
    warnings = [line for line in out.splitlines() if "step summary not written" in line]
    assert len(warnings) == 1, out
    assert str(summary) in warnings[0] and why in warnings[0], warnings[0]


@pytest.mark.slow  # a pytest subprocess
def test_a_step_summary_that_is_a_folder_is_one_warning(repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = repo.path / "summary-dir"
    summary.mkdir()
    code, out = _run(repo, monkeypatch, summary)
    _assert_session_survived(code, out, repo, summary, "is a folder")
    assert list(summary.iterdir()) == []


@pytest.mark.slow
def test_a_step_summary_in_a_missing_folder_is_one_warning_and_creates_nothing(
        repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = repo.path / "no-such-dir" / "summary.md"
    code, out = _run(repo, monkeypatch, summary)
    _assert_session_survived(code, out, repo, summary, "does not exist")
    assert not summary.parent.exists()


@pytest.mark.slow
def test_a_read_only_step_summary_is_one_warning_and_stays_unchanged(
        repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = repo.path / "summary.md"
    summary.write_text("earlier step\n")
    summary.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anyway; without CAP_DAC_OVERRIDE the mode bits hold
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a read-only file is writable")
        prefix = (setpriv, "--bounding-set=-dac_override")
    code, out = _run(repo, monkeypatch, summary, prefix)
    _assert_session_survived(code, out, repo, summary, "Permission denied")
    assert summary.read_text() == "earlier step\n"


@pytest.mark.slow
def test_the_step_summary_has_no_links_relative_to_another_folder(
        repo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = repo.path / "summary.md"
    summary.write_text("earlier step\n")
    code, out = _run(repo, monkeypatch, summary)
    assert code == 0 and "step summary not written" not in out, out
    text = summary.read_text()
    assert text.startswith("earlier step\n# mapgate accuracy gate")
    assert "](" not in text, text  # no markdown link: they would resolve against GitHub's page
    [run_dir] = (repo.path / "reports").glob("*/")
    assert f"`{run_dir.absolute()}`" in text
    report_md = (run_dir / "report.md").read_text()
    assert "tensorrt:fp16" in report_md


def test_the_step_summary_names_each_case_folder_under_the_absolute_run_folder_without_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, with cases that have folders and pictures (report.md links them; the summary may not)."""
    from mapgate import report

    rows = [report.CaseRow("m", "onnxruntime:fp32", "passed", reference="opencv", directory="m/onnxruntime-fp32",
                           pictures=("pr-curves.png",))]
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert report.write_step_summary(rows, tmp_path / "reports" / "run-1") is None
    text = summary.read_text()
    assert "](" not in text and "`m/onnxruntime-fp32/`" in text
    assert f"`{tmp_path / 'reports' / 'run-1'}`" in text
    assert "[summary](m/onnxruntime-fp32/summary.md)" in report.run_markdown(rows)  # report.md keeps its links
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]  # the summary writes nothing else
