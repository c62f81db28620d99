"""Numba kernels behind :mod:`mapgate.evaluate` and :mod:`mapgate.bootstrap`.

Every floating-point expression here repeats pycocotools' own, operand for operand
(maskApi.c ``bbIou``, ``COCOeval.evaluateImg`` and ``COCOeval.accumulate``), so results are
bit-identical. No ``fastmath``: it would let LLVM reassociate or fuse (FMA) and break that.

Detection codes (one byte per detection, area range and IoU threshold):
``FP`` = 0 (counts as a false positive), ``TP`` = 1, ``IGN`` = 2 (ignored: matched to a
crowd / out-of-range gt, or unmatched and itself out of the area range).
"""

from __future__ import annotations

import threading

import numpy as np

# Why numba: greedy matching is a branchy loop NumPy can't vectorise; numba runs it at C speed, no extension to build.
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

FP = np.uint8(0)
TP = np.uint8(1)
IGN = np.uint8(2)

# np.spacing(1), the constant pycocotools adds to tp + fp.
_EPS = float(np.spacing(1))

# Numba's fallback "workqueue" threading layer aborts on concurrent parallel launches;
# callers hold this lock so evaluations from several Python threads queue instead.
LOCK = threading.Lock()


@njit(cache=True, error_model="numpy")
def iou_block(det_box: np.ndarray, ds: int, nd: int, gt_box: np.ndarray, gt_crowd: np.ndarray, gs: int,
              ng: int) -> np.ndarray:
    """IoU of detections ``[ds, ds + nd)`` against ground truths ``[gs, gs + ng)`` (xywh boxes): maskApi.c
    ``bbIou``, same operation order (da + ga - i; a crowd gt divides by da only). The one IoU of the
    package: the evaluation's matching and the error attribution both call it."""
    ious = np.zeros((nd, ng))
    for g in range(ng):
        gx = gt_box[gs + g, 0]
        gy = gt_box[gs + g, 1]
        gw = gt_box[gs + g, 2]
        gh = gt_box[gs + g, 3]
        ga = gw * gh
        crowd = gt_crowd[gs + g]
        for d in range(nd):
            dx = det_box[ds + d, 0]
            dy = det_box[ds + d, 1]
            dw = det_box[ds + d, 2]
            dh = det_box[ds + d, 3]
            da = dw * dh
            w = min(dw + dx, gw + gx) - max(dx, gx)
            if w <= 0:
                continue
            h = min(dh + dy, gh + gy) - max(dy, gy)
            if h <= 0:
                continue
            i = w * h
            u = da if crowd else da + ga - i
            ious[d, g] = i / u
    return ious


