"""Helpers of the hostile-input tests (fixtures in conftest.py): real fixture data copied into tmp_path (then damaged), the CLI
run in-process with its default folders redirected, and a file-tree snapshot proving nothing was
written outside the folders a test allows.

Every case asserts three things: the exit code, that the message names the file or field, and that
no file appeared outside the expected folders.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import mapgate.gate
from mapgate.cli import main
from mapgate.dataset import BUNDLED_ANNOTATIONS, BUNDLED_ROOT

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
N_IMAGES = 3


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative, as strings."""
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@dataclass
class Sandbox:
    """tmp_path and the repository's output folders, snapshotted when the test starts."""

    root: Path
    before: set[str]
    repo_before: dict[str, set[str]]

    def new_files(self) -> set[str]:
        return tree(self.root) - self.before

    def assert_only_new_under(self, *allowed: str | Path) -> None:
        """Fail if a path appeared in tmp_path outside ``allowed`` (folders relative to tmp_path), or
        anything appeared in the repository's reports/, engines/ or fixtures/."""
        prefixes = [Path(a).relative_to(self.root).as_posix() if Path(a).is_absolute() else str(a) for a in allowed]
        stray = sorted(p for p in self.new_files()
                       if not any(p == a or p.startswith(a.rstrip("/") + "/") or a.startswith(p + "/")
                                  for a in prefixes))  # the folders leading to an allowed one are allowed
        assert not stray, f"files appeared outside {prefixes}: {stray[:10]}"
        for name, before in self.repo_before.items():
            after = _shallow(ROOT / name)
            assert after == before, f"the repository's {name}/ changed: {sorted(after ^ before)[:10]}"


def _shallow(folder: Path) -> set[str]:
    # dot names are live builders' working files (engines/.tmp while any INT8 build runs, .part files):
    # under xdist the bundled gate builds in the repository's engines/ on the other worker meanwhile
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


def make_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The CLI's default reports/ and engines/ and the download cache point into tmp_path/out."""
    monkeypatch.setattr(mapgate.gate, "DEFAULT_REPORTS", tmp_path / "out" / "reports")
    monkeypatch.setattr(mapgate.gate, "DEFAULT_ENGINES", tmp_path / "out" / "engines")
    monkeypatch.setenv("MAPGATE_CACHE", str(tmp_path / "out" / "cache"))
    monkeypatch.setenv("MAPGATE_OFFLINE", "1")
    monkeypatch.delenv("MAPGATE_MIRROR", raising=False)
    monkeypatch.delenv("MAPGATE_ALLOW_HTTP", raising=False)
    return Sandbox(tmp_path, tree(tmp_path), {n: _shallow(ROOT / n) for n in ("reports", "engines", "fixtures")})


def cli(capsys: pytest.CaptureFixture, *argv: Any) -> tuple[int, str]:
    """Run ``mapgate ARGV``; returns (exit code, stderr). No traceback may reach the user."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, err


def bundled_gt() -> dict[str, Any]:
    return json.loads(BUNDLED_ANNOTATIONS.read_text())


def small_gt(n: int = N_IMAGES) -> dict[str, Any]:
    """The first ``n`` images of val2017-mini with their annotations (real data)."""
    gt = bundled_gt()
    images = sorted(gt["images"], key=lambda im: im["id"])[:n]
    ids = {im["id"] for im in images}
    gt["images"] = images
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    return gt


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def coco_root(dest: Path, gt: dict[str, Any] | None = None, n: int = N_IMAGES) -> Path:
    """A COCO layout (dest/val2017/*.jpg, dest/annotations/instances_val2017.json) with ``n`` real images."""
    gt = gt if gt is not None else small_gt(n)
    (dest / "val2017").mkdir(parents=True, exist_ok=True)
    for im in gt["images"]:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str):
            src = BUNDLED_ROOT / "val2017" / im["file_name"]
            if src.is_file():
                shutil.copyfile(src, dest / "val2017" / im["file_name"])
    write_json(dest / "annotations" / "instances_val2017.json", gt)
    return dest


def perfect_detections(gt: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-crowd ground-truth box as a detection (AP 1 by construction)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.04}
            for a in gt["annotations"] if not a.get("iscrowd")]
