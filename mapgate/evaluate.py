"""COCO bbox mAP, bit-identical to pycocotools, ~10x faster than faster-coco-eval.

``evaluate(gt, dets)`` takes detections in COCO results format (a list of
``{image_id, category_id, bbox: [x, y, w, h], score}``) and ground truth (a COCO instances
dict, a path to one, or a :class:`GroundTruth`) and returns :class:`Metrics`:

* the 12 ``COCOeval.stats`` (``STAT_NAMES``), equal to pycocotools' to the last bit: same
  IoU formula (maskApi.c ``bbIou``), same greedy matching (``evaluateImg``), same
  accumulation (mergesort order, cumsum, ``np.spacing(1)``, precision envelope,
  ``searchsorted(side='left')``) and the same ``summarize`` means;
* per-category AP and AP50;
* VOC2007 11-point AP@0.5 and VOC2010+ all-points ("area") AP@0.5;
* what was evaluated (``dataset``).

Semantics copied from pycocotools on purpose: a detection's area is ``w*h``; a ground
truth's area (for small/medium/large) is the annotation's ``area`` field (the polygon
area), not its box; crowd ground truth (``iscrowd``) is ignored; at most 100 detections per
image *and category* (the highest scored) are evaluated; ties in score keep input order.

Design: the whole detection list is turned into arrays once, grouped by (image, category)
with one ``np.lexsort``, and matched/accumulated in Numba kernels (``_coco_kernels``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Union

import numpy as np

from mapgate.errors import ConfigError, ContractError, DataError
from mapgate.fsutil import sha256_json
from mapgate.postprocess.coco_ids import COCO80_TO_ID
from mapgate import _coco_kernels as kern

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# pycocotools Params.setDetParams, built the same way so the float values are identical.
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS: tuple[int, int, int] = (1, 10, 100)
AREA_RNG = np.array([[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]], dtype=np.float64)
AREA_LBL: tuple[str, ...] = ("all", "small", "medium", "large")

# Scores below this are what detectors export for mAP; above it recall is cut off.
LOW_SCORE_LIMIT = 0.05

# sha256_json(sorted image ids) of mapgate/data/coco/val2017-mini (206 val2017 images).
_MINI_FINGERPRINT = "855e2820c9a007bcc08600dbd1edb36797a61b636354d670a6e33a3b2572283e"
_MINI_LABEL = "val2017-mini"
_COCO2017_DESCRIPTION = "COCO 2017 Dataset"
_VAL2017_IMAGES = 5000

PathLike = Union[str, "os.PathLike[str]"]


class ContractWarning(UserWarning):
    """Detections are valid but will likely evaluate lower than the model can do."""


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A COCO instances file as arrays (parse once, evaluate many detection sets).

    Annotations whose image or category is not listed in ``images``/``categories`` are
    dropped, as pycocotools does. Arrays are in annotation-file order.
    """

    image_ids: np.ndarray  # sorted unique int64
    cat_ids: np.ndarray  # sorted unique int64
    cat_names: dict[int, str]
    ann_img: np.ndarray
    ann_cat: np.ndarray
    ann_box: np.ndarray  # (n, 4) float64, x y w h
    ann_area: np.ndarray  # the annotation's ``area`` field
    ann_crowd: np.ndarray  # bool
    ann_id: np.ndarray
    description: str = ""
    source: str | None = None

    @property
    def fingerprint(self) -> str:
        return sha256_json([int(i) for i in self.image_ids])


def load_ground_truth(gt: GroundTruth | Mapping[str, Any] | PathLike, *, source: str | None = None) -> GroundTruth:
    """Parse COCO instances ground truth; raise DataError naming the file and field.

    Ids must be JSON integers and boxes/areas numbers (a string id or height is an error, not
    coerced); two images sharing an id is an error. Problems pycocotools accepts silently are
    warned about (:class:`GroundTruthWarning`, naming the annotation ids): non-finite or negative
    boxes and areas, and annotations of unlisted images or categories (left out, as pycocotools does).
    ``source`` names the file a dict came from, for the messages.
    """
    if isinstance(gt, GroundTruth):
        return gt
    # ``source``: the file a dict was read from, so messages name it
    if isinstance(gt, (str, os.PathLike)):
        source = os.fspath(gt)
        gt = _read_json(Path(source), "ground truth")
    where = source or "ground-truth dict"
    validate_coco(gt, where)
    image_ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    image_ids.sort()
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    cat_ids = np.array(sorted(cats), dtype=np.int64)
    anns = gt["annotations"]
    n = len(anns)
    a_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
    a_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    a_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    a_area = np.array([a["area"] for a in anns], dtype=np.float64)
    a_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    a_id = np.array([a["id"] for a in anns], dtype=np.int64)
    if len(np.unique(a_id)) != n:
        dup = a_id[np.flatnonzero(np.diff(np.sort(a_id)) == 0)[:5]]
        raise DataError(f"{where}: duplicate annotation ids {dup.tolist()} (pycocotools would silently keep one)")
    _warn_odd_annotations(where, a_id, a_box, a_area)
    keep = _isin_sorted(a_img, image_ids) & _isin_sorted(a_cat, cat_ids)
    if not keep.all():
        _warn_dropped(where, a_id, a_img, a_cat, image_ids, cat_ids)
    info = gt.get("info")
    desc = str(info.get("description", "")) if isinstance(info, Mapping) else ""
    return GroundTruth(image_ids, cat_ids, cats, a_img[keep], a_cat[keep], a_box[keep], a_area[keep],
                       a_crowd[keep], a_id[keep], desc, source)