@njit(cache=True, parallel=True, error_model="numpy")
def match_groups(
    g_ds: np.ndarray,
    g_de: np.ndarray,
    g_gs: np.ndarray,
    g_ge: np.ndarray,
    det_box: np.ndarray,
    det_area: np.ndarray,
    gt_box: np.ndarray,
    gt_area: np.ndarray,
    gt_crowd: np.ndarray,
    gt_id_nonzero: np.ndarray,
    area_rng: np.ndarray,
    iou_thrs: np.ndarray,
    codes: np.ndarray,
) -> None:
    """Greedy COCO matching of every (image, category) group, for all area ranges and IoUs.

    Group ``g`` owns detections ``[g_ds, g_de)`` (score-sorted, already cut to maxDets) and
    ground truths ``[g_gs, g_ge)`` (annotation-file order). Writes ``codes[det, a, t]``.
    """
    n_groups = g_ds.shape[0]
    n_area = area_rng.shape[0]
    n_thr = iou_thrs.shape[0]
    for gi in prange(n_groups):
        ds = g_ds[gi]
        nd = g_de[gi] - ds
        gs = g_gs[gi]
        ng = g_ge[gi] - gs
        if nd == 0:
            continue
        if ng == 0:
            for d in range(nd):
                da = det_area[ds + d]
                for a in range(n_area):
                    out = da < area_rng[a, 0] or da > area_rng[a, 1]
                    c = IGN if out else FP
                    for t in range(n_thr):
                        codes[ds + d, a, t] = c
            continue
        ious = iou_block(det_box, ds, nd, gt_box, gt_crowd, gs, ng)
        order = np.empty(ng, np.int64)
        ig = np.empty(ng, np.bool_)
        taken = np.empty(ng, np.bool_)
        for a in range(n_area):
            lo = area_rng[a, 0]
            hi = area_rng[a, 1]
            for g in range(ng):
                ar = gt_area[gs + g]
                ig[g] = gt_crowd[gs + g] or ar < lo or ar > hi
            # evaluateImg sorts gt by _ignore with a stable sort: regular first, file order kept.
            p = 0
            for g in range(ng):
                if not ig[g]:
                    order[p] = g
                    p += 1
            for g in range(ng):
                if ig[g]:
                    order[p] = g
                    p += 1
            for t in range(n_thr):
                thr = min(iou_thrs[t], 1 - 1e-10)
                taken[:] = False
                for d in range(nd):
                    best = thr
                    m = -1
                    for oi in range(ng):
                        g = order[oi]
                        if taken[g] and not gt_crowd[gs + g]:
                            continue
                        if m > -1 and not ig[m] and ig[g]:
                            break
                        if ious[d, g] < best:
                            continue
                        best = ious[d, g]
                        m = g
                    matched = False
                    dig = False
                    if m > -1:
                        taken[m] = True
                        # pycocotools stores the gt id in dtm; an id of 0 reads as "unmatched".
                        matched = gt_id_nonzero[gs + m]
                        dig = ig[m]
                    if not matched:
                        da = det_area[ds + d]
                        if da < lo or da > hi:
                            dig = True
                    if dig:
                        codes[ds + d, a, t] = IGN
                    elif matched:
                        codes[ds + d, a, t] = TP
                    else:
                        codes[ds + d, a, t] = FP


