"""The evaluation data set: the bundled val2017-mini, a COCO layout, or any image folder with its
COCO annotation file, as a manifest's ``[dataset]`` or the options declare it (:class:`DataSource`).

The bundled val2017-mini (206 images) and calib-val2017 (100 images) are package data
(``mapgate/data/coco``, with their licences and provenance), so an installed wheel runs with
no data set given. Images are streamed one at a time (never all decoded in memory). Nothing is
skipped silently: a listed image that is missing, undecodable or of a size other than its
annotation says is an error naming the file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.errors import DataError
from mapgate.fsutil import content_sha256, sha256_json
from mapgate.evaluate import _read_json, validate_coco

BUNDLED_DATA = Path(__file__).resolve().parent / "data" / "coco"  # package data: shipped inside the wheel
BUNDLED_ROOT = BUNDLED_DATA / "val2017-mini"
BUNDLED_ANNOTATIONS = BUNDLED_ROOT / "annotations" / "instances_val2017_subset.json"
BUNDLED_IMAGES = BUNDLED_ROOT / "val2017"
CALIB_DIR = BUNDLED_DATA / "calib-val2017" / "images"
VAL2017_SIZE = 5000
COCO_ANNOTATIONS = Path("annotations") / "instances_val2017.json"  # relative to a COCO root, as COCO ships it
_REINSTALL = ("reinstall mapgate (pip install --force-reinstall --no-deps mapgate), or name a data set "
              "(--coco-root, or --images with --annotations, or the manifest's [dataset])")


def bundled_missing(path: Path, what: str) -> DataError:
    """The error for a bundled data file that is not where the package puts it (a broken install)."""
    return DataError(f"the bundled {what} {path} is missing from the installed mapgate package; {_REINSTALL}")


@dataclass(frozen=True)
class DataSource:
    """Which images are evaluated and which calibrate INT8, as declared; None = the bundled set.

    ``images`` + ``annotations`` name the evaluation set (a COCO root gives both), ``label`` is
    the name reports print (default: the annotation file's stem), ``calib_images`` the INT8
    calibration folder (read only when an INT8 target is built). ``declared_in`` says where the
    declaration came from, for error messages.
    """

    images: Path | None = None
    annotations: Path | None = None
    calib_images: Path | None = None
    label: str | None = None
    declared_in: str = ""
    coco_root: Path | None = None  # the COCO root the images/annotations came from, for messages

    @classmethod
    def declare(cls, *, coco_root: Path | None = None, images: Path | None = None, annotations: Path | None = None,
                calib_images: Path | None = None, label: str | None = None, where: str = "") -> "DataSource":
        """The evaluation set from a COCO root and/or explicit images and annotations (explicit ones
        win over the root's val2017/ and annotations/instances_val2017.json)."""
        if coco_root is not None:
            images = images or coco_root / "val2017"
            annotations = annotations or coco_root / COCO_ANNOTATIONS
        if (images is None) != (annotations is None):
            given, missing = ("images", "annotations") if images is not None else ("annotations", "images")
            raise DataError(f"{where or 'the data set'}: {given} is given without {missing}; an evaluation set is an "
                            "image folder and its COCO annotation file: name both (or a coco_root)")
        return cls(images, annotations, calib_images, label, where, coco_root)

    @property
    def bundled(self) -> bool:
        return self.images is None

    def open(self, max_images: int | None = None) -> "CocoDataset":
        if self.images is None or self.annotations is None:
            return CocoDataset(max_images=max_images, name=self.label)
        where = f" ({self.declared_in})" if self.declared_in else ""
        if self.coco_root is not None and not self.coco_root.is_dir():
            raise DataError(f"COCO root {self.coco_root}{where} does not exist (expected {self.coco_root}/val2017/*.jpg "
                            f"and {self.coco_root}/{COCO_ANNOTATIONS.as_posix()}, or annotations = FILE)")
        if not self.images.is_dir():
            raise DataError(f"image folder {self.images}{where} "
                            + ("is not a folder" if self.images.exists() else "does not exist"))
        if not self.annotations.is_file():
            if self.coco_root is not None and self.annotations == self.coco_root / COCO_ANNOTATIONS:
                raise DataError(f"COCO root {self.coco_root}{where} has no {COCO_ANNOTATIONS.as_posix()}; name its "
                                "annotation file with --annotations FILE (in the manifest: annotations = \"FILE\")")
            raise DataError(f"annotation file {self.annotations}{where} "
                            + ("is not a file" if self.annotations.exists() else "does not exist"))
        return CocoDataset(self.annotations, self.images, max_images, name=self.label)


@dataclass(frozen=True)
class Sample:
    image_id: int
    path: Path
    image: np.ndarray  # HxWx3 uint8, BGR (OpenCV's order; preprocess converts)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class CocoDataset:
    """A COCO-format image set with its instance annotations.

    ``CocoDataset()`` is the bundled val2017-mini; ``CocoDataset.from_root(DIR)`` reads
    ``DIR/val2017/*.jpg`` and ``DIR/annotations/instances_val2017.json`` as COCO ships them
    (or another annotation file named by ``annotations``). ``name`` is the label's base (default:
    the annotation file's stem). ``max_images`` keeps the first N image ids (sorted), so subsets
    are deterministic.
    """

    def __init__(self, annotations: Path | None = None, image_dir: Path | None = None,
                 max_images: int | None = None, name: str | None = None) -> None:
        bundled = annotations is None and image_dir is None
        # looked up at call time, not bound as defaults: a test may point them at a damaged copy
        self.annotations_path = Path(annotations) if annotations is not None else BUNDLED_ANNOTATIONS
        self.image_dir = Path(image_dir) if image_dir is not None else BUNDLED_IMAGES
        self.max_images = max_images
        self._base = name
        self._name: str | None = None  # a shard's whole label
        if max_images is not None and max_images < 1:
            raise DataError(f"--max-images must be at least 1, got {max_images}")
        if not self.image_dir.is_dir():
            if bundled:
                raise bundled_missing(self.image_dir, "val2017-mini image folder")
            raise DataError(f"image folder {self.image_dir} does not exist")
        if not self.annotations_path.is_file():
            if bundled:
                raise bundled_missing(self.annotations_path, "val2017-mini annotation file")
            raise DataError(f"annotation file {self.annotations_path} does not exist")

    @classmethod
    def from_root(cls, root: str | Path, max_images: int | None = None, annotations: Path | None = None,
                  name: str | None = None) -> "CocoDataset":
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"COCO root {root} does not exist (expected {root}/val2017/*.jpg and "
                            f"{root}/{COCO_ANNOTATIONS.as_posix()})")
        return cls(annotations or root / COCO_ANNOTATIONS, root / "val2017", max_images, name)

    @classmethod
    def open(cls, coco_root: str | Path | None = None, max_images: int | None = None) -> "CocoDataset":
        return cls.from_root(coco_root, max_images) if coco_root else cls(max_images=max_images)

    @cached_property
    def full_gt(self) -> dict[str, Any]:
        """The annotation file, validated like ``mapgate evaluate`` validates it (same checks,
        same messages) plus what reading images needs: file_name, height and width."""

        where = f"annotation file {self.annotations_path}"
        data = _read_json(self.annotations_path, "annotation")
        validate_coco(data, where, image_fields=("file_name", "height", "width"))
        return data

    @cached_property
    def image_ids(self) -> list[int]:
        ids = sorted(int(img["id"]) for img in self.full_gt["images"])
        return ids[: self.max_images] if self.max_images else ids

    @cached_property
    def images(self) -> dict[int, dict[str, Any]]:
        keep = set(self.image_ids)
        return {int(img["id"]): img for img in self.full_gt["images"] if int(img["id"]) in keep}

    @cached_property
    def gt(self) -> dict[str, Any]:
        """The annotations restricted to the evaluated images (what the evaluator gets)."""
        if self.max_images is None:
            return self.full_gt
        keep = set(self.image_ids)
        out = {k: v for k, v in self.full_gt.items() if k not in ("images", "annotations")}
        out["images"] = [self.images[i] for i in self.image_ids]
        out["annotations"] = [a for a in self.full_gt["annotations"] if int(a["image_id"]) in keep]
        return out

    @property
    def label(self) -> str:
        """A label that never lets a subset number pass for COCO mAP."""
        if self._name:
            return f"{self._name} ({len(self.image_ids)} images)"
        total = len(self.full_gt["images"])
        bundled = self.annotations_path.resolve() == BUNDLED_ANNOTATIONS.resolve()
        base = self._base or ("val2017-mini" if bundled else
                              ("val2017" if total == VAL2017_SIZE else self.annotations_path.stem))
        if len(self.image_ids) == total:
            return f"{base} ({total} images)"
        return f"{base} subset (first {len(self.image_ids)} of {total} images)"

    @property
    def fingerprint(self) -> str:
        """Hash of what is evaluated, by content: ids, file names and the bytes of every image, and
        the annotation file's bytes. No paths, so a copied data set still hits the cache; an image
        rewritten in place (same name, same size) misses it. Each file is hashed once per process
        (remembered by path, size, mtime and inode): ~40 ms for val2017-mini."""
        return sha256_json({"annotations": _content_hash(self.annotations_path, "annotation file"),
                            "images": self._image_rows()})

    def _image_rows(self) -> list[list[Any]]:
        """[id, file name, sha256 of the bytes] of every evaluated image: the one content hash of the
        images, shared by the cache fingerprint and a shard's identity."""
        return [[i, self.images[i]["file_name"], _content_hash(self.path_of(i), "image")] for i in self.image_ids]

    shard_info: dict[str, Any] | None = None  # set on the slice shard() returns

    def shard(self, index: int, count: int) -> "CocoDataset":
        """Shard ``index`` of ``count`` (1-based): every ``count``-th image id of this set, starting
        with the ``index``-th (round-robin over sorted ids, so shards get similar images and sizes).

        The shards of one set are disjoint and together are the set; ``shard_info`` records which
        slice of which set this is, for ``mapgate merge``.
        """
        if not 1 <= index <= count:
            raise DataError(f"--shard {index}/{count}: expected I/N with 1 <= I <= N")
        if count > len(self):
            raise DataError(f"--shard {index}/{count}: {self.label} has only {len(self)} images for {count} shards")
        part = copy.copy(self)
        part.__dict__ = {k: v for k, v in self.__dict__.items() if k not in ("image_ids", "images", "gt")}
        ids = self.image_ids[index - 1 :: count]
        keep = set(ids)
        part.__dict__["image_ids"] = ids
        part.__dict__["images"] = {i: self.images[i] for i in ids}
        gt = {k: v for k, v in self.full_gt.items() if k not in ("images", "annotations")}
        gt["images"] = [self.images[i] for i in ids]
        gt["annotations"] = [a for a in self.full_gt["annotations"] if int(a["image_id"]) in keep]
        part.__dict__["gt"] = gt
        part._name = f"{self.label}, shard {index}/{count}"
        part.shard_info = {"index": index, "count": count, "image_ids": ids, "of": self.content_identity()}
        return part

    def content_identity(self) -> dict[str, Any]:
        """What makes two copies of this image set the same set wherever they live (another
        Jetson's folder, a CI runner's checkout): the annotation file's bytes, the evaluated ids
        and file names, the bytes of every image, and the label. Paths and mtimes are left out on
        purpose; a mirrored image under its old name is another set."""
        return {"label": self.label, "n_images": len(self.image_ids),
                "annotations_sha256": _content_hash(self.annotations_path, "annotation file"),
                "images_sha256": sha256_json(self._image_rows())}

    def __len__(self) -> int:
        return len(self.image_ids)

    def path_of(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id]["file_name"]

    def load(self, image_id: int) -> Sample:
        path = self.path_of(image_id)
        image = read_image(path)
        meta = self.images[image_id]
        if image.shape[:2] != (int(meta["height"]), int(meta["width"])):
            raise DataError(
                f"image {path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the annotation's "
                f"{meta['width']}x{meta['height']} (image id {image_id}); the file does not belong to these annotations"
            )
        return Sample(image_id, path, image)

    def __iter__(self) -> Iterator[Sample]:
        for image_id in self.image_ids:
            yield self.load(image_id)


def _content_hash(path: Path, what: str) -> str:
    try:
        return content_sha256(path)
    except FileNotFoundError as exc:
        listed = " is listed in the annotations but" if what == "image" else ""
        raise DataError(f"{what} {path}{listed} does not exist") from exc
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc.strerror})") from exc


