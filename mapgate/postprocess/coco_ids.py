"""COCO class spaces: the 80 contiguous training indices vs the 90 sparse official ids."""

from __future__ import annotations

import numpy as np

# The official val2017 category ids in the order of the 80 training classes (coco.names order).
COCO80_TO_ID = np.array([
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
], dtype=np.int64)
VALID_IDS = frozenset(int(i) for i in COCO80_TO_ID)


def to_coco_ids(class_index: np.ndarray, class_space: str, class_offset: int) -> np.ndarray:
    """Model class indices -> official COCO ids; ids outside the 80 become -1 (dropped later)."""
    idx = class_index.astype(np.int64)
    if class_space == "coco80":
        out = np.full(idx.shape, -1, np.int64)
        ok = (idx >= 0) & (idx < len(COCO80_TO_ID))
        out[ok] = COCO80_TO_ID[idx[ok]]
        return out
    ids = idx + class_offset
    valid = np.isin(ids, COCO80_TO_ID)
    return np.where(valid, ids, -1)
