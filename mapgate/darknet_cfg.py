"""Darknet ``.cfg`` files: parsing, per-layer shape inference and the [yolo] heads.

A cfg is a list of ``[type]`` sections of ``key=value`` lines. The first section is
``[net]`` (input size and training settings); every later section is one layer, and layers
are numbered from 0 in file order, ``[net]`` excluded, the way darknet and OpenCV's Darknet
importer number them (OpenCV names its ``[yolo]`` layer ``yolo_<index>`` with this index;
route/shortcut offsets count the same way).

Every error is a :class:`~mapgate.errors.ConfigError` naming the cfg file, the section
(index, type and line) and the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mapgate.errors import ConfigError
from mapgate.errors import DataError

NET_INDEX = -1  # [net] is not a layer; darknet gives it no index

# Darknet's own section vocabulary (parser.c string_to_layer_type), aliases -> canonical name.
# A type outside this set is a typo or a fork's extension; either way no tool we check
# against can read it, so it is an error at parse time.
_ALIASES = {
    "network": "net",
    "conv": "convolutional",
    "deconv": "deconvolutional",
    "conn": "connected",
    "max": "maxpool",
    "avg": "avgpool",
    "local_avg": "local_avgpool",
    "lrn": "normalization",
    "soft": "softmax",
}
KNOWN_TYPES = frozenset(
    {
        "net", "convolutional", "deconvolutional", "connected", "maxpool", "avgpool", "local_avgpool",
        "normalization", "softmax", "route", "shortcut", "upsample", "dropout", "yolo", "Gaussian_yolo",
        "region", "detection", "reorg", "reorg3d", "scale_channels", "sam", "crop", "cost", "local",
        "activation", "logistic", "l2norm", "batchnorm", "rnn", "gru", "lstm", "crnn", "conv_lstm",
        "history", "empty", "silence", "implicit_add", "implicit_mul", "contrastive",
    }
)

_T = TypeVar("_T", int, float)
_REQUIRED: object = object()


@dataclass(frozen=True)
class Section:
    """One ``[type]`` block. ``index`` is the layer index (``NET_INDEX`` for ``[net]``)."""

    type: str
    index: int
    options: dict[str, str]
    path: Path = field(default=Path(), compare=False)
    line: int = field(default=0, compare=False)  # 1-based line of the [type] header

    @property
    def where(self) -> str:
        if self.index == NET_INDEX:
            return f"{self.path}: section [{self.type}] (line {self.line})"
        return f"{self.path}: section #{self.index} [{self.type}] (line {self.line})"

    def error(self, option: str | None, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}" + (f", option '{option}'" if option else "") + f": {msg}")

    def has(self, key: str) -> bool:
        return key in self.options

    def _number(self, key: str, conv: type[_T], default: object) -> _T:
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default  # type: ignore[return-value]
        return self._parse(key, self.options[key], conv)

    def _parse(self, key: str, text: str, conv: type[_T]) -> _T:
        try:
            value = conv(text)
        except ValueError:
            kind = "an integer" if conv is int else "a number"
            raise self.error(key, f"must be {kind}, got {text!r}") from None
        if conv is float and not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {text!r}")
        return value

    def get_int(self, key: str, default: int | object = _REQUIRED) -> int:
        return self._number(key, int, default)

    def get_float(self, key: str, default: float | object = _REQUIRED) -> float:
        return self._number(key, float, default)

    def _list(self, key: str, conv: type[_T], default: object) -> list[_T]:
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return list(default)  # type: ignore[call-overload]
        items = self.options[key].split(",")
        if items and items[-1] == "" and len(items) > 1:
            items = items[:-1]  # a trailing comma is common in hand-edited anchor lists
        return [self._parse(key, item, conv) for item in items]

    def get_ints(self, key: str, default: list[int] | object = _REQUIRED) -> list[int]:
        return self._list(key, int, default)

    def get_floats(self, key: str, default: list[float] | object = _REQUIRED) -> list[float]:
        return self._list(key, float, default)


def parse_cfg(path: str | Path) -> list[Section]:
    """Read a cfg: ``[net]`` first (index ``NET_INDEX``), then the layers (index 0, 1, ...).

    Whitespace anywhere in a line is dropped and ``#``/``;`` lines are comments, as in
    darknet's ``read_cfg``. A key given twice in one section with different values is an
    error: darknet keeps the first value and OpenCV the last, so the two would build
    different networks from the same file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"Darknet cfg {path} cannot be read: {exc}") from exc
    sections: list[Section] = []
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{path}: line {lineno}: malformed section header {raw.strip()!r} (want [type])")
            stype = _ALIASES.get(line[1:-1], line[1:-1])
            if stype not in KNOWN_TYPES:
                index = sum(1 for s in sections if s.index != NET_INDEX)
                raise ConfigError(
                    f"{path}: section #{index} [{stype}] (line {lineno}): unknown section type {stype!r} "
                    f"(darknet knows: {', '.join(sorted(KNOWN_TYPES))})"
                )
            if stype == "net":
                if sections:
                    raise ConfigError(f"{path}: line {lineno}: [net] must be the first section")
                index = NET_INDEX
            else:
                if not sections:
                    raise ConfigError(f"{path}: line {lineno}: the first section must be [net], got [{stype}]")
                index = sum(1 for s in sections if s.index != NET_INDEX)
            current = Section(stype, index, {}, path, lineno)
            sections.append(current)
            continue
        if current is None:
            raise ConfigError(f"{path}: line {lineno}: option {raw.strip()!r} appears before the first section")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ConfigError(f"{current.where}: line {lineno}: expected key=value, got {raw.strip()!r}")
        if key in current.options and current.options[key] != value:
            raise current.error(
                key, f"is given twice ({current.options[key]!r}, then {value!r} on line {lineno}); "
                "darknet would use the first and OpenCV the last, so keep one"
            )
        current.options[key] = value
    if not sections:
        raise ConfigError(f"{path}: no sections found (is this a Darknet .cfg?)")
    return sections


