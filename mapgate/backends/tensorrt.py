"""TensorRT (FP32 / FP16 / INT8) through Polygraphy: build or reuse an engine, then run it.

The ONNX comes from :func:`mapgate.convert.onnx_for`; the engine is built with Polygraphy's
loaders (``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork``), cached
by :mod:`mapgate.cache` (via ``_tensorrt_engine``), deserialized with ``EngineFromBytes`` and run by Polygraphy's
``TrtRunner`` (device buffers allocated once and reused, H2D -> ``execute_async_v3`` -> D2H
on one stream, stream synchronized before ``infer`` returns).

Build settings and why:

* explicit batch with the manifest's fixed input shape (batch 1 by default); when the ONNX
  input has a dynamic dimension, one optimization profile with min = opt = max = that shape;
* TF32 off, so "fp32" is strict IEEE FP32 on Ampere/Orin (TensorRT enables TF32 by default);
* ``fp16``: BuilderFlag.FP16;
* ``int8``: BuilderFlag.INT8 with an ``IInt8EntropyCalibrator2`` fed by the calibration images
  through the model's own preprocessing, *and* BuilderFlag.FP16, as usual for INT8 builds,
  so layers without an INT8 kernel fall back to FP16 rather than FP32;
* workspace memory pool limit: ``MAPGATE_TRT_WORKSPACE_MB`` or the ``workspace_mb`` argument
  (default 1024 MB).

Nothing imports ``tensorrt`` or ``polygraphy`` at module import; both go through
:func:`mapgate.optional.require` inside functions.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mapgate.backends.base import PRECISIONS, Availability, BackendFacts, BuildContext, Runner
from mapgate.backends._tensorrt_engine import (
    ENTROPY_CALIBRATOR_2,
    BuildJob,
    CacheResult,
    CalibrationInfo,
    CorruptEngine,
    DeviceInfo,
    EngineCache,
    EngineSpec,
    calibration_set_digest,
)
from mapgate.errors import BackendUnavailable, ConfigError, ConversionError
from mapgate.fsutil import sha256_json
from mapgate.optional import require

if TYPE_CHECKING:
    from mapgate.manifest import ModelSpec

log = logging.getLogger(__name__)

NAME = "tensorrt"
MIN_TRT_VERSION = (8, 5)  # first release with the named-tensor API Polygraphy's TrtRunner needs
WORKSPACE_ENV = "MAPGATE_TRT_WORKSPACE_MB"
DEFAULT_WORKSPACE_MB = 1024
# Bump when the build settings below change in a way the key fields would not show.
RECIPE_VERSION = 1

TRT_INSTALL_HINT = (
    "on a Jetson the bindings come with JetPack for the system python3, so create the venv with "
    "`python3 -m venv --system-site-packages` to see them (docs/jetson.md); on x86 use NVIDIA's pip index: "
    "`pip install tensorrt --extra-index-url <NVIDIA's pip index>`"
)

# cudaError_t values worth naming (cuda_runtime_api driver_types.h).
_CUDA_ERRORS = {
    3: "cudaErrorInitializationError",
    34: "cudaErrorStubLibrary (only the CUDA stub library is present, no driver)",
    35: "cudaErrorInsufficientDriver: no NVIDIA driver is loaded, or it is older than this CUDA runtime",
    100: "cudaErrorNoDevice (no CUDA-capable device is visible)",
    999: "cudaErrorUnknown",
}
_CUDA_DEV_ATTR_CC_MAJOR = 75  # cudaDevAttrComputeCapabilityMajor
_CUDA_DEV_ATTR_CC_MINOR = 76  # cudaDevAttrComputeCapabilityMinor


# ---------------------------------------------------------------------------------------------
# Pure logic (unit-tested without TensorRT)
# ---------------------------------------------------------------------------------------------
def parse_version(text: str) -> tuple[int, ...]:
    """'8.6.1.6' -> (8, 6, 1, 6); '10.3.0' -> (10, 3, 0); stops at the first non-numeric part."""
    parts: list[int] = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def trt_version_supported(text: str) -> bool:
    version = parse_version(text)
    return bool(version) and version[:2] >= MIN_TRT_VERSION


def resolve_workspace_mb(value: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Workspace limit in MB: the argument, else ``MAPGATE_TRT_WORKSPACE_MB``, else 1024."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"TensorRT workspace_mb must be a positive integer (MB), got {value!r}")
        return value
    env = os.environ if environ is None else environ
    raw = env.get(WORKSPACE_ENV, "").strip()
    if not raw:
        return DEFAULT_WORKSPACE_MB
    try:
        parsed = int(raw)
    except ValueError:
        parsed = 0
    if parsed < 1:
        raise ConfigError(f"environment variable {WORKSPACE_ENV}={raw!r} must be a positive integer number of MB "
                          f"(e.g. {WORKSPACE_ENV}=512); unset it for the default {DEFAULT_WORKSPACE_MB}")
    return parsed


def input_shape_for(model: "ModelSpec", batch_size: int = 1) -> tuple[int, int, int, int]:
    """The engine's fixed input shape from the manifest: input_size and preprocess.layout."""
    if batch_size < 1:
        raise ConfigError(f"TensorRT batch size must be at least 1, got {batch_size}")
    h, w = model.input_size
    if model.preprocess.layout == "NCHW":
        return (batch_size, 3, h, w)
    if model.preprocess.layout == "NHWC":
        return (batch_size, h, w, 3)
    raise ConfigError(f"{model.manifest_path}: model {model.name!r}, field 'preprocess.layout': "
                      f"TensorRT backend supports NCHW or NHWC, got {model.preprocess.layout!r}")


