"""Issue 11 item 12: `compare --ref DIR/detections.json` after the file was replaced by `[]` was
accepted (ref AP 0, verdict pass). A stored reference is trusted only when its detections match the
sha256 and count `mapgate eval` recorded in metrics.json; and a reference that detects nothing is
no reference at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mapgate.gate
from hostile_helpers import Sandbox, cli

MODEL = "yolox-nano-416"
N = 2


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real `mapgate eval` reference of YOLOX-nano on 2 images, and the engines cache that made it."""
    work = tmp_path_factory.mktemp("stored-ref")
    engines = work / "engines"
    mp = pytest.MonkeyPatch()
    mp.setattr(mapgate.gate, "DEFAULT_REPORTS", work / "reports")
    try:
        from mapgate.cli import main

        code = main(["eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", str(N),
                     "--engines-dir", str(engines), "--out", str(work / "ref"), "--no-progress"])
    finally:
        mp.undo()
    assert code == 0
    return work / "ref", engines


def _compare(capsys: pytest.CaptureFixture, sandbox: Sandbox, ref: Path, engines: Path) -> tuple[int, str]:
    return cli(capsys, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--ref", ref, "--max-images", N,
               "--engines-dir", engines, "--out", sandbox.root / "out" / "reports", "--no-progress", "--resamples", 50)


def test_metrics_json_records_the_hash_and_count_of_its_detections(stored: tuple[Path, Path]) -> None:
    from mapgate.fsutil import sha256_file

    ref, _ = stored
    meta = json.loads((ref / "metrics.json").read_text())
    dets = json.loads((ref / "detections.json").read_text())
    assert meta["detections_sha256"] == sha256_file(ref / "detections.json")
    assert meta["detections_count"] == len(dets) > 0


@pytest.mark.slow
def test_an_untouched_stored_reference_is_used(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                               stored: tuple[Path, Path]) -> None:
    ref = shutil.copytree(stored[0], sandbox.root / "ref")
    code, err = _compare(capsys, sandbox, ref / "detections.json", stored[1])
    assert code == 0, err
    sandbox.assert_only_new_under("ref", "out/reports")


@pytest.mark.parametrize("tamper", ["emptied", "one score changed", "one detection dropped"])
def test_a_stored_reference_changed_after_eval_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                          stored: tuple[Path, Path], tamper: str) -> None:
    ref = shutil.copytree(stored[0], sandbox.root / "ref")
    dets = json.loads((ref / "detections.json").read_text())
    if tamper == "emptied":
        dets = []
    elif tamper == "one score changed":
        dets[0]["score"] = min(1.0, dets[0]["score"] + 0.25)
    else:
        dets = dets[1:]
    (ref / "detections.json").write_text(json.dumps(dets))
    code, err = _compare(capsys, sandbox, ref / "detections.json", stored[1])
    assert code == 2
    assert str(ref / "detections.json") in err and "metrics.json" in err and "changed after" in err
    assert not list((sandbox.root / "out").rglob("comparison.json"))
    sandbox.assert_only_new_under("ref", "out/reports")  # env.json in the chosen reports folder, nothing else


def test_a_metrics_json_without_the_record_is_refused_with_the_fix(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                   stored: tuple[Path, Path]) -> None:
    ref = shutil.copytree(stored[0], sandbox.root / "ref")
    meta = json.loads((ref / "metrics.json").read_text())
    del meta["detections_sha256"]
    (ref / "metrics.json").write_text(json.dumps(meta))
    code, err = _compare(capsys, sandbox, ref, stored[1])
    assert code == 2 and str(ref / "metrics.json") in err and "detections_sha256" in err and "mapgate eval" in err
    sandbox.assert_only_new_under("ref", "out/reports")


def test_a_reference_with_no_detections_is_not_a_pass(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                      manifest_copy, stored: tuple[Path, Path]) -> None:
    """Both sides detecting nothing used to "agree 0/0 (100%)" and pass."""
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", MODEL,
                             {"models.yolox-nano-416": "models.blind", "score_threshold = 0.01": "score_threshold = 0.9999"})
    code, err = cli(capsys, "compare", "--models-file", manifest, "--model", "blind", "--opt", "onnxruntime:fp32",
                    "--max-images", 1, "--engines-dir", sandbox.root / "out" / "engines",
                    "--out", sandbox.root / "out" / "reports", "--no-progress", "--resamples", 50)
    assert code == 2
    assert "'blind'" in err and "made no detections" in err and "onnxruntime" in err and str(manifest) in err
    assert not list((sandbox.root / "out").rglob("comparison.json"))
    sandbox.assert_only_new_under("m", "out")