@njit(cache=True, parallel=True, error_model="numpy")
def accumulate(
    codes: np.ndarray,
    rank: np.ndarray,
    cat_start: np.ndarray,
    npig: np.ndarray,
    max_dets: np.ndarray,
    rec_thrs: np.ndarray,
    precision: np.ndarray,
    recall: np.ndarray,
) -> None:
    """COCOeval.accumulate on detections sorted by (category, -score, image, rank).

    ``precision`` (T,R,K,A,M) and ``recall`` (T,K,A,M) must come in filled with -1.
    Ignored detections stay in the sequence (adding 0 to tp and fp) exactly as in
    pycocotools, so rc/pr/envelope/searchsorted see the same arrays.
    """
    n_cat = cat_start.shape[0] - 1
    n_area = codes.shape[1]
    n_thr = codes.shape[2]
    n_rec = rec_thrs.shape[0]
    for k in prange(n_cat):
        s0 = cat_start[k]
        s1 = cat_start[k + 1]
        n = s1 - s0
        rc = np.empty(n)
        pr = np.empty(n)
        for a in range(n_area):
            npg = npig[k, a]
            if npg == 0:
                continue
            for mi in range(max_dets.shape[0]):
                md = max_dets[mi]
                for t in range(n_thr):
                    tp = 0.0
                    fp = 0.0
                    nd = 0
                    for j in range(s0, s1):
                        if rank[j] >= md:
                            continue
                        c = codes[j, a, t]
                        if c == TP:
                            tp += 1.0
                        elif c == FP:
                            fp += 1.0
                        rc[nd] = tp / npg
                        pr[nd] = tp / (fp + tp + _EPS)
                        nd += 1
                    recall[t, k, a, mi] = rc[nd - 1] if nd > 0 else 0.0
                    for i in range(nd - 1, 0, -1):
                        if pr[i] > pr[i - 1]:  # noqa: PLR1730 - pycocotools' envelope, verbatim
                            pr[i - 1] = pr[i]
                    # np.searchsorted(rc, recThrs, side="left") as a merge; q stays 0 past the end.
                    p = 0
                    for r in range(n_rec):
                        while p < nd and rc[p] < rec_thrs[r]:
                            p += 1
                        if p < nd:
                            precision[t, r, k, a, mi] = pr[p]
                        else:
                            precision[t, r, k, a, mi] = 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def bootstrap_ap_sums(
    w_chunks: np.ndarray,
    n_boot: int,
    npig_w: np.ndarray,
    det_img: np.ndarray,
    fp_plus: np.ndarray,
    fp_minus: np.ndarray,
    tp_bits: np.ndarray,
    run_end: np.ndarray,
    cat_start: np.ndarray,
    cat_end: np.ndarray,
    n_thr: int,
    rec_thrs: np.ndarray,
    sums: np.ndarray,
) -> None:
    """Per resample, IoU threshold and category: the sum over recall thresholds of COCO's
    interpolated precision, re-accumulated with image multiplicities as weights.

    ``w_chunks[c, i, b]`` is how often image ``i`` was drawn in resample ``c * 64 + b``; the
    64 resamples of a chunk are SIMD lanes. Detections are sorted by (category, -score,
    image, rank); ``run_end[j]`` ends the run sharing j's image and score. A one-detection
    run drawn w times enters once with weight w (its intermediate copies never raise the
    envelope). Longer runs are replayed copy by copy, because pycocotools interleaves the
    copies (copy 1: d1 d2, copy 2: d1 d2) and that order can move the envelope.

    FP counts live in a difference array over IoU thresholds (fp[t] = sum of fpd[:t+1]):
    a detection that is FP from threshold t0 upwards, the usual case, is one add at
    ``fp_plus`` bit t0 instead of ten; ``fp_minus`` closes runs that stop early.

    Only TP points (``tp_bits``) are recorded: an FP or ignored point has the recall of the
    TP before it and no higher precision, so it never changes max{pr_j : rc_j >= thr}; nor
    does the no-op point an undrawn image's TP leaves, which keeps the lane loop
    branch-free. With levels L_j = #{thr <= rc_j}, q[r] = max over levels > r of the best pr
    at that level. ``need[b, L]`` (least tp with fl(tp / npig) >= thr_L) replaces the recall
    division; a lane keeps a running max ``cm`` for its current level and flushes it on a
    level change (a bit mask finds the few lanes that change). ``npig_w[b, k] == 0`` marks
    the category absent (pycocotools' -1): its sums are NaN.
    """
    n_chunks = w_chunks.shape[0]
    cb = w_chunks.shape[2]
    n_cat = cat_start.shape[0] - 1
    n_rec = rec_thrs.shape[0]
    for ch in prange(n_chunks):
        b0 = ch * cb
        nb = min(cb, n_boot - b0)
        tp = np.empty((n_thr, cb))
        fpd = np.empty((n_thr, cb))
        fpt = np.empty(cb)
        inc = np.empty(cb)
        cm = np.empty((n_thr, cb))
        nxt = np.empty((n_thr, cb))
        lvl = np.empty((n_thr, cb), np.int64)
        lmax = np.empty((n_thr, n_rec + 1, cb))
        need = np.empty((cb, n_rec + 1))
        npg = np.empty(cb)
        prv = np.empty(cb)
        run = np.empty(cb)
        acc = np.empty(cb)
        for k in range(n_cat):
            for b in range(nb):
                npg[b] = npig_w[b0 + b, k]
                _level_needs(npg[b], rec_thrs, need[b])
            tp[:, :] = 0.0
            fpd[:, :] = 0.0
            cm[:, :] = 0.0
            lvl[:, :] = 0
            lmax[:, :, :] = 0.0
            for t in range(n_thr):
                for b in range(nb):
                    nxt[t, b] = need[b, 0]
            j = cat_start[k]
            end = cat_end[k]
            while j < end:
                re = run_end[j]
                i = det_img[j]
                if re - j == 1:
                    for b in range(nb):
                        inc[b] = w_chunks[ch, i, b]
                    _det_event(j, nb, inc, fp_plus, fp_minus, tp_bits, tp, fpd, fpt, cm, nxt, lvl, lmax, need, prv)
                else:
                    maxw = 0
                    for b in range(nb):
                        maxw = max(maxw, np.int64(w_chunks[ch, i, b]))
                    for cpy in range(maxw):
                        for b in range(nb):
                            inc[b] = 1.0 if w_chunks[ch, i, b] > cpy else 0.0
                        for jj in range(j, re):
                            _det_event(jj, nb, inc, fp_plus, fp_minus, tp_bits, tp, fpd, fpt, cm, nxt, lvl, lmax,
                                       need, prv)
                j = re
            for t in range(n_thr):
                for b in range(nb):
                    lv = lvl[t, b]
                    lmax[t, lv, b] = max(lmax[t, lv, b], cm[t, b])
                run[:] = 0.0
                acc[:] = 0.0
                for r in range(n_rec, 0, -1):
                    for b in range(nb):
                        run[b] = max(run[b], lmax[t, r, b])
                        acc[b] += run[b]
                for b in range(nb):
                    sums[b0 + b, t, k] = np.nan if npg[b] == 0 else acc[b]


