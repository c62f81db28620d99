"""Darknet cfg + weights -> ONNX, with each [yolo] head exported as its raw tensor.

Written by hand because no maintained library converts Darknet to ONNX.

The graph stops before decoding: output ``yolo_<index>`` is the output of the layer that
feeds ``[yolo]`` layer ``<index>`` ([1, A*(5+C), H, W]), and the shared decoder in
mapgate/postprocess/darknet_yolo.py turns it into boxes for every backend alike. Numerics
follow OpenCV's Darknet importer (the reference backend): batch-norm eps 1e-6 on the
variance, leaky slope 0.1, maxpool padding split floor/ceil, nearest-neighbour upsampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mapgate import __version__
from mapgate.darknet_cfg import (
    LayerShape,
    Section,
    conv_padding,
    infer_shapes,
    layers,
    maxpool_padding,
    net_size,
    parse_cfg,
    resolve_ref,
    route_layers,
    yolo_heads,
)
from mapgate.errors import ConfigError, ConversionError
from mapgate.fsutil import atomic_path, sha256_file
from mapgate.optional import require

if TYPE_CHECKING:
    import onnx

CONVERTER_VERSION = "1"  # bump when the produced graph changes, so cached conversions are rebuilt
BN_EPS = 1e-6  # OpenCV's importer value (".000001f in Darknet Yolo"); we are verified against OpenCV
LEAKY_SLOPE = 0.1
INPUT_NAME = "input"
SUPPORTED = ("convolutional", "maxpool", "route", "shortcut", "upsample", "dropout", "yolo")
ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "mish", "swish")

# Options that change what a layer computes and that we do not implement; finding one with a
# non-default value stops the conversion instead of silently building a different network.
_UNSUPPORTED_OPTIONS: dict[str, dict[str, str]] = {
    "convolutional": {"dilation": "1", "binary": "0", "xnor": "0", "flipped": "0", "antialiasing": "0",
                      "share_index": None, "deform": "0", "coordconv": "0", "stride_x": None, "stride_y": None},
    "maxpool": {"stride_x": None, "stride_y": None, "maxpool_depth": "0", "antialiasing": "0"},
    "shortcut": {"weights_type": "none", "weights_normalization": "none", "alpha": None, "beta": None},
    "upsample": {"scale": "1"},
    "route": {},
    "dropout": {},
    "yolo": {},
}


@dataclass
class _Weights:
    """Cursor over the float32 payload of a .weights file; errors name the file."""

    path: Path
    data: np.ndarray
    pos: int = 0

    def take(self, n: int, sec: Section, what: str) -> np.ndarray:
        if self.pos + n > self.data.size:
            raise ConversionError(
                f"{self.path}: weights file too short: layer #{sec.index} [{sec.type}] needs {n} floats of {what} "
                f"at float offset {self.pos}, only {self.data.size - self.pos} left. Does the file match {sec.path}?"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def read_weights(path: Path) -> _Weights:
    """Darknet header (major, minor, revision, seen) then float32 payload."""
    raw = path.read_bytes()
    if len(raw) < 16:
        raise ConversionError(f"{path}: weights file too short for a Darknet header ({len(raw)} bytes)")
    major, minor, _revision = (int(v) for v in np.frombuffer(raw, "<i4", 3))
    if major > 1000 or minor > 1000:
        raise ConversionError(f"{path}: transposed Darknet weights (version {major}.{minor}) are not supported")
    seen_bytes = 8 if major * 10 + minor >= 2 else 4
    start = 12 + seen_bytes
    payload = raw[start:]
    if len(payload) % 4:
        raise ConversionError(f"{path}: weights payload is {len(payload)} bytes, not a whole number of float32")
    return _Weights(path, np.frombuffer(payload, "<f4").astype(np.float32))


@dataclass
class _Graph:
    onnx: Any
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    counter: int = 0

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        out = self.name(stem)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


class DarknetToOnnx:
    """Lazy Darknet -> ONNX converter (Polygraphy loader style): nothing happens until called.

    ``input_size`` (h, w) is the size the ONNX input gets, normally the manifest's: one cfg
    serves several sizes (yolov3-416 and yolov3-608 share a cfg), so the cfg's own
    width/height are only the default.
    """

    def __init__(self, cfg: str | Path, weights: str | Path, input_size: tuple[int, int] | None = None,
                 opset: int = 13) -> None:
        self.cfg = Path(cfg)
        self.weights = Path(weights)
        self.input_size = input_size
        self.opset = opset

    def __call__(self, out_path: str | Path) -> Path:
        """Build the ONNX model and write it atomically to ``out_path``; returns the path."""
        onnx = require("onnx")
        model = self.build()
        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            onnx.save_model(model, str(tmp))
        return out_path

    def build(self) -> "onnx.ModelProto":
        onnx = require("onnx")
        sections = parse_cfg(self.cfg)
        size = self.input_size if self.input_size is not None else net_size(sections)
        layer_secs = layers(sections)
        for sec in layer_secs:
            self._check_supported(sec)
        try:
            shapes = infer_shapes(sections, size)
            heads = yolo_heads(sections, size)
        except ConfigError as exc:
            raise ConversionError(f"cannot convert {self.cfg}: {exc}") from exc
        yolo_idx = {h.layer_index for h in heads}
        wts = read_weights(self.weights)

        g = _Graph(onnx)
        in_c = int(sections[0].get_int("channels", 3))
        prev = INPUT_NAME
        prev_shape = LayerShape(in_c, *size)
        outs: list[str] = []
        for sec in layer_secs:
            for ref in self._refs(sec):
                if ref in yolo_idx:
                    raise ConversionError(
                        f"{sec.where}: refers to [yolo] layer #{ref}; darknet and OpenCV disagree on what a "
                        "[yolo] layer outputs, so this cfg is not supported"
                    )
            prev = self._layer(g, sec, prev, prev_shape, outs, shapes, wts)
            prev_shape = shapes[sec.index]
            outs.append(prev)
        if wts.pos != wts.data.size:
            raise ConversionError(
                f"{self.weights}: weights file too long: {wts.data.size - wts.pos} float32 values "
                f"({4 * (wts.data.size - wts.pos)} bytes) are left after the last layer of {self.cfg}; "
                "the weights belong to a different cfg"
            )

        outputs = []
        for h in heads:
            feed = outs[h.layer_index - 1]
            g.nodes.append(onnx.helper.make_node("Identity", [feed], [h.name], name=h.name))
            outputs.append(onnx.helper.make_tensor_value_info(
                h.name, onnx.TensorProto.FLOAT, [1, h.channels, h.grid[0], h.grid[1]]))
        graph = onnx.helper.make_graph(
            g.nodes, self.cfg.stem,
            [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [1, in_c, size[0], size[1]])],
            outputs, initializer=g.inits,
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)],
                                       producer_name="mapgate", producer_version=__version__)
        # the lowest IR version the opset allows, so older onnxruntime/TensorRT releases can read the file
        model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
        onnx.helper.set_model_props(model, {
            "mapgate.converter": "mapgate.convert.darknet_onnx",
            "mapgate.converter_version": f"{__version__}+{CONVERTER_VERSION}",
            "mapgate.source_cfg": self.cfg.name,
            "mapgate.source_cfg_sha256": sha256_file(self.cfg),
            "mapgate.source_weights": self.weights.name,
            "mapgate.source_weights_sha256": sha256_file(self.weights),
            "mapgate.input_size": json.dumps(list(size)),
            "mapgate.bn_eps": repr(BN_EPS),
            "mapgate.yolo_heads": json.dumps([
                {"name": h.name, "anchors": h.anchors, "classes": h.num_classes, "scale_x_y": h.scale_x_y,
                 "new_coords": h.new_coords} for h in heads]),
        })
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"ONNX produced from {self.cfg} is invalid: {exc}") from exc
        return model

    # --- per layer ---------------------------------------------------------------------------

    def _check_supported(self, sec: Section) -> None:
        if sec.type not in SUPPORTED:
            raise ConversionError(f"{sec.where}: layer type [{sec.type}] is not supported by the Darknet->ONNX "
                                  f"converter (supported: {', '.join(SUPPORTED)})")
        for opt, default in _UNSUPPORTED_OPTIONS[sec.type].items():
            if opt in sec.options and sec.options[opt] != default:
                raise ConversionError(f"{sec.where}, option '{opt}': {opt}={sec.options[opt]} is not supported")
        act = sec.options.get("activation", "linear")
        if sec.type in ("convolutional", "shortcut"):
            if act not in ACTIVATIONS:
                raise ConversionError(f"{sec.where}, option 'activation': {act!r} is not supported "
                                      f"(supported: {', '.join(ACTIVATIONS)})")
        elif act != "linear":
            # darknet ignores it here, OpenCV's importer applies it: no single right answer
            raise ConversionError(f"{sec.where}, option 'activation': an activation on [{sec.type}] is ambiguous")

    @staticmethod
    def _refs(sec: Section) -> list[int]:
        if sec.type == "route":
            return route_layers(sec)
        if sec.type == "shortcut":
            return [resolve_ref(sec, "from", sec.get_int("from"))]
        return []

    def _layer(self, g: _Graph, sec: Section, prev: str, prev_shape: LayerShape, outs: list[str],
               shapes: list[LayerShape], wts: _Weights) -> str:
        t = sec.type
        if t == "convolutional":
            return self._activation(g, sec, self._conv(g, sec, prev, prev_shape, wts))
        if t == "maxpool":
            size, stride = sec.get_int("size"), sec.get_int("stride")
            before, after = maxpool_padding(sec)
            return g.node("MaxPool", [prev], f"pool{sec.index}", kernel_shape=[size, size], strides=[stride, stride],
                          pads=[before, before, after, after])
        if t == "route":
            refs = route_layers(sec)
            groups, gid = sec.get_int("groups", 1), sec.get_int("group_id", 0)
            parts = []
            for r in refs:
                if groups == 1:
                    parts.append(outs[r])
                    continue
                # YOLOv4-tiny's channel split: group `gid` of `groups` equal slices of each input
                part = shapes[r].channels // groups
                parts.append(g.node("Slice", [
                    outs[r], g.const("starts", np.array([gid * part], np.int64)),
                    g.const("ends", np.array([(gid + 1) * part], np.int64)), g.const("axes", np.array([1], np.int64)),
                ], f"route{sec.index}_slice"))
            if len(parts) == 1:
                return parts[0]
            return g.node("Concat", parts, f"route{sec.index}", axis=1)
        if t == "shortcut":
            frm = resolve_ref(sec, "from", sec.get_int("from"))
            if shapes[frm].channels != prev_shape.channels:
                raise ConversionError(f"{sec.where}, option 'from': layer #{frm} has {shapes[frm].channels} channels, "
                                      f"the input {prev_shape.channels}; unequal shortcuts are not supported")
            return self._activation(g, sec, g.node("Add", [prev, outs[frm]], f"shortcut{sec.index}"))
        if t == "upsample":
            s = float(sec.get_int("stride"))
            # asymmetric + floor on an integer factor replicates each pixel s x s times, as darknet does
            return g.node("Resize", [prev, "", g.const("scales", np.array([1, 1, s, s], np.float32))],
                          f"upsample{sec.index}", mode="nearest", coordinate_transformation_mode="asymmetric",
                          nearest_mode="floor")
        # dropout is the identity at inference; a [yolo] layer passes its input on (its
        # decoding happens outside the graph, and nothing may consume it; see build())
        return prev

    def _conv(self, g: _Graph, sec: Section, prev: str, prev_shape: LayerShape, wts: _Weights) -> str:
        filters, size = sec.get_int("filters"), sec.get_int("size")
        stride, groups = sec.get_int("stride", 1), sec.get_int("groups", 1)
        pad = conv_padding(sec)
        bias = wts.take(filters, sec, "biases").astype(np.float64)
        if sec.get_int("batch_normalize", 0):
            scale = wts.take(filters, sec, "batch-norm scales").astype(np.float64)
            mean = wts.take(filters, sec, "batch-norm rolling means").astype(np.float64)
            var = wts.take(filters, sec, "batch-norm rolling variances").astype(np.float64)
        cin = prev_shape.channels // groups
        w = wts.take(filters * cin * size * size, sec, "conv weights").reshape(filters, cin, size, size)
        w = w.astype(np.float64)
        if sec.get_int("batch_normalize", 0):
            k = scale / np.sqrt(var + BN_EPS)
            w = w * k[:, None, None, None]
            bias = bias - mean * k
        return g.node("Conv", [prev, g.const(f"conv{sec.index}_w", w.astype(np.float32)),
                               g.const(f"conv{sec.index}_b", bias.astype(np.float32))],
                      f"conv{sec.index}", kernel_shape=[size, size], strides=[stride, stride],
                      pads=[pad, pad, pad, pad], group=groups)

    def _activation(self, g: _Graph, sec: Section, x: str) -> str:
        act = sec.options.get("activation", "linear")
        stem = f"{act}{sec.index}"
        if act == "linear":
            return x
        if act == "leaky":
            return g.node("LeakyRelu", [x], stem, alpha=LEAKY_SLOPE)
        if act == "relu":
            return g.node("Relu", [x], stem)
        if act == "logistic":
            return g.node("Sigmoid", [x], stem)
        if act == "swish":
            return g.node("Mul", [x, g.node("Sigmoid", [x], stem)], stem)
        if act == "mish":
            if self.opset >= 18:
                return g.node("Mish", [x], stem)
            return g.node("Mul", [x, g.node("Tanh", [g.node("Softplus", [x], stem)], stem)], stem)
        raise ConversionError(f"{sec.where}, option 'activation': {act!r} is not supported")  # _check_supported
