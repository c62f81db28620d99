"""Issue 22 item 2: `mapgate merge` accepted a shard that ran on other image bytes (one image
mirrored under its own name and id), a shard whose detections were edited together with the sha256
its metrics.json records, and named one folder as both having and lacking comparison.json. A
shard's data-set identity now covers the image bytes, its recorded stats are re-evaluated from its
detections, and the error names the shard that has the comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import mapgate.gate
from hostile_helpers import Sandbox, cli, coco_root
from mapgate.cli import EXIT_USAGE
from mapgate.fsutil import INCOMPLETE, sha256_bytes

MODEL, OPT, N = "yolox-nano-416", "onnxruntime:fp32", 4

# every case needs the three real shard runs (~30 s on this CPU): out of the fast tier's budget
pytestmark = pytest.mark.slow


def _shard_run(work: Path, root: Path, index: int, engines: Path) -> Path:
    from mapgate.cli import main

    out = work / f"s{index}-{root.name}"
    code = main(["compare", "--model", MODEL, "--opt", OPT, "--coco-root", str(root), "--dataset-label", "mini4",
                 "--engines-dir", str(engines), "--out", str(out), "--no-progress", "--resamples", "50",
                 "--inconclusive", "pass", "--shard", f"{index}/2"])
    assert code == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, require_backend) -> dict[str, object]:
    """Real shards 1/2 and 2/2 of YOLOX-nano on 4 val2017-mini images, and shard 1/2 again on a copy
    of the set with its first image mirrored (same id, same file name, same size)."""
    require_backend("onnxruntime")
    work = tmp_path_factory.mktemp("merge-identity")
    good = coco_root(work / "good", n=N)
    bad = shutil.copytree(good, work / "mirrored")
    first = sorted((bad / "val2017").iterdir())[0]
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first, quality=95)
    mp = pytest.MonkeyPatch()
    mp.setattr(mapgate.gate, "DEFAULT_REPORTS", work / "reports")
    try:
        engines = work / "engines"
        runs = {"s1": _shard_run(work, good, 1, engines), "s2": _shard_run(work, good, 2, engines),
                "s1_mirrored": _shard_run(work, bad, 1, engines)}
    finally:
        mp.undo()
    return {"root": good, **runs}


def _merge(capsys: pytest.CaptureFixture, sandbox: Sandbox, root: Path, *dirs: Path) -> tuple[int, str]:
    return cli(capsys, "merge", *dirs, "--coco-root", root, "--dataset-label", "mini4", "--inconclusive", "pass",
               "--out", sandbox.root / "out" / "reports")


def _copy(shards: dict[str, object], sandbox: Sandbox, *names: str) -> list[Path]:
    return [shutil.copytree(shards[n], sandbox.root / n) for n in names]  # type: ignore[arg-type]


def test_untouched_shards_merge(capsys, sandbox: Sandbox, shards) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == 0, err
    (run,) = (sandbox.root / "out" / "reports").iterdir()
    assert not (run / INCOMPLETE).exists()  # a finished merge leaves no mark
    assert json.loads((run / "merge.json").read_text())["dataset"]["n_images"] == N
    sandbox.assert_only_new_under("s1", "s2", "out/reports")


def test_a_shard_identity_covers_the_image_bytes(shards) -> None:
    a = json.loads((shards["s1"] / MODEL / "onnxruntime" / "metrics.json").read_text())["shard"]["of"]
    b = json.loads((shards["s1_mirrored"] / MODEL / "onnxruntime" / "metrics.json").read_text())["shard"]["of"]
    assert a["annotations_sha256"] == b["annotations_sha256"] and a["n_images"] == b["n_images"]
    assert a["images_sha256"] != b["images_sha256"]


def test_a_shard_run_on_a_mirrored_image_is_refused(capsys, sandbox: Sandbox, shards) -> None:
    s1, s2 = _copy(shards, sandbox, "s1_mirrored", "s2")
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE
    assert str(s1 / MODEL) in err and "ran on data set" in err and len(err.strip().splitlines()) == 1
    sandbox.assert_only_new_under("s1_mirrored", "s2")


def test_merging_against_the_mirrored_set_is_refused(capsys, sandbox: Sandbox, shards, tmp_path: Path) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    mirrored = shutil.copytree(shards["root"], sandbox.root / "mirrored")
    first = sorted((mirrored / "val2017").iterdir())[0]
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first, quality=95)
    code, err = _merge(capsys, sandbox, mirrored, s1, s2)
    assert code == EXIT_USAGE and "give the data set the shards used" in err
    sandbox.assert_only_new_under("s1", "s2", "mirrored")


def _edit_consistently(side: Path) -> None:
    """Drop the detections of one image and write the matching sha256 into metrics.json."""
    dets = json.loads((side / "detections.json").read_text())
    meta = json.loads((side / "metrics.json").read_text())
    drop = meta["shard"]["image_ids"][0]
    raw = json.dumps([d for d in dets if d["image_id"] != drop]).encode()
    (side / "detections.json").write_bytes(raw)
    meta["shard"]["detections_sha256"] = meta["detections_sha256"] = sha256_bytes(raw)
    (side / "metrics.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("side", ["onnxruntime", "onnxruntime-fp32"])
def test_consistently_edited_detections_are_refused_by_their_stats(capsys, sandbox: Sandbox, shards, side) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    _edit_consistently(s2 / MODEL / side)
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE
    assert str(s2 / MODEL / side) in err and "stats.AP" in err and "edited" in err
    sandbox.assert_only_new_under("s1", "s2")


def test_edited_recorded_stats_are_refused(capsys, sandbox: Sandbox, shards) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    meta_path = s1 / MODEL / "onnxruntime" / "metrics.json"
    meta = json.loads(meta_path.read_text())
    meta["stats"]["AP50"] = 0.999
    meta_path.write_text(json.dumps(meta))
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE and "stats.AP50 0.999" in err and str(meta_path.parent) in err


def test_missing_stats_are_refused(capsys, sandbox: Sandbox, shards) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    meta_path = s1 / MODEL / "onnxruntime" / "metrics.json"
    meta = json.loads(meta_path.read_text())
    del meta["stats"]
    meta_path.write_text(json.dumps(meta))
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE and "'stats'" in err and str(meta_path.parent) in err


@pytest.mark.parametrize("lacking", ["s1", "s2"])
def test_a_killed_shard_without_comparison_names_the_other_as_having_it(capsys, sandbox: Sandbox, shards,
                                                                        lacking) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    short, full = (s1, s2) if lacking == "s1" else (s2, s1)
    (short / MODEL / "onnxruntime-fp32" / "comparison.json").unlink()
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE
    lacking_dir, having_dir = str(short / MODEL / "onnxruntime-fp32"), str(full / MODEL / "onnxruntime-fp32")
    assert f"shard {lacking_dir}: has no comparison.json, but {having_dir} has one" in err


@pytest.mark.parametrize("where", ["side", "run"])
def test_a_shard_marked_incomplete_is_refused_by_name(capsys, sandbox: Sandbox, shards, where) -> None:
    s1, s2 = _copy(shards, sandbox, "s1", "s2")
    folder = s2 / MODEL / "onnxruntime" if where == "side" else s2
    (folder / INCOMPLETE).write_text("killed\n")
    code, err = _merge(capsys, sandbox, shards["root"], s1, s2)
    assert code == EXIT_USAGE and f"shard {folder}: marked incomplete" in err
    sandbox.assert_only_new_under("s1", "s2")