@njit(cache=True, inline="always", error_model="numpy")
def _det_event(j, nb, inc, fp_plus, fp_minus, tp_bits, tp, fpd, fpt, cm, nxt, lvl, lmax, need, prv):  # type: ignore[no-untyped-def]
    """One detection (weights ``inc`` per lane) at every IoU threshold."""
    m = np.uint64(fp_plus[j])
    while m:
        t = trailing_zeros(m)
        m &= m - np.uint64(1)
        for b in range(nb):
            fpd[t, b] += inc[b]
    m = np.uint64(fp_minus[j])
    while m:
        t = trailing_zeros(m)
        m &= m - np.uint64(1)
        for b in range(nb):
            fpd[t, b] -= inc[b]
    m = np.uint64(tp_bits[j])
    while m:
        t = trailing_zeros(m)
        m &= m - np.uint64(1)
        for b in range(nb):
            fpt[b] = fpd[0, b]
        for tt in range(1, t + 1):
            for b in range(nb):
                fpt[b] += fpd[tt, b]
        cross_mask = np.uint64(0)
        for b in range(nb):
            tpb = tp[t, b] + inc[b]
            tp[t, b] = tpb
            p = tpb / (fpt[b] + tpb + _EPS)
            cross = tpb >= nxt[t, b]
            cross_mask |= np.uint64(cross) << np.uint64(b)
            prv[b] = cm[t, b]
            cm[t, b] = p if cross else max(cm[t, b], p)
        while cross_mask:
            b = trailing_zeros(cross_mask)
            cross_mask &= cross_mask - np.uint64(1)
            lv = lvl[t, b]
            if prv[b] > lmax[t, lv, b]:  # noqa: PLR1730 - a store only when it changes
                lmax[t, lv, b] = prv[b]
            tpb = tp[t, b]
            while tpb >= need[b, lv]:
                lv += 1
            lvl[t, b] = lv
            nxt[t, b] = need[b, lv]


@njit(cache=True, error_model="numpy")
def _level_needs(npg, rec_thrs, need):  # type: ignore[no-untyped-def]
    """need[r] = least integer tp with fl(tp / npg) >= rec_thrs[r]; need[R] = inf (sentinel)."""
    n_rec = rec_thrs.shape[0]
    for r in range(n_rec):
        if npg <= 0:
            need[r] = np.inf
            continue
        x = np.ceil(rec_thrs[r] * npg)
        # The guess can be one off either way after rounding; settle it with the exact test.
        while x > 0 and (x - 1.0) / npg >= rec_thrs[r]:
            x -= 1.0
        while x / npg < rec_thrs[r]:
            x += 1.0
        need[r] = x
    need[n_rec] = np.inf
