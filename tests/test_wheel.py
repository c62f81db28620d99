"""The wheel is the product: built from the tracked files, installed (not editable) into a fresh venv
outside the checkout, it gates examples/user-repo with no options, through `pytest -m accuracy` and
`mapgate compare`, reading the bundled val2017-mini from its own package data and writing nothing into
site-packages.

Installing the third-party dependencies from an index takes minutes (numba, OpenCV, ONNX Runtime) and
needs the network, so the fresh venv sees them through a folder of links to exactly the distributions
`mapgate[onnx]` requires (the user's extra), taken from the test's own environment. mapgate itself,
its editable finder and every other distribution (TensorFlow, OpenVINO, ...) are left out, so the only
mapgate it can import is the installed wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "user-repo"
MODEL = "acme-detector-320"
EXTRAS = ("onnx",)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root: str, extras: tuple[str, ...]) -> set[str]:
    """Canonical names of the distributions ``root[extras]`` needs, installed in this environment."""
    wanted, seen = [(root, set(extras))], set()
    while wanted:
        name, with_extras = wanted.pop()
        dist = metadata.distribution(name)
        seen.add(_canonical(name))
        for text in dist.requires or []:
            req = Requirement(text)
            markers_ok = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in with_extras or {""})
            if markers_ok and _canonical(req.name) not in seen:
                wanted.append((req.name, set(req.extras)))
    return seen - {_canonical(root)}


def link_farm(names: set[str], farm: Path) -> None:
    """Link each distribution's top-level files and its .dist-info into ``farm``."""
    farm.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            src = base / top
            if top in ("..", "__pycache__") or not src.exists() or (farm / top).exists():
                continue
            (farm / top).symlink_to(src)


def tracked_source(dest: Path) -> None:
    """The checkout's tracked files, so nothing the build leaves behind can land in the checkout."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for f in files:
        if f and (ROOT / f).is_file() and not f.startswith(("fixtures/", "engines/", "reports/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime)
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_gates_the_user_repo_with_no_options(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    start = time.monotonic()
    src = tmp_path / "src"
    tracked_source(src)
    before = sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    [wheel] = dist.glob("mapgate-*.whl")
    # `pip install <checkout>` leaves the checkout as it was: no build/, no *.egg-info
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*")) == before

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    farm = tmp_path / "deps"
    link_farm(requirement_closure("mapgate", EXTRAS), farm)
    (site / "zz-deps.pth").write_text(f"{farm}\n")  # after site-packages: the wheel's mapgate comes first
    # a user's shell: none of this session's settings (MAPGATE_RUN_ID would merge both runs into one folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAPGATE_", "PYTEST_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV", "CI", "GITHUB_STEP_SUMMARY")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, env=env, capture_output=True)

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    where = subprocess.run([python, "-c", "import sys, mapgate; print(mapgate.__file__); print(*sys.path, sep='\\n')"],
                           cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert Path(where[0]).is_relative_to(site), where[0]
    checkout = str(ROOT)
    assert not [p for p in where[1:] if p and (p == checkout or p.startswith(checkout + os.sep))], where
    before = snapshot(site)

    gate = subprocess.run([python, "-m", "pytest", "-m", "accuracy", "-p", "no:cacheprovider"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert gate.returncode == 0, gate.stdout[-4000:] + gate.stderr[-2000:]
    assert re.search(r"1 passed, 1 skipped", gate.stdout), gate.stdout[-2000:]
    row = next(line for line in gate.stdout.splitlines() if line.startswith(MODEL) and "onnxruntime:fp32" in line)
    assert re.search(r"\bpass\s+passed\s+none recorded$", row), row
    assert "val2017-mini (206 images)" in gate.stdout

    compare = subprocess.run([venv / "bin" / "mapgate", "compare", "--model", MODEL, "--opt", "onnxruntime:fp32",
                              "--no-progress"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert compare.returncode == 0, compare.stdout[-3000:] + compare.stderr[-2000:]
    assert "pass" in compare.stdout.lower() and "val2017-mini (206 images)" in compare.stdout, compare.stdout
    assert "Traceback" not in compare.stderr
    # both wrote beside the manifest, the CLI reusing what pytest cached; nothing went into the venv
    assert (repo / "engines").is_dir() and len(list((repo / "reports").glob("*/"))) >= 2
    after = snapshot(site)
    assert {k: v for k, v in after.items() if "__pycache__" not in k} == \
        {k: v for k, v in before.items() if "__pycache__" not in k}
    print(f"wheel build + venv + gate + compare: {time.monotonic() - start:.1f} s")