def preprocess_sha256(model: "ModelSpec") -> str:
    """Hash of everything that turns a calibration image into the network input."""
    return sha256_json({"input_size": list(model.input_size), "preprocess": dataclasses.asdict(model.preprocess)})


@dataclass(frozen=True)
class InputPlan:
    name: str
    shape: tuple[int, ...]  # the fixed shape the engine is built for
    dynamic: bool  # the ONNX/network input has dynamic dims -> needs an optimization profile


def plan_network_input(inputs: Sequence[tuple[str, Sequence[int]]], expected_shape: Sequence[int],
                       expected_name: str | None = None, where: str = "") -> InputPlan:
    """Match the network's inputs (name, shape with -1 for dynamic dims) to the manifest.

    Exactly one input; its rank and static dims must equal the manifest's shape (dynamic dims
    accept anything). A mismatch is a manifest/ONNX disagreement and is refused, naming both.
    """
    prefix = f"{where}: " if where else ""
    expected = tuple(int(d) for d in expected_shape)
    if len(inputs) != 1:
        listing = ", ".join(f"{n!r} {tuple(s)}" for n, s in inputs) or "none"
        raise ConfigError(f"{prefix}the network has {len(inputs)} inputs ({listing}); mapgate feeds exactly one "
                          "image tensor. Export the ONNX with a single image input.")
    name, shape = inputs[0][0], tuple(int(d) for d in inputs[0][1])
    if expected_name is not None and name != expected_name:
        raise ConfigError(f"{prefix}the network's input is named {name!r} but the manifest's input_name is "
                          f"{expected_name!r}; fix the manifest field 'input_name' or re-export the ONNX")
    if len(shape) != len(expected) or any(d >= 0 and d != e for d, e in zip(shape, expected)):
        raise ConfigError(
            f"{prefix}the network input {name!r} has shape {shape} but the manifest implies {expected} "
            "(fields 'input_size' [height, width] and 'preprocess.layout'); make them agree"
        )
    return InputPlan(name=name, shape=expected, dynamic=any(d < 0 for d in shape))


