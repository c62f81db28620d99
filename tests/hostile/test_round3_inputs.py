"""Issue 22 item 6: inputs of this round that gave a raw traceback, a numpy warning, a silent AP 0
or a stale number. Each is now one line naming the file and field (exit 2), a hint, or the right
number; nothing is written outside the folders the user chose."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from hostile_helpers import Sandbox, bundled_gt, cli, coco_root, perfect_detections, small_gt, write_json
from mapgate.cache import PROVENANCE_SUFFIX
from mapgate.dataset import BUNDLED_ANNOTATIONS
from mapgate.evaluate import class_index_hint, load_ground_truth
from mapgate.fsutil import sha256_bytes
from mapgate.postprocess.coco_ids import COCO80_TO_ID, VALID_IDS

DEEP = 200_000
MODEL = "yolox-nano-416"


def _deep(path: Path, opener: str = "[", closer: str = "]") -> Path:
    path.write_text(opener * DEEP + closer * DEEP)
    return path


# ---- an annotation (or detections) file nested 200,000 levels deep ---------------------------------
@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}")])
def test_deeply_nested_annotations_are_one_line_naming_the_file(capsys, sandbox: Sandbox, opener, closer) -> None:
    gt = _deep(sandbox.root / "deep.json", opener, closer)
    dets = write_json(sandbox.root / "dets.json", [])
    sandbox.before |= {"deep.json", "dets.json"}
    code, err = cli(capsys, "evaluate", "--gt", gt, "--dets", dets)
    assert code == 2 and "RecursionError" not in err
    assert f"{gt}: ground truth file is nested too deeply" in err and len(err.strip().splitlines()) == 1
    sandbox.assert_only_new_under()


def test_deeply_nested_detections_are_one_line_naming_the_file(capsys, sandbox: Sandbox) -> None:
    dets = _deep(sandbox.root / "deep.json")
    sandbox.before |= {"deep.json"}
    code, err = cli(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 2 and f"{dets}: detections file is nested too deeply" in err
    assert len(err.strip().splitlines()) == 1


def test_a_deeply_nested_coco_root_annotation_file_is_named(capsys, sandbox: Sandbox) -> None:
    root = sandbox.root / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    ann = _deep(root / "annotations" / "instances_val2017.json")
    sandbox.before = {*sandbox.before, "coco", "coco/val2017", "coco/annotations", "coco/annotations/instances_val2017.json"}
    code, err = cli(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--coco-root", root,
                    "--out", sandbox.root / "out" / "ev", "--no-progress")
    assert code == 2 and str(ann) in err and "nested too deeply" in err
    assert not (sandbox.root / "out" / "ev").exists()


# ---- an image_id of 1e30 ----------------------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["1e30", "-1e30", "1000000000000000000000000000000", "1.8e19"])
def test_a_huge_image_id_is_one_line_naming_the_field_without_a_numpy_warning(capsys, sandbox: Sandbox,
                                                                              image_id: str) -> None:
    gt = bundled_gt()
    good = perfect_detections(gt)[:3]
    records = [json.dumps(d) for d in good]
    records.insert(1, f'{{"image_id": {image_id}, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}}')
    dets = sandbox.root / "dets.json"
    dets.write_text("[" + ",".join(records) + "]")
    sandbox.before |= {"dets.json"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value encountered in cast"
        code, err = cli(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 2
    assert "detections[1]: image_id" in err and "out of range for an id" in err
    assert "-9223372036854775808" not in err  # the id the broken cast made up
    sandbox.assert_only_new_under()


def test_an_id_at_the_exact_limit_is_still_an_id(capsys, sandbox: Sandbox) -> None:
    """2**53 is exact as a float: not an id of this file (a contract error), but not out of range."""
    dets = write_json(sandbox.root / "dets.json", [{"image_id": 2.0 ** 53, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                    "score": 0.5}])
    code, err = cli(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 2 and "not in the ground truth" in err and "9007199254740992" in err


# ---- 0-based class indices that happen to be COCO ids ----------------------------------------------
def _as_indices(gt: dict) -> list[dict]:
    index = {int(c): i for i, c in enumerate(COCO80_TO_ID)}
    dets = [{**d, "category_id": index[d["category_id"]]} for d in perfect_detections(gt)]
    return [d for d in dets if d["category_id"] in VALID_IDS]  # 0, 12, 26, ... would be contract errors


def test_class_indices_that_are_valid_ids_give_a_histogram_hint(capsys, sandbox: Sandbox) -> None:
    gt = bundled_gt()
    dets = write_json(sandbox.root / "dets.json", _as_indices(gt))
    code, err = cli(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 0
    hint = [line for line in err.splitlines() if "hint:" in line]
    assert len(hint) == 1 and str(dets) in hint[0]
    assert "category ids 1..79" in hint[0] and "0-based indices" in hint[0] and 'class_space = "coco80"' in hint[0]
    assert "56->62 chair" in hint[0]  # the most frequent index of val2017-mini (206 images), chair, read back


def test_the_hint_counts_are_right(sandbox: Sandbox) -> None:
    gt = bundled_gt()
    dets = _as_indices(gt)
    hint = class_index_hint(load_ground_truth(gt), dets)
    assert hint is not None and f"0-based indices into the 80 COCO classes {len(dets)} are" in hint


@pytest.mark.parametrize("kind", ["coco ids", "empty"])
def test_no_hint_for_detections_in_coco_ids(capsys, sandbox: Sandbox, kind: str) -> None:
    gt = small_gt(20)
    dets = write_json(sandbox.root / "dets.json", perfect_detections(gt) if kind == "coco ids" else [])
    ann = write_json(sandbox.root / "gt.json", gt)
    code, err = cli(capsys, "evaluate", "--gt", ann, "--dets", dets)
    assert code == 0 and "hint:" not in err


# ---- a planted symlink for a model folder inside the engines folder -------------------------------
def test_a_symlinked_model_folder_in_the_engines_folder_is_not_followed(capsys, sandbox: Sandbox) -> None:
    engines = sandbox.root / "engines"
    outside = sandbox.root / "outside"
    engines.mkdir()
    outside.mkdir()
    (engines / MODEL).symlink_to(outside, target_is_directory=True)
    sandbox.before |= {"engines", "outside", f"engines/{MODEL}"}
    code, err = cli(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", 1,
                    "--engines-dir", engines, "--out", sandbox.root / "ev", "--no-progress")
    assert code == 2
    assert str(engines) in err and f"{MODEL} is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert list(outside.iterdir()) == []  # no cache file landed outside --engines-dir
    assert (engines / MODEL).is_symlink()  # and the user's link is left for them to look at
    sandbox.assert_only_new_under("engines", "ev")


# ---- a consistently edited detections cache and the bootstrap CI ----------------------------------
@pytest.mark.slow
def test_an_edited_detections_cache_does_not_reuse_a_stale_bootstrap_ci(capsys, sandbox: Sandbox) -> None:
    root = coco_root(sandbox.root / "coco", n=6)
    engines = sandbox.root / "engines"

    def compare() -> dict:
        code, err = cli(capsys, "compare", "--model", MODEL, "--opt", "onnxruntime:fp32", "--coco-root", root,
                        "--engines-dir", engines, "--out", sandbox.root / "reports", "--no-progress",
                        "--resamples", 200, "--inconclusive", "pass", "--tolerance", 100)
        assert code == 0, err
        (case,) = (sandbox.root / "reports").glob(f"*/{MODEL}/onnxruntime-fp32/comparison.json")
        result = json.loads(case.read_text())
        case.parent.parent.parent.rename(sandbox.root / f"run-{len(list(sandbox.root.glob('run-*')))}")
        return result

    first = compare()
    assert first["delta_ap"] == 0 and first["ci"]["low"] == first["ci"]["high"] == 0  # fp32 == original here
    (cached,) = [p for p in (engines / MODEL).glob("detections-onnxruntime-fp32-*.json")
                 if not p.name.endswith(PROVENANCE_SUFFIX)]
    dets = json.loads(cached.read_bytes())
    keep = {d["image_id"] for d in dets}
    drop = sorted(keep)[0]
    raw = json.dumps([d for d in dets if d["image_id"] != drop]).encode()
    cached.write_bytes(raw)
    prov_path = cached.with_name(cached.name[: -len(".json")] + PROVENANCE_SUFFIX)
    prov = json.loads(prov_path.read_text())
    prov["file"].update(size=len(raw), sha256=sha256_bytes(raw))  # edited consistently: the cache trusts it
    prov_path.write_text(json.dumps(prov))
    second = compare()
    assert second["delta_ap"] < 0  # the edited detections were used...
    assert (second["ci"]["low"], second["ci"]["high"]) != (0, 0)  # ...and resampled, not the old CI
    ci = second["ci"]
    assert ci["delta_ap_points"] == pytest.approx(second["delta_ap"])  # the CI is of these detections
    assert ci["low_points"] <= second["delta_ap"] <= ci["high_points"]
    assert len(list((engines / MODEL).glob(f"bootstrap-*{PROVENANCE_SUFFIX}"))) == 2


@pytest.mark.parametrize(("where", "field"), [("images", "images[0].id"), ("annotations", "annotations[0].image_id")])
def test_a_huge_id_in_the_ground_truth_names_the_field(capsys, sandbox: Sandbox, where: str, field: str) -> None:
    gt = small_gt()
    gt[where][0]["id" if where == "images" else "image_id"] = "__BIG__"
    ann = sandbox.root / "gt.json"
    ann.write_text(json.dumps(gt).replace('"__BIG__"', "1e30"))
    dets = write_json(sandbox.root / "dets.json", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, err = cli(capsys, "evaluate", "--gt", ann, "--dets", dets)
    assert code == 2 and f"{ann}: {field} is 1e+30" in err and len(err.strip().splitlines()) == 1
