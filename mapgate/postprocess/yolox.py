"""YOLOX heads: [1, N, 5+C] with (cx, cy, log w, log h) relative to grid cell and stride,
sigmoid objectness and sigmoid class scores (the export with decode_in_inference=False)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output
from mapgate.postprocess.family import Family, Setting, Shape
from mapgate.errors import ConfigError


def _classes_in(outputs: dict[str, Shape], model: ModelSpec) -> int | None:
    dims = outputs.get(model.postprocess.decoder.get("output", "output"), ())
    return int(dims[-1]) - 5 if len(dims) == 3 and dims[-1] is not None else None

FAMILY = Family(
    name="yolox",
    summary="YOLOX heads [1, N, 5+C]: grid-relative cx, cy, log w, log h, objectness, class scores",
    nms_in_graph=False,
    decoder={
        "output": Setting(str, "output", "name of the [1, N, 5+C] output"),
        "strides": Setting(list, [8, 16, 32], "strides of the heads, in output row order", item=int, minimum=1),
    },
    classes_in=_classes_in,
)


@lru_cache(maxsize=8)
def _grid(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    grids, expanded = [], []
    for s in strides:
        hs, ws = height // s, width // s
        yv, xv = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    raw = output(outputs, cfg.get("output", "output"), model)[0].astype(np.float32)
    grid, stride = _grid(*model.input_size, tuple(cfg.get("strides", (8, 16, 32))))
    if raw.shape[0] != grid.shape[0]:
        raise ConfigError(f"model {model.name!r}: YOLOX output has {raw.shape[0]} rows, the grid for input "
                          f"{model.input_size} and strides {cfg.get('strides', (8, 16, 32))} has {grid.shape[0]}")
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    # obj * cls <= obj: rows whose objectness is at or below the threshold cannot yield a candidate
    live = raw[:, 4] > np.float32(model.postprocess.score_threshold)
    scores = np.zeros((raw.shape[0], raw.shape[1] - 5), np.float32)
    scores[live] = raw[live, 4:5] * raw[live, 5:]
    return Candidates(boxes, scores)
