"""Shared by the Darknet converter and OpenCV backend tests: the bundled Darknet models, a manifest
entry for any cfg+weights, and the bundled models' preprocessing written out independently."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mapgate.fsutil import sha256_file
from mapgate.manifest import ModelSpec
from mapgate.catalog import load_manifest
from manifest_helpers import link_into

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
BUNDLED = {
    "yolov3-tiny": (MODELS / "yolov3-tiny" / "yolov3-tiny.cfg", MODELS / "yolov3-tiny" / "yolov3-tiny.weights", (416, 416)),
    "yolo-fastest-1.1": (MODELS / "yolo-fastest-1.1" / "yolo-fastest-1.1.cfg",
                         MODELS / "yolo-fastest-1.1" / "yolo-fastest-1.1.weights", (320, 320)),
}


def model_spec(tmp_path: Path, name: str, cfg: Path, weights: Path, size: tuple[int, int]) -> ModelSpec:
    manifest = tmp_path / f"{name}.toml"
    manifest.write_text(f"""
[models.{name}]
family = "darknet_yolo"
format = "darknet"
reference_backend = "opencv"
input_size = [{size[0]}, {size[1]}]
[models.{name}.files.cfg]
path = "{link_into(tmp_path, cfg)}"
sha256 = "{sha256_file(cfg)}"
[models.{name}.files.weights]
path = "{link_into(tmp_path, weights)}"
sha256 = "{sha256_file(weights)}"
[models.{name}.preprocess]
scale = {1 / 255!r}
""")
    return load_manifest(manifest)[name]


def preprocess(path: Path, size: tuple[int, int]) -> np.ndarray:
    """RGB, plain resize, /255, NCHW float32 (the bundled models' preprocessing)."""
    img = cv2.resize(cv2.imread(str(path)), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    return np.ascontiguousarray((img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
