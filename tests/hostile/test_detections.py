"""Damaged detections: pycocotools' results contract (numbers are numbers: a string or a boolean
is never coerced), and outputs that would overwrite an input are refused."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

import mapgate.cli
from hostile_helpers import Sandbox, cli, perfect_detections, small_gt, write_json


# (field, bad value, what the message must say) -- each replaces detections[1][field]
CASES: list[tuple[str, Any, str]] = [
    ("bbox", "1234", "bbox '1234' is not [x, y, w, h]"),            # issue 11 item 1: was read as [1, 2, 3, 4]
    ("bbox", ["1", 2.0, 3.0, 4.0], "holds a non-number"),
    ("bbox", [True, 2.0, 3.0, 4.0], "holds a non-number"),
    ("bbox", [1.0, 2.0, 3.0], "4 numbers"),
    ("bbox", None, "is not [x, y, w, h]"),
    ("bbox", {"x": 1}, "is not [x, y, w, h]"),
    ("bbox", [1.0, 2.0, float("nan"), 4.0], "non-finite bbox"),
    ("bbox", [1.0, 2.0, -3.0, 4.0], "negative width/height"),
    ("score", True, "score True is not a number"),                 # a true among floats was read as 1.0
    ("score", "0.9", "is not a number"),
    ("score", float("inf"), "non-finite score"),
    ("image_id", True, "image_id True is not an integer id"),
    ("image_id", "139", "image_id"),
    ("image_id", 1.5, "is not an integer id"),
    ("image_id", 987654321, "not in the ground truth"),
    ("category_id", "1", "category_id"),
    ("category_id", 0, "are not in the ground truth"),
]


@pytest.mark.parametrize(("field", "value", "says"), CASES,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in CASES])
def test_a_detection_breaking_the_contract_is_an_error_naming_the_file_and_entry(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, field: str, value: Any, says: str) -> None:
    gt = small_gt()
    dets = perfect_detections(gt)
    dets[1][field] = value
    gt_path = write_json(sandbox.root / "in" / "gt.json", gt)
    det_path = write_json(sandbox.root / "in" / "dets.json", dets)
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path, "--out", sandbox.root / "out" / "m.json")
    assert code == 2
    assert str(det_path) in err and says in err
    if "ground truth" not in says:
        assert "detections[1]" in err
    sandbox.assert_only_new_under("in")


@pytest.mark.parametrize(("content", "says"), [
    ('{"image_id": 1}', "must be a JSON list"), ("[1, 2]", "entry [0] is a int"), ("", "not valid JSON"),
    ('[{"image_id": 139, "bbox": [1, 2, 3, 4], "score": 0.5}]', "missing key(s) ['category_id']"),
])
def test_a_detections_file_of_the_wrong_shape_is_an_error_naming_it(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                    content: str, says: str) -> None:
    gt_path = write_json(sandbox.root / "in" / "gt.json", small_gt())
    det_path = sandbox.root / "in" / "dets.json"
    det_path.write_text(content)
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path)
    assert code == 2 and str(det_path) in err and says in err
    sandbox.assert_only_new_under("in")


@pytest.mark.parametrize("which", ["--dets", "--gt"])
def test_evaluate_refuses_an_out_that_is_one_of_its_inputs(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                           which: str) -> None:
    gt_path = write_json(sandbox.root / "in" / "gt.json", small_gt())
    det_path = write_json(sandbox.root / "in" / "dets.json", perfect_detections(small_gt()))
    before = {p: p.read_bytes() for p in (gt_path, det_path)}
    target = det_path if which == "--dets" else gt_path
    # through a different spelling of the same file: '..' and a symlink
    link = sandbox.root / "in" / "alias.json"
    link.symlink_to(target)
    for out in (target.parent / ".." / "in" / target.name, link):
        code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path, "--out", out)
        assert code == 2
        assert f"is the {which} input file" in err and str(out) in err
    assert {p: p.read_bytes() for p in before} == before
    sandbox.assert_only_new_under("in")


def test_evaluate_out_that_is_a_folder_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    gt_path = write_json(sandbox.root / "in" / "gt.json", small_gt())
    det_path = write_json(sandbox.root / "in" / "dets.json", perfect_detections(small_gt()))
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path, "--out", sandbox.root / "in")
    assert code == 2 and "--out" in err and "is a folder" in err
    sandbox.assert_only_new_under("in")


def test_evaluate_out_in_a_read_only_folder_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    ro = Path("/sys")  # writable by nobody, root included (chmod 555 does not stop root)
    if not ro.is_dir() or _writable(ro):
        pytest.skip("no read-only folder on this machine")
    gt_path = write_json(sandbox.root / "in" / "gt.json", small_gt())
    det_path = write_json(sandbox.root / "in" / "dets.json", perfect_detections(small_gt()))
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path, "--out", ro / "metrics.json")
    assert code == 2 and "/sys is not writable" in err
    sandbox.assert_only_new_under("in")


def test_a_full_disk_while_writing_is_an_error_naming_the_file_not_a_traceback(
        capsys: pytest.CaptureFixture, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    out = sandbox.root / "out" / "m.json"

    def full_disk(dest: Any, obj: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(mapgate.cli, "write_json_atomic", full_disk)  # where `evaluate --out` looks it up
    gt_path = write_json(sandbox.root / "in" / "gt.json", small_gt())
    det_path = write_json(sandbox.root / "in" / "dets.json", perfect_detections(small_gt()))
    code, err = cli(capsys, "evaluate", "--gt", gt_path, "--dets", det_path, "--out", out)
    assert code == 2 and str(out) in err and "No space left on device" in err
    sandbox.assert_only_new_under("in")


def test_the_callers_detections_are_not_modified(sandbox: Sandbox) -> None:
    from mapgate.evaluate import evaluate

    gt = small_gt()
    dets = perfect_detections(gt)
    frozen = json.dumps(dets)
    evaluate(gt, dets)
    assert json.dumps(dets) == frozen
    sandbox.assert_only_new_under()


def _writable(folder: Path) -> bool:
    try:
        (folder / ".mapgate-probe").touch()
    except OSError:
        return False
    (folder / ".mapgate-probe").unlink()
    return True
