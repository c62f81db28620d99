"""Greedy NMS, compiled with numba.

Candidates are visited in descending score order and the loop stops once ``max_keep`` boxes
are kept: a box's fate depends only on higher-scoring boxes, so per-class NMS followed by a
global top-K equals this single pass (the TF OD API's per-class cap never binds below K).
numba because at TF OD API's 1e-8 threshold an SSD head yields ~170k candidates, and a
Python loop would cost more than the network.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _greedy(boxes: np.ndarray, classes: np.ndarray, iou_thr: float, max_keep: int, agnostic: bool) -> np.ndarray:
    n = boxes.shape[0]
    keep = np.empty(min(n, max_keep), np.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = 0
    for i in range(n):
        if k == max_keep:
            break
        ok = True
        for m in range(k):
            j = keep[m]
            if not agnostic and classes[j] != classes[i]:
                continue
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if iw <= 0.0 or ih <= 0.0:
                continue
            inter = iw * ih
            union = areas[i] + areas[j] - inter
            if union > 0.0 and inter / union > iou_thr:
                ok = False
                break
        if ok:
            keep[k] = i
            k += 1
    return keep[:k]


def _stable_top_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores (plus any tied with the k-th) in stable descending order, without
    sorting everything: at TF OD API's 1e-8 threshold an SSD yields ~170k candidates, and a full
    sort alone costs as much as the network."""
    if scores.size <= k:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    head = np.flatnonzero(scores >= kth)  # ascending index, so the stable sort keeps index order on ties
    return head[np.argsort(-scores[head], kind="stable")]


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thr: float, max_keep: int,
        agnostic: bool = False, box_index: np.ndarray | None = None) -> np.ndarray:
    """Indices (into ``scores``) of kept candidates, highest score first; ties keep the lower index first.

    Candidate i has box ``boxes[box_index[i]]`` (``box_index`` None: ``boxes[i]``), so multi-label
    candidates need not copy their boxes before the few that matter are known.
    """
    n = scores.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    k = max(64 * max_keep, 4096)
    while True:
        order = _stable_top_order(scores, k)
        rows = order if box_index is None else box_index[order]
        kept = _greedy(np.ascontiguousarray(boxes[rows], np.float64), np.ascontiguousarray(classes[order], np.int64),
                       float(iou_thr), int(max_keep), bool(agnostic))
        # the head of the full order is exactly this order, so the result is final unless we ran out of
        # candidates before keeping max_keep and more remain
        if kept.size == max_keep or order.size == n:
            return order[kept]
        k *= 8


def nms_dense(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_thr: float, max_keep: int,
              agnostic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label NMS straight on a (N boxes, C classes) score matrix: every (box, class) above
    the threshold is a candidate. Returns kept (box index, class index), best first.

    Equals ``nms`` over ``np.nonzero(scores > threshold)`` (whose order is the row-major flat index),
    but never materialises the ~170k candidates of an SSD head at a 1e-8 threshold.
    """
    flat = scores.ravel()
    n_classes = scores.shape[1]
    above = flat > score_threshold
    n = int(np.count_nonzero(above))
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    k = max(64 * max_keep, 4096)
    while True:
        step = max(1, flat.size // 8192)
        rank = -(-k // step)
        if n <= k or rank >= flat[::step].size - 1:
            head = np.flatnonzero(above)
        else:
            # Any cut t is exact (all entries >= t are a prefix of the stable order, and the loop widens
            # if that prefix runs out); a strided sample's quantile makes it cheap to get ~k of them.
            sample = flat[::step]
            cut = max(float(-np.partition(-sample, rank)[rank]), 0.0)
            head = np.flatnonzero(above & (flat >= cut)) if cut > score_threshold else np.flatnonzero(above)
        order = head[np.argsort(-flat[head], kind="stable")]
        box_idx, cls_idx = np.divmod(order, n_classes)
        kept = _greedy(np.ascontiguousarray(boxes[box_idx], np.float64), cls_idx, float(iou_thr), int(max_keep),
                       bool(agnostic))
        if kept.size == max_keep or order.size == n:
            return box_idx[kept], cls_idx[kept]
        k *= 8
