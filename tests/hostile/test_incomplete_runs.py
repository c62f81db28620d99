"""Issue 22: run folders of a killed run carried no mark that they were incomplete, and a stored
reference or a shard read from one was trusted. Every folder a run writes is marked (`.incomplete`,
written before its first file, removed as the last step), a kill at any point leaves the mark, and
`compare --ref` and `merge` refuse a marked folder by name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hostile_helpers import Sandbox, cli
from mapgate.fsutil import INCOMPLETE

# one worker fills the module's engines cache once (loadgroup)
pytestmark = pytest.mark.xdist_group("incomplete-runs")

MODEL, N = "yolox-nano-416", 2


def _mapgate(work: Path, *argv: object, phase: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAPGATE_FAULT_PHASE"}
    env["MAPGATE_RUN_ID"] = "run"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if phase:
        env["MAPGATE_FAULT_PHASE"] = phase
    return subprocess.run([sys.executable, "-c", "import sys; from mapgate.cli import main; sys.exit(main())",
                           *map(str, argv)], env=env, capture_output=True, text=True, timeout=600, cwd=work)


def _no_corrupt_json(root: Path) -> None:
    for p in root.rglob("*.json"):
        json.loads(p.read_bytes())  # raises on a half-written file


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, require_backend) -> Path:
    """An engines folder holding YOLOX-nano's detections on 2 images (so the kills below are quick)."""
    require_backend("onnxruntime")
    work = tmp_path_factory.mktemp("incomplete")
    done = _mapgate(work, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--max-images", N,
                    "--engines-dir", work / "engines", "--out", work / "reports", "--no-progress", "--resamples", 20,
                    "--inconclusive", "pass")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((work / "reports").rglob(INCOMPLETE))  # a finished run leaves no mark anywhere
    return work / "engines"


def _eval(sandbox: Sandbox, engines: Path, out: Path, phase: str | None = None) -> subprocess.CompletedProcess:
    return _mapgate(sandbox.root, "eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", N,
                    "--engines-dir", engines, "--out", out, "--no-progress", phase=phase)


@pytest.mark.slow
def test_an_eval_killed_while_writing_leaves_its_folder_marked(sandbox: Sandbox, engines: Path) -> None:
    out = sandbox.root / "ref"
    killed = _eval(sandbox, engines, out, phase="report@1")
    assert killed.returncode == -signal.SIGKILL
    assert (out / INCOMPLETE).is_file() and (out / "detections.json").is_file()
    assert not (out / "metrics.json").exists()
    _no_corrupt_json(out)


@pytest.mark.slow
def test_a_compare_against_a_killed_eval_names_the_marked_folder(capsys, sandbox: Sandbox, engines: Path) -> None:
    out = sandbox.root / "ref"
    assert _eval(sandbox, engines, out).returncode == 0  # a whole reference...
    (out / INCOMPLETE).write_text("killed\n")  # ...as a kill between its two files leaves it
    code, err = cli(capsys, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--ref", out,
                    "--max-images", N, "--engines-dir", engines, "--out", sandbox.root / "reports", "--no-progress")
    assert code == 2
    assert f"stored reference {out}: marked incomplete ({INCOMPLETE})" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_finished_eval_is_not_marked_and_is_a_usable_reference(capsys, sandbox: Sandbox, engines: Path) -> None:
    out = sandbox.root / "ref"
    assert _eval(sandbox, engines, out).returncode == 0
    assert not (out / INCOMPLETE).exists()
    code, err = cli(capsys, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--ref", out / "detections.json",
                    "--max-images", N, "--engines-dir", engines, "--out", sandbox.root / "reports", "--no-progress",
                    "--resamples", 20, "--inconclusive", "pass")
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["report@1", "report@2"])
def test_a_killed_compare_leaves_the_run_and_the_side_marked(sandbox: Sandbox, engines: Path, phase: str) -> None:
    reports = sandbox.root / "reports"
    killed = _mapgate(sandbox.root, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--max-images", N,
                      "--engines-dir", engines, "--out", reports, "--no-progress", phase=phase)
    assert killed.returncode == -signal.SIGKILL
    run = reports / "run"
    side = run / MODEL / ("onnxruntime" if phase == "report@1" else "onnxruntime-fp32")
    assert (run / INCOMPLETE).is_file() and (side / INCOMPLETE).is_file()
    assert not (run / MODEL / "onnxruntime-fp32" / "comparison.json").exists()
    _no_corrupt_json(sandbox.root)
    sandbox.assert_only_new_under("reports")


