"""`preprocess.interpolation = "darknet"` is darknet's own resize_image, not cv2.resize under another name.

``loop_resize_image`` below transcribes darknet's ``resize_image`` (AlexeyAB/darknet@59596d7
src/image.c:1399-1442; pjreddie/darknet's is the same without the same-size copy) line for line, in
float32 scalars, so the vectorised numpy version is checked against the C code's own loops rather
than against itself.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from mapgate.darknet_resize import resize_image
from mapgate.preprocess import preprocess

F = np.float32


def loop_resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:  # im: HxWxC float32, darknet's CHW as HWC
    im_h, im_w, channels = im.shape
    if im_w == w and im_h == h:
        return im.copy()
    resized = np.zeros((h, w, channels), np.float32)  # make_image callocs
    part = np.zeros((im_h, w, channels), np.float32)
    w_scale = F(im_w - 1) / F(w - 1)
    h_scale = F(im_h - 1) / F(h - 1)
    for k in range(channels):
        for r in range(im_h):
            for c in range(w):
                if c == w - 1 or im_w == 1:
                    val = im[r, im_w - 1, k]
                else:
                    sx = F(c) * w_scale
                    ix = int(sx)
                    dx = sx - F(ix)
                    val = (F(1) - dx) * im[r, ix, k] + dx * im[r, ix + 1, k]
                part[r, c, k] = val
    for k in range(channels):
        for r in range(h):
            sy = F(r) * h_scale
            iy = int(sy)
            dy = sy - F(iy)
            for c in range(w):
                resized[r, c, k] = (F(1) - dy) * part[iy, c, k]
            if r == h - 1 or im_h == 1:
                continue
            for c in range(w):
                resized[r, c, k] += dy * part[iy + 1, c, k]
    return resized


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (23, 31, 3)).astype(np.uint8)


@pytest.mark.parametrize(("w", "h"), [(13, 9), (31, 23), (40, 50), (31, 7), (2, 2), (5, 23)])
def test_equals_the_c_loops_bit_for_bit_shrinking_growing_and_per_axis(photo: np.ndarray, w: int, h: int) -> None:
    expected = loop_resize_image(photo.astype(np.float32) / F(255), w, h)
    got = resize_image(photo.astype(np.float32) / F(255), w, h)
    assert got.dtype == np.float32 and got.shape == (h, w, 3)
    np.testing.assert_array_equal(got, expected)


def test_a_one_pixel_wide_or_high_source_is_repeated_as_darknet_does() -> None:
    column = np.arange(5 * 1 * 3, dtype=np.float32).reshape(5, 1, 3)
    np.testing.assert_array_equal(resize_image(column, 4, 3), loop_resize_image(column, 4, 3))
    row = np.arange(1 * 6 * 3, dtype=np.float32).reshape(1, 6, 3)
    np.testing.assert_array_equal(resize_image(row, 3, 4), loop_resize_image(row, 3, 4))


def test_corners_land_on_the_source_corners_where_cv2_samples_half_pixel_centres(photo: np.ndarray) -> None:
    got = resize_image(photo, 13, 9)
    src = photo.astype(np.float32)
    np.testing.assert_array_equal(got[0, 0], src[0, 0])
    np.testing.assert_array_equal(got[0, -1], src[0, -1])  # the last column is copied, not interpolated
    ours = cv2.resize(photo, (13, 9), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(ours - got).max() > 10  # a different input, not rounding


def test_the_last_row_keeps_only_its_upper_weight_so_some_source_heights_end_in_a_dark_row() -> None:
    """r == h - 1 skips the dy * row[iy + 1] term, so the last row is (1 - dy) * row[iy]: about the last
    input row when float32 puts (h - 1) * h_scale on or just above im.h - 1, and nearly black when it
    rounds just below (iy = im.h - 2, dy close to 1): 416 rows from 479 or 481 source rows do."""
    dark = []
    for in_h in range(470, 490):
        src = np.full((in_h, 4, 1), 100.0, np.float32)
        sy = F(415) * (F(in_h - 1) / F(415))
        dy = sy - F(int(sy))
        last = resize_image(src, 4, 416)[-1, 0, 0]
        assert last == (F(1) - dy) * F(100)
        if last < 1.0:
            dark.append(in_h)
    assert dark == [479, 481, 483, 485, 487, 489]


def test_same_size_is_a_float_copy(photo: np.ndarray) -> None:
    got = resize_image(photo, 31, 23)
    np.testing.assert_array_equal(got, photo.astype(np.float32))


def test_a_one_pixel_output_side_is_refused_as_darknet_would_divide_by_zero(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2x2"):
        resize_image(photo, 1, 5)


def test_the_darknet_models_preprocess_feeds_darknets_resize_scaled_to_0_1(bundled_models) -> None:
    model = bundled_models["yolov3-tiny-416"]
    assert model.preprocess.interpolation == "darknet"
    model = dataclasses.replace(model, input_size=(26, 32))  # the loops are slow in Python: a small network
    image = np.random.default_rng(5).integers(0, 256, (48, 64, 3)).astype(np.uint8)
    x, t = preprocess(image, model)
    # darknet: BGR -> RGB, pixel / 255., then resize_image
    expected = loop_resize_image(image[:, :, ::-1].astype(np.float32) / F(255), 32, 26)
    assert x.shape == (1, 3, 26, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, rtol=0, atol=1e-6)
    assert (t.scale_x, t.scale_y) == (32 / 64, 26 / 48)
