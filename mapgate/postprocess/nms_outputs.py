"""Graphs and engines exported with NMS inside (``--end2end``, ``nms=True``), two layouts:

``layout = "efficient_nms"``: TensorRT's EfficientNMS plugin (and the end2end ONNX exports that
gather the same tensors): ``det_boxes`` [1, K, 4], ``det_scores`` [1, K], ``det_classes`` [1, K] and
``num_dets`` [1, 1] saying how many of the K rows are real (``count = ""``: every row is real).

``layout = "selected_indices"``: ONNX ``NonMaxSuppression``'s own output, ``selected_indices``
[M, 3] rows of (batch, class, box), with the two tensors it selected from exported beside it:
the boxes [1, N, 4] and the scores [1, C, N] (``scores_layout = "classes_first"``, the operator's
input layout) or [1, N, C] (``"boxes_first"``).

Box format (``xyxy``, ``xywh`` = corner + size, ``cxcywh``, ``yxyx``) and coordinate space (input
``pixels`` or ``normalized`` to [0, 1]) are manifest settings; class indices go through the
manifest's ``class_space``. mapgate only thresholds, orders by score and caps at
``max_detections``: suppression already happened in the graph, so ``postprocess.nms`` is "none".
"""

from __future__ import annotations

import numpy as np

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output, to_xyxy
from mapgate.postprocess.family import Family, Setting

FAMILY = Family(
    name="nms_outputs",
    summary="NMS inside the graph: TensorRT EfficientNMS (num_dets, det_boxes, det_scores, det_classes) "
            "or ONNX NonMaxSuppression selected_indices",
    nms_in_graph=True,
    decoder={
        "layout": Setting(str, "efficient_nms", "which outputs the graph ends with",
                          choices=("efficient_nms", "selected_indices")),
        "box_format": Setting(str, "xyxy", "order of the 4 box numbers", choices=("xyxy", "xywh", "cxcywh", "yxyx")),
        "coordinates": Setting(str, "pixels", "pixels of the network input, or normalized to [0, 1]",
                               choices=("pixels", "normalized")),
        "boxes": Setting(str, "det_boxes", "output of the boxes"),
        "scores": Setting(str, "det_scores", "output of the scores"),
        "classes": Setting(str, "det_classes", "efficient_nms: output of the class indices"),
        "count": Setting(str, "num_dets", "efficient_nms: output of the valid-row count (\"\": none)"),
        "selected_indices": Setting(str, "selected_indices", "selected_indices: the NonMaxSuppression output"),
        "scores_layout": Setting(str, "classes_first", "selected_indices: scores as [1, C, N] or [1, N, C]",
                                 choices=("classes_first", "boxes_first")),
    },
)


def _selected(outputs: dict[str, np.ndarray], model: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = model.postprocess.decoder
    sel = np.asarray(output(outputs, cfg["selected_indices"], model)).reshape(-1, 3).astype(np.int64)
    boxes = np.asarray(output(outputs, cfg["boxes"], model))
    scores = np.asarray(output(outputs, cfg["scores"], model))
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3:
        raise ConfigError(f"model {model.name!r} ({model.manifest_path}): selected_indices layout needs boxes "
                          f"[1, N, 4] and scores [1, C, N] or [1, N, C]; got {list(boxes.shape)} and "
                          f"{list(scores.shape)}")
    if cfg["scores_layout"] == "boxes_first":
        scores = scores.transpose(0, 2, 1)
    sel = sel[sel[:, 0] == 0]  # one image per batch
    b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
    if sel.size and (c.max() >= scores.shape[1] or i.max() >= min(scores.shape[2], boxes.shape[1])):
        raise ConfigError(f"model {model.name!r} ({model.manifest_path}): selected_indices point outside boxes "
                          f"{list(boxes.shape)} / scores {list(scores.shape)} (check decoder.scores_layout)")
    return boxes[b, i], scores[b, c, i].astype(np.float32), c


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    if cfg["layout"] == "selected_indices":
        boxes, scores, classes = _selected(outputs, model)
    else:
        boxes = np.asarray(output(outputs, cfg["boxes"], model)).reshape(-1, 4)
        scores = np.asarray(output(outputs, cfg["scores"], model)).reshape(-1).astype(np.float32)
        classes = np.rint(np.asarray(output(outputs, cfg["classes"], model)).reshape(-1)).astype(np.int64)
        if not len(boxes) == len(scores) == len(classes):
            raise ConfigError(f"model {model.name!r} ({model.manifest_path}): efficient_nms outputs disagree on "
                              f"the number of rows: boxes {len(boxes)}, scores {len(scores)}, classes {len(classes)}")
        if cfg["count"]:
            n = int(np.asarray(output(outputs, cfg["count"], model)).reshape(-1)[0])
            boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    xyxy = to_xyxy(boxes, cfg["box_format"], cfg["coordinates"], model.input_size)
    return Candidates(xyxy, scores, classes, final=True)
