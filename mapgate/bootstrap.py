"""Paired bootstrap confidence interval of ΔAP (optimized minus reference model).

Resampling unit: the image. Resample ``b`` draws ``n`` image ids with replacement (``n`` =
evaluated images) from ``numpy.random.default_rng(seed)`` (see :func:`resample_indices`);
the same multiset is used for both detection sets, which is what makes the interval
paired: image difficulty cancels and only the models' difference varies.

Each resample's AP equals what pycocotools reports on the literally duplicated data set —
every drawn copy becomes its own image, new ids numbered in sorted original-id order (so
the copies of one image are consecutive). Matching is done once per image, since a copy
matches exactly like its original; each resample then only re-accumulates, with image
multiplicities as weights. Caveat: the numbering matters. Numbered any other way (say,
copies appended after all originals), detections with exactly equal scores on different
images would sit in another order in pycocotools' mergesort, which can move that
resample's AP slightly; equality with the rule above is tested to 1e-12.

The interval is the percentile interval of the resampled ΔAP (``np.quantile``, linear).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mapgate.errors import ConfigError
from mapgate.evaluate import IOU_THRS, REC_THRS, GroundTruth, Metrics, PathLike, _evaluate
from mapgate import _coco_kernels as kern


@dataclass(frozen=True, eq=False)
class PerImage:
    """Per-image matching of one detection set (area 'all', top 100 per image and category),
    plus the full evaluation it came from (``metrics``).

    Arrays are sorted by (category, -score, image, rank) like pycocotools' accumulate order.
    """

    image_ids: np.ndarray
    cat_ids: np.ndarray
    ap: float  # COCO AP@[.5:.95] on all evaluated images, bit-identical to pycocotools
    det_img: np.ndarray  # index into image_ids
    det_score: np.ndarray
    codes: np.ndarray  # (n, T) uint8: 0 FP, 1 TP, 2 ignored, per IoU threshold
    cat_start: np.ndarray  # (K + 1,)
    npig_img: np.ndarray  # (I, K) non-crowd gt boxes per image and category
    gt_fingerprint: str = field(repr=False)
    metrics: Metrics | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return int(self.image_ids.size)


@dataclass(frozen=True)
class BootstrapCI:
    """Point ΔAP and its paired-bootstrap interval, as fractions (0.01 = one AP point)."""

    delta_ap: float  # opt AP - ref AP on the full image set
    low: float
    high: float
    n_resamples: int
    seed: int
    alpha: float
    ref_ap: float
    opt_ap: float
    n_images: int
    deltas: np.ndarray = field(repr=False, compare=False)  # per resample, opt - ref
    ref_resampled_ap: np.ndarray = field(repr=False, compare=False)
    opt_resampled_ap: np.ndarray = field(repr=False, compare=False)

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta_ap": self.delta_ap, "low": self.low, "high": self.high,
            "delta_ap_points": 100.0 * self.delta_ap, "low_points": 100.0 * self.low,
            "high_points": 100.0 * self.high,
            # the spread of the resampled dAP: the verdict's images-needed estimate scales it by 1/sqrt(n)
            "se_points": 100.0 * float(np.std(self.deltas, ddof=1)) if self.deltas.size > 1 else None,
            "ref_ap": self.ref_ap, "opt_ap": self.opt_ap,
            "confidence": self.confidence, "alpha": self.alpha,
            "n_resamples": self.n_resamples, "seed": self.seed, "n_images": self.n_images,
            "method": "paired bootstrap over images, percentile interval",
        }


def per_image_results(gt: GroundTruth | Mapping[str, Any] | PathLike,
                      dets: Sequence[Mapping[str, Any]] | PathLike,
                      img_ids: Iterable[int] | None = None, *, label: str | None = None) -> PerImage:
    """Evaluate ``dets`` (same as :func:`mapgate.evaluate.evaluate`) and keep the per-image
    matching that :func:`paired_bootstrap` re-accumulates; ``.metrics`` holds the evaluation."""
    metrics, mt, g = _evaluate(gt, dets, img_ids, label)
    n_img, n_cat = mt.eval_ids.size, g.cat_ids.size
    ok = ~mt.gt_ignore_all
    npig_img = np.zeros((n_img, n_cat), np.int64)
    np.add.at(npig_img, (mt.gt_img[ok], mt.gt_cat[ok]), 1)
    return PerImage(mt.eval_ids, g.cat_ids, metrics.stats["AP"], mt.det_img.astype(np.int64), mt.det_score,
                    np.ascontiguousarray(mt.codes[:, 0, :]), mt.cat_start, npig_img, g.fingerprint, metrics)


def resample_indices(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_images) indices into the sorted image ids: row b is resample b."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_images, size=(n_resamples, n_images))


def paired_bootstrap(ref: PerImage, opt: PerImage, n_resamples: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> BootstrapCI:
    """Percentile CI of ΔAP = AP(opt) - AP(ref) over ``n_resamples`` paired image resamples."""
    if not np.array_equal(ref.image_ids, opt.image_ids) or ref.gt_fingerprint != opt.gt_fingerprint \
            or not np.array_equal(ref.npig_img, opt.npig_img):
        raise ConfigError("paired_bootstrap: ref and opt were matched on different images or ground truth; "
                          "call per_image_results with the same gt and img_ids for both")
    if n_resamples < 1:
        raise ConfigError(f"paired_bootstrap: n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"paired_bootstrap: alpha must be in (0, 1), got {alpha}")
    counts = _counts(resample_indices(ref.n_images, n_resamples, seed), ref.n_images)
    w_chunks = _chunk_weights(counts)
    # Integer-valued float64 matmul is exact (sums stay far below 2**53).
    npig_w = counts.astype(np.float64) @ ref.npig_img.astype(np.float64)
    ap_ref = _resampled_ap(ref, w_chunks, npig_w, n_resamples)
    ap_opt = _resampled_ap(opt, w_chunks, npig_w, n_resamples)
    deltas = ap_opt - ap_ref
    low, high = np.quantile(deltas, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(opt.ap - ref.ap, float(low), float(high), n_resamples, seed, alpha, ref.ap, opt.ap,
                       ref.n_images, deltas, ap_ref, ap_opt)


def _counts(draws: np.ndarray, n_images: int) -> np.ndarray:
    n_boot = draws.shape[0]
    flat = (draws + (np.arange(n_boot) * n_images)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images).astype(np.int32)


# Resamples per kernel task: wide enough for SIMD over resamples, small enough that the
# per-task accumulators stay in L1 and 2+ cores get several tasks each.
_CHUNK = 64  # at most 64: the kernel marks lanes changing level in one uint64


def _chunk_weights(counts: np.ndarray) -> np.ndarray:
    n_boot, n_img = counts.shape
    n_chunks = math.ceil(n_boot / _CHUNK)
    padded = np.zeros((n_chunks * _CHUNK, n_img), np.int32)
    padded[:n_boot] = counts
    out = np.ascontiguousarray(padded.reshape(n_chunks, _CHUNK, n_img).transpose(0, 2, 1))
    # uint8 keeps a chunk of weights (images x 64) inside L2; counts above 255 need int32.
    return out.astype(np.uint8) if counts.max(initial=0) < 256 else out


def _resampled_ap(pi: PerImage, w_chunks: np.ndarray, npig_w: np.ndarray, n_boot: int) -> np.ndarray:
    n = pi.det_img.size
    n_cat = pi.cat_ids.size
    # Runs of equal (category, image, score): pycocotools interleaves their copies.
    if n:
        brk = np.r_[True, (pi.det_img[1:] != pi.det_img[:-1]) | (pi.det_score[1:] != pi.det_score[:-1])]
        brk[pi.cat_start[:-1][pi.cat_start[:-1] < n]] = True
        starts = np.flatnonzero(brk)
        run_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n])).astype(np.int64)
    else:
        run_end = np.zeros(0, np.int64)
    # Per detection, bit t = IoU threshold t: where it is a TP, and where its FP runs start
    # and stop (the kernel keeps FP counts as a difference array over thresholds).
    bits = np.left_shift(np.uint32(1), np.arange(IOU_THRS.size, dtype=np.uint32))
    full = np.uint32((1 << IOU_THRS.size) - 1)
    fp_mask = ((pi.codes == 0) * bits).sum(axis=1, dtype=np.uint32)
    tp_bits = ((pi.codes == 1) * bits).sum(axis=1, dtype=np.uint32)
    fp_plus = fp_mask & ~(fp_mask << np.uint32(1)) & full
    fp_minus = ~fp_mask & (fp_mask << np.uint32(1)) & full
    # Nothing after a category's last TP (and the rest of its run) can change its precision.
    cat_end = pi.cat_start[:-1].astype(np.int64).copy()
    pos = np.flatnonzero(tp_bits)
    if pos.size:
        last = np.searchsorted(pos, pi.cat_start[1:]) - 1
        valid = (last >= 0) & (pos[np.maximum(last, 0)] >= pi.cat_start[:-1])
        cat_end[valid] = run_end[pos[last[valid]]]
    sums = np.empty((n_boot, IOU_THRS.size, n_cat))
    with kern.LOCK:
        kern.bootstrap_ap_sums(w_chunks, n_boot, npig_w, pi.det_img, fp_plus, fp_minus, tp_bits, run_end,
                               pi.cat_start, cat_end, IOU_THRS.size, REC_THRS, sums)
    present = npig_w > 0  # (B, K); absent categories are pycocotools' -1, left out of the mean
    n_present = present.sum(axis=1)
    total = np.nansum(sums, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = total / (n_present * IOU_THRS.size * REC_THRS.size)
    ap[n_present == 0] = -1.0
    return ap
