"""Pre-processing shared by every backend of a model: resize/letterbox, colour, layout, scaling.

The same function produces the input for the original and for every optimized engine, so
the two sides of a comparison differ only in the engine. ``Transform`` remembers how the
image was mapped so the postprocessor can put boxes back in original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mapgate.manifest import ModelSpec


@dataclass(frozen=True)
class Transform:
    """original pixel -> network pixel: x_net = x * scale_x + pad_x (likewise y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_width: int
    orig_height: int

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Network-input xyxy boxes -> original-image xyxy, clipped to the image."""
        out = np.empty_like(boxes_xyxy, dtype=np.float64)
        out[:, 0::2] = (boxes_xyxy[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes_xyxy[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0.0, self.orig_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, self.orig_height, out=out[:, 1::2])
        return out


_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST}


def preprocess(image_bgr: np.ndarray, model: ModelSpec) -> tuple[np.ndarray, Transform]:
    """HxWx3 uint8 BGR image -> the model's input batch of one, and the transform to undo."""
    p = model.preprocess
    net_h, net_w = model.input_size
    h, w = image_bgr.shape[:2]
    interpolation = _INTERPOLATION[p.interpolation]
    if p.resize == "plain":
        canvas = cv2.resize(image_bgr, (net_w, net_h), interpolation=interpolation)
        t = Transform(net_w / w, net_h / h, 0.0, 0.0, w, h)
    else:
        r = min(net_h / h, net_w / w)
        new_w, new_h = int(w * r), int(h * r)  # int() truncation as YOLOX/Ultralytics do
        resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=interpolation)
        canvas = np.full((net_h, net_w, 3), p.pad_value, dtype=np.uint8)
        if p.letterbox_align == "topleft":
            top, left = 0, 0
        else:
            top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = resized
        t = Transform(r, r, float(left), float(top), w, h)
    if p.color == "RGB":
        canvas = canvas[:, :, ::-1]
    if p.dtype == "uint8":
        arr = np.ascontiguousarray(canvas)
    else:
        arr = canvas.astype(np.float32)
        if p.scale != 1.0:
            arr *= np.float32(p.scale)
        if any(p.mean) or any(s != 1.0 for s in p.std):
            arr = (arr - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    if p.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None]), t
