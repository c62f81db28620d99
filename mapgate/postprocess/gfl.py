"""GFL heads (Generalized Focal Loss): NanoDet, NanoDet-Plus, PP-PicoDet.

Per stride s the head gives, for every cell (row-major over a ceil(H/s) x ceil(W/s) grid),
class scores (already sigmoids in the usual exports) and four box-side distributions of
``reg_max + 1`` bins each. A side's distance is the softmax expectation over bins 0..reg_max
times s; the box is (cx - left, cy - top, cx + right, cy + bottom) around the cell centre
((col + cell_offset) * s, (row + cell_offset) * s), clipped to the input (``distance2bbox``
with ``max_shape``).

Exports differ in how the tensors come out, so the manifest says how to find them:
``outputs = "by_shape"`` matches each map to its stride by row count and kind by width (for
files whose output names do not describe their contents, such as the legacy NanoDet-m ONNX);
``"by_name"`` takes ``class_outputs`` / ``box_outputs`` in stride order; ``"concatenated"`` reads
one [1, N, C + 4 * (reg_max + 1)] tensor, levels in stride order (NanoDet-Plus export).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output
from mapgate.postprocess.family import Family, Setting, Shape


def _classes_in(outputs: dict[str, Shape], model: ModelSpec) -> int | None:
    """The class maps' width: after the box bins in the concatenated tensor, the named class maps',
    or (by shape) the one output width that is not the box maps' 4 * (reg_max + 1)."""
    cfg = model.postprocess.decoder
    n_box = 4 * (cfg["reg_max"] + 1)
    if cfg["outputs"] == "concatenated":
        last = outputs.get(cfg["output"], (None,))[-1]
        return last - n_box if last is not None else None
    if cfg["outputs"] == "by_name":
        widths = {outputs.get(n, (None,))[-1] for n in cfg["class_outputs"]}
    else:
        widths = {dims[-1] for dims in outputs.values() if dims} - {n_box}
    return widths.pop() if len(widths) == 1 and None not in widths else None


FAMILY = Family(
    name="gfl",
    summary="GFL heads (NanoDet, NanoDet-Plus, PicoDet): per-stride class maps and reg_max box distributions",
    nms_in_graph=False,
    decoder={
        "strides": Setting(list, [8, 16, 32], "strides of the levels, smallest first", item=int, minimum=1),
        "reg_max": Setting(int, 7, "last bin of each box-side distribution (reg_max + 1 bins)", minimum=1),
        "num_classes": Setting(int, 80, "width of the class-score maps", minimum=1),
        "outputs": Setting(str, "by_shape", "how to find the maps", choices=("by_shape", "by_name", "concatenated")),
        "class_outputs": Setting(list, [], "outputs = by_name: class-score maps in stride order", item=str),
        "box_outputs": Setting(list, [], "outputs = by_name: box-distribution maps in stride order", item=str),
        "output": Setting(str, "output", "outputs = concatenated: the one [1, N, C + 4 (reg_max + 1)] tensor"),
        "cell_offset": Setting(float, 0.5, "cell centre = (index + cell_offset) * stride (NanoDet-Plus: 0)"),
        "scores_activated": Setting(bool, True, "false: the class maps are logits and get a sigmoid here"),
        "pre_nms_top_k_per_level": Setting(int, 0, "keep the k cells of best class score per level (NanoDet: 1000)",
                                           minimum=0),
    },
    classes_in=_classes_in,
)


