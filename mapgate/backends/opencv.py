"""The ``opencv`` reference backend: Darknet cfg + weights run by OpenCV's DNN module.

It returns the raw tensor feeding each ``[yolo]`` layer (``yolo_<index>``), not OpenCV's own
[yolo] output: OpenCV's Darknet importer gives every [yolo] layer ``thresh=0.2`` unless the
cfg says otherwise, and its Region layer zeroes every class score <= thresh, silently
dropping the low-confidence detections that COCO mAP counts. Decoding happens in
mapgate/postprocess/darknet_yolo.py, shared with every optimized backend.

How OpenCV 4.x names the layers of a Darknet net (``net.getLayerNames()``), with ``i`` the
darknet layer index: ``conv_i`` then ``bn_i`` for a convolutional layer, its activation as
``<activation>_<i+1>`` (``leaky_1`` follows ``bn_0``: the importer has already counted the
layer when it names the activation), ``pool_i``, ``identity_i`` (one-input route, dropout),
``concat_i``, ``slice_i`` (route with groups), ``shortcut_i``, ``upsample_i``, and for a
[yolo] layer ``permute_i`` followed by the Region layer ``yolo_i``. Because the activation
naming is off by one, the layer feeding [yolo] ``i`` is found as the one just before
``permute_i`` rather than by guessing its name.

cv2 is imported only in availability() and activate(), never at module import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mapgate.backends.base import Availability, BackendFacts, BuildContext, DeclaredBackend, Runner
from mapgate.errors import BackendUnavailable, ConfigError, ConversionError
from mapgate.files import resolve_role, verified_sha256
from mapgate.cpu import engine_threads
from mapgate.darknet_cfg import parse_cfg, yolo_heads

if TYPE_CHECKING:
    from mapgate.darknet_cfg import YoloHead
    from mapgate.manifest import ModelSpec

PIN_HINT = "pip install 'opencv-python-headless<5'  (OpenCV 5 removed the Darknet reader)"

# The reference must be the most faithful numbers, not the fastest. Measured on the bundled
# models against a float64 evaluation of the same network (12 COCO images): Winograd 3x3
# convolution raises OpenCV's max error on yolov3-tiny's raw heads from 3.1e-5 to 1.5e-4, and
# layer fusion adds ~0.5e-5 on yolo-fastest while saving no measurable time. Both are off.
USE_WINOGRAD = False
USE_FUSION = False


def feed_layer_name(layer_names: list[str], head: "YoloHead", where: str) -> str:
    """OpenCV's name of the layer whose output feeds [yolo] layer ``head.layer_index``."""
    permute = f"permute_{head.layer_index}"
    if permute not in layer_names or f"yolo_{head.layer_index}" not in layer_names:
        raise ConversionError(
            f"{where}: OpenCV's net has no layers {permute!r}/{head.name!r} for [yolo] layer #{head.layer_index}; "
            "this OpenCV names Darknet layers differently than 4.x does"
        )
    i = layer_names.index(permute)
    if i == 0:
        raise ConversionError(f"{where}: nothing precedes {permute!r} in OpenCV's net")
    return layer_names[i - 1]


class OpenCVDarknetRunner(Runner):
    backend = "opencv"
    precision = "fp32"

    def __init__(self, model: "ModelSpec") -> None:
        super().__init__()
        self.model = model
        self._net = None
        self._heads: list[YoloHead] = []
        self._feeds: list[str] = []

    def activate_impl(self) -> None:
        avail = BACKEND.availability()
        if not avail.ok:
            raise BackendUnavailable(BACKEND.name, avail.reason)
        cv2 = BACKEND.facts.require("cv2")
        cfg = resolve_role(self.model, "cfg")
        weights = resolve_role(self.model, "weights")
        self._heads = yolo_heads(parse_cfg(cfg), self.model.input_size)
        try:
            net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        except cv2.error as exc:
            raise ConversionError(f"model {self.model.name!r}: OpenCV cannot read {cfg} + {weights}: {exc}") from exc
        threads = engine_threads()
        if threads is not None:  # shared cores (xdist workers): see mapgate.cpu.engine_threads
            cv2.setNumThreads(threads)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if hasattr(net, "enableWinograd"):  # added in 4.7; older releases have no Winograd path
            net.enableWinograd(USE_WINOGRAD)
        net.enableFusion(USE_FUSION)
        names = list(net.getLayerNames())
        self._feeds = [feed_layer_name(names, h, f"model {self.model.name!r} ({cfg})") for h in self._heads]
        self._net = net
        self.artifact = weights
        self.artifact_sha256 = verified_sha256(weights)

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        h, w = self.model.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ConfigError(
                f"model {self.model.name!r} ({self.model.manifest_path}): the opencv backend needs an NCHW batch "
                f"[N, 3, {h}, {w}] (field 'input_size'), got shape {batch.shape}"
            )
        net = self._net
        if net is None:
            raise RuntimeError(f"{type(self).__name__}.infer_impl() called before activate()")
        net.setInput(np.ascontiguousarray(batch, dtype=np.float32))
        outs = net.forward(self._feeds)
        # OpenCV 4.x hands back fresh arrays (checked: a later forward() leaves them unchanged)
        return {head.name: np.asarray(o, dtype=np.float32) for head, o in zip(self._heads, outs)}

    def supports_batch(self, n: int) -> bool:
        return True  # OpenCV DNN runs an N-image blob (as cv2.dnn.blobFromImages makes) through any net

    def deactivate_impl(self) -> None:
        self._net = None


class OpenCVBackend(DeclaredBackend):
    facts = BackendFacts(
        name="opencv", precisions=("fp32",), modules=("cv2",),
        extra=None, install_hint=PIN_HINT,  # a core dependency: the Darknet reference
        distributions={"cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                               "opencv-contrib-python")},
        original_formats=("darknet",),
        marker_help="runs on OpenCV DNN (the original of Darknet models)",
    )

    def availability(self) -> Availability:
        try:
            cv2 = self.facts.require("cv2")
        except BackendUnavailable as exc:
            return Availability.no(exc.reason)
        version = str(getattr(cv2, "__version__", "unknown"))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = 0
        if major >= 5:
            return Availability.no(f"OpenCV {version} is installed; 5.x has no Darknet reader "
                                   f"(cv2.dnn.readNetFromDarknet); fix: {PIN_HINT}")
        if not hasattr(getattr(cv2, "dnn", None), "readNetFromDarknet"):
            return Availability.no(f"OpenCV {version} has no cv2.dnn.readNetFromDarknet (built without the dnn "
                                   f"module?); fix: {PIN_HINT}")
        return Availability.yes()

    def runner(self, model: "ModelSpec", precision: str | None, ctx: BuildContext) -> Runner:
        # None = the original cfg+weights, which OpenCV runs in fp32
        if precision is not None and precision not in self.precisions:
            raise ConfigError(f"{model.manifest_path}: model {model.name!r}: backend 'opencv' runs only fp32, "
                              f"not {precision!r}")
        if model.format != "darknet":
            raise ConfigError(f"{model.manifest_path}: model {model.name!r}, field 'format': the opencv backend "
                              f"reads Darknet models only, got {model.format!r}")
        return OpenCVDarknetRunner(model)


BACKEND = OpenCVBackend()
