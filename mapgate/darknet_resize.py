"""Darknet's own bilinear resize (``resize_image``), vectorised, for references run as darknet runs them.

darknet does not call cv2.resize: ``resize_image`` (AlexeyAB/darknet@59596d7 src/image.c:1399-1442)
resizes in two float32 passes, columns then rows, on a corner-aligned grid (source x = c * (im.w - 1) / (w - 1),
so the first and last output pixels sit on the first and last input pixels), where cv2's
INTER_LINEAR samples at half-pixel centres ((c + 0.5) * im.w / w - 0.5) and, shrinking, reads
different pixels. Two quirks are kept because darknet has them: the last column copies the last
input column exactly, but the last row is only ``(1 - dy) * row[iy]``; when float32 rounds
``(h - 1) * h_scale`` just below ``im.h - 1`` that row comes out nearly black, as in darknet.

The arithmetic is float32 in darknet's order, so this equals a direct transcription of the C
loops bit for bit (tests/test_darknet_resize.py); it can differ from a darknet binary only by
what its compiler flags (-Ofast) reorder.
"""

from __future__ import annotations

import numpy as np


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWxC (any dtype) -> height x width x C float32, as darknet's ``resize_image`` on those values.

    darknet resizes its float image (pixel / 255); the pass is linear, so resizing 0..255 values and
    scaling afterwards differs from it by float32 rounding only.
    """
    src = np.asarray(image, dtype=np.float32)
    in_h, in_w = src.shape[:2]
    if (in_w, in_h) == (width, height):
        return src.copy()
    if width < 2 or height < 2:
        # darknet divides by (w - 1) and (h - 1): a one-pixel side makes its scale infinite
        raise ValueError(f"darknet's resize_image needs at least 2x2 output pixels, got {width}x{height}")
    part = _columns(src, width)
    return _rows(part, height)


def _scale(n_in: int, n_out: int) -> np.float32:
    return np.float32(n_in - 1) / np.float32(n_out - 1)  # (float)(im.w - 1) / (w - 1)


def _columns(src: np.ndarray, width: int) -> np.ndarray:
    in_w = src.shape[1]
    part = np.empty((src.shape[0], width) + src.shape[2:], np.float32)
    part[:, width - 1] = src[:, in_w - 1]  # c == w - 1 (or im.w == 1): the last input column as is
    if in_w == 1:
        part[:] = src[:, :1]
        return part
    sx = np.arange(width - 1, dtype=np.float32) * _scale(in_w, width)
    ix = sx.astype(np.int64)  # (int) truncation; sx >= 0
    dx = (sx - ix.astype(np.float32)).reshape((1, -1) + (1,) * (src.ndim - 2))  # float - (float)int, as in C
    part[:, : width - 1] = (np.float32(1) - dx) * src[:, ix] + dx * src[:, ix + 1]
    return part


def _rows(part: np.ndarray, height: int) -> np.ndarray:
    in_h = part.shape[0]
    sy = np.arange(height, dtype=np.float32) * _scale(in_h, height)
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(np.float32)).reshape((height,) + (1,) * (part.ndim - 1))
    out = (np.float32(1) - dy) * part[iy]
    if in_h > 1:
        # darknet adds the lower row for every row but the last (r == h - 1 keeps (1 - dy) * row[iy] only)
        out[:-1] += dy[:-1] * part[iy[:-1] + 1]
    return out