def net_section(sections: list[Section]) -> Section:
    """The ``[net]`` section (always the first one parse_cfg returns)."""
    if not sections or sections[0].index != NET_INDEX:
        raise ConfigError("Darknet cfg has no [net] section")
    return sections[0]


def layers(sections: list[Section]) -> list[Section]:
    """The layer sections; ``layers(s)[i].index == i``."""
    return [s for s in sections if s.index != NET_INDEX]


def net_size(sections: list[Section]) -> tuple[int, int]:
    """(height, width) the cfg was written for."""
    net = net_section(sections)
    h, w = net.get_int("height"), net.get_int("width")
    for key, v in (("height", h), ("width", w)):
        if v <= 0:
            raise net.error(key, f"must be positive, got {v}")
    return h, w


# --- shape inference -----------------------------------------------------------------------

@dataclass(frozen=True)
class LayerShape:
    channels: int
    height: int
    width: int


def conv_padding(sec: Section) -> int:
    """Darknet: ``pad=1`` means size/2 on every side, else the explicit ``padding`` (default 0)."""
    size = sec.get_int("size", 1)
    return size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)


def maxpool_padding(sec: Section) -> tuple[int, int]:
    """(before, after) padding of a maxpool, per darknet: total ``padding`` defaults to size-1 and
    the extra pixel of an odd total goes after (right/bottom) -- the stride-1 size-2 pool of
    yolov3-tiny pads only right/bottom. OpenCV's importer makes the same split."""
    size = sec.get_int("size")
    total = sec.get_int("padding", size - 1)
    return total // 2, total - total // 2


def resolve_ref(sec: Section, option: str, ref: int) -> int:
    """Darknet layer reference: negative = relative to this layer, else absolute; must be earlier."""
    idx = sec.index + ref if ref < 0 else ref
    if not 0 <= idx < sec.index:
        raise sec.error(option, f"refers to layer {ref} (= #{idx}), which is not an earlier layer")
    return idx


def route_layers(sec: Section) -> list[int]:
    return [resolve_ref(sec, "layers", r) for r in sec.get_ints("layers")]


def infer_shapes(sections: list[Section], input_size: tuple[int, int] | None = None) -> list[LayerShape]:
    """Output (C, H, W) of every layer for an input of ``input_size`` (default: the cfg's)."""
    net = net_section(sections)
    h, w = input_size if input_size is not None else net_size(sections)
    c = net.get_int("channels", 3)
    prev = LayerShape(c, h, w)
    shapes: list[LayerShape] = []
    for sec in layers(sections):
        prev = _shape_of(sec, prev, shapes)
        if prev.channels <= 0 or prev.height <= 0 or prev.width <= 0:
            raise sec.error(None, f"output shape would be {prev} for input {h}x{w}; the input is too small")
        shapes.append(prev)
    return shapes