@dataclass(frozen=True)
class TensorDesc:
    """One engine IO tensor as TensorRT describes it (shape has -1 for dynamic dims)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class BindingLayout:
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_names: tuple[str, ...]  # in the order infer() returns them


def binding_layout(tensors: Sequence[TensorDesc], expected_input_shape: Sequence[int],
                   expected_input_name: str | None = None, expected_output_names: Sequence[str] = (),
                   where: str = "") -> BindingLayout:
    """Map engine IO tensors to what the model's postprocessor expects, or refuse clearly.

    Outputs are always addressed by name, never by binding index: TensorRT does not promise
    to keep the ONNX output order. When the manifest lists ``output_names``, each must exist
    in the engine and only those are returned (in manifest order); otherwise all outputs are.
    """
    prefix = f"{where}: " if where else ""
    inputs = [t for t in tensors if t.is_input]
    outputs = [t for t in tensors if not t.is_input]
    plan = plan_network_input([(t.name, t.shape) for t in inputs], expected_input_shape, expected_input_name, where)
    if not outputs:
        raise ConfigError(f"{prefix}the engine has no outputs; the ONNX export is broken")
    names = [t.name for t in outputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{prefix}the engine has duplicate output names {names}")
    if expected_output_names:
        missing = [n for n in expected_output_names if n not in names]
        if missing:
            raise ConfigError(
                f"{prefix}the manifest's output_names {list(expected_output_names)} are not all engine outputs: "
                f"missing {missing}; the engine has {names}. Fix the manifest field 'output_names' or re-export "
                "the ONNX with those names"
            )
        selected = tuple(expected_output_names)
    else:
        selected = tuple(names)
    return BindingLayout(input_name=plan.name, input_shape=plan.shape, input_dtype=inputs[0].dtype,
                         output_names=selected)


def map_outputs(raw: Mapping[str, Any], layout: BindingLayout, where: str = "") -> dict[str, np.ndarray]:
    """Runner outputs -> ``{name: array}`` in layout order, as *copies*.

    Polygraphy's TrtRunner reuses its host buffers on the next ``infer``; a caller that keeps
    the previous batch's outputs would otherwise see them change under it.
    """
    missing = [n for n in layout.output_names if n not in raw]
    if missing:
        raise ConversionError(f"{where + ': ' if where else ''}TensorRT returned outputs {sorted(raw)}, "
                              f"missing {missing}")
    return {n: np.array(raw[n], copy=True) for n in layout.output_names}


def build_recipe(precision: str) -> dict[str, Any]:
    """Builder settings that change the engine beyond the key's explicit fields."""
    flags_by_precision: dict[str, list[str]] = {"fp32": [], "fp16": ["fp16"], "int8": ["int8", "fp16"]}
    if precision not in flags_by_precision:
        raise ConfigError(f"backend 'tensorrt' builds {', '.join(flags_by_precision)}, not {precision!r}")
    flags = flags_by_precision[precision]
    return {"version": RECIPE_VERSION, "flags": flags, "tf32": False, "explicit_batch": True,
            "profile": "min=opt=max=input_shape"}


# ---------------------------------------------------------------------------------------------
# Probes (small, monkeypatchable; the only places that touch tensorrt / CUDA for availability)
# ---------------------------------------------------------------------------------------------
def _import_tensorrt() -> ModuleType:
    try:
        return require("tensorrt", NAME)
    except BackendUnavailable as exc:
        # optional.py's generic hint cannot say the Jetson venv detail, so the fix is ours.
        cause = exc.__cause__ if exc.__cause__ is not None else exc.reason
        raise BackendUnavailable(NAME, f"Python module 'tensorrt' is not installed ({cause}); "
                                       f"fix: {TRT_INSTALL_HINT}") from exc


def _import_polygraphy() -> ModuleType:
    return require("polygraphy", NAME)


