"""Darknet YOLO heads (YOLOv3/v4 style ``[yolo]`` layers), decoded for every backend alike.

Input: the raw tensors ``yolo_<index>`` of shape [1, A*(5+C), H, W] (the output of the layer
feeding each [yolo] layer; see mapgate/convert/darknet_onnx.py and backends/opencv.py).
Per anchor a, the channels are tx, ty, tw, th, obj, cls_0..cls_{C-1}.

Darknet's convention (``get_yolo_box`` / ``forward_yolo_layer``), which OpenCV's Region layer
reproduces::

    x = (col + sigmoid(tx)*s - (s-1)/2) / W        (s = scale_x_y; y likewise with row, H)
    w = exp(tw) * anchor_w / net_w                 (new_coords=1: w = tw^2 * 4 * anchor_w / net_w)
    score_c = sigmoid(obj) * sigmoid(cls_c)        (new_coords=1: obj * cls_c, already activated)

``net_w`` is the width of the input the network *runs at*, not the cfg's ``width``: darknet
resizes its network and passes the current ``net.w``; OpenCV's Region layer divides by the
width of its second input, the ``data`` blob (region_layer.cpp, ``wNorm``/``hNorm``).
So in input pixels ``w = exp(tw) * anchor_w`` at any input size, and anchors are never
rescaled when the manifest's input size differs from the cfg's (yolov3-608 runs the
416 cfg with the same anchors). tests/test_opencv_backend.py checks this against OpenCV at a
size different from the cfg's.

OpenCV's own Region output additionally zeroes every class score <= the layer's ``thresh``
(default 0.2 when the cfg has none), which silently drops the low-confidence detections mAP
needs; decoding here keeps every score and leaves thresholding to the manifest.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from mapgate.darknet_cfg import YoloHead, parse_cfg, yolo_heads
from mapgate.errors import ConfigError
from mapgate.files import resolve_role
from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, output
from mapgate.postprocess.family import Family, Setting

FAMILY = Family(
    name="darknet_yolo",
    summary="Darknet [yolo] heads (YOLOv3/v4, tiny, Yolo-Fastest); anchors and strides from the .cfg",
    nms_in_graph=False,
    decoder={
        # YOLO is fully convolutional (darknet's own -width/-height, tensorrt_demos' yolov3-416 from the
        # 608 cfg), but an input_size that differs from the cfg's by mistake runs silently: say it.
        "resize_network": Setting(bool, False, "true: run the cfg at input_size although its [net] "
                                  "width/height differ"),
    },
)


_MAX_LOG_SIZE = np.float32(30.0)  # exp() guard: keeps absurd logits finite (no inf-inf in NMS)


def heads_for(model: ModelSpec) -> list[YoloHead]:
    """The [yolo] heads of ``model``'s cfg at the manifest's input size (cached per cfg file)."""
    cfg = resolve_role(model, "cfg")
    st = cfg.stat()
    return list(_heads(str(cfg.resolve()), st.st_mtime_ns, st.st_size, tuple(model.input_size)))


@lru_cache(maxsize=32)
def _heads(cfg: str, _mtime_ns: int, _size: int, input_size: tuple[int, int]) -> tuple[YoloHead, ...]:
    return tuple(yolo_heads(parse_cfg(Path(cfg)), input_size))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # the 1/(1+exp(-x)) form of darknet and OpenCV; exp overflow -> inf -> 0 is the right limit.
    # In place on one contiguous buffer: same float32 operations, a third of the temporaries.
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += np.float32(1.0)
    return np.reciprocal(out, out=out)


def _tensor(outputs: dict[str, np.ndarray], name: str, model: ModelSpec, n_heads: int) -> np.ndarray:
    if n_heads == 1:
        return output(outputs, name, model)  # one head, one output: a renamed output is unambiguous
    if name not in outputs:
        # several heads: guessing which tensor is which would decode boxes at the wrong stride
        raise ConfigError(
            f"model {model.name!r} ({model.manifest_path}): the backend returned no output {name!r} "
            f"(it returned: {', '.join(sorted(outputs))}); Darknet heads must be named yolo_<layer index>"
        )
    return outputs[name]


def decode_boxes(outputs: dict[str, np.ndarray], model: ModelSpec,
                 heads: list[YoloHead]) -> tuple[np.ndarray, np.ndarray]:
    """Raw heads of one image (batch row 0) -> boxes (N, 4) xyxy in network-input pixels and
    scores (N, C). Rows go head by head, then row, column, anchor (OpenCV's Region order)."""
    net_h, net_w = model.input_size
    all_boxes, all_scores = [], []
    for head in heads:
        t = np.asarray(_tensor(outputs, head.name, model, len(heads)))
        a, c = head.num_anchors, head.num_classes
        if t.ndim != 4 or t.shape[1] != head.channels:
            raise ConfigError(
                f"model {model.name!r} ({model.manifest_path}): output {head.name!r} has shape {t.shape}; "
                f"[yolo] layer #{head.layer_index} needs [N, {head.channels}, H, W] ({a} anchors x (5 + {c}))"
            )
        gh, gw = t.shape[2], t.shape[3]
        if head.grid != (0, 0) and (gh, gw) != head.grid:
            raise ConfigError(
                f"model {model.name!r} ({model.manifest_path}): output {head.name!r} is a {gh}x{gw} grid; "
                f"input size {model.input_size} gives {head.grid[0]}x{head.grid[1]}. Was the engine built for "
                "another input size?"
            )
        # (H, W, A, 5+C): one row per (row, col, anchor), as OpenCV orders its Region output
        raw = t[0].astype(np.float32, copy=False).reshape(a, 5 + c, gh, gw)
        p = raw.transpose(2, 3, 0, 1)
        if head.new_coords:
            xy, obj, cls = p[..., 0:2], p[..., 4], p[..., 5:]
            wh = p[..., 2:4] * p[..., 2:4] * np.float32(4.0)
        else:
            # sigmoid on the contiguous (A, C, H, W) class block, then reorder: far cheaper than on the view
            xy, obj = _sigmoid(p[..., 0:2]), _sigmoid(p[..., 4])
            cls = _sigmoid(raw[:, 5:]).transpose(2, 3, 0, 1)
            wh = np.exp(np.minimum(p[..., 2:4], _MAX_LOG_SIZE))
        s = np.float32(head.scale_x_y)
        off = np.float32((head.scale_x_y - 1.0) / 2.0)
        cols = np.arange(gw, dtype=np.float32)[None, :, None]
        rows = np.arange(gh, dtype=np.float32)[:, None, None]
        cx = (cols + xy[..., 0] * s - off) / np.float32(gw) * np.float32(net_w)
        cy = (rows + xy[..., 1] * s - off) / np.float32(gh) * np.float32(net_h)
        anchors = np.asarray(head.anchors, np.float32)  # (A, 2), pixels of the input actually run
        w = wh[..., 0] * anchors[:, 0]
        h = wh[..., 1] * anchors[:, 1]
        boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=-1)
        all_boxes.append(boxes.reshape(-1, 4))
        all_scores.append((obj[..., None] * cls).reshape(-1, c))
    return (np.concatenate(all_boxes).astype(np.float32, copy=False),
            np.concatenate(all_scores).astype(np.float32, copy=False))


def decode(outputs: dict[str, np.ndarray], model: ModelSpec, heads: list[YoloHead] | None = None) -> Candidates:
    """Entry point of the shared postprocessor (``decoder_for("darknet_yolo").decode``)."""
    boxes, scores = decode_boxes(outputs, model, heads if heads is not None else heads_for(model))
    return Candidates(boxes, scores)
