"""The evaluation data set: the bundled val2017-mini by default, a COCO layout with --coco-root,
deterministic --max-images subsets, errors that name the file, and images streamed one at a time."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mapgate.dataset import CocoDataset, Sample
from mapgate.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "mapgate" / "data" / "coco" / "val2017-mini"
MINI_ANNOTATIONS = MINI / "annotations" / "instances_val2017_subset.json"
MINI_IMAGES = MINI / "val2017"


@pytest.fixture(scope="module")
def mini_gt() -> dict:
    return json.loads(MINI_ANNOTATIONS.read_text())


def make_coco_root(root: Path, mini_gt: dict, n: int = 3) -> tuple[Path, list[int]]:
    """DIR/val2017/*.jpg + DIR/annotations/instances_val2017.json with the first ``n`` mini images."""
    ids = sorted(img["id"] for img in mini_gt["images"])[:n]
    keep = set(ids)
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = [img for img in mini_gt["images"] if img["id"] in keep]
    for img in images:
        shutil.copy(MINI_IMAGES / img["file_name"], root / "val2017" / img["file_name"])
    gt = {**mini_gt, "images": images, "annotations": [a for a in mini_gt["annotations"] if a["image_id"] in keep]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    return root, ids


@pytest.fixture
def coco_root(tmp_path: Path, mini_gt: dict) -> tuple[Path, list[int]]:
    return make_coco_root(tmp_path / "coco", mini_gt)


def annotations_of(root: Path) -> Path:
    return root / "annotations" / "instances_val2017.json"


def first_file(root: Path, mini_gt_ids: list[int], index: int = 0) -> Path:
    return root / "val2017" / f"{mini_gt_ids[index]:012d}.jpg"


# ---------------------------------------------------------------------------- the bundled set


def test_default_is_the_bundled_mini_set_with_206_images_and_1786_annotations() -> None:
    ds = CocoDataset()
    assert len(ds) == 206
    assert len(ds.gt["images"]) == 206
    assert len(ds.gt["annotations"]) == 1786
    assert len(ds.gt["categories"]) == 80
    assert ds.label == "val2017-mini (206 images)"


def test_open_without_coco_root_is_the_bundled_set() -> None:
    assert CocoDataset.open(None).label == "val2017-mini (206 images)"


def test_image_ids_are_sorted() -> None:
    ids = CocoDataset().image_ids
    assert ids == sorted(ids)


def test_max_images_keeps_the_first_n_sorted_ids_and_the_label_says_subset() -> None:
    full = CocoDataset()
    ds = CocoDataset(max_images=12)
    assert ds.image_ids == full.image_ids[:12]
    assert len(ds) == 12
    assert ds.label == "val2017-mini subset (first 12 of 206 images)"
    assert "subset" in CocoDataset.open(None, 5).label


def test_a_subset_restricts_images_and_annotations_to_the_kept_ids() -> None:
    ds = CocoDataset(max_images=12)
    keep = set(ds.image_ids)
    assert [img["id"] for img in ds.gt["images"]] == ds.image_ids
    assert ds.gt["annotations"], "the first 12 images have annotations"
    assert {a["image_id"] for a in ds.gt["annotations"]} <= keep
    expected = sum(1 for a in CocoDataset().gt["annotations"] if a["image_id"] in keep)
    assert len(ds.gt["annotations"]) == expected
    assert ds.gt["categories"] == CocoDataset().gt["categories"]


def test_max_images_above_the_set_size_keeps_everything_and_is_not_called_a_subset() -> None:
    ds = CocoDataset(max_images=1000)
    assert len(ds) == 206
    assert ds.label == "val2017-mini (206 images)"


@pytest.mark.parametrize("n", [0, -3])
def test_max_images_below_one_is_refused(n: int) -> None:
    with pytest.raises(DataError, match="at least 1"):
        CocoDataset(max_images=n)


def test_fingerprint_depends_on_the_image_set_only() -> None:
    assert CocoDataset(max_images=12).fingerprint == CocoDataset(max_images=12).fingerprint
    assert CocoDataset(max_images=12).fingerprint != CocoDataset(max_images=10).fingerprint


# ---------------------------------------------------------------------------- a COCO layout


def test_from_root_reads_a_coco_layout(coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    ds = CocoDataset.from_root(root)
    assert ds.image_ids == ids
    assert ds.annotations_path == annotations_of(root)
    assert ds.image_dir == root / "val2017"
    assert ds.label == "instances_val2017 (3 images)"
    samples = list(ds)
    assert [s.image_id for s in samples] == ids
    assert [s.path for s in samples] == [root / "val2017" / f"{i:012d}.jpg" for i in ids]


def test_open_with_coco_root_and_max_images(coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    ds = CocoDataset.open(root, 2)
    assert ds.image_ids == ids[:2]
    assert ds.label == "instances_val2017 subset (first 2 of 3 images)"


# ---------------------------------------------------------------------------- errors name the file


def test_a_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-coco"
    with pytest.raises(DataError) as exc:
        CocoDataset.from_root(missing)
    assert str(missing) in str(exc.value)
    assert "instances_val2017.json" in str(exc.value)  # says which layout it expected


def test_a_missing_image_folder_is_an_error_naming_it(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match=str(root / "val2017")):
        CocoDataset.from_root(root)


def test_missing_annotations_are_an_error_naming_the_file(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    annotations_of(root).unlink()
    with pytest.raises(DataError) as exc:
        CocoDataset.from_root(root)
    assert str(annotations_of(root)) in str(exc.value)


def test_malformed_annotation_json_is_an_error_naming_the_file(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    annotations_of(root).write_text('{"images": [')
    ds = CocoDataset.from_root(root)
    with pytest.raises(DataError) as exc:
        len(ds)
    assert str(annotations_of(root)) in str(exc.value)
    assert "not valid JSON" in str(exc.value)


def test_annotation_json_without_images_is_an_error_naming_file_and_field(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    gt = json.loads(annotations_of(root).read_text())
    del gt["images"]
    annotations_of(root).write_text(json.dumps(gt))
    ds = CocoDataset.from_root(root)
    with pytest.raises(DataError) as exc:
        _ = ds.image_ids
    assert str(annotations_of(root)) in str(exc.value)
    assert "'images'" in str(exc.value)


def test_annotation_json_that_is_not_an_object_is_an_error_naming_the_file(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    annotations_of(root).write_text("[]")
    ds = CocoDataset.from_root(root)
    with pytest.raises(DataError, match=str(annotations_of(root))):
        _ = ds.label


def test_an_image_entry_without_file_name_is_an_error_naming_the_entry(coco_root: tuple[Path, list[int]]) -> None:
    root, _ = coco_root
    gt = json.loads(annotations_of(root).read_text())
    del gt["images"][1]["file_name"]
    annotations_of(root).write_text(json.dumps(gt))
    with pytest.raises(DataError) as exc:
        len(CocoDataset.from_root(root))
    assert "images[1]" in str(exc.value) and "'file_name'" in str(exc.value)


def test_a_listed_but_missing_image_is_an_error_naming_it(coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    gone = first_file(root, ids, 1)
    gone.unlink()
    with pytest.raises(DataError) as exc:
        list(CocoDataset.from_root(root))
    assert str(gone) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_an_undecodable_image_is_an_error_naming_it(coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    bad = first_file(root, ids, 2)
    bad.write_bytes(b"\x00garbage, not a JPEG\xff" * 64)
    with pytest.raises(DataError) as exc:
        list(CocoDataset.from_root(root))
    assert str(bad) in str(exc.value)
    assert "cannot be decoded" in str(exc.value)


def test_an_image_whose_size_differs_from_its_annotation_is_an_error_naming_it(
        coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    path = first_file(root, ids, 0)
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    with pytest.raises(DataError) as exc:
        next(iter(CocoDataset.from_root(root)))
    msg = str(exc.value)
    assert str(path) in msg
    assert f"{image.shape[1] // 2}x{image.shape[0] // 2}" in msg  # the decoded size
    assert f"{image.shape[1]}x{image.shape[0]}" in msg  # the annotation's size
    assert f"image id {ids[0]}" in msg


# ---------------------------------------------------------------------------- streaming


def test_iteration_yields_bgr_uint8_samples_matching_the_annotations() -> None:
    ds = CocoDataset(max_images=3)
    samples = list(ds)
    assert [s.image_id for s in samples] == ds.image_ids
    for s in samples:
        assert isinstance(s, Sample)
        assert s.image.dtype == np.uint8
        assert s.image.ndim == 3 and s.image.shape[2] == 3
        meta = ds.images[s.image_id]
        assert (s.height, s.width) == (meta["height"], meta["width"])


def test_samples_are_in_bgr_channel_order(coco_root: tuple[Path, list[int]]) -> None:
    """A lossless PNG with a pure-red left half and a pure-blue right half comes back as BGR."""
    root, ids = coco_root
    gt = json.loads(annotations_of(root).read_text())
    meta = next(img for img in gt["images"] if img["id"] == ids[0])
    h, w = meta["height"], meta["width"]
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (255, 0, 0)  # red
    rgb[:, w // 2 :] = (0, 0, 255)  # blue
    meta["file_name"] = "colours.png"
    annotations_of(root).write_text(json.dumps(gt))
    from PIL import Image

    Image.fromarray(rgb).save(root / "val2017" / "colours.png")
    sample = next(iter(CocoDataset.from_root(root)))
    assert sample.image_id == ids[0]
    np.testing.assert_array_equal(sample.image, rgb[:, :, ::-1])
    assert tuple(sample.image[0, 0]) == (0, 0, 255)  # red is (B, G, R) = (0, 0, 255)


def test_iterating_is_lazy_one_image_at_a_time(coco_root: tuple[Path, list[int]]) -> None:
    """The dataset is a generator: opening it and calling iter() reads no image, and an image
    deleted after the dataset was opened only fails when that image is reached."""
    root, ids = coco_root
    ds = CocoDataset.from_root(root)
    assert len(ds) == 3  # annotations are read ...
    it = iter(ds)  # ... but no image yet
    assert inspect.isgenerator(it)
    first_file(root, ids, 2).unlink()
    first = next(it)
    second = next(it)
    assert (first.image_id, second.image_id) == (ids[0], ids[1])
    with pytest.raises(DataError, match=str(first_file(root, ids, 2))):
        next(it)


def test_iter_itself_reads_nothing(coco_root: tuple[Path, list[int]]) -> None:
    root, ids = coco_root
    ds = CocoDataset.from_root(root)
    it = iter(ds)
    first_file(root, ids, 0).unlink()  # deleted after iter(): still only fails on next()
    with pytest.raises(DataError, match=str(first_file(root, ids, 0))):
        next(it)


def test_load_decodes_one_image_by_id() -> None:
    ds = CocoDataset(max_images=4)
    image_id = ds.image_ids[3]
    sample = ds.load(image_id)
    assert sample.image_id == image_id
    assert sample.path == ds.image_dir / ds.images[image_id]["file_name"]
