"""Hostile ``include`` lists (issue 22 item 4): a cycle, a file including itself, a path leaving the
root manifest's folder and a folder are each one ConfigError naming the manifest and field 'include'
(CLI exit 2), read through the one walk of mapgate.catalog that the CLI, the pytest plugin and merge
share; the way out is the one model paths have: a symlink placed inside the folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hostile_helpers import ROOT, Sandbox, cli

MODEL = "yolox-nano-416"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _models(capsys: pytest.CaptureFixture, manifest: Path) -> tuple[int, str]:
    return cli(capsys, "models", "--models-file", manifest)


def test_an_include_cycle_is_an_error_naming_the_chain(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["b.toml"]\n')
    b = _write(sandbox.root / "m" / "b.toml", 'include = ["a.toml"]\n')
    code, err = _models(capsys, a)
    assert code == 2, err
    assert f"{b}: field 'include'" in err and f"{a} -> {b} -> {a}" in err and "include cycle" in err
    assert len(err.strip().splitlines()) == 1
    sandbox.assert_only_new_under("m")


def test_a_manifest_including_itself_is_a_cycle(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    a = _write(sandbox.root / "m" / "self.toml", 'include = ["self.toml"]\n')
    code, err = _models(capsys, a)
    assert code == 2 and f"{a} -> {a}" in err and "include cycle" in err, err
    sandbox.assert_only_new_under("m")


def test_a_longer_cycle_through_a_subfolder_names_every_file(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["sub/b.toml"]\n')
    b = _write(sandbox.root / "m" / "sub" / "b.toml", 'include = ["c.toml"]\n')
    c = _write(sandbox.root / "m" / "sub" / "c.toml", 'include = ["../a.toml"]\n')
    code, err = _models(capsys, a)
    assert code == 2 and f"{c}: field 'include'" in err and "'../a.toml'" in err, err
    assert f" -> {b} -> {c} -> " in err
    sandbox.assert_only_new_under("m")


def test_a_diamond_is_not_a_cycle(capsys: pytest.CaptureFixture, sandbox: Sandbox, manifest_copy) -> None:
    """a includes b and c, both include d: d is read once and its model listed once."""
    manifest_copy(sandbox.root / "m" / "d.toml", MODEL)
    _write(sandbox.root / "m" / "b.toml", 'include = ["d.toml"]\n')
    _write(sandbox.root / "m" / "c.toml", 'include = ["d.toml"]\n')
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["b.toml", "c.toml"]\n')
    code, _ = _models(capsys, a)
    assert code == 0


@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "../outside.toml"])
def test_an_include_outside_the_root_manifests_folder_is_refused_unread(capsys: pytest.CaptureFixture,
                                                                        sandbox: Sandbox, target: str) -> None:
    _write(sandbox.root / "outside.toml", 'include = ["/etc/shadow"]\n')
    a = _write(sandbox.root / "m" / "a.toml", f'include = ["{target}"]\n')
    code, err = _models(capsys, a)
    assert code == 2, err
    assert f"{a}: field 'include'" in err and repr(target) in err and "outside the repository" in err
    assert "symlink" in err  # the documented way out, as for model paths
    assert "root:" not in err  # nothing of /etc/passwd is shown
    sandbox.assert_only_new_under("m", "outside.toml")


def test_a_symlink_placed_in_the_folder_is_the_way_out(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                       manifest_copy) -> None:
    shared = manifest_copy(sandbox.root / "shared" / "models.toml", MODEL)
    (sandbox.root / "m").mkdir()
    (sandbox.root / "m" / "shared.toml").symlink_to(shared)
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["shared.toml"]\n')
    code, _ = _models(capsys, a)
    out = capsys.readouterr()
    assert code == 0, out


def test_including_a_folder_says_it_is_a_folder(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    (sandbox.root / "m" / "more").mkdir(parents=True)
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["more"]\n')
    code, err = _models(capsys, a)
    assert code == 2 and f"{a}: field 'include'" in err and "'more' is a folder" in err, err
    assert "does not exist" not in err
    sandbox.assert_only_new_under("m")


@pytest.mark.slow  # a subprocess
def test_the_cli_lists_the_models_of_an_included_file(sandbox: Sandbox, manifest_copy) -> None:
    """`mapgate models --models-file A.toml` walks A's includes (the one walk of mapgate.catalog)."""
    manifest_copy(sandbox.root / "m" / "sub" / "models.toml", MODEL)
    a = _write(sandbox.root / "m" / "a.toml", 'include = ["sub/models.toml"]\n')
    proc = subprocess.run([sys.executable, "-c", "import sys; from mapgate.cli import main; sys.exit(main(sys.argv[1:]))",
                           "models", "--models-file", str(a)], cwd=sandbox.root, capture_output=True, text=True,
                          timeout=120, check=False, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert MODEL in proc.stdout
    sandbox.assert_only_new_under("m")


@pytest.mark.slow  # a subprocess
def test_pytest_reports_an_include_cycle_as_one_collection_error_and_runs_the_rest(pytester: pytest.Pytester) -> None:
    _write(pytester.path / "mapgate.toml", 'include = ["b.toml"]\n')
    _write(pytester.path / "b.toml", 'include = ["mapgate.toml"]\n')
    # a test file beside the broken manifest: it passes by design, so its outcome shows the session went on
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out
    assert "field 'include'" in out and "include cycle" in out and "b.toml" in out, out
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == 1