def read_image(path: Path) -> np.ndarray:
    """Decode a JPEG/PNG into HxWx3 uint8 BGR; errors name the file.

    libjpeg decodes a truncated JPEG as far as it goes and fills the rest with grey, with a
    warning on stderr that names no file; such an image silently changes AP. So the bytes are
    checked first: a JPEG must have its end-of-image marker after its last scan, a PNG its IEND chunk.
    """
    import cv2  # opencv is a core dependency; imported here to keep `import mapgate` light

    if not path.is_file():
        raise DataError(f"image {path} is listed in the annotations but does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"image {path} cannot be read: {exc.strerror or exc}") from exc
    problem = incomplete_image(data)
    if problem:
        raise DataError(f"image {path} is incomplete: {problem}. The file is truncated or damaged; "
                        "copy it again from the data set")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise DataError(f"image {path} cannot be decoded (corrupt or not an image)")
    return image


_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def incomplete_image(data: bytes) -> str | None:
    """Why ``data`` is not a complete JPEG/PNG, or None. Hand-written because OpenCV reports a
    truncated JPEG only as a libjpeg warning: inside entropy-coded data every 0xFF byte is
    stuffed (FF00), so an FFD9 after the last start-of-scan marker is the real end of the image."""
    if data.startswith(_JPEG_SOI):
        sos = data.rfind(_JPEG_SOS)
        if sos < 0:
            return "JPEG without image data (no start-of-scan marker FFDA)"
        if data.rfind(_JPEG_EOI) < sos:
            return f"JPEG ends after {len(data)} bytes without its end-of-image marker FFD9"
        return None
    if data.startswith(_PNG_MAGIC):
        if data.rfind(b"IEND") < 0:
            return f"PNG ends after {len(data)} bytes without its IEND chunk"
        return None
    return None
