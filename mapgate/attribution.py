"""Where the AP points went: TIDE's error attribution of ΔAP, on mapgate's own COCO matching.

TIDE (Bolya et al., ECCV 2020, "TIDE: A General Toolbox for Identifying Object Detection
Errors") sorts every false positive at IoU 0.5 into one error type, then measures what each
type costs with an oracle: fix all errors of that type alone and see how much AP50 comes
back. Its definitions, with foreground IoU t_f = 0.5 and background IoU t_b = 0.1:

* **cls** (classification): IoU >= t_f with a ground truth of another class;
* **loc** (localization): right class, t_b <= IoU <= t_f with a ground truth of that class;
* **both**: wrong class and t_b < IoU < t_f (whatever is left over);
* **dupe** (duplicate): right class, IoU >= t_f with a ground truth a higher-scored
  detection already matched;
* **bkg** (background): IoU <= t_b with every ground truth;
* **missed**: a ground truth no detection matched and no cls/loc error could recover.

Fixes: cls and loc turn the best-scored detection of each unmatched target ground truth into a
true positive (others aimed at the same ground truth, or at one already matched, are
suppressed), dupe/bkg/both suppress the detection, missed removes the ground truth from the
positives. A comparison runs this on both sides; ``difference[type]`` = opt minus ref
contribution = extra AP50 points the optimized engine loses to that error type.

Why not the ``tidecv`` package: it re-implements matching with its own AP (100 detections per
image not per class, classes with only false positives averaged in as AP 0, crowd handled by
its own ignore rule) and its own pure-Python loops, and is unmaintained since 2020; here the
true/false positives are exactly pycocotools' (mapgate's bit-identical matcher at IoU 0.5, area
"all", top 100 per image and category) and each oracle AP is re-accumulated by mapgate's COCO
kernel, so the unfixed AP50 equals the reported AP50 to the last bit, in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from mapgate._coco_kernels import iou_block
from mapgate.evaluate import (AREA_RNG, MAX_DETS, REC_THRS, GroundTruth, Metrics, PathLike, _det_arrays,
                              _isin_sorted, _mean_valid, _select_images, load_ground_truth)

T_FG = 0.5
T_BG = 0.1
ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "missed")
ERROR_NAMES = {"cls": "classification", "loc": "localization", "both": "classification and localization",
               "dupe": "duplicate", "bkg": "background", "missed": "missed ground truth"}
SIZES = ("small", "medium", "large")
WORST_CLASSES = 5

# per-detection labels and error codes of the kernel
_FP, _TP, _IGN = 0, 1, 2
_NONE, _CLS, _LOC, _BOTH, _DUPE, _BKG = 0, 1, 2, 3, 4, 5
_CODE = {"cls": _CLS, "loc": _LOC, "both": _BOTH, "dupe": _DUPE, "bkg": _BKG}


@njit(cache=True, parallel=True, error_model="numpy")
def _tide_images(d_start, d_box, d_cat, g_start, g_box, g_cat, g_crowd, t_fg, t_bg,
                 label, err, target, g_used):  # type: ignore[no-untyped-def]
    """Per image: COCO's greedy match at ``t_fg`` (pycocotools' evaluateImg for area "all"),
    then TIDE's error type of each false positive. Detections of an image come score-sorted."""
    for i in prange(d_start.shape[0] - 1):
        ds, de = d_start[i], d_start[i + 1]
        gs, ge = g_start[i], g_start[i + 1]
        nd, ng = de - ds, ge - gs
        if nd == 0:
            continue
        ious = iou_block(d_box, ds, nd, g_box, g_crowd, gs, ng)
        thr = min(t_fg, 1 - 1e-10)
        for d in range(nd):
            # regular ground truth first, then crowd; the last of equal IoUs wins, as in evaluateImg
            m = -1
            best = thr
            for crowd_pass in range(2):
                for g in range(ng):
                    if g_cat[gs + g] != d_cat[ds + d] or g_crowd[gs + g] != (crowd_pass == 1):
                        continue
                    if crowd_pass == 0 and g_used[gs + g]:
                        continue
                    if ious[d, g] >= best:
                        best = ious[d, g]
                        m = g
                if m > -1:
                    break
            if m == -1:
                label[ds + d] = _FP
            elif g_crowd[gs + m]:
                label[ds + d] = _IGN
            else:
                label[ds + d] = _TP
                g_used[gs + m] = True
                target[ds + d] = gs + m
        n_regular = 0
        for g in range(ng):
            if not g_crowd[gs + g]:
                n_regular += 1
        for d in range(nd):
            if label[ds + d] != _FP:
                continue
            if n_regular == 0:
                err[ds + d] = _BKG
                continue
            s_iou, s_idx, o_iou, o_idx, u_iou, a_iou = -1.0, -1, -1.0, -1, -1.0, -1.0
            for g in range(ng):
                if g_crowd[gs + g]:
                    continue
                v = ious[d, g]
                a_iou = max(a_iou, v)
                if g_cat[gs + g] == d_cat[ds + d]:
                    if v > s_iou:
                        s_iou, s_idx = v, g
                    if g_used[gs + g]:
                        u_iou = max(u_iou, v)
                elif v > o_iou:
                    o_iou, o_idx = v, g
            if s_idx > -1 and t_bg <= s_iou <= t_fg:
                err[ds + d] = _LOC
                target[ds + d] = gs + s_idx
            elif o_idx > -1 and o_iou >= t_fg:
                err[ds + d] = _CLS
                target[ds + d] = gs + o_idx
            elif u_iou >= t_fg:
                err[ds + d] = _DUPE
            elif a_iou <= t_bg:
                err[ds + d] = _BKG
            else:
                err[ds + d] = _BOTH


