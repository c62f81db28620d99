"""Post-processing shared by every backend of a model: decode -> threshold -> NMS -> top-K ->
original-image pixels -> official COCO ids -> COCO results records.

A decoder (one module per family, looked up by the manifest's ``family``) turns raw output
tensors of one image into candidates in network-input pixels; everything after that is the
same code for every family and every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mapgate.manifest import ModelSpec
from mapgate.postprocess.coco_ids import to_coco_ids
from mapgate.postprocess.nms import nms, nms_dense
from mapgate.preprocess import Transform
from mapgate.postprocess.family import all_families
from mapgate.errors import ConfigError


@dataclass
class Candidates:
    """Decoded boxes (N,4) xyxy in network-input pixels.

    Either ``scores`` is (N, C) per-class scores (``classes`` None) and thresholding/NMS
    follow the manifest, or the model already ran NMS inside the graph and ``scores``/``classes``
    are (N,) (``final`` True).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray | None = None
    final: bool = False


def decoder_for(family: str) -> Any:
    """The decoder module of ``family`` (a module of this package declaring ``FAMILY``; see family.py)."""

    found = all_families()
    if family not in found:
        raise ConfigError(f"unknown family {family!r}; known families: {', '.join(found)}")
    return found[family][1]


def select(c: Candidates, model: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Threshold + NMS + top-K on candidates; returns (boxes, scores, class indices)."""
    post = model.postprocess
    if c.final and c.classes is not None:
        keep = np.flatnonzero(c.scores > post.score_threshold)
        keep = keep[np.argsort(-c.scores[keep], kind="stable")][: post.max_detections]
        return c.boxes[keep], c.scores[keep], c.classes[keep]
    scores = c.scores
    if post.multi_label and post.nms != "none" and not post.pre_nms_top_k and not post.pre_nms_top_k_per_class:
        box_idx, cls_idx = nms_dense(c.boxes, scores, post.score_threshold, post.nms_iou, post.max_detections,
                                     agnostic=post.nms == "agnostic")
        return c.boxes[box_idx], scores[box_idx, cls_idx], cls_idx
    if post.multi_label:
        box_idx, cls_idx = np.nonzero(scores > post.score_threshold)
        cand_scores = scores[box_idx, cls_idx]
    else:
        cls_idx = scores.argmax(axis=1)
        cand_scores = scores[np.arange(scores.shape[0]), cls_idx]
        box_idx = np.flatnonzero(cand_scores > post.score_threshold)
        cls_idx, cand_scores = cls_idx[box_idx], cand_scores[box_idx]
    if post.pre_nms_top_k_per_class:
        top = top_k_per_class(cand_scores, cls_idx, post.pre_nms_top_k_per_class)
        box_idx, cls_idx, cand_scores = box_idx[top], cls_idx[top], cand_scores[top]
    if post.pre_nms_top_k and cand_scores.size > post.pre_nms_top_k:
        top = np.argsort(-cand_scores, kind="stable")[: post.pre_nms_top_k]
        box_idx, cls_idx, cand_scores = box_idx[top], cls_idx[top], cand_scores[top]
    if post.nms == "none":
        keep = np.argsort(-cand_scores, kind="stable")[: post.max_detections]
    else:
        keep = nms(c.boxes, cand_scores, cls_idx, post.nms_iou, post.max_detections,
                   agnostic=post.nms == "agnostic", box_index=box_idx)
    boxes = c.boxes[box_idx[keep]]
    return boxes, cand_scores[keep], cls_idx[keep]


def top_k_per_class(scores: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of each class's ``k`` best candidates, ties to the lower index, as Paddle's
    MultiClassNMS selects its ``nms_top_k`` per class (a stable descending sort, then truncation)."""
    order = np.lexsort((-scores, classes))  # by class, then descending score; lexsort is stable
    sorted_cls = classes[order]
    first = np.searchsorted(sorted_cls, sorted_cls, side="left")  # where each class's run starts
    rank = np.arange(order.size) - first
    return np.sort(order[rank < k])


def postprocess(outputs: dict[str, np.ndarray], model: ModelSpec, transform: Transform, image_id: int) -> list[dict]:
    """Raw outputs of one image -> COCO results records (``bbox`` as [x, y, w, h] in image pixels)."""
    candidates = decoder_for(model.family).decode(outputs, model)
    boxes, scores, classes = select(candidates, model)
    boxes = transform.to_original(boxes)
    cat_ids = to_coco_ids(classes, model.postprocess.class_space, model.postprocess.class_offset)
    # Columns of unused COCO ids (TF OD API's 90-way heads) took their top-K slots like they do
    # in the framework; pycocotools would ignore them, so dropping them now changes no metric.
    ok = cat_ids >= 0
    boxes, scores, cat_ids = boxes[ok], scores[ok], cat_ids[ok]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    # tolist() hands back Python floats/ints in one call: building the records from numpy scalars
    # one by one costs more than NMS
    return [
        {"image_id": image_id, "category_id": cid, "bbox": [x, y, bw, bh], "score": sc}
        for x, y, bw, bh, sc, cid in zip(boxes[:, 0].tolist(), boxes[:, 1].tolist(), w.tolist(), h.tolist(),
                                         scores.astype(np.float64).tolist(), cat_ids.tolist())
    ]


def output(outputs: dict[str, np.ndarray], name: str, model: ModelSpec) -> np.ndarray:
    """Fetch a raw output by name; a missing one is an error listing what the backend gave."""

    if name not in outputs and len(outputs) == 1:
        # a single-output network is unambiguous; vendor conversions rename it (TFLite: 'PartitionedCall')
        return next(iter(outputs.values()))
    if name not in outputs:
        raise ConfigError(
            f"model {model.name!r} ({model.manifest_path}): the backend returned no output {name!r} "
            f"(it returned: {', '.join(sorted(outputs))}); check 'postprocess.decoder' / 'output_names'"
        )
    return outputs[name]


def to_xyxy(boxes: np.ndarray, box_format: str, coordinates: str, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes in ``box_format`` / ``coordinates`` -> xyxy in network-input pixels."""
    b = boxes.astype(np.float32, copy=False)
    if box_format == "yxyx":
        b = b[:, [1, 0, 3, 2]]
    elif box_format == "xywh":
        b = np.concatenate((b[:, :2], b[:, :2] + b[:, 2:]), axis=1)
    elif box_format == "cxcywh":
        half = b[:, 2:] / np.float32(2.0)
        b = np.concatenate((b[:, :2] - half, b[:, :2] + half), axis=1)
    if coordinates == "normalized":
        h, w = input_size
        b = b * np.array([w, h, w, h], np.float32)
    return np.ascontiguousarray(b, np.float32)
