"""Graphs with NMS inside (TF OD API full graphs, TFLite_Detection_PostProcess): normalised
(ymin, xmin, ymax, xmax) boxes, scores, class indices and a valid-detection count."""

from __future__ import annotations

import numpy as np

from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output, to_xyxy
from mapgate.postprocess.family import Family, Setting


FAMILY = Family(
    name="od_api_detections",
    summary="TF OD API / TFLite_Detection_PostProcess outputs after in-graph NMS: boxes, classes, scores, count",
    nms_in_graph=True,
    decoder={
        "boxes": Setting(str, doc="output of normalised ymin, xmin, ymax, xmax boxes"),
        "scores": Setting(str, doc="output of detection scores"),
        "classes": Setting(str, doc="output of class indices"),
        "count": Setting(str, doc="output of the number of valid detections"),
    },
)


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    n = int(np.asarray(output(outputs, cfg["count"], model)).reshape(-1)[0])
    boxes = output(outputs, cfg["boxes"], model).reshape(-1, 4)[:n].astype(np.float32)
    scores = output(outputs, cfg["scores"], model).reshape(-1)[:n].astype(np.float32)
    classes = output(outputs, cfg["classes"], model).reshape(-1)[:n]
    return Candidates(to_xyxy(boxes, "yxyx", "normalized", model.input_size), scores, np.rint(classes).astype(np.int64), final=True)