@dataclass(frozen=True, eq=False)
class ErrorProfile:
    """One detection set's TIDE errors: counts, and AP50 points each error type costs (its oracle)."""

    ap50: float  # COCO AP50 (fraction), equal to mapgate.evaluate's
    counts: dict[str, int]
    contributions: dict[str, float]  # AP50 points gained by fixing only this error type
    false_positives: float  # AP50 points with every false positive suppressed (TIDE's "FalsePos")
    false_negatives: float  # AP50 points with perfect recall at the same precision (TIDE's "FalseNeg")
    missed_by_size: dict[str, int]
    missed_by_class: dict[int, int]
    n_gt: int

    def to_dict(self) -> dict[str, Any]:
        return {"AP50": self.ap50, "n_gt": self.n_gt,
                "errors": {t: {"count": self.counts[t], "dAP50_points": self.contributions[t]} for t in ERROR_TYPES},
                "false_positives_dAP50_points": self.false_positives,
                "false_negatives_dAP50_points": self.false_negatives,
                "missed_by_size": dict(self.missed_by_size)}


@dataclass(frozen=True, eq=False)
class _Classified:
    """Per detection (score order within each image): its input index, COCO label at IoU 0.5 and TIDE error."""

    src: np.ndarray  # index into the caller's detection list
    label: np.ndarray  # _FP / _TP / _IGN
    err: np.ndarray  # _NONE or an error code
    target: np.ndarray  # matched (TP) or aimed-at (cls/loc) ground truth, index into the gt arrays below
    det_img: np.ndarray
    det_cat: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    gt_cat: np.ndarray
    gt_crowd: np.ndarray
    gt_area: np.ndarray
    gt_used: np.ndarray
    n_cat: int


