"""Pre-processing shared by every backend of a model: resize/letterbox/warp, colour, layout, scaling.

The same function produces the input for the original and for every optimized engine, so
the two sides of a comparison differ only in the engine. ``Transform`` remembers how the
image was mapped so the postprocessor can put boxes back in original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mapgate.darknet_resize import resize_image
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


def _resize(image: np.ndarray, size_wh: tuple[int, int], interpolation: str) -> np.ndarray:
    """cv2.resize (uint8 out, rounded), or darknet's own resize_image (float32 out, unrounded, as darknet
    feeds it to the network)."""
    if interpolation == "darknet":
        return resize_image(image, *size_wh)
    return cv2.resize(image, size_wh, interpolation=_INTERPOLATION[interpolation])


def resize_matrix(raw_wh: tuple[int, int], dst_wh: tuple[int, int]) -> np.ndarray:
    """NanoDet's keep-ratio resize matrix (original pixel -> network pixel, 3x3).

    As nanodet/data/transform/warp.py get_resize_matrix(keep_ratio=True) computes it (v0.4.2
    lines 105-131): centre the image on the origin, scale by the ratio that fits, move to the
    network centre. The translation is fractional, unlike a letterbox's integer pad.
    """
    r_w, r_h = raw_wh
    d_w, d_h = dst_wh
    ratio = d_h / r_h if r_w / r_h < d_w / d_h else d_w / r_w
    centre = np.array([[1.0, 0.0, -r_w / 2], [0.0, 1.0, -r_h / 2], [0.0, 0.0, 1.0]])
    scale = np.diag([ratio, ratio, 1.0])
    to_dst = np.array([[1.0, 0.0, 0.5 * d_w], [0.0, 1.0, 0.5 * d_h], [0.0, 0.0, 1.0]])
    return to_dst @ scale @ centre


def preprocess(image_bgr: np.ndarray, model: ModelSpec) -> tuple[np.ndarray, Transform]:
    """HxWx3 uint8 BGR image -> the model's input batch of one, and the transform to undo."""
    p = model.preprocess
    net_h, net_w = model.input_size
    h, w = image_bgr.shape[:2]
    if p.resize == "plain":
        canvas = _resize(image_bgr, (net_w, net_h), p.interpolation)
        t = Transform(net_w / w, net_h / h, 0.0, 0.0, w, h)
    elif p.resize == "warp":
        # cv2.warpPerspective samples the source at M^-1 of each network pixel (pixel centres at
        # integers), so shrinking 640 -> 320 picks every second pixel where cv2.resize averages:
        # a different input, hence its own mode. Border as NanoDet's (constant; its value is 0).
        m = resize_matrix((w, h), (net_w, net_h))
        canvas = cv2.warpPerspective(image_bgr, m, (net_w, net_h), flags=_INTERPOLATION[p.interpolation],
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(p.pad_value,) * 3)
        # m is a pure scale + translation, so its inverse (NanoDet's warp_boxes with inv(M)) is
        # exactly Transform's (x - pad) / scale, and clipping to the image is the same too
        t = Transform(float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]), w, h)
    else:
        r = min(net_h / h, net_w / w)
        new_w, new_h = int(w * r), int(h * r)  # int() truncation as YOLOX/Ultralytics do
        resized = _resize(image_bgr, (new_w, new_h), p.interpolation)
        canvas = np.full((net_h, net_w, 3), p.pad_value, dtype=resized.dtype)
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