def _positive(sec: Section, key: str, default: int | object = _REQUIRED) -> int:
    v = sec.get_int(key, default)
    if v <= 0:
        raise sec.error(key, f"must be positive, got {v}")
    return v


def _shape_of(sec: Section, prev: LayerShape, shapes: list[LayerShape]) -> LayerShape:
    t = sec.type
    if t == "convolutional":
        filters, size = _positive(sec, "filters"), _positive(sec, "size")
        stride, groups = _positive(sec, "stride", 1), _positive(sec, "groups", 1)
        if prev.channels % groups or filters % groups:
            raise sec.error("groups", f"{groups} does not divide input channels {prev.channels} and filters {filters}")
        pad = conv_padding(sec)
        return LayerShape(filters, (prev.height + 2 * pad - size) // stride + 1,
                          (prev.width + 2 * pad - size) // stride + 1)
    if t == "maxpool":
        # required although darknet has defaults: OpenCV's importer defaults differ (size=2, stride=2
        # vs darknet's stride=1, size=stride), so an omitted value means two different networks
        stride, size = _positive(sec, "stride"), _positive(sec, "size")
        before, after = maxpool_padding(sec)
        return LayerShape(prev.channels, (prev.height + before + after - size) // stride + 1,
                          (prev.width + before + after - size) // stride + 1)
    if t == "route":
        refs = route_layers(sec)
        groups = _positive(sec, "groups", 1)
        group_id = sec.get_int("group_id", 0)
        if not 0 <= group_id < groups:
            raise sec.error("group_id", f"must be in [0, {groups}), got {group_id}")
        first = shapes[refs[0]]
        channels = 0
        for r in refs:
            s = shapes[r]
            if (s.height, s.width) != (first.height, first.width):
                raise sec.error("layers", f"layer #{r} is {s.height}x{s.width} but #{refs[0]} is "
                                          f"{first.height}x{first.width}; a route concatenates equal sizes")
            if s.channels % groups:
                raise sec.error("groups", f"{groups} does not divide the {s.channels} channels of layer #{r}")
            channels += s.channels // groups
        return LayerShape(channels, first.height, first.width)
    if t == "shortcut":
        frm = resolve_ref(sec, "from", sec.get_int("from"))
        other = shapes[frm]
        if (other.height, other.width) != (prev.height, prev.width):
            raise sec.error("from", f"layer #{frm} is {other.height}x{other.width} but the input is "
                                    f"{prev.height}x{prev.width}; strided shortcuts are not supported")
        return prev
    if t == "upsample":
        stride = _positive(sec, "stride")  # required: darknet defaults to 2, OpenCV to 1
        return LayerShape(prev.channels, prev.height * stride, prev.width * stride)
    if t in ("dropout", "yolo"):
        return prev
    raise sec.error(None, f"layer type [{t}] is not supported here (supported: convolutional, maxpool, "
                          "route, shortcut, upsample, dropout, yolo)")


# --- [yolo] heads ---------------------------------------------------------------------------

@dataclass(frozen=True)
class YoloHead:
    """One ``[yolo]`` layer. Raw head tensor = output of layer ``layer_index - 1``, shape
    [1, len(anchors)*(5+num_classes), grid_h, grid_w], published under ``name``."""

    name: str  # f"yolo_{layer_index}": the ONNX output name and OpenCV's layer name
    layer_index: int
    anchors: tuple[tuple[float, float], ...]  # masked anchors (w, h) in input pixels
    num_classes: int
    scale_x_y: float = 1.0
    new_coords: int = 0
    grid: tuple[int, int] = (0, 0)  # (h, w) for the input size the heads were built for

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def channels(self) -> int:
        return self.num_anchors * (5 + self.num_classes)


def yolo_heads(sections: list[Section], input_size: tuple[int, int] | None = None) -> list[YoloHead]:
    """The ``[yolo]`` heads in layer order, with the grid each has at ``input_size``.

    Anchors are kept exactly as written: darknet and OpenCV divide them by the size of the
    input the network actually runs at, so they are pixels of *that* input whatever the
    cfg's width/height say (see mapgate/postprocess/darknet_yolo.py).
    """
    shapes = infer_shapes(sections, input_size)
    heads = []
    for sec in layers(sections):
        if sec.type != "yolo":
            continue
        if sec.index == 0:
            raise sec.error(None, "a [yolo] layer needs a layer before it")
        classes = _positive(sec, "classes")
        num = _positive(sec, "num")
        flat = sec.get_floats("anchors")
        if len(flat) != 2 * num:
            raise sec.error("anchors", f"has {len(flat)} numbers; num={num} needs {2 * num} (w,h pairs)")
        mask = sec.get_ints("mask")
        for m in mask:
            if not 0 <= m < num:
                raise sec.error("mask", f"index {m} is outside the {num} anchors")
        new_coords = sec.get_int("new_coords", 0)
        if new_coords not in (0, 1):
            raise sec.error("new_coords", f"must be 0 or 1, got {new_coords}")
        feed = shapes[sec.index - 1]
        want = len(mask) * (5 + classes)
        if feed.channels != want:
            raise sec.error(None, f"the layer before it outputs {feed.channels} channels; "
                                  f"{len(mask)} anchors x (5 + {classes} classes) needs {want} (check filters=)")
        heads.append(
            YoloHead(
                name=f"yolo_{sec.index}",
                layer_index=sec.index,
                anchors=tuple((flat[2 * m], flat[2 * m + 1]) for m in mask),
                num_classes=classes,
                scale_x_y=sec.get_float("scale_x_y", 1.0),
                new_coords=new_coords,
                grid=(feed.height, feed.width),
            )
        )
    if not heads:
        path = sections[0].path if sections else "Darknet cfg"
        raise ConfigError(f"{path}: no [yolo] sections; only YOLOv3/v4-style heads are supported")
    return heads


# --- .weights size ---------------------------------------------------------------------------

def weights_floats(sections: list[Section], input_size: tuple[int, int] | None = None) -> int:
    """float32 values a ``.weights`` file holds for this cfg: per convolution its biases, the
    batch-norm scales, means and variances when ``batch_normalize=1``, then the kernels."""
    shapes = infer_shapes(sections, input_size)
    channels = net_section(sections).get_int("channels", 3)
    total = 0
    for sec, shape in zip(layers(sections), shapes):
        if sec.type == "convolutional":
            filters, size, groups = sec.get_int("filters"), sec.get_int("size"), sec.get_int("groups", 1)
            total += filters * (4 if sec.get_int("batch_normalize", 0) else 1)
            total += filters * (channels // groups) * size * size
        channels = shape.channels
    return total


def weights_header_bytes(head: bytes) -> int:
    """Size of a Darknet weights header (major, minor, revision, then a 4- or 8-byte ``seen``)."""
    major, minor = int.from_bytes(head[0:4], "little"), int.from_bytes(head[4:8], "little")
    return 12 + (8 if major * 10 + minor >= 2 else 4)


def check_weights_size(cfg: Path, weights: Path, input_size: tuple[int, int] | None = None) -> None:
    """Raise a DataError naming both files unless ``weights`` has exactly the size ``cfg`` needs.

    OpenCV's Darknet reader runs a short file and reports AP 0; this check runs before any backend
    does (reading only the 20-byte header, so it costs nothing on 240 MB weights).
    """

    cfg, weights = Path(cfg), Path(weights)
    need_floats = weights_floats(parse_cfg(cfg), input_size)
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        head = f.read(20)
    if len(head) < 16:
        raise DataError(f"{weights}: Darknet weights file is {size} bytes, too short even for its header; {cfg} needs "
                        f"{16 + 4 * need_floats} or more bytes. The file is truncated: download it again")
    header = weights_header_bytes(head)
    need = header + 4 * need_floats
    if size != need:
        how = "too short (truncated download?)" if size < need else "too long (a different cfg?)"
        raise DataError(f"{weights}: Darknet weights file is {size} bytes, {how}: {cfg} needs exactly {need} "
                        f"({header}-byte header + {need_floats} float32 values). Use the weights that belong to this "
                        "cfg, or download them again")