def _tensorrt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def _cudart() -> Any:
    """libcudart through Polygraphy's loader: it searches LD_LIBRARY_PATH, /usr/local/cuda/lib64
    (where JetPack puts it) and pip's nvidia-cuda-runtime wheels, with no pycuda needed."""
    from polygraphy import cuda

    return cuda.wrapper().handle


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why zero) via ``cudaGetDeviceCount`` in libcudart."""
    from polygraphy.exception import PolygraphyException

    try:
        lib = _cudart()
    except (OSError, PolygraphyException) as exc:
        return 0, f"the CUDA runtime library libcudart cannot be loaded ({exc})"
    count = ctypes.c_int(0)
    status = int(lib.cudaGetDeviceCount(ctypes.byref(count)))
    if status != 0:
        return 0, f"cudaGetDeviceCount failed with CUDA error {status} ({_CUDA_ERRORS.get(status, 'see cudaError_t')})"
    if count.value < 1:
        return 0, "cudaGetDeviceCount reports 0 devices"
    return count.value, ""


def probe_device_info(trt: ModuleType) -> DeviceInfo:
    """TensorRT version, GPU name and compute capability of the current CUDA device."""
    lib = _cudart()
    device = ctypes.c_int(0)
    lib.cudaGetDevice(ctypes.byref(device))
    major, minor = ctypes.c_int(-1), ctypes.c_int(-1)
    s1 = int(lib.cudaDeviceGetAttribute(ctypes.byref(major), ctypes.c_int(_CUDA_DEV_ATTR_CC_MAJOR), device))
    s2 = int(lib.cudaDeviceGetAttribute(ctypes.byref(minor), ctypes.c_int(_CUDA_DEV_ATTR_CC_MINOR), device))
    if s1 or s2:
        raise BackendUnavailable(NAME, f"cannot read the GPU's compute capability (CUDA errors {s1}, {s2}); "
                                       "check the NVIDIA driver")
    return DeviceInfo(trt_version=_tensorrt_version(trt), gpu_name=_gpu_name(lib, device),
                      compute_capability=f"{major.value}.{minor.value}")


def _gpu_name(lib: Any, device: ctypes.c_int) -> str:
    # cudaDeviceProp's first member is `char name[256]` in every CUDA version; its total size
    # differs between versions, so a generous buffer is passed and only the name is read.
    # CUDA 12 exports the current struct as cudaGetDeviceProperties_v2.
    fn = getattr(lib, "cudaGetDeviceProperties_v2", None) or getattr(lib, "cudaGetDeviceProperties", None)
    if fn is None:
        return "unknown"
    buf = ctypes.create_string_buffer(16384)
    if int(fn(buf, device)) != 0:
        return "unknown"
    return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip() or "unknown"


# ---------------------------------------------------------------------------------------------
# TensorRT-facing helpers
# ---------------------------------------------------------------------------------------------
def _trt_dtype_name(trt_dtype: Any) -> str:
    """tensorrt.DataType -> numpy dtype name, through Polygraphy's DataType tables."""
    from polygraphy.datatype import DataType

    return np.dtype(DataType.to_dtype(DataType.from_dtype(trt_dtype, source_module="tensorrt"), "numpy")).name


def describe_engine_io(trt: ModuleType, engine: Any, dtype_name: Callable[[Any], str] | None = None
                       ) -> list[TensorDesc]:
    """The engine's IO tensors, with TensorRT 8.x and 10.x APIs."""
    np_name = dtype_name or _trt_dtype_name
    out: list[TensorDesc] = []
    if hasattr(engine, "num_io_tensors"):
        # Named-tensor API: TensorRT >= 8.5, and the only one in 10.x.
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            out.append(TensorDesc(name, is_input, tuple(engine.get_tensor_shape(name)),
                                  np_name(engine.get_tensor_dtype(name))))
    else:
        # Binding-index API: TensorRT 8.0-8.4 (deprecated in 8.5, removed in 10.0). Kept for
        # describing such engines; availability() refuses to *run* on TensorRT < 8.5.
        for i in range(engine.num_bindings):
            out.append(TensorDesc(engine.get_binding_name(i), bool(engine.binding_is_input(i)),
                                  tuple(engine.get_binding_shape(i)), np_name(engine.get_binding_dtype(i))))
    return out