def _classify(g: GroundTruth, dets: Sequence[Mapping[str, Any]], eval_ids: np.ndarray) -> _Classified:
    n_cat = g.cat_ids.size
    d = _det_arrays(dets)
    # detections on evaluated images, top 100 per (image, category) as COCOeval keeps them
    sel = np.flatnonzero(_isin_sorted(d.img, eval_ids) & _isin_sorted(d.cat, g.cat_ids))
    img_i = np.searchsorted(eval_ids, d.img[sel])
    cat_i = np.searchsorted(g.cat_ids, d.cat[sel])
    order = np.lexsort((-d.score[sel], img_i * n_cat + cat_i))
    key = (img_i * n_cat + cat_i)[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
    rank = np.arange(key.size) - np.repeat(starts, np.diff(np.r_[starts, key.size]))
    order, rank = order[rank < MAX_DETS[-1]], rank[rank < MAX_DETS[-1]]
    # per image, score order (stable: equal scores keep input order, as pycocotools' mergesort)
    by_img = np.lexsort((-d.score[sel][order], img_i[order]))
    src = sel[order][by_img]
    rank = rank[by_img]
    det_img, det_cat = img_i[order][by_img], cat_i[order][by_img].astype(np.int64)

    gsel = np.flatnonzero(_isin_sorted(g.ann_img, eval_ids))
    gsel = gsel[np.argsort(g.ann_img[gsel], kind="stable")]
    gt_img = np.searchsorted(eval_ids, g.ann_img[gsel])
    gt_cat = np.searchsorted(g.cat_ids, g.ann_cat[gsel]).astype(np.int64)
    n_img = eval_ids.size
    d_start = np.searchsorted(det_img, np.arange(n_img + 1)).astype(np.int64)
    g_start = np.searchsorted(gt_img, np.arange(n_img + 1)).astype(np.int64)
    n = src.size
    label = np.zeros(n, np.uint8)
    err = np.zeros(n, np.uint8)
    target = np.full(n, -1, np.int64)
    g_used = np.zeros(gsel.size, np.bool_)
    _tide_images(d_start, np.ascontiguousarray(d.box[src]), det_cat, g_start, np.ascontiguousarray(g.ann_box[gsel]),
                 gt_cat, g.ann_crowd[gsel], T_FG, T_BG, label, err, target, g_used)
    return _Classified(src, label, err, target, det_img, det_cat, d.score[src], rank, gt_cat, g.ann_crowd[gsel],
                       g.ann_area[gsel], g_used, n_cat)


def error_profile(gt: GroundTruth | Mapping[str, Any] | PathLike, dets: Sequence[Mapping[str, Any]],
                  img_ids: Iterable[int] | None = None) -> ErrorProfile:
    """TIDE's error types and oracle contributions for ``dets`` (COCO results, never modified)."""
    g = load_ground_truth(gt)
    c = _classify(g, dets, _select_images(g, img_ids))
    label, err, target, score, det_cat, gt_cat, n_cat = c.label, c.err, c.target, c.score, c.det_cat, c.gt_cat, c.n_cat
    n = label.size

    # BestGTMatch: of the cls/loc errors aimed at one unmatched ground truth, only the best scored is
    # fixed; the others are suppressed. A ground truth some error could recover is not "missed".
    aimed = ((err == _CLS) | (err == _LOC)) & (target >= 0)
    aimed &= ~c.gt_used[np.maximum(target, 0)]
    cand = np.flatnonzero(aimed)
    cand = cand[np.lexsort((-score[cand], target[cand]))]
    first = cand[np.r_[True, target[cand][1:] != target[cand][:-1]]] if cand.size else cand
    fixer = np.zeros(n, bool)
    fixer[first] = True
    usable = np.zeros(gt_cat.size, bool)
    usable[target[cand]] = True
    regular = ~c.gt_crowd
    missed = regular & ~c.gt_used & ~usable
    npig = np.bincount(gt_cat[regular], minlength=n_cat)

    def ap50(codes: np.ndarray, cats: np.ndarray, npos: np.ndarray) -> float:
        return _ap50(codes, cats, score, c.det_img, c.rank, npos, n_cat)

    base = ap50(label, det_cat, npig)
    contrib: dict[str, float] = {}
    for name, code in _CODE.items():
        mine = err == code
        codes, cats = label.copy(), det_cat
        codes[mine] = _IGN
        if code in (_CLS, _LOC):
            fix = mine & fixer
            codes[fix] = _TP
            if code == _CLS:
                cats = det_cat.copy()
                cats[fix] = gt_cat[target[fix]]
        contrib[name] = 100.0 * max(ap50(codes, cats, npig) - base, 0.0)  # TIDE clips binning noise at 0
    npig_fixed = npig - np.bincount(gt_cat[missed], minlength=n_cat)
    fixed = ap50(label, det_cat, npig_fixed)
    # nothing left to find (every ground truth was missed): the oracle is perfect, not undefined
    contrib["missed"] = 100.0 * max((1.0 if fixed < 0 <= base else fixed) - base, 0.0)
    no_fp = np.where(label == _FP, _IGN, label).astype(np.uint8)
    tp_per_cat = np.bincount(det_cat[label == _TP], minlength=n_cat)
    fp_gain = 100.0 * (ap50(no_fp, det_cat, npig) - base)
    fn_gain = 100.0 * (ap50(label, det_cat, np.where(npig > 0, np.maximum(tp_per_cat, 1), 0)) - base)

    counts = {name: int(np.count_nonzero(err == code)) for name, code in _CODE.items()}
    counts["missed"] = int(missed.sum())
    size_of = np.searchsorted(AREA_RNG[1:, 1], c.gt_area[missed], side="left")  # 0 small, 1 medium, 2 large
    by_size = {s: int(np.count_nonzero(size_of == k)) for k, s in enumerate(SIZES)}
    by_class = np.bincount(gt_cat[missed], minlength=n_cat)
    return ErrorProfile(base, counts, contrib, fp_gain, fn_gain, by_size,
                        {int(g.cat_ids[k]): int(by_class[k]) for k in range(n_cat)}, int(regular.sum()))


def _ap50(codes: np.ndarray, cats: np.ndarray, score: np.ndarray, img: np.ndarray, rank: np.ndarray,
          npig: np.ndarray, n_cat: int) -> float:
    """COCO AP at IoU 0.5 (area all, 100 detections) of labelled detections: COCOeval.accumulate's
    numpy for one IoU threshold (one call here is ~20x cheaper than a parallel kernel launch)."""
    acc = np.lexsort((rank, img, -score, cats))
    c, k_sorted = codes[acc], cats[acc]
    bounds = np.searchsorted(k_sorted, np.arange(n_cat + 1))
    precision = -np.ones((1, REC_THRS.size, n_cat, 1, 1))
    for k in np.flatnonzero(npig > 0):
        seg = c[bounds[k]:bounds[k + 1]]
        tp = np.cumsum(seg == _TP).astype(float)
        fp = np.cumsum(seg == _FP).astype(float)
        q = np.zeros(REC_THRS.size)
        if tp.size:
            rc = tp / npig[k]
            pr = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[::-1])[::-1]
            inds = np.searchsorted(rc, REC_THRS, side="left")
            ok = inds < tp.size
            q[ok] = pr[inds[ok]]
        precision[0, :, k, 0, 0] = q
    return _mean_valid(precision)


