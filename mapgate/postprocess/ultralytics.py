"""Ultralytics exports without NMS, boxes already decoded to input pixels (cx, cy, w, h).

``head = "v5"`` (YOLOv5 ``export.py``): one [1, N, 5 + C] output, per row cx, cy, w, h,
objectness, C class scores (sigmoids applied); a class's score is objectness x class score, as
YOLOv5's ``non_max_suppression`` computes it. ``head = "v8"`` (YOLOv8 / YOLO11): one
[1, 4 + C, N] output without objectness, the class scores are the scores ([1, N, 4 + C], as some
TensorRT-ready exports transpose it, is read too).
"""

from __future__ import annotations

import numpy as np

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output, to_xyxy
from mapgate.postprocess.family import Family, Setting, Shape


def _classes_in(outputs: dict[str, Shape], model: ModelSpec) -> int | None:
    """v5: [1, N, 5 + C]; v8: [1, 4 + C, N] or its transpose (C + 4 is the short side: N is thousands)."""
    cfg = model.postprocess.decoder
    dims = outputs.get(cfg["output"], ())
    if len(dims) != 3 or None in dims[1:]:
        return None
    if cfg["head"] == "v5":
        return int(dims[2]) - 5  # type: ignore[operator]
    return min(dims[1:]) - 4  # type: ignore[type-var, operator]


FAMILY = Family(
    name="ultralytics",
    summary="Ultralytics YOLOv5 [1, N, 5+C] / YOLOv8-YOLO11 [1, 4+C, N] exports: decoded cx, cy, w, h pixels",
    nms_in_graph=False,
    decoder={
        "head": Setting(str, doc="v5: objectness column; v8: none (YOLOv8, YOLO11)", choices=("v5", "v8")),
        "output": Setting(str, "output", "name of the output (YOLOv8 exports call it output0)"),
        "num_classes": Setting(int, 80, "number of class-score columns", minimum=1),
    },
    classes_in=_classes_in,
)


def _rows(model: ModelSpec, raw: np.ndarray, head: str, n_cls: int) -> np.ndarray:
    """The output as (N, 4 [+1] + C) rows."""
    a = np.asarray(raw)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    width = n_cls + (5 if head == "v5" else 4)
    if a.ndim == 2 and head == "v8" and a.shape[0] == width and a.shape[1] != width:
        a = a.T
    if a.ndim != 2 or a.shape[1] != width:
        want = f"[1, N, {width}]" if head == "v5" else f"[1, {width}, N]"
        raise ConfigError(f"model {model.name!r} ({model.manifest_path}): Ultralytics {head} output has shape "
                          f"{list(np.shape(raw))}; head {head!r} with {n_cls} classes needs {want}")
    return a.astype(np.float32, copy=False)


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    head, n_cls = cfg["head"], cfg["num_classes"]
    a = _rows(model, output(outputs, cfg["output"], model), head, n_cls)
    boxes = to_xyxy(a[:, :4], "cxcywh", "pixels", model.input_size)
    if head == "v8":
        return Candidates(boxes, np.ascontiguousarray(a[:, 4:]))
    # obj * cls <= obj: rows at or below the threshold on objectness cannot yield a candidate
    # (YOLOv5 drops them first too, `xc = prediction[..., 4] > conf_thres`)
    live = a[:, 4] > np.float32(model.postprocess.score_threshold)
    scores = np.zeros((a.shape[0], n_cls), np.float32)
    scores[live] = a[live, 4:5] * a[live, 5:]
    return Candidates(boxes, scores)
