"""--shard I/N and `mapgate merge`: four shards of a run join into exactly the unsharded run
(stats, bootstrap CI, verdict, detections bytes), and every way shards can fail to fit is an
error naming the folder at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mapgate.cli import EXIT_FAIL, EXIT_USAGE, main
from mapgate.dataset import CocoDataset
from mapgate.errors import DataError

# one worker builds the module's shard runs once (loadgroup)
pytestmark = pytest.mark.xdist_group("shards")

MODEL, OPT, N_IMAGES = "yolo-fastest-1.1-320", "onnxruntime:int8", 40  # int8: a verdict with a non-zero CI


def _compare(out: Path, *extra: str) -> int:
    return main(["compare", "--model", MODEL, "--opt", OPT, "--max-images", str(N_IMAGES), "--no-cache",
                 "--no-progress", "--inconclusive", "fail", "--out", str(out), *extra])


def _run(reports: Path) -> Path:
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, require_backend) -> dict[str, object]:
    require_backend("opencv")
    require_backend("onnxruntime")
    root = tmp_path_factory.mktemp("shards")
    codes = {"full": _compare(root / "full")}
    for i in range(1, 5):
        codes[f"s{i}"] = _compare(root / f"s{i}", "--shard", f"{i}/4")
    return {"root": root, "codes": codes, "full": _run(root / "full"),
            "shards": [_run(root / f"s{i}") for i in range(1, 5)]}


def _merge(out: Path, *dirs: Path) -> int:
    return main(["merge", *map(str, dirs), "--inconclusive", "fail", "--out", str(out)])


@pytest.mark.slow
def test_four_shards_merge_to_the_unsharded_run_bit_for_bit(runs, tmp_path: Path) -> None:
    code = _merge(tmp_path, *runs["shards"])
    assert code == runs["codes"]["full"] == EXIT_FAIL  # INT8 on 40 images is not shown within tolerance: fail either way
    merged, full = _run(tmp_path), runs["full"]
    target = OPT.replace(":", "-")
    a = json.loads((full / MODEL / target / "comparison.json").read_text())
    b = json.loads((merged / MODEL / target / "comparison.json").read_text())
    # speed is a clock reading, never bit-identical: the merge carries the shards' own timing
    shard_speed = json.loads((runs["shards"][0] / MODEL / target / "comparison.json").read_text())["speed"]
    assert b.pop("speed") == shard_speed and set(a.pop("speed")) == set(shard_speed)
    assert b == a  # stats, per-category deltas, bootstrap CI, agreement, verdict and reason: every other field
    assert a["ci"]["low"] < a["ci"]["high"]  # a real interval, not a degenerate one

    def untimed(path: Path) -> list[str]:
        return [ln for ln in path.read_text().splitlines() if not ln.startswith(("- speed:", "- **INT8 does not pay"))]

    assert untimed(merged / MODEL / target / "summary.md") == untimed(full / MODEL / target / "summary.md")
    for side in ("opencv", target):
        assert (merged / MODEL / side / "detections.json").read_bytes() == \
               (full / MODEL / side / "detections.json").read_bytes()
        m_full = json.loads((full / MODEL / side / "metrics.json").read_text())
        m_merged = json.loads((merged / MODEL / side / "metrics.json").read_text())
        assert m_merged["stats"] == m_full["stats"] and m_merged["per_category"] == m_full["per_category"]
        assert m_merged["dataset"] == m_full["dataset"]
    record = json.loads((merged / "merge.json").read_text())
    assert [s["folder"] for s in record["shards"]] == [str(s) for s in runs["shards"]]


def test_shard_metrics_record_which_slice_of_which_set(runs) -> None:
    ids = []
    for i, run in enumerate(runs["shards"], 1):
        meta = json.loads((run / MODEL / "opencv" / "metrics.json").read_text())
        assert (meta["shard"]["index"], meta["shard"]["count"]) == (i, 4)
        assert meta["dataset"]["n_images"] == len(meta["shard"]["image_ids"]) == N_IMAGES // 4
        assert meta["shard"]["of"]["label"] == f"val2017-mini subset (first {N_IMAGES} of 206 images)"
        ids += meta["shard"]["image_ids"]
    assert sorted(ids) == CocoDataset(max_images=N_IMAGES).image_ids


def _copy(runs, tmp_path: Path) -> list[Path]:  # noqa: ANN001
    out = []
    for i, run in enumerate(runs["shards"], 1):
        dest = tmp_path / f"shard{i}" / run.name
        shutil.copytree(run, dest)
        out.append(dest)
    return out


def _merge_error(capsys, out: Path, *dirs: Path) -> str:  # noqa: ANN001
    assert _merge(out, *dirs) == EXIT_USAGE
    return capsys.readouterr().err


def test_a_missing_shard_is_named(runs, tmp_path: Path, capsys) -> None:
    err = _merge_error(capsys, tmp_path / "out", *runs["shards"][:3])
    assert "shards 4/4 are missing" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a refused merge


def test_the_same_shard_twice_is_named(runs, tmp_path: Path, capsys) -> None:
    shards = _copy(runs, tmp_path)
    shutil.rmtree(shards[3])
    shutil.copytree(runs["shards"][2], shards[3])
    err = _merge_error(capsys, tmp_path / "out", *shards)
    assert "is shard 3/4, like" in err and str(shards[3]) in err


def test_edited_detections_are_refused(runs, tmp_path: Path, capsys) -> None:
    shards = _copy(runs, tmp_path)
    dets = shards[1] / MODEL / OPT.replace(":", "-") / "detections.json"
    records = json.loads(dets.read_text())
    records[0]["score"] = 0.99
    dets.write_text(json.dumps(records))
    err = _merge_error(capsys, tmp_path / "out", *shards)
    assert str(dets.parent) in err and "does not match the sha256" in err


def test_overlapping_image_sets_are_refused(runs, tmp_path: Path, capsys) -> None:
    shards = _copy(runs, tmp_path)
    stolen = json.loads((shards[0] / MODEL / "opencv" / "metrics.json").read_text())["shard"]["image_ids"][0]
    for meta_path in shards[1].glob("*/*/metrics.json"):  # shard 2 claims one of shard 1's images too
        meta = json.loads(meta_path.read_text())
        meta["shard"]["image_ids"].append(stolen)
        meta_path.write_text(json.dumps(meta))
    err = _merge_error(capsys, tmp_path / "out", *shards)
    assert f"image id {stolen} is also in {shards[0]}" in err and str(shards[1]) in err


@pytest.mark.slow
def test_shards_of_another_image_set_are_refused(runs, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    assert _compare(other, "--shard", "4/4", "--max-images", "44") in (0, 1)
    err = _merge_error(capsys, tmp_path / "out", *runs["shards"][:3], _run(other))
    assert "ran on data set" in err or "is of" in err


@pytest.mark.parametrize("field,value", [("shard", {"index": 0, "count": 4}), ("model", 3), ("identity", None)])
def test_malformed_shard_metrics_are_errors_naming_the_folder(runs, tmp_path: Path, capsys, field, value) -> None:
    shards = _copy(runs, tmp_path)
    meta_path = shards[2] / MODEL / "opencv" / "metrics.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    err = _merge_error(capsys, tmp_path / "out", *shards)
    assert str(meta_path.parent) in err and "Traceback" not in err


@pytest.mark.parametrize("field,value,message", [
    ("tolerance", 0.7, "tolerance"), ("ci", {"n_resamples": 10, "seed": 0}, "resamples"),
    ("ref", {"target": "tf"}, "reference")])
def test_shards_that_gated_differently_are_refused(runs, tmp_path: Path, capsys, field, value, message) -> None:
    shards = _copy(runs, tmp_path)
    path = shards[3] / MODEL / OPT.replace(":", "-") / "comparison.json"
    comparison = json.loads(path.read_text())
    comparison[field] = value
    path.write_text(json.dumps(comparison))
    err = _merge_error(capsys, tmp_path / "out", *shards)
    assert str(path.parent) in err and message in err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_shards_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    err = _merge_error(capsys, tmp_path / "out", tmp_path / "empty")
    assert "not a mapgate run folder" in err


@pytest.mark.parametrize("spec", ["0/4", "5/4", "2", "a/b", "1/0"])
def test_bad_shard_specs_are_usage_errors(spec: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", MODEL, "--backend", "opencv", "--shard", spec])
    assert exc.value.code == EXIT_USAGE and "--shard" in capsys.readouterr().err


def test_shards_are_deterministic_disjoint_and_complete() -> None:
    data = CocoDataset(max_images=23)
    parts = [data.shard(i, 5) for i in range(1, 6)]
    ids = [i for p in parts for i in p.image_ids]
    assert sorted(ids) == data.image_ids and len(set(ids)) == len(ids)
    assert [len(p) for p in parts] == [5, 5, 5, 4, 4]
    assert data.shard(2, 5).image_ids == parts[1].image_ids
    assert {a["image_id"] for a in parts[0].gt["annotations"]} <= set(parts[0].image_ids)
    assert parts[0].fingerprint != parts[1].fingerprint != data.fingerprint  # the detection cache keys differ
    with pytest.raises(DataError, match="only 23 images for 24 shards"):
        data.shard(1, 24)