def attribute(gt: GroundTruth | Mapping[str, Any] | PathLike, ref_dets: Sequence[Mapping[str, Any]],
              opt_dets: Sequence[Mapping[str, Any]], img_ids: Iterable[int] | None = None, *,
              ref_metrics: Metrics | None = None, opt_metrics: Metrics | None = None,
              worst: int = WORST_CLASSES) -> dict[str, Any]:
    """The attribution of a comparison (the ``attribution`` key of comparison.json).

    ``difference[type]`` is the optimized side's contribution minus the reference's: AP50
    points the optimized engine loses (positive) or gains (negative) through that error type.
    With both ``Metrics``, also ΔAP by object size and the classes that lost the most.
    """
    g = load_ground_truth(gt)
    ids = None if img_ids is None else list(img_ids)
    ref = error_profile(g, ref_dets, ids)
    opt = error_profile(g, opt_dets, ids)
    diff = {t: opt.contributions[t] - ref.contributions[t] for t in ERROR_TYPES}
    out: dict[str, Any] = {
        "method": (f"TIDE (Bolya et al., ECCV 2020) error types on mapgate's COCO matching at IoU {T_FG} "
                   f"(background below {T_BG}); each error type's dAP50 is the AP50 gained by fixing only that "
                   "type (TIDE's oracle); difference = optimized minus reference"),
        "iou_foreground": T_FG, "iou_background": T_BG,
        "reference": ref.to_dict(), "optimized": opt.to_dict(),
        "difference_dAP50_points": diff,
        "delta_AP50_points": 100.0 * (opt.ap50 - ref.ap50),
        "where_points_went": [{"error": t, "name": ERROR_NAMES[t], "points": diff[t],
                               "count_reference": ref.counts[t], "count_optimized": opt.counts[t]}
                              for t in sorted(ERROR_TYPES, key=lambda t: -diff[t])],
        "missed_by_size": {s: {"reference": ref.missed_by_size[s], "optimized": opt.missed_by_size[s]} for s in SIZES},
    }
    if ref_metrics is not None and opt_metrics is not None:
        out["by_size"] = {s: {"reference_AP": ref_metrics.stats[k], "optimized_AP": opt_metrics.stats[k],
                              "delta_AP_points": 100.0 * (opt_metrics.stats[k] - ref_metrics.stats[k])
                              if ref_metrics.stats[k] >= 0 else None}
                          for s, k in zip(SIZES, ("APs", "APm", "APl"))}
        rows = []
        for cid, r in ref_metrics.per_category.items():
            o = opt_metrics.per_category[cid]
            if r.ap < 0:
                continue
            rows.append({"category_id": cid, "name": r.name, "n_gt": r.n_gt, "delta_AP_points": 100.0 * (o.ap - r.ap),
                         "delta_AP50_points": 100.0 * (o.ap50 - r.ap50),
                         "missed_reference": ref.missed_by_class.get(cid, 0),
                         "missed_optimized": opt.missed_by_class.get(cid, 0)})
        out["worst_classes"] = sorted(rows, key=lambda r: r["delta_AP_points"])[:worst]
    return out