class CalibrationFeed:
    """Re-iterable calibration data loader for Polygraphy's ``Calibrator``.

    Each pass yields ``{input_name: float32 batch}`` from :func:`calibration_batches` (the
    model's own preprocessing). Float32 because TensorRT's calibrator takes float inputs
    (Polygraphy's Calibrator overrides the expected dtype to float32). Errors are recorded
    rather than raised, and the build raises them once TensorRT returns.
    """

    def __init__(self, model: "ModelSpec", images: Sequence[Path], input_name: str, batch_size: int = 1) -> None:
        self.model, self.images, self.input_name, self.batch_size = model, list(images), input_name, batch_size
        self.error: Exception | None = None
        self.batches_fed = 0
        self.input_metadata: Any = None  # Polygraphy sets this; kept so the attribute exists

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from mapgate.calibration import calibration_batches

        self.batches_fed = 0
        try:
            for batch in calibration_batches(self.model, self.images, batch_size=self.batch_size):
                self.batches_fed += 1
                yield {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        except Exception as exc:  # noqa: BLE001 - see below
            # This runs inside TensorRT's noexcept getBatch callback: any exception escaping
            # it (a cv2 decode error as much as a DataError) would abort the whole process.
            self.error = exc


def _onnx_for(model: "ModelSpec", ctx: BuildContext) -> Path:
    try:
        from mapgate.convert import onnx_for
    except ImportError as exc:
        raise ConversionError(f"model {model.name!r}: mapgate.convert.onnx_for is not available ({exc}); "
                              "the TensorRT backend builds from the ONNX it returns") from exc
    path = Path(onnx_for(model, ctx))
    if not path.is_file():
        raise ConversionError(f"model {model.name!r}: onnx_for returned {path}, which is not a file")
    return path


def _build_engine(trt: ModuleType, model: "ModelSpec", onnx_path: Path, job: BuildJob,
                  images: Sequence[Path]) -> bytes:
    from polygraphy.backend.trt import Calibrator, CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    spec = job.spec
    where = f"model {model.name!r} ({model.manifest_path}), ONNX {onnx_path}"
    try:
        # Polygraphy creates the network with EXPLICIT_BATCH on TensorRT < 10 and without it
        # on 10.x, where the flag is deprecated and every network is explicit-batch.
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path))()
    except PolygraphyException as exc:
        raise ConversionError(f"{where}: TensorRT's ONNX parser rejected the model ({exc}); the parser errors "
                              "are logged above (often an unsupported op or opset)") from exc
    inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
    plan = plan_network_input(inputs, spec.input_shape, model.input_name, where)
    shape = tuple(spec.input_shape)
    profiles = [Profile().add(plan.name, min=shape, opt=shape, max=shape)] if plan.dynamic else None

    feed: CalibrationFeed | None = None
    calibrator = None
    if spec.precision == "int8":
        if job.calibration_cache is None:
            raise ConversionError(f"{where}: INT8 build without a calibration cache path (engine cache bug)")
        feed = CalibrationFeed(model, images, plan.name, batch_size=shape[0])
        calibrator = Calibrator(data_loader=feed, cache=str(job.calibration_cache),
                                BaseClass=trt.IInt8EntropyCalibrator2)
    config = CreateConfig(
        tf32=False,
        fp16=spec.precision in ("fp16", "int8"),  # FP16 is the fallback for layers with no INT8 kernel
        int8=spec.precision == "int8",
        calibrator=calibrator,
        profiles=profiles,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: spec.workspace_mb * (1 << 20)},
    )
    try:
        # The tuple keeps the parser alive until the build ends (it owns the weights).
        serialized = EngineBytesFromNetwork((builder, network, parser), config=config)()
    except PolygraphyException as exc:
        if feed is not None and feed.error is not None:  # the real cause: calibration data could not be made
            raise ConversionError(f"{where}: INT8 calibration input failed: {feed.error}") from feed.error
        raise ConversionError(f"{where}: building the {spec.precision} engine failed ({exc}); see the TensorRT "
                              f"log above. If it ran out of memory, lower {WORKSPACE_ENV}") from exc
    if feed is not None and feed.error is not None:
        # Calibration stopped early: the engine's scales come from part of the set; never cache it.
        raise ConversionError(f"{where}: INT8 calibration input failed: {feed.error}") from feed.error
    if feed is not None and not job.calibration_reused and feed.batches_fed == 0 and images:
        log.warning("%s: TensorRT consumed no calibration batches (explicitly quantized network?)", where)
    return bytes(serialized)


def _deserialize(runtime: Any, data: bytes) -> Any:
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    try:
        return EngineFromBytes(data, runtime=runtime)()
    except PolygraphyException as exc:
        raise CorruptEngine(str(exc)) from exc