class GroundTruthWarning(UserWarning):
    """Ground truth pycocotools accepts but that is probably wrong (names the annotation ids)."""


def validate_coco(gt: Any, where: str, image_fields: tuple[str, ...] = ()) -> None:
    """Check the shape and types of a COCO instances object; DataError names the file, list and index.

    ``image_fields``: extra fields every image entry must have (the dataset needs file_name,
    height and width); height and width must be positive integers, file_name a plain file name.
    """
    if not isinstance(gt, Mapping):
        raise DataError(f"{where}: ground truth must be a COCO instances object (JSON dict), got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise DataError(f"{where}: missing or non-list '{key}' (not a COCO instances file?)")
    for lst, fields in (("images", ("id", *image_fields)), ("categories", ("id",)),
                        ("annotations", ("id", "image_id", "category_id", "bbox", "area"))):
        for i, entry in enumerate(gt[lst]):
            if not isinstance(entry, Mapping):
                raise DataError(f"{where}: {lst}[{i}] is a {type(entry).__name__} ({entry!r:.40}), not an object")
            for key in fields:
                if key not in entry:
                    raise DataError(f"{where}: {lst}[{i}] has no '{key}'")
    for lst, key in (("images", "id"), ("categories", "id"), ("annotations", "id"), ("annotations", "image_id"),
                     ("annotations", "category_id")):
        bad = _first_not_int(gt[lst], key)
        if bad is not None:
            value = gt[lst][bad][key]
            raise DataError(f"{where}: {lst}[{bad}].{key} is {value!r} ({type(value).__name__}); COCO ids are "
                            "JSON integers (a quoted id never matches a detection's image_id)")
    for key in ("height", "width"):
        if key in image_fields:
            for i, im in enumerate(gt["images"]):
                v = im[key]
                if not (_is_int(v) and v > 0):
                    raise DataError(f"{where}: images[{i}] (id {im['id']}).{key} is {v!r}; must be a positive "
                                    "integer (pixels)")
    if "file_name" in image_fields:
        for i, im in enumerate(gt["images"]):
            name = im["file_name"]
            if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
                raise DataError(f"{where}: images[{i}] (id {im['id']}).file_name is {name!r}; must be a plain file "
                                "name inside the image folder")
    ids = [im["id"] for im in gt["images"]]
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        dup = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise DataError(f"{where}: image id(s) {dup[:10]} appear more than once in 'images'; each image must be listed "
                        "once (a duplicate would be evaluated and counted twice)")
    for i, a in enumerate(gt["annotations"]):
        box = a["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise DataError(f"{where}: annotations[{i}] (id {a['id']}) has bbox {box!r:.60}, not [x, y, w, h] numbers")
        if not _is_number(a["area"]):
            raise DataError(f"{where}: annotations[{i}] (id {a['id']}) has area {a['area']!r:.40}, not a number")
        crowd = a.get("iscrowd", 0)
        if not (_is_int(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
            raise DataError(f"{where}: annotations[{i}] (id {a['id']}) has iscrowd {crowd!r:.40}; must be 0 or 1")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _first_not_int(entries: Sequence[Mapping[str, Any]], key: str) -> int | None:
    if all(t is int for t in set(type(e[key]) for e in entries)):  # the common case, at C speed
        return None
    return next((i for i, e in enumerate(entries) if not _is_int(e[key])), None)


def _warn_odd_annotations(where: str, a_id: np.ndarray, a_box: np.ndarray, a_area: np.ndarray) -> None:
    problems = [
        (~np.isfinite(a_box).all(axis=1), "non-finite (NaN/inf) bbox values"),
        (np.isfinite(a_box).all(axis=1) & ((a_box[:, 2] < 0) | (a_box[:, 3] < 0)), "a negative bbox width/height"),
        (~np.isfinite(a_area), "a non-finite area"),
        (np.isfinite(a_area) & (a_area < 0), "a negative area"),
    ]
    for mask, what in problems:
        if mask.any():
            ids = a_id[mask]
            warnings.warn(f"{where}: {ids.size} annotation(s) have {what}, ids {ids[:10].tolist()}"
                          f"{' ...' if ids.size > 10 else ''}; pycocotools evaluates them as they are (they match "
                          "nothing or land in the wrong area range): fix the annotation file", GroundTruthWarning,
                          stacklevel=3)


def _warn_dropped(where: str, a_id: np.ndarray, a_img: np.ndarray, a_cat: np.ndarray, image_ids: np.ndarray,
                  cat_ids: np.ndarray) -> None:
    for mask, what, col in ((~_isin_sorted(a_img, image_ids), "images not listed in 'images'", a_img),
                            (~_isin_sorted(a_cat, cat_ids), "categories not listed in 'categories'", a_cat)):
        if mask.any():
            warnings.warn(f"{where}: {int(mask.sum())} annotation(s) belong to {what} (annotation ids "
                          f"{a_id[mask][:10].tolist()}, their ids {np.unique(col[mask])[:10].tolist()}); they are left "
                          "out of the evaluation, as pycocotools does", GroundTruthWarning, stacklevel=3)


# --------------------------------------------------------------------------- detections


def load_detections(path: PathLike) -> list[dict[str, Any]]:
    """Read a COCO results JSON (a list of detection objects); DataError names the file."""
    p = Path(path)
    data = _read_json(p, "detections")
    if not isinstance(data, list):
        raise DataError(f"{p}: detections must be a JSON list of objects (COCO results format), got {type(data).__name__}")
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise DataError(f"{p}: entry [{i}] is a {type(d).__name__}, not an object")
    return data


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: {what} file does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: {what} file is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the C decoder recurses per nesting level
        raise DataError(f"{path}: {what} file is nested too deeply to be COCO JSON (arrays/objects "
                        f"thousands of levels deep)") from exc


_DET_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass(frozen=True, eq=False)
class _Dets:
    img: np.ndarray
    cat: np.ndarray
    box: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def _det_arrays(dets: Sequence[Mapping[str, Any]]) -> _Dets:
    """Columns of a results list, read without touching (or copying) the dicts."""
    if not isinstance(dets, Sequence) or isinstance(dets, (str, bytes)):
        raise ContractError(f"detections must be a list of objects (COCO results format), got {type(dets).__name__}")
    n = len(dets)
    try:
        img = np.array(list(map(itemgetter("image_id"), dets)))
        cat = np.array(list(map(itemgetter("category_id"), dets)))
        boxes = list(map(itemgetter("bbox"), dets))
        score = np.array(list(map(itemgetter("score"), dets)))
    except (KeyError, TypeError, IndexError) as exc:
        raise ContractError(_first_missing_key(dets)) from exc
    if n == 0:
        return _Dets(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    img = _int_column(img, "image_id", dets)
    cat = _int_column(cat, "category_id", dets)
    if score.dtype.kind not in "iuf" or _has_non_number(dets, "score"):
        bad = _first_non_number(dets, "score")
        raise ContractError(f"detections[{bad}]: score {dets[bad]['score']!r:.40} is not a number "
                            "(COCO results need float scores; strings and booleans are not coerced)")
    score = score.astype(np.float64, copy=False)
    if not set(map(type, boxes)) <= _BOX_TYPES:
        bad = next(i for i, b in enumerate(boxes) if type(b) not in _BOX_TYPES)
        raise ContractError(f"detections[{bad}]: bbox {boxes[bad]!r:.60} is not [x, y, w, h] (a list of 4 numbers)")
    try:
        lens = np.fromiter(map(len, boxes), np.int64, n)
    except TypeError as exc:
        bad = next((i for i, b in enumerate(boxes) if not hasattr(b, "__len__")), -1)
        raise ContractError(f"detections[{bad}]: bbox {boxes[bad]!r} is not [x, y, w, h]") from exc
    if (lens != 4).any():
        bad = int(np.flatnonzero(lens != 4)[0])
        raise ContractError(f"detections[{bad}]: bbox {boxes[bad]!r} is not [x, y, w, h] (4 numbers)")
    if not set(map(type, itertools.chain.from_iterable(boxes))) <= _NUMBER_TYPES:
        bad = next(i for i, b in enumerate(boxes) if not all(_is_number(v) for v in b))
        raise ContractError(f"detections[{bad}]: bbox {boxes[bad]!r} holds a non-number (strings and booleans are "
                            "not coerced)")
    box = np.fromiter(itertools.chain.from_iterable(boxes), np.float64, 4 * n).reshape(n, 4)
    return _Dets(img, cat, box, score)


def _first_missing_key(dets: Sequence[Any]) -> str:
    for i, d in enumerate(dets):
        if not isinstance(d, Mapping):
            return f"detections[{i}] is a {type(d).__name__}, not an object with keys {list(_DET_KEYS)}"
        missing = [k for k in _DET_KEYS if k not in d]
        if missing:
            return f"detections[{i}] is missing key(s) {missing} (COCO results need {list(_DET_KEYS)})"
    return "detections are malformed (COCO results need image_id, category_id, bbox, score)"


# Exact types, not isinstance: bool is an int subclass, and pycocotools' contract has no booleans.
_NUMBER_TYPES = frozenset({int, float, np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                           np.uint64, np.uint32, np.uint16, np.uint8})
_BOX_TYPES = frozenset({list, tuple, np.ndarray})


def _is_number(v: Any) -> bool:
    return type(v) in _NUMBER_TYPES


def _has_non_number(dets: Sequence[Mapping[str, Any]], key: str) -> bool:
    # numpy turns a True among floats into 1.0; only the element types tell
    return not set(map(type, map(itemgetter(key), dets))) <= _NUMBER_TYPES


def _first_non_number(dets: Sequence[Mapping[str, Any]], key: str) -> int:
    return next((i for i, d in enumerate(dets) if not _is_number(d[key])), -1)


_MAX_EXACT_ID = 2.0 ** 53


def _int_column(col: np.ndarray, key: str, dets: Sequence[Mapping[str, Any]]) -> np.ndarray:
    if col.dtype.kind in "iuf" and _has_non_number(dets, key):
        bad = _first_non_number(dets, key)
        raise ContractError(f"detections[{bad}]: {key} {dets[bad][key]!r} is not an integer id (booleans and strings "
                            "are not coerced)")
    if col.dtype.kind in "iu":
        return col.astype(np.int64, copy=False)
    if col.dtype.kind == "f":
        # beyond 2**53 a float is no longer an exact id, and beyond int64 the cast is undefined
        integral = np.isfinite(col) & (col == np.round(col)) & (np.abs(col) <= _MAX_EXACT_ID)
        if integral.all():
            return col.astype(np.int64)
        bad = int(np.flatnonzero(~integral)[0])
        whole = bool(np.isfinite(col[bad]) and col[bad] == np.round(col[bad]))
        raise ContractError(f"detections[{bad}]: {key} {float(col[bad])!r} is "
                            + (f"out of range for an id (|id| <= 2**53)" if whole else "not an integer id"))
    bad = _first_non_number(dets, key)
    if bad < 0:  # all numbers, yet no numeric column: a JSON integer too large for int64
        bad = next(i for i, d in enumerate(dets) if abs(d[key]) > _MAX_EXACT_ID)
        raise ContractError(f"detections[{bad}]: {key} {dets[bad][key]!r:.40} is out of range for an id (|id| <= 2**53)")
    raise ContractError(f"detections[{bad}]: {key} {dets[bad][key]!r:.40} is not an integer id (COCO ids are JSON "
                        "integers; strings are not coerced)")


# --------------------------------------------------------------------------- contract


def check_contract(gt: GroundTruth | Mapping[str, Any] | PathLike,
                   dets: Sequence[Mapping[str, Any]]) -> list[str]:
    """Check detections against the COCO results contract before evaluating.

    Raises :class:`ContractError` (all problems in one message) for: missing keys; category
    ids the ground truth does not have (typically an 80-index vs COCO-id mix-up); image ids
    not in the ground truth; non-finite boxes, negative width/height, non-finite scores.
    Returns warnings (each also emitted as a :class:`ContractWarning`) for results that are
    valid but will score low: a lowest score above 0.05, images with more than 100 detections.
    """
    return _check(load_ground_truth(gt), _det_arrays(dets), stacklevel=3)


def _check(g: GroundTruth, d: _Dets, stacklevel: int) -> list[str]:
    errors: list[str] = []
    if len(d):
        bad_cat = np.unique(d.cat[~_isin_sorted(d.cat, g.cat_ids)])
        if bad_cat.size:
            errors.append(
                f"category ids {bad_cat[:20].tolist()}{' ...' if bad_cat.size > 20 else ''} are not in the ground "
                f"truth (it has {g.cat_ids.size} categories, ids {int(g.cat_ids.min()) if g.cat_ids.size else '-'}.."
                f"{int(g.cat_ids.max()) if g.cat_ids.size else '-'}): 80-index vs COCO-id mix-up? "
                "(map contiguous class indices with mapgate.postprocess.coco_ids)")
        bad_img = np.unique(d.img[~_isin_sorted(d.img, g.image_ids)])
        if bad_img.size:
            errors.append(f"{bad_img.size} image id(s) are not in the ground truth, e.g. {bad_img[:5].tolist()}")
        finite = np.isfinite(d.box).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            errors.append(f"detections[{i}] has a non-finite bbox {d.box[i].tolist()} (first of {int((~finite).sum())})")
        neg = (d.box[:, 2] < 0) | (d.box[:, 3] < 0)
        if neg.any():
            i = int(np.flatnonzero(neg)[0])
            errors.append(f"detections[{i}] has a negative width/height bbox {d.box[i].tolist()} "
                          f"(first of {int(neg.sum())}; is it [x1, y1, x2, y2] instead of [x, y, w, h]?)")
        fs = np.isfinite(d.score)
        if not fs.all():
            i = int(np.flatnonzero(~fs)[0])
            errors.append(f"detections[{i}] has a non-finite score {d.score[i]!r} (first of {int((~fs).sum())})")
    if errors:
        raise ContractError("detections break the COCO results contract:\n  " + "\n  ".join(errors))

    warns: list[str] = []
    if len(d):
        low = float(d.score.min())
        if low > LOW_SCORE_LIMIT:
            warns.append(
                f"no detection scores {LOW_SCORE_LIMIT} or less (the lowest is {low!r}): a high confidence threshold "
                "depresses mAP; the tensorrt_demos write-up built its SSD engines with 0.3. Export with a "
                "threshold of 0.01 or lower for mAP runs.")
        ids, counts = np.unique(d.img, return_counts=True)
        over = counts > MAX_DETS[-1]
        if over.any():
            worst = int(np.argmax(counts))
            warns.append(
                f"{int(over.sum())} image(s) have more than {MAX_DETS[-1]} detections (image {int(ids[worst])} has "
                f"{int(counts[worst])}): COCOeval keeps only the top {MAX_DETS[-1]} per image and category, and the "
                f"COCO challenge allows {MAX_DETS[-1]} per image in total.")
    for w in warns:
        warnings.warn(w, ContractWarning, stacklevel=stacklevel)
    return warns


def _isin_sorted(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    if sorted_ref.size == 0:
        return np.zeros(values.shape, bool)
    pos = np.searchsorted(sorted_ref, values)
    pos[pos == sorted_ref.size] = 0
    return sorted_ref[pos] == values


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CategoryAP:
    name: str
    ap: float  # AP@[.5:.95], area all, maxDets 100; -1 when the category has no gt here
    ap50: float
    n_gt: int  # non-crowd ground-truth boxes in the evaluated images

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "AP": self.ap, "AP50": self.ap50, "n_gt": self.n_gt}


@dataclass(frozen=True)
class DatasetInfo:
    label: str
    image_ids: tuple[int, ...]
    n_images: int
    n_gt_boxes: int  # non-crowd
    n_gt_crowd: int
    n_detections: int  # on the evaluated images
    n_detections_input: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "image_ids": list(self.image_ids), "n_images": self.n_images,
                "n_gt_boxes": self.n_gt_boxes, "n_gt_crowd": self.n_gt_crowd,
                "n_detections": self.n_detections, "n_detections_input": self.n_detections_input}


@dataclass(frozen=True)
class Metrics:
    """Evaluation result. ``stats`` are fractions (0..1), unrounded, -1 where pycocotools gives -1.

    ``voc07_ap50`` / ``voc_area_ap50``: VOC2007 11-point and VOC2010+ all-points AP at IoU 0.5,
    each the mean over categories that have (non-crowd) ground truth in the evaluated images.
    They reuse COCO's matching at IoU >= 0.5 (greedy by score, up to 100 detections per
    image and category), so crowd boxes are treated as COCO does: crowd ground truth never
    counts as a positive, and detections matched to it are ignored (neither TP nor FP).
    Only the precision/recall integration differs from AP50.
    """

    stats: dict[str, float]
    per_category: dict[int, CategoryAP]
    voc07_ap50: float
    voc_area_ap50: float
    dataset: DatasetInfo
    precision: np.ndarray = field(repr=False, compare=False)  # pycocotools eval['precision'] (T,R,K,A,M)
    recall: np.ndarray = field(repr=False, compare=False)  # pycocotools eval['recall'] (T,K,A,M)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": {k: float(v) for k, v in self.stats.items()},
            "voc07_ap50": float(self.voc07_ap50),
            "voc_area_ap50": float(self.voc_area_ap50),
            "per_category": {str(k): v.to_dict() for k, v in self.per_category.items()},
            "dataset": self.dataset.to_dict(),
        }

    def summary_lines(self) -> list[str]:
        """The 12 lines ``COCOeval.summarize()`` prints, character for character."""
        i_str = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
        rows = [(1, None, "all", 100), (1, .5, "all", 100), (1, .75, "all", 100), (1, None, "small", 100),
                (1, None, "medium", 100), (1, None, "large", 100), (0, None, "all", 1), (0, None, "all", 10),
                (0, None, "all", 100), (0, None, "small", 100), (0, None, "medium", 100), (0, None, "large", 100)]
        out = []
        for name, (ap, iou, area, md) in zip(STAT_NAMES, rows):
            iou_str = f"{IOU_THRS[0]:0.2f}:{IOU_THRS[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
            out.append(i_str.format("Average Precision" if ap else "Average Recall", "(AP)" if ap else "(AR)",
                                    iou_str, area, md, self.stats[name]))
        return out


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, eq=False)
class _Matched:
    """Per-detection matching results, sorted for accumulation: (category, -score, image, rank)."""

    eval_ids: np.ndarray  # evaluated image ids, sorted
    det_img: np.ndarray  # index into eval_ids
    det_score: np.ndarray
    rank: np.ndarray  # position within its (image, category), by score
    codes: np.ndarray  # (n, A, T) uint8: FP/TP/IGN per area range and IoU threshold
    cat_start: np.ndarray  # (K + 1,) category segments
    npig: np.ndarray  # (K, A) non-ignored gt per category and area range
    gt_img: np.ndarray  # per evaluated gt: index into eval_ids
    gt_cat: np.ndarray
    gt_ignore_all: np.ndarray  # crowd (or out of the first area range)
    n_dets: int


def _select_images(g: GroundTruth, img_ids: Iterable[int] | None) -> np.ndarray:
    if img_ids is None:
        return g.image_ids
    try:
        ids = np.unique(np.array([int(i) for i in img_ids], dtype=np.int64))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"img_ids must be integer image ids ({exc})") from exc
    if ids.size == 0:
        raise ConfigError("img_ids is empty: nothing to evaluate")
    missing = ids[~_isin_sorted(ids, g.image_ids)]
    if missing.size:
        raise ConfigError(f"img_ids has {missing.size} id(s) not in the ground truth ({g.source or 'dict'}), "
                          f"e.g. {missing[:5].tolist()}")
    return ids


def _match(g: GroundTruth, d: _Dets, eval_ids: np.ndarray, area_rng: np.ndarray) -> _Matched:
    n_cat = g.cat_ids.size
    # Detections: keep those on evaluated images, group by (image, category), score order.
    sel = np.flatnonzero(_isin_sorted(d.img, eval_ids))
    img_i = np.searchsorted(eval_ids, d.img[sel])
    cat_i = np.searchsorted(g.cat_ids, d.cat[sel])
    key = img_i * n_cat + cat_i
    neg_score = -d.score[sel]
    # lexsort is stable, so equal scores keep input order: pycocotools' mergesort does the same.
    order = np.lexsort((neg_score, key))
    key_s = key[order]
    n = key_s.size
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]]) if n else np.zeros(0, np.int64)
    run_len = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, run_len)
    keep = rank < MAX_DETS[-1]
    order, key_s, rank = order[keep], key_s[keep], rank[keep]
    src = sel[order]
    det_box = np.ascontiguousarray(d.box[src])
    det_area = det_box[:, 2] * det_box[:, 3]  # loadRes: area = w*h
    nk = key_s.size
    g_ds = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]]) if nk else np.zeros(0, np.int64)
    g_de = np.r_[g_ds[1:], nk].astype(np.int64)
    group_keys = key_s[g_ds]

    # Ground truth on evaluated images, grouped by (image, category), file order kept.
    gsel = np.flatnonzero(_isin_sorted(g.ann_img, eval_ids))
    gimg = np.searchsorted(eval_ids, g.ann_img[gsel])
    gcat = np.searchsorted(g.cat_ids, g.ann_cat[gsel])
    gkey = gimg * n_cat + gcat
    gorder = np.argsort(gkey, kind="stable")
    gkey_s = gkey[gorder]
    gsrc = gsel[gorder]
    g_gs = np.searchsorted(gkey_s, group_keys, "left")
    g_ge = np.searchsorted(gkey_s, group_keys, "right")

    codes = np.empty((nk, area_rng.shape[0], IOU_THRS.size), np.uint8)
    with kern.LOCK:
        kern.match_groups(g_ds.astype(np.int64), g_de, g_gs.astype(np.int64), g_ge.astype(np.int64),
                          det_box, det_area, np.ascontiguousarray(g.ann_box[gsrc]), g.ann_area[gsrc],
                          g.ann_crowd[gsrc], g.ann_id[gsrc] != 0, area_rng, IOU_THRS, codes)

    npig = np.zeros((n_cat, area_rng.shape[0]), np.int64)
    garea, gcrowd = g.ann_area[gsel], g.ann_crowd[gsel]
    for a, (lo, hi) in enumerate(area_rng):
        ok = ~gcrowd & ~((garea < lo) | (garea > hi))
        npig[:, a] = np.bincount(gcat[ok], minlength=n_cat)

    # Accumulation order: category, then score desc; ties by image then rank, exactly the
    # order pycocotools' per-category mergesort over image-ordered concatenation produces.
    cat_k = key_s % n_cat if n_cat else key_s
    acc = np.lexsort((-d.score[src], cat_k))
    cat_start = np.r_[0, np.cumsum(np.bincount(cat_k, minlength=n_cat))].astype(np.int64)
    lo0, hi0 = area_rng[0]
    return _Matched(eval_ids, (key_s // max(n_cat, 1))[acc], d.score[src][acc], rank[acc].astype(np.int64),
                    codes[acc], cat_start, npig, gimg, gcat, gcrowd | (garea < lo0) | (garea > hi0), int(sel.size))


def _accumulate(mt: _Matched, max_dets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    n_cat, n_area = mt.npig.shape
    precision = -np.ones((IOU_THRS.size, REC_THRS.size, n_cat, n_area, len(max_dets)))
    recall = -np.ones((IOU_THRS.size, n_cat, n_area, len(max_dets)))
    with kern.LOCK:
        kern.accumulate(mt.codes, mt.rank, mt.cat_start, mt.npig, np.asarray(max_dets, np.int64), REC_THRS,
                        precision, recall)
    return precision, recall


def _mean_valid(s: np.ndarray) -> float:
    # COCOeval.summarize: mean over entries > -1, or -1 when there are none.
    if len(s[s > -1]) == 0:
        return -1.0
    return float(np.mean(s[s > -1]))


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    def one(ap: int, iou: float | None = None, area: str = "all", md: int = 100) -> float:
        aind = [i for i, lbl in enumerate(AREA_LBL) if lbl == area]
        mind = [i for i, m in enumerate(MAX_DETS) if m == md]
        if ap == 1:
            s = precision
            if iou is not None:
                s = s[np.where(iou == IOU_THRS)[0]]
            s = s[:, :, :, aind, mind]
        else:
            s = recall
            if iou is not None:
                s = s[np.where(iou == IOU_THRS)[0]]
            s = s[:, :, aind, mind]
        return _mean_valid(s)

    vals = [one(1), one(1, iou=.5), one(1, iou=.75), one(1, area="small"), one(1, area="medium"),
            one(1, area="large"), one(0, md=1), one(0, md=10), one(0), one(0, area="small"),
            one(0, area="medium"), one(0, area="large")]
    return dict(zip(STAT_NAMES, vals))


def _voc(mt: _Matched) -> tuple[float, float, np.ndarray, np.ndarray]:
    """VOC07 11-point and VOC10 all-points AP@0.5 per category (NaN without gt), and means."""
    n_cat = mt.npig.shape[0]
    ap07 = np.full(n_cat, np.nan)
    ap10 = np.full(n_cat, np.nan)
    for k in range(n_cat):
        npos = int(mt.npig[k, 0])
        if npos == 0:
            continue
        c = mt.codes[mt.cat_start[k]:mt.cat_start[k + 1], 0, 0]
        c = c[c != 2]
        tp = np.cumsum(c == 1).astype(np.float64)
        fp = np.cumsum(c == 0).astype(np.float64)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        # voc_eval.py voc_ap(use_07_metric=True), including its np.arange thresholds.
        ap = 0.0
        for t in np.arange(0., 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else float(np.max(prec[rec >= t]))
            ap = ap + p / 11.
        ap07[k] = ap
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap10[k] = float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    has = ~np.isnan(ap07)
    m07 = float(np.mean(ap07[has])) if has.any() else -1.0
    m10 = float(np.mean(ap10[has])) if has.any() else -1.0
    return m07, m10, ap07, ap10


# A label that already states its size, e.g. CocoDataset.label "val2017 subset (first 500 of 5000 images)".
_HAS_COUNT = re.compile(r"\([^()]*\bimages?\)\s*$")


def _dataset_label(g: GroundTruth, eval_ids: np.ndarray, label: str | None) -> str:
    n = int(eval_ids.size)
    if label:
        return label if _HAS_COUNT.search(label) else f"{label} ({_images(n)})"
    full = n == g.image_ids.size
    if g.fingerprint == _MINI_FINGERPRINT:
        return f"{_MINI_LABEL} ({_images(n)})" if full else f"{_MINI_LABEL} subset ({_images(n)})"
    stem = Path(g.source).stem if g.source else ""
    if g.description == _COCO2017_DESCRIPTION and g.image_ids.size <= _VAL2017_IMAGES and "train" not in stem:
        if full and n == _VAL2017_IMAGES:
            return f"val2017 ({n} images)"
        return f"val2017 subset ({_images(n)})"
    name = stem or g.description or "custom"
    return f"{name} ({_images(n)})"


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def evaluate(gt: GroundTruth | Mapping[str, Any] | PathLike,
             dets: Sequence[Mapping[str, Any]] | PathLike,
             *, img_ids: Iterable[int] | None = None, label: str | None = None) -> Metrics:
    """COCO bbox evaluation of ``dets`` against ``gt``, bit-identical to pycocotools.

    ``img_ids``: evaluate exactly these images (default: every image in ``gt``); detections on
    other images are left out, as ``COCOeval.params.imgIds`` does. ``label`` names the data
    set in ``Metrics.dataset`` (auto-detected for val2017 and the bundled val2017-mini).
    ``dets`` is read, never modified. An empty list is valid: every category with ground
    truth gets AP 0 and AR 0 (what ``accumulate`` yields without detections; pycocotools'
    ``loadRes([])`` itself raises). Runs :func:`check_contract` first.
    """
    return _evaluate(gt, dets, img_ids, label)[0]


def _evaluate(gt: GroundTruth | Mapping[str, Any] | PathLike, dets: Sequence[Mapping[str, Any]] | PathLike,
              img_ids: Iterable[int] | None, label: str | None) -> tuple[Metrics, _Matched, GroundTruth]:
    """Shared by evaluate() and bootstrap.per_image_results(): one frame below a public call."""
    g = load_ground_truth(gt)
    if isinstance(dets, (str, os.PathLike)):
        dets = load_detections(dets)
    d = _det_arrays(dets)
    _check(g, d, stacklevel=4)
    eval_ids = _select_images(g, img_ids)
    mt = _match(g, d, eval_ids, AREA_RNG)
    precision, recall = _accumulate(mt, MAX_DETS)
    return _metrics(g, mt, precision, recall, eval_ids, label, len(d)), mt, g


def _metrics(g: GroundTruth, mt: _Matched, precision: np.ndarray, recall: np.ndarray, eval_ids: np.ndarray,
             label: str | None, n_input: int) -> Metrics:
    stats = _summarize(precision, recall)
    m07, m10, _, _ = _voc(mt)
    per_cat = {}
    for k, cid in enumerate(g.cat_ids.tolist()):
        per_cat[cid] = CategoryAP(g.cat_names[cid], _mean_valid(precision[:, :, k, 0, 2]),
                                  _mean_valid(precision[0, :, k, 0, 2]), int(mt.npig[k, 0]))
    n_crowd = int(np.count_nonzero(g.ann_crowd[_isin_sorted(g.ann_img, eval_ids)]))
    n_gt = int(_isin_sorted(g.ann_img, eval_ids).sum()) - n_crowd
    info = DatasetInfo(_dataset_label(g, eval_ids, label), tuple(int(i) for i in eval_ids), int(eval_ids.size),
                       n_gt, n_crowd, mt.n_dets, n_input)
    return Metrics(stats, per_cat, m07, m10, info, precision, recall)


def class_index_hint(gt: GroundTruth, dets: Sequence[Mapping[str, Any]]) -> str | None:
    """Why detections may score near 0: their category ids are 0-based indices into the 80 COCO
    classes, not COCO ids. Judged from a histogram, per image, of how many detections carry a class
    the image's ground truth has, read as ids vs read as indices; None when nothing suggests it."""
    pairs = [(d["image_id"], d["category_id"]) for d in dets
             if type(d.get("image_id")) is int and type(d.get("category_id")) is int]
    if not pairs or not all(0 <= c < len(COCO80_TO_ID) for _, c in pairs):
        return None
    present = set(zip(gt.ann_img.tolist(), gt.ann_cat.tolist()))
    as_ids = sum((i, c) in present for i, c in pairs)
    as_indices = sum((i, int(COCO80_TO_ID[c])) in present for i, c in pairs)
    if as_indices < 2 * max(as_ids, 1) or as_indices < 0.2 * len(pairs):
        return None
    cats = sorted({c for _, c in pairs})
    common = ", ".join(f"{c}->{int(COCO80_TO_ID[c])} {gt.cat_names.get(int(COCO80_TO_ID[c]), '?')}"
                       for c, _ in sorted(_histogram(c for _, c in pairs).items(), key=lambda kv: -kv[1])[:3])
    return (f"detections use category ids {cats[0]}..{cats[-1]}; read as COCO ids {as_ids} of {len(pairs)} are "
            f"a class their image's ground truth has, read as 0-based indices into the 80 COCO classes "
            f"{as_indices} are (most frequent: {common}). Write COCO ids (for a manifest model: "
            f"postprocess.class_space = \"coco80\" maps index i to the i-th COCO id)")


def _histogram(values: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