@lru_cache(maxsize=16)
def _levels(height: int, width: int, strides: tuple[int, ...], offset: float) -> tuple[tuple[int, np.ndarray], ...]:
    """(rows of the level, (rows, 3) array of cx, cy, stride) per stride."""
    out = []
    for s in strides:
        gh, gw = -(-height // s), -(-width // s)
        yv, xv = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
        pts = np.stack(((xv.ravel() + offset) * s, (yv.ravel() + offset) * s,
                        np.full(gh * gw, s, np.float32)), axis=1)
        out.append((gh * gw, pts.astype(np.float32)))
    return tuple(out)


def _as_rows(t: np.ndarray, name: str, model: ModelSpec) -> np.ndarray:
    a = np.asarray(t)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ConfigError(f"model {model.name!r} ({model.manifest_path}): GFL output {name!r} has shape "
                          f"{np.shape(t)}; expected [N, K] or [1, N, K]")
    return a.astype(np.float32, copy=False)


def _by_shape(outputs: dict[str, np.ndarray], model: ModelSpec, rows: list[int], n_cls: int,
              n_box: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    found: dict[tuple[int, int], list[str]] = {}
    arrays = {}
    for name, t in outputs.items():
        a = _as_rows(t, name, model)
        arrays[name] = a
        found.setdefault(a.shape, []).append(name)
    cls, box = [], []
    for n in rows:
        for width, dest in ((n_cls, cls), (n_box, box)):
            names = found.get((n, width), [])
            if len(names) != 1:
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(arrays.items()))
                raise ConfigError(
                    f"model {model.name!r} ({model.manifest_path}): GFL outputs by shape need exactly one [{n}, "
                    f"{width}] map for input {list(model.input_size)} and strides "
                    f"{model.postprocess.decoder['strides']}; found {len(names)} among: {shapes}. Check input_size, "
                    "decoder.strides/reg_max/num_classes, or name them (decoder.outputs = \"by_name\")")
            dest.append(arrays[names[0]])
    return cls, box


def _maps(outputs: dict[str, np.ndarray], model: ModelSpec, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    cfg = model.postprocess.decoder
    n_cls, n_box = cfg["num_classes"], 4 * (cfg["reg_max"] + 1)
    if cfg["outputs"] == "concatenated":
        a = _as_rows(output(outputs, cfg["output"], model), cfg["output"], model)
        if a.shape != (sum(rows), n_cls + n_box):
            raise ConfigError(f"model {model.name!r} ({model.manifest_path}): GFL output {cfg['output']!r} has "
                              f"shape {list(a.shape)}; input {list(model.input_size)}, strides {cfg['strides']}, "
                              f"{n_cls} classes and reg_max {cfg['reg_max']} give [{sum(rows)}, {n_cls + n_box}]")
        return a[:, :n_cls], a[:, n_cls:]
    if cfg["outputs"] == "by_name":
        if len(cfg["class_outputs"]) != len(rows) or len(cfg["box_outputs"]) != len(rows):
            raise ConfigError(f"model {model.name!r} ({model.manifest_path}): decoder.outputs = \"by_name\" needs "
                              f"{len(rows)} class_outputs and box_outputs (one per stride in {cfg['strides']})")
        cls = [_as_rows(output(outputs, n, model), n, model) for n in cfg["class_outputs"]]
        box = [_as_rows(output(outputs, n, model), n, model) for n in cfg["box_outputs"]]
        for n, c, b, name in zip(rows, cls, box, cfg["class_outputs"]):
            if c.shape != (n, n_cls) or b.shape != (n, n_box):
                raise ConfigError(f"model {model.name!r} ({model.manifest_path}): level of {name!r} has maps "
                                  f"{list(c.shape)} and {list(b.shape)}; expected [{n}, {n_cls}] and [{n}, {n_box}]")
    else:
        cls, box = _by_shape(outputs, model, rows, n_cls, n_box)
    return np.concatenate(cls), np.concatenate(box)


def _top_k_per_level(scores: np.ndarray, rows: list[int], k: int) -> np.ndarray:
    """Row indices kept by NanoDet's per-level ``nms_pre``: the k rows of best max class score."""
    best = scores.max(axis=1)
    keep, start = [], 0
    for n in rows:
        idx = np.arange(start, start + n)
        if n > k:
            idx = start + np.argpartition(-best[start:start + n], k - 1)[:k]
        keep.append(np.sort(idx))
        start += n
    return np.concatenate(keep)


def decode(outputs: dict[str, np.ndarray], model: ModelSpec) -> Candidates:
    cfg = model.postprocess.decoder
    height, width = model.input_size
    levels = _levels(height, width, tuple(cfg["strides"]), float(cfg["cell_offset"]))
    rows = [n for n, _ in levels]
    scores, dist = _maps(outputs, model, rows)
    points = np.concatenate([p for _, p in levels])
    if not cfg["scores_activated"]:
        scores = 1.0 / (1.0 + np.exp(-scores))
    if cfg["pre_nms_top_k_per_level"] > 0:
        keep = _top_k_per_level(scores, rows, cfg["pre_nms_top_k_per_level"])
        scores, dist, points = scores[keep], dist[keep], points[keep]
    bins = cfg["reg_max"] + 1
    logits = dist.reshape(-1, 4, bins)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    sides = (e @ np.arange(bins, dtype=np.float32)) / e.sum(axis=2) * points[:, 2:3]  # (N, 4): l, t, r, b
    boxes = np.stack((points[:, 0] - sides[:, 0], points[:, 1] - sides[:, 1],
                      points[:, 0] + sides[:, 2], points[:, 1] + sides[:, 3]), axis=1)
    np.clip(boxes[:, 0::2], 0.0, float(width), out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0.0, float(height), out=boxes[:, 1::2])
    return Candidates(boxes.astype(np.float32, copy=False), np.ascontiguousarray(scores, np.float32))
