"""SSD heads as the TF Object Detection API leaves them before NMS: decoded boxes
[1, N, 1, 4] normalised (ymin, xmin, ymax, xmax) and per-class sigmoid scores [1, N, C]
(background column already removed)."""

from __future__ import annotations

import numpy as np

from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output, to_xyxy
from mapgate.postprocess.family import Family, Setting


FAMILY = Family(
    name="ssd",
    summary="TF OD API SSD before NMS: decoded normalised ymin, xmin, ymax, xmax boxes and per-class scores",
    nms_in_graph=False,
    decoder={
        "boxes": Setting(str, doc="output of decoded boxes [1, N, 1, 4]"),
        "scores": Setting(str, doc="output of per-class scores [1, N, C] (background column removed)"),
    },
)


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    boxes = output(outputs, cfg["boxes"], model).reshape(-1, 4).astype(np.float32)
    scores = output(outputs, cfg["scores"], model)[0].astype(np.float32)
    return Candidates(to_xyxy(boxes, "yxyx", "normalized", model.input_size), scores)
