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


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thr: float, max_keep: int,
        agnostic: bool = False) -> np.ndarray:
    """Indices of kept candidates, highest score first (stable on ties: lower index first)."""
    if boxes.shape[0] == 0:
        return np.empty(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    kept = _greedy(np.ascontiguousarray(boxes[order], np.float64), np.ascontiguousarray(classes[order], np.int64),
                   float(iou_thr), int(max_keep), bool(agnostic))
    return order[kept]
