"""`preprocess.resize = "warp"` is NanoDet's own evaluation input, not a letterbox under another name.

NanoDet's legacy (v0.x) eval pipeline, RangiLyu/nanodet at tag v0.4.2, is copied below verbatim
(only renamed with an ``upstream_`` prefix) so these tests compare mapgate against the code its
reference numbers claim to follow:

- nanodet/data/transform/warp.py:105-135 ``get_resize_matrix`` (keep_ratio=True branch:
  ``T @ Rs @ C``: centre on the origin, scale by the fitting ratio, move to the network centre);
- warp.py:172-176 ``warp_and_resize`` at eval: the augmentation matrices are all skipped and
  ``T @ C`` is the identity, so ``M = get_resize_matrix(...)``, then
  ``cv2.warpPerspective(raw_img, M, dsize=tuple(dst_shape))`` (default flags: INTER_LINEAR,
  BORDER_CONSTANT with value 0);
- warp.py:192-211 ``warp_boxes``, which nanodet/model/head/gfl_head.py:541-543 calls with
  ``np.linalg.inv(warp_matrix)`` and the original width/height to put detections back.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from mapgate.manifest import ModelSpec
from mapgate.preprocess import preprocess, resize_matrix


def upstream_get_resize_matrix(raw_shape, dst_shape, keep_ratio):  # noqa: ANN001, ANN201 - verbatim upstream
    r_w, r_h = raw_shape
    d_w, d_h = dst_shape
    Rs = np.eye(3)
    if keep_ratio:
        C = np.eye(3)
        C[0, 2] = -r_w / 2
        C[1, 2] = -r_h / 2

        if r_w / r_h < d_w / d_h:
            ratio = d_h / r_h
        else:
            ratio = d_w / r_w
        Rs[0, 0] *= ratio
        Rs[1, 1] *= ratio

        T = np.eye(3)
        T[0, 2] = 0.5 * d_w
        T[1, 2] = 0.5 * d_h
        return T @ Rs @ C
    else:
        Rs[0, 0] *= d_w / r_w
        Rs[1, 1] *= d_h / r_h
        return Rs


def upstream_warp_boxes(boxes, M, width, height):  # noqa: ANN001, ANN201 - verbatim upstream
    n = len(boxes)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ M.T  # transform
        xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8)  # rescale
        x = xy[:, [0, 2, 4, 6]]
        y = xy[:, [1, 3, 5, 7]]
        xy = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
        xy[:, [0, 2]] = xy[:, [0, 2]].clip(0, width)
        xy[:, [1, 3]] = xy[:, [1, 3]].clip(0, height)
        return xy.astype(np.float32)
    else:
        return boxes


# (width, height) of COCO-like originals, including ones whose centring gives a fractional offset
RAW_SHAPES = [(640, 480), (480, 640), (500, 375), (333, 500), (320, 320), (1000, 7), (7, 1000)]
DST_SHAPES = [(320, 320), (416, 416), (416, 320)]


@pytest.fixture()
def nanodet(bundled_models) -> ModelSpec:
    return bundled_models["nanodet-m-320"]


def raw_pixels(model: ModelSpec, input_size: tuple[int, int] | None = None) -> ModelSpec:
    """The same entry without normalisation, so the batch holds the warped 0..255 BGR values."""
    pre = dataclasses.replace(model.preprocess, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0)
    return dataclasses.replace(model, preprocess=pre, input_size=input_size or model.input_size)


def as_image(batch: np.ndarray) -> np.ndarray:
    return batch[0].transpose(1, 2, 0)


def test_the_bundled_nanodet_entry_warps_as_nanodet_evaluates(nanodet) -> None:
    assert nanodet.preprocess.resize == "warp"
    assert nanodet.preprocess.pad_value == 0 and nanodet.preprocess.color == "BGR"


@pytest.mark.parametrize("dst", DST_SHAPES)
@pytest.mark.parametrize("raw", RAW_SHAPES)
def test_warp_matrix_is_nanodets_keep_ratio_resize_matrix(raw, dst) -> None:
    np.testing.assert_allclose(resize_matrix(raw, dst), upstream_get_resize_matrix(raw, dst, True),
                               rtol=0, atol=1e-12)


def test_warp_image_is_nanodets_warp_perspective_pixel_for_pixel(nanodet) -> None:
    rng = np.random.default_rng(7)
    for w, h in [(640, 480), (333, 500), (500, 375)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        batch, _ = preprocess(image, raw_pixels(nanodet))
        M = upstream_get_resize_matrix((w, h), (320, 320), True)
        expected = cv2.warpPerspective(image, M, dsize=(320, 320))
        np.testing.assert_array_equal(as_image(batch), expected.astype(np.float32))


def test_warp_offsets_are_fractional_where_nanodet_centres_them(nanodet) -> None:
    # 333 x 500 -> ratio 0.64, x offset 160 - 0.64 * 166.5 = 53.44 (a letterbox pads an integer 53)
    _, t = preprocess(np.zeros((500, 333, 3), np.uint8), nanodet)
    assert t.scale_x == t.scale_y == pytest.approx(0.64)
    assert t.pad_x == pytest.approx(53.44) and t.pad_y == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("raw", RAW_SHAPES)
def test_boxes_go_back_as_nanodets_inverse_warp_puts_them(nanodet, raw) -> None:
    w, h = raw
    _, t = preprocess(np.zeros((h, w, 3), np.uint8), nanodet)
    M = upstream_get_resize_matrix((w, h), (320, 320), True)
    net = np.array([[10.5, 20.25, 300.0, 310.75], [0.0, 0.0, 320.0, 320.0], [150.0, 150.0, 151.0, 152.0]])
    expected = upstream_warp_boxes(net, np.linalg.inv(M), w, h)
    np.testing.assert_allclose(t.to_original(net), expected, rtol=1e-6, atol=1e-4)  # upstream rounds to float32


@pytest.mark.parametrize("raw", RAW_SHAPES)
def test_warp_to_original_inverts_a_box_exactly(nanodet, raw) -> None:
    w, h = raw
    _, t = preprocess(np.zeros((h, w, 3), np.uint8), nanodet)
    M = upstream_get_resize_matrix((w, h), (320, 320), True)
    box = np.array([[0.25 * w, 0.125 * h, 0.75 * w, 0.875 * h], [0.0, 0.0, float(w), float(h)]])
    corners = np.c_[box.reshape(-1, 2), np.ones(4)] @ M.T  # x1y1, x2y2 through NanoDet's forward matrix
    net = (corners[:, :2] / corners[:, 2:]).reshape(-1, 4)
    np.testing.assert_allclose(t.to_original(net), box, rtol=0, atol=1e-9)


def test_warp_samples_where_resize_and_pad_averages_at_640_to_320(nanodet) -> None:
    # columns alternate 200, 0: warping 640 -> 320 reads source column 2x (always a 200 column),
    # cv2.resize reads the half-pixel centre 2x + 0.5 and averages the pair to 100
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, 0::2] = 200
    warped, tw = preprocess(image, raw_pixels(nanodet))
    padded, tp = preprocess(image, dataclasses.replace(
        raw_pixels(nanodet), preprocess=dataclasses.replace(raw_pixels(nanodet).preprocess, resize="letterbox")))
    # the same geometry here (ratio 0.5, 40 rows of border 0 above and below) ...
    assert (tw.scale_x, tw.pad_x, tw.pad_y) == (tp.scale_x, tp.pad_x, tp.pad_y) == (0.5, 0.0, 40.0)
    warped, padded = as_image(warped), as_image(padded)
    assert (warped[:40] == 0).all() and (warped[280:] == 0).all()
    assert (padded[:40] == 0).all() and (padded[280:] == 0).all()
    # ... but different pixels inside the image
    assert (warped[40:280] == 200).all()
    assert (padded[40:280] == 100).all()
