"""A broken ``mapgate.toml`` under pytest (issue 22 item 5): not UTF-8, a folder, a loop of links, a
dangling link, bad TOML, a broken included file. Each is one collection error naming the file and the
problem (no traceback), the other test files of the session are still collected and run, the run
exits non-zero (1: an error), and nothing is written into the repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hostile_helpers import tree


def _not_utf8(repo: Path) -> str:
    (repo / "mapgate.toml").write_bytes(b'# caf\xe9 in Latin-1\n[models.x]\n')
    return "is not UTF-8 text"


def _folder(repo: Path) -> str:
    (repo / "mapgate.toml").mkdir()
    return "is a folder"


def _loop(repo: Path) -> str:
    (repo / "mapgate.toml").symlink_to(repo / "loop.toml")
    (repo / "loop.toml").symlink_to(repo / "mapgate.toml")
    return "symbolic link that leads nowhere"


def _dangling(repo: Path) -> str:
    (repo / "mapgate.toml").symlink_to(repo / "gone.toml")
    return "symbolic link that leads nowhere"


def _bad_toml(repo: Path) -> str:
    (repo / "mapgate.toml").write_text("[models.x\n", encoding="utf-8")
    return "is not valid TOML"


def _included_not_utf8(repo: Path) -> str:
    (repo / "mapgate.toml").write_text('include = ["more.toml"]\n', encoding="utf-8")
    (repo / "more.toml").write_bytes(b"\xff\xfe[\x00m\x00")  # UTF-16, as some editors save
    return "more.toml is not UTF-8 text"


CASES: dict[str, Callable[[Path], str]] = {"not-utf8": _not_utf8, "folder": _folder, "loop": _loop,
                                           "dangling": _dangling, "bad-toml": _bad_toml,
                                           "included-not-utf8": _included_not_utf8}


@pytest.mark.slow  # a pytest subprocess per case
@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_manifest_is_one_collection_error_and_the_rest_runs(pytester: pytest.Pytester, case: str) -> None:
    says = CASES[case](pytester.path)
    # a test file beside the broken manifest: it passes by design, so its outcome shows the session went on
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    before = tree(pytester.path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "UnicodeDecodeError" not in out, out
    assert "ERROR collecting mapgate.toml" in out and says in out, out
    assert str(pytester.path / "mapgate.toml") in out or str(pytester.path / "more.toml") in out
    # one line: the section holds the message alone
    section = out.split("ERROR collecting mapgate.toml", 1)[1].split("short test summary", 1)[0]
    assert len([line for line in section.splitlines()[1:] if line.strip() and not line.startswith("=")]) == 1, section
    result.assert_outcomes(passed=1, errors=1)  # test_other.py still ran
    assert result.ret == 1
    new = {p.split("/")[0] for p in tree(pytester.path) - before}
    assert new <= {"__pycache__", "runpytest-0", "runpytest-current", ".benchmarks", "stdout", "stderr"}, new  # pytester's, not mapgate's


@pytest.mark.slow
def test_a_broken_manifest_named_with_mapgate_manifest_does_not_stop_the_rootdir_one(pytester: pytest.Pytester) -> None:
    """Two manifests: the broken one is its error, the good one (here an empty include list with a
    [dataset]-less header only) still collects, and test files run."""
    (pytester.path / "bad.toml").write_bytes(b"\xff[models.x]\n")
    # a test file beside the broken manifest: it passes by design, so its outcome shows the session went on
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--mapgate-manifest={pytester.path / 'bad.toml'}",
                                           "test_other.py")
    out = result.stdout.str()
    assert "Traceback" not in out and "bad.toml is not UTF-8 text" in out, out
    result.assert_outcomes(passed=1, errors=1)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["folder", "not-utf8"])
def test_under_xdist_a_broken_manifest_is_reported_too(pytester: pytest.Pytester, case: str) -> None:
    """The controller collects nothing under -n: a manifest that is not a file is reported by it."""
    pytest.importorskip("xdist")
    says = CASES[case](pytester.path)
    # a test file beside the broken manifest: it passes by design, so its outcome shows the session went on
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    out = result.stdout.str()
    assert "Traceback" not in out and says in out and str(pytester.path / "mapgate.toml") in out, out
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == 1