# ---------------------------------------------------------------------------------------------
# Runner and backend
# ---------------------------------------------------------------------------------------------
class TensorRTRunner(Runner):
    """Builds or loads the cached engine in ``activate``; ``infer`` returns outputs by name."""

    backend = NAME

    def __init__(self, model: "ModelSpec", precision: str, ctx: BuildContext, *, workspace_mb: int | None = None,
                 batch_size: int = 1) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"backend 'tensorrt' runs precisions {', '.join(PRECISIONS)}, got {precision!r} "
                              "(TensorRT is never the reference backend)")
        self.model, self.precision, self.ctx = model, precision, ctx
        self.workspace_mb = resolve_workspace_mb(workspace_mb)
        self.input_shape = input_shape_for(model, batch_size)
        self.where = f"model {model.name!r} on tensorrt:{precision}"
        self.cache_result: CacheResult[Any] | None = None
        self.layout: BindingLayout | None = None
        self._trt_runner: Any = None
        self._runtime: Any = None
        self._input_dtype: np.dtype | None = None

    def _calibration(self) -> tuple[CalibrationInfo, list[Path]]:
        from mapgate.calibration import check_disjoint, image_ids_of

        images = sorted(self.ctx.calib_images, key=lambda p: p.name)[: self.ctx.max_calib_images]
        if not images:
            raise ConfigError(f"{self.where}: INT8 needs calibration images but the build context has none; "
                              "pass a calibration folder (the bundled one is fixtures/coco/calib-val2017/images)")
        check_disjoint(set(self.ctx.calib_image_ids) | set(image_ids_of(images)), self.ctx.evaluated_image_ids,
                       where=f"{self.where} calibration")
        digest = calibration_set_digest(images)
        info = CalibrationInfo(set_sha256=digest.sha256, count=digest.count,
                               preprocess_sha256=preprocess_sha256(self.model), algorithm=ENTROPY_CALIBRATOR_2,
                               batch_size=self.input_shape[0])
        return info, images

    def engine_spec(self, trt: ModuleType) -> tuple[EngineSpec, list[Path]]:
        """The cache key inputs of this runner's engine (and the calibration images for INT8).

        Needs the ONNX (``onnx_for`` may convert, cached) and the CUDA device, not a build.
        """
        from mapgate.files import verified_sha256

        onnx_path = _onnx_for(self.model, self.ctx)
        calibration, images = self._calibration() if self.precision == "int8" else (None, [])
        spec = EngineSpec(
            model=self.model.name, onnx_path=onnx_path, onnx_sha256=verified_sha256(onnx_path),
            precision=self.precision, input_shape=self.input_shape, workspace_mb=self.workspace_mb,
            device=probe_device_info(trt), calibration=calibration, recipe=build_recipe(self.precision),
        )
        return spec, images

    def activate_impl(self) -> None:
        trt = _import_tensorrt()
        status = BACKEND.availability()
        if not status.ok:
            raise BackendUnavailable(NAME, status.reason)
        from polygraphy.backend.trt import TrtRunner, get_trt_logger
        from polygraphy.exception import PolygraphyException

        spec, images = self.engine_spec(trt)
        onnx_path = spec.onnx_path
        # The engine must not outlive the runtime that deserialized it, so the runner owns both.
        self._runtime = trt.Runtime(get_trt_logger())
        runtime = self._runtime
        result = EngineCache(self.ctx.engines_dir).get_or_build(
            spec,
            build=lambda job: _build_engine(trt, self.model, onnx_path, job, images),
            load=lambda data: _deserialize(runtime, data),
        )
        if result.built:
            log.info("%s: built %s (%s)", self.where, result.engine_path, result.reason)
        self.cache_result = result
        self.layout = binding_layout(describe_engine_io(trt, result.value), self.input_shape, self.model.input_name,
                                     self.model.output_names, where=f"{self.where}, engine {result.engine_path}")
        self._input_dtype = np.dtype(self.layout.input_dtype)
        self._trt_runner = TrtRunner(result.value, name=f"mapgate-{self.model.name}-{self.precision}")
        try:
            self._trt_runner.activate()
        except PolygraphyException as exc:
            raise ConversionError(f"{self.where}: cannot create a TensorRT execution context for "
                                  f"{result.engine_path} ({exc})") from exc
        self.artifact = result.engine_path
        self.artifact_sha256 = str(result.provenance["file"]["sha256"])

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from polygraphy.exception import PolygraphyException

        layout, dtype = self.layout, self._input_dtype
        if layout is None or dtype is None or self._trt_runner is None:
            raise RuntimeError(f"{self.where}: infer() before a successful activate()")
        if tuple(batch.shape) != layout.input_shape:
            raise ConfigError(f"{self.where}: got an input batch of shape {tuple(batch.shape)}, but the engine was "
                              f"built for {layout.input_shape}; feed batches of {layout.input_shape[0]} or create "
                              f"the runner with batch_size={batch.shape[0] if batch.ndim else '?'}")
        if batch.dtype != dtype:
            if not np.can_cast(batch.dtype, dtype, casting="same_kind"):
                raise ConfigError(f"{self.where}: input dtype {batch.dtype} cannot be fed to the engine's "
                                  f"{dtype} input; check the manifest field 'preprocess.dtype'")
            batch = batch.astype(dtype)
        try:
            # TrtRunner: H2D into a reused device buffer, execute_async_v3, D2H, all on its one
            # stream, and stream.synchronize() before returning, so timings read after are real.
            raw = self._trt_runner.infer({layout.input_name: np.ascontiguousarray(batch)})
        except PolygraphyException as exc:
            raise ConversionError(f"{self.where}: TensorRT inference failed ({exc})") from exc
        return map_outputs(raw, layout, self.where)

    def deactivate_impl(self) -> None:
        if self._trt_runner is not None and self._trt_runner.is_active:
            self._trt_runner.deactivate()
        self._trt_runner = None
        self.cache_result = None if self.cache_result is None else dataclasses.replace(self.cache_result, value=None)
        self._runtime = None