@pytest.mark.slow
def test_a_killed_merge_leaves_its_run_folder_marked(sandbox: Sandbox, engines: Path) -> None:
    shards = []
    for i in (1, 2):
        done = _mapgate(sandbox.root, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--max-images", N,
                        "--engines-dir", engines, "--out", sandbox.root / f"s{i}", "--no-progress", "--resamples", 20,
                        "--inconclusive", "pass", "--shard", f"{i}/2")
        assert done.returncode == 0, done.stderr[-2000:]
        shards.append(sandbox.root / f"s{i}" / "run")
    merged = sandbox.root / "merged"
    killed = _mapgate(sandbox.root, "merge", *shards, "--out", merged, phase="report@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (merged / "run" / INCOMPLETE).is_file()
    assert not (merged / "run" / "merge.json").exists()
    _no_corrupt_json(merged)
    again = _mapgate(sandbox.root, "merge", *shards, "--out", sandbox.root / "merged2", "--inconclusive", "pass")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list((sandbox.root / "merged2").rglob(INCOMPLETE))


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "user-repo"


def _pytest(repo: Path, run_id: str, phase: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAPGATE_", "PYTEST_"))}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), MAPGATE_RUN_ID=run_id)
    if phase:
        env["MAPGATE_FAULT_PHASE"] = phase
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "accuracy",
                           "--max-images", str(N), "--reports-dir", str(repo / "reports")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=repo)


@pytest.mark.slow
def test_a_killed_pytest_session_leaves_its_run_folder_marked_and_a_finished_one_does_not(
        tmp_path: Path, require_backend) -> None:  # noqa: ANN001
    require_backend("opencv")
    require_backend("onnxruntime")
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    killed = _pytest(repo, "killed", phase="report@2")  # the optimized side: reference written, comparison not
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    assert (repo / "reports" / "killed" / INCOMPLETE).is_file()
    _no_corrupt_json(repo / "reports")
    done = _pytest(repo, "done")
    assert done.returncode == 0, done.stdout[-2000:]
    assert (repo / "reports" / "done" / "report.md").is_file()
    assert not list((repo / "reports" / "done").rglob(INCOMPLETE))
    assert (repo / "reports" / "killed" / INCOMPLETE).is_file()  # a later run does not clear another's mark


@pytest.mark.parametrize("dies_at", ["write", "rename"])
def test_a_new_run_folder_never_exists_without_its_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        dies_at: str) -> None:
    """A signal between creating the folder and writing its mark once left an unmarked folder (CI saw
    it: merge killed by SIGTERM): the folder now appears by one rename with the mark inside."""
    from mapgate import fsutil

    class Killed(BaseException):
        pass

    def die(*_a: object, **_k: object) -> None:
        raise Killed

    if dies_at == "write":
        monkeypatch.setattr(fsutil, "write_bytes_atomic", die)
    else:
        monkeypatch.setattr(fsutil.os, "rename", die)
    with pytest.raises(Killed):
        fsutil.mark_incomplete(tmp_path / "reports" / "run", "a test")
    assert not (tmp_path / "reports" / "run").exists()
    monkeypatch.undo()
    assert fsutil.mark_incomplete(tmp_path / "reports" / "run", "a test").is_file()
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["run"]  # no leftover beside it
    (tmp_path / "reports" / "run" / "x.json").write_text("{}")
    assert fsutil.mark_incomplete(tmp_path / "reports" / "run", "again").read_text().startswith("again")


def test_a_run_killed_inside_the_marking_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    """The .part folder a kill leaves beside a new --out folder is removed by the next run for that folder;
    a live writer's and another folder's are not touched."""
    from mapgate.fsutil import HOST_TAG, mark_incomplete

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = tmp_path / f".out.{HOST_TAG}-{dead}-0badc0de.part"
    live = tmp_path / f".out.{HOST_TAG}-{os.getpid()}-00c0ffee.part"
    other = tmp_path / f".other.{HOST_TAG}-{dead}-0badc0de.part"
    for p in (left, live, other):
        p.mkdir()
        (p / INCOMPLETE).write_text("x")
    mark_incomplete(tmp_path / "out", "a test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out"])
