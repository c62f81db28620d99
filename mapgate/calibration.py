"""INT8 calibration input: the calibration images only, through the model's own preprocessing.

Calibration and evaluation images must never overlap (calibrating on the test set flatters
INT8); every converter and the TensorRT builder call :func:`check_disjoint` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

import mapgate.dataset
from mapgate.dataset import bundled_missing, read_image
from mapgate.errors import ConfigError, DataError
from mapgate.fsutil import sha256_file, sha256_json
from mapgate.manifest import ModelSpec
from mapgate.preprocess import preprocess

_COCO_NAME = re.compile(r"^0*(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def calibration_images(folder: Path | None = None, limit: int | None = None) -> list[Path]:
    """The calibration images of ``folder`` (default: the bundled calib-val2017) in a deterministic
    (sorted) order. Read only when an INT8 target is built: FP32/FP16 runs never need them."""
    if folder is None:
        folder = mapgate.dataset.CALIB_DIR  # at call time: a test may point it at a damaged copy
        if not folder.is_dir():
            raise bundled_missing(folder, "calib-val2017 calibration image folder")
    if not folder.is_dir():
        raise DataError(f"calibration image folder {folder} "
                        + ("is not a folder" if folder.exists() else "does not exist"))
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise DataError(f"calibration image folder {folder} has no .jpg/.png images")
    return paths[:limit] if limit else paths


def quantization_images(given: Iterable[Path], limit: int | None = None) -> list[Path]:
    """The images an INT8 Q/DQ file is calibrated on, in the order they are fed: the ones given, as
    given, else the bundled set's first ``limit`` (what ``mapgate.convert.ort_quant.build`` reads). Every
    engine built from that file (``tensorrt:int8``, either typing) records this very list."""
    images = list(given)
    return images or calibration_images(limit=limit)


def image_ids_of(paths: Iterable[Path]) -> list[int]:
    """COCO image ids from COCO file names (000000000785.jpg -> 785); other names have none."""
    return [int(m.group(1)) for p in paths if (m := _COCO_NAME.match(p.name))]


def calibration_set_hash(paths: Iterable[Path]) -> str:
    """Content hash of a calibration set, in feed order: every INT8 converter keys its cache on it.

    Each image's sha256, not its name and size: a re-encoded JPEG can keep both, and stale INT8
    scales shift exactly the AP the gate measures (~100 small JPEGs hash in tens of ms).
    """
    digests = []
    for p in paths:
        try:
            digests.append(sha256_file(p))
        except OSError as exc:
            raise DataError(f"calibration image {p} cannot be read ({exc})") from exc
    return sha256_json(digests)


def check_disjoint(calib_ids: Iterable[int], evaluated_ids: Iterable[int], where: str) -> None:
    """Refuse calibration images that are also evaluated; the error names the overlap."""
    overlap = sorted(set(calib_ids) & set(evaluated_ids))
    if overlap:
        shown = ", ".join(map(str, overlap[:10])) + (" ..." if len(overlap) > 10 else "")
        raise ConfigError(
            f"{where}: {len(overlap)} calibration image(s) are also evaluated (image ids {shown}); "
            "INT8 calibration on the evaluated images would flatter the result. Give a disjoint calibration set "
            "with --calib-dir DIR (the bundled calib-val2017 is itself part of val2017)."
        )


def calibration_batches(model: ModelSpec, images: list[Path], batch_size: int = 1) -> Iterator[np.ndarray]:
    """Preprocessed calibration batches, in file order; the last partial batch is dropped."""
    if batch_size < 1:
        raise ConfigError(f"calibration batch size must be at least 1, got {batch_size}")
    batch: list[np.ndarray] = []
    for path in images:
        tensor, _ = preprocess(read_image(path), model)
        batch.append(tensor)
        if len(batch) == batch_size:
            yield np.concatenate(batch, axis=0)
            batch = []