class TensorRTBackend:
    name = NAME
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    original_formats: tuple[str, ...] = ()  # engines are always built from an ONNX
    facts = BackendFacts(name=name, precisions=precisions, original_formats=original_formats,
                         modules=("tensorrt", "polygraphy"), extra="trt", install_hint=TRT_INSTALL_HINT,
                         module_hints={"polygraphy": "pip install 'mapgate[trt]'  (polygraphy)"},
                         builds_from_onnx=True, marker_help="needs TensorRT and a CUDA device")

    def availability(self) -> Availability:
        """Whether TensorRT can run here; when not, the exact reason and fix."""
        try:
            trt = _import_tensorrt()
        except BackendUnavailable as exc:
            return Availability.no(exc.reason)
        version = _tensorrt_version(trt)
        if not trt_version_supported(version):
            return Availability.no(
                f"TensorRT {version} is installed but mapgate needs TensorRT >= 8.5 (the named-tensor API that "
                "Polygraphy's TrtRunner uses); fix: JetPack 5.1 or newer, or on x86 "
                "`pip install 'tensorrt>=8.5' --extra-index-url <NVIDIA's pip index>`"
            )
        try:
            _import_polygraphy()
        except BackendUnavailable as exc:
            return Availability.no(exc.reason)
        count, why = cuda_device_count()
        if count < 1:
            return Availability.no(
                f"no CUDA device: {why}. TensorRT needs an NVIDIA GPU and driver; check the driver "
                "(`nvidia-smi` on x86; on a Jetson run on the device itself, as a user in the 'video' group)"
            )
        return Availability.yes()

    def runner(self, model: "ModelSpec", precision: str, ctx: BuildContext, *, workspace_mb: int | None = None,
               batch_size: int = 1) -> TensorRTRunner:
        return TensorRTRunner(model, precision, ctx, workspace_mb=workspace_mb, batch_size=batch_size)

    def identity(self, model: "ModelSpec", precision: str, ctx: BuildContext, *, workspace_mb: int | None = None,
                 batch_size: int = 1) -> dict[str, Any]:
        """What the gate keys cached detections on, without building anything.

        The engine key names everything that determines the engine; TensorRT builds are not
        bit-reproducible (tactic timing), so the detections also depend on *which* build ran.
        When a valid engine is cached, its sha256 is included; when not, the next run builds
        one and its detections are marked not cacheable (the build's bytes are unknown yet).
        """
        runner = TensorRTRunner(model, precision, ctx, workspace_mb=workspace_mb, batch_size=batch_size)
        spec, _ = runner.engine_spec(_import_tensorrt())
        cache = EngineCache(ctx.engines_dir)
        ident: dict[str, Any] = {"engine_key": spec.key(), "engine_key_fields": spec.key_fields(),
                                 "onnx": str(spec.onnx_path), "onnx_sha256": spec.onnx_sha256}
        prov = cache.cached_provenance(spec)
        if prov is None:
            ident["cacheable"] = False
        else:
            ident.update(artifact=str(cache.engine_path(spec)), artifact_sha256=prov["file"]["sha256"])
        return ident


BACKEND = TensorRTBackend()
