"""Damaged images: an image that does not decode completely is an error naming the file (libjpeg
would fill a truncated JPEG with grey and warn without a name), before any result is written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from hostile_helpers import Sandbox, cli, coco_root, small_gt
from mapgate.dataset import CocoDataset, incomplete_image, read_image
from mapgate.errors import DataError

MODEL = "yolox-nano-416"


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _headers_only(data: bytes) -> bytes:
    return data[: data.find(b"\xff\xda")]  # everything before the first scan


def _without_end_marker(data: bytes) -> bytes:
    return data[:-2]


def _garbage(data: bytes) -> bytes:
    return b"this is not an image at all" * 20


def _empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize(("damage", "says"), [
    (_half, "without its end-of-image marker FFD9"), (_headers_only, "no start-of-scan marker"),
    (_without_end_marker, "without its end-of-image marker FFD9"), (_garbage, "cannot be decoded"),
    (_empty, "cannot be decoded"),
], ids=["half", "headers-only", "no-EOI", "garbage", "empty"])
def test_a_damaged_image_is_an_error_naming_it(sandbox: Sandbox, damage: Callable[[bytes], bytes], says: str) -> None:
    root = coco_root(sandbox.root / "coco")
    ds = CocoDataset.from_root(root)
    victim = ds.path_of(ds.image_ids[1])
    victim.write_bytes(damage(victim.read_bytes()))
    ds.load(ds.image_ids[0])  # the undamaged ones still load
    with pytest.raises(DataError) as exc:
        ds.load(ds.image_ids[1])
    assert str(victim) in str(exc.value) and says in str(exc.value)
    sandbox.assert_only_new_under("coco")


@pytest.mark.slow
def test_a_truncated_jpeg_stops_mapgate_eval_with_exit_2_before_results_are_written(
        capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    """Issue 11 item 2: was evaluated as a grey image, exit 0, AP changed."""
    root = coco_root(sandbox.root / "coco")
    victim = sorted((root / "val2017").glob("*.jpg"))[2]
    victim.write_bytes(_half(victim.read_bytes()))
    out = sandbox.root / "out" / "side"
    code, err = cli(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--coco-root", root,
                    "--no-progress", "--no-cache", "--out", out)
    assert code == 2 and str(victim) in err and "incomplete" in err
    assert not (out / "metrics.json").exists() and not (out / "detections.json").exists()
    sandbox.assert_only_new_under("coco", "out/engines")


def test_a_truncated_png_is_an_error_naming_it(sandbox: Sandbox) -> None:
    gt = small_gt()
    root = coco_root(sandbox.root / "coco", gt)
    jpg = root / "val2017" / gt["images"][0]["file_name"]
    ok, png = cv2.imencode(".png", cv2.imread(str(jpg)))
    assert ok
    path = sandbox.root / "coco" / "val2017" / "cut.png"
    path.write_bytes(png.tobytes()[: png.size * 2 // 3])
    with pytest.raises(DataError) as exc:
        read_image(path)
    assert str(path) in str(exc.value) and "IEND" in str(exc.value)
    sandbox.assert_only_new_under("coco")


def test_an_image_swapped_for_another_of_a_different_size_is_an_error(sandbox: Sandbox) -> None:
    gt = small_gt()
    root = coco_root(sandbox.root / "coco", gt)
    a, b = (root / "val2017" / im["file_name"] for im in gt["images"][:2])
    assert cv2.imread(str(a)).shape != cv2.imread(str(b)).shape
    shutil.copyfile(b, a)
    ds = CocoDataset.from_root(root)
    with pytest.raises(DataError) as exc:
        ds.load(gt["images"][0]["id"])
    assert str(a) in str(exc.value) and "differs from the annotation" in str(exc.value)
    sandbox.assert_only_new_under("coco")


def test_a_missing_image_is_an_error_naming_it(sandbox: Sandbox) -> None:
    gt = small_gt()
    root = coco_root(sandbox.root / "coco", gt)
    gone = root / "val2017" / gt["images"][1]["file_name"]
    gone.unlink()
    with pytest.raises(DataError) as exc:
        CocoDataset.from_root(root).load(gt["images"][1]["id"])
    assert str(gone) in str(exc.value) and "does not exist" in str(exc.value)
    sandbox.assert_only_new_under("coco")


def test_every_bundled_image_passes_the_completeness_check_and_trailing_bytes_are_fine() -> None:
    """No false alarms: the 306 bundled JPEGs are complete; data after the end marker (some cameras
    append a second preview) is not a truncation."""
    from mapgate.dataset import BUNDLED_ROOT, CALIB_DIR

    paths = sorted((BUNDLED_ROOT / "val2017").glob("*.jpg")) + sorted(CALIB_DIR.glob("*.jpg"))
    assert len(paths) == 306
    assert [p for p in paths if incomplete_image(p.read_bytes())] == []
    assert incomplete_image(paths[0].read_bytes() + b"\x00" * 64 + b"trailer") is None
    decoded = cv2.imdecode(np.frombuffer(paths[0].read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(read_image(paths[0]), decoded)