def summary_lines(attribution: Mapping[str, Any]) -> list[str]:
    """Markdown lines for the summary: where the AP50 points went, by size, worst classes."""
    lines = [f"### Where the points went (TIDE error types, dAP50 {attribution['delta_AP50_points']:+.2f} points)", "",
             "| error | reference dAP50 | optimized dAP50 | extra loss (points) | count ref -> opt |",
             "|---|---:|---:|---:|---:|"]
    ref, opt = attribution["reference"]["errors"], attribution["optimized"]["errors"]
    for row in attribution["where_points_went"]:
        t = row["error"]
        lines.append(f"| {row['name']} | {ref[t]['dAP50_points']:.2f} | {opt[t]['dAP50_points']:.2f} | "
                     f"{row['points']:+.2f} | {row['count_reference']} -> {row['count_optimized']} |")
    missed = attribution["missed_by_size"]
    lines += ["", "- missed ground truth by size (ref -> opt): "
              + ", ".join(f"{s} {missed[s]['reference']} -> {missed[s]['optimized']}" for s in SIZES)]
    if "by_size" in attribution:
        lines.append("- dAP by size: " + ", ".join(
            f"{s} {v['delta_AP_points']:+.2f}" for s, v in attribution["by_size"].items() if v["delta_AP_points"] is not None))
    if attribution.get("worst_classes"):
        lines.append("- worst classes (dAP points): " + ", ".join(
            f"{r['name']} {r['delta_AP_points']:+.2f} (n_gt {r['n_gt']})" for r in attribution["worst_classes"]))
    lines.append("")
    return lines
