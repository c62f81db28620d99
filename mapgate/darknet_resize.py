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
what its compiler flags (-Ofast) reorder. Why numba: the two passes are loops numpy can only
express with gathered copies (6 ms per 640x480 image against cv2.resize's 0.3 ms; compiled, ~1 ms).
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
    squeeze = src.ndim == 2
    out = _columns_rows(np.ascontiguousarray(src[:, :, None] if squeeze else src), width, height)
    return out[:, :, 0] if squeeze else out


@njit(cache=True, nogil=True)
def _columns_rows(src: np.ndarray, width: int, height: int) -> np.ndarray:
    """darknet's two passes over HxWxC float32, each output value in darknet's float32 operations."""
    in_h, in_w, channels = src.shape
    one = np.float32(1)
    w_scale = np.float32(in_w - 1) / np.float32(width - 1)  # (float)(im.w - 1) / (w - 1)
    h_scale = np.float32(in_h - 1) / np.float32(height - 1)
    part = np.empty((in_h, width, channels), np.float32)
    for r in range(in_h):
        for c in range(width):
            if c == width - 1 or in_w == 1:  # the last input column as is
                for k in range(channels):
                    part[r, c, k] = src[r, in_w - 1, k]
                continue
            sx = np.float32(c) * w_scale
            ix = int(sx)  # (int) truncation; sx >= 0
            dx = sx - np.float32(ix)
            for k in range(channels):
                part[r, c, k] = (one - dx) * src[r, ix, k] + dx * src[r, ix + 1, k]
    out = np.empty((height, width, channels), np.float32)
    for r in range(height):
        sy = np.float32(r) * h_scale
        iy = int(sy)
        dy = sy - np.float32(iy)
        for c in range(width):
            for k in range(channels):
                v = (one - dy) * part[iy, c, k]
                # darknet adds the lower row for every row but the last (r == h - 1 keeps (1 - dy) * row[iy])
                if r != height - 1 and in_h != 1:
                    v = v + dy * part[iy + 1, c, k]
                out[r, c, k] = v
    return out
