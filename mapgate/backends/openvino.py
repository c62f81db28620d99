"""OpenVINO (CPU): runs the model's ONNX, the original file or the conversion mapgate already makes
(Darknet -> ONNX, TF -> ONNX via tf2onnx), at FP32 or with the FP16 inference precision hint.

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``; the device decides what it honours. A CPU
without native FP16 does not run f16: OpenVINO executes bf16 where the CPU has it (AVX512_BF16,
AMX), else f32. The precision the compiled model actually uses is read back
(``compiled.get_property("INFERENCE_PRECISION_HINT")``), put in the identity (so a cache entry
made on an FP16 device is never reused on a bf16 one) and shown by ``mapgate models``. FP32 is
requested explicitly because the CPU plugin's default is bf16 on bf16-capable CPUs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from mapgate.cpu import engine_threads
from mapgate.backends.base import BackendFacts, BuildContext, DeclaredBackend, Runner
from mapgate.errors import ConfigError, ConversionError
from mapgate.files import verified_sha256

if TYPE_CHECKING:
    from mapgate.manifest import ModelSpec

DEVICE = "CPU"
# mapgate precision -> OpenVINO inference precision hint
HINTS = {"fp32": "f32", "fp16": "f16"}


def _openvino() -> Any:
    return BACKEND.facts.require("openvino")


def _precision_name(value: Any) -> str:
    """OpenVINO's element type ('<Type: 'bfloat16'>' or 'bf16') as its short name: f32, f16, bf16."""
    ov = _openvino()
    if isinstance(value, ov.Type):
        return value.to_string()
    return str(value)


@lru_cache(maxsize=None)
def device_precision(precision: str) -> str:
    """The inference precision this device actually uses when asked for ``precision``.

    Read from a compiled one-op model: the compiled model's INFERENCE_PRECISION_HINT is the
    device's answer to the requested hint, the same for any network (checked against the real
    model after each compile, see OpenVINORunner.activate_impl)."""
    ov = _openvino()
    from openvino import opset13 as ops

    param = ops.parameter([1, 4], ov.Type.f32, name="x")
    tiny = ov.Model([ops.relu(param)], [param], "probe")
    compiled = ov.Core().compile_model(tiny, DEVICE, {"INFERENCE_PRECISION_HINT": HINTS[precision]})
    return _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))


@lru_cache(maxsize=1)
def device_name() -> str:
    return str(_openvino().Core().get_property(DEVICE, "FULL_DEVICE_NAME"))


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, model: "ModelSpec", precision: str, ctx: BuildContext) -> None:
        super().__init__()
        if precision not in HINTS:
            raise ConfigError(f"{model.manifest_path}: model {model.name!r}: backend 'openvino' runs "
                              f"{', '.join(HINTS)}, not {precision!r}")
        self.model, self.precision, self.ctx = model, precision, ctx
        self.inference_precision: str | None = None  # what the device used (see module doc)
        self._request: Any = None
        self._outputs: list[tuple[int, str]] = []

    def activate_impl(self) -> None:
        ov = _openvino()
        self.artifact = BACKEND.facts.artifact_for(self.model, f"openvino:{self.precision}", self.ctx)
        self.artifact_sha256 = verified_sha256(self.artifact)
        core = ov.Core()
        try:
            network = core.read_model(str(self.artifact))
            config = {"INFERENCE_PRECISION_HINT": HINTS[self.precision]}
            threads = engine_threads()
            if threads is not None:  # shared cores (xdist workers): see mapgate.cpu.engine_threads
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = core.compile_model(network, DEVICE, config)
        except RuntimeError as exc:  # OpenVINO reports unsupported operators and bad files as RuntimeError
            raise ConversionError(f"model {self.model.name!r}: OpenVINO {ov.__version__} cannot compile "
                                  f"{self.artifact} for {DEVICE}: {str(exc).strip().splitlines()[0]}") from exc
        self.inference_precision = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.inference_precision != device_precision(self.precision):  # the identity would be wrong
            raise ConversionError(
                f"model {self.model.name!r}: OpenVINO compiled it with inference precision {self.inference_precision}"
                f" where the device probe said {device_precision(self.precision)}; the cache key would lie")
        if len(compiled.inputs) != 1:
            raise ConfigError(f"model {self.model.name!r}: {self.artifact} has {len(compiled.inputs)} inputs; "
                              "mapgate feeds one image tensor")
        self._input_type = compiled.inputs[0].get_element_type().to_dtype()
        # outputs by their ONNX names, as ONNX Runtime names them: read from the model as read, since
        # compiling fuses layers and adds the producer's tensor name (yolo_16 becomes {conv15_45, yolo_16})
        self._outputs = [(i, out.get_any_name()) for i, out in enumerate(network.outputs)]
        self._request = compiled.create_infer_request()

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._request is None:
            raise RuntimeError(f"{type(self).__name__}.infer_impl() called before activate()")
        if batch.dtype != self._input_type:
            raise ConfigError(f"model {self.model.name!r} ({self.model.manifest_path}): {self.artifact} takes "
                              f"{self._input_type} input, preprocessing gave {batch.dtype} (field 'preprocess.dtype')")
        self._request.infer({0: np.ascontiguousarray(batch)})
        # copies: the request reuses its output buffers on the next infer()
        return {name: np.array(self._request.get_output_tensor(i).data) for i, name in self._outputs}

    def deactivate_impl(self) -> None:
        self._request = None


class OpenVINOBackend(DeclaredBackend):
    facts = BackendFacts(
        name="openvino", precisions=tuple(HINTS), modules=("openvino",),
        extra="openvino", install_hint="pip install 'mapgate[openvino]'  (openvino)",
        builds_from_onnx=True,
        marker_help="runs on OpenVINO (CPU), from the model's ONNX",
    )

    def runner(self, model: "ModelSpec", precision: str | None, ctx: BuildContext) -> Runner:
        if precision is None:
            raise ConfigError(f"{model.manifest_path}: model {model.name!r}: backend 'openvino' runs converted "
                              "targets only (openvino:fp32, openvino:fp16), not an original")
        return OpenVINORunner(model, precision, ctx)

    def identity(self, model: "ModelSpec", precision: str, ctx: BuildContext) -> dict[str, Any]:
        """The ONNX it runs and what the device does with the requested precision."""
        return {**BACKEND.facts.artifact_identity(model, f"openvino:{precision}", ctx), "device": DEVICE,
                "device_name": device_name(), "inference_precision_hint": HINTS[precision],
                "inference_precision": device_precision(precision)}

    def describe(self) -> str:
        """What this device runs for each precision (fp16 may be executed as bf16 or f32)."""
        return f"{DEVICE} ({device_name()}): " + ", ".join(
            f"{p} runs {device_precision(p)}" for p in self.precisions)


BACKEND = OpenVINOBackend()
