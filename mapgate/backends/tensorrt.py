"""TensorRT (FP32 / FP16 / INT8) through Polygraphy: build or reuse an engine, then run it.

Two build modes, chosen from the installed TensorRT (:func:`select_mode`):

* **weakly typed** (TensorRT 8.5 to 10.x, JetPack 6): ``fp16`` = the FP32 ONNX with
  BuilderFlag.FP16, the output tail after the last conv and the manifest's
  ``convert.int8_keep_float`` nodes pinned to FP32 through layer precisions (with
  OBEY_PRECISION_CONSTRAINTS). ``int8`` = the Q/DQ ONNX that ``onnxruntime:int8`` evaluates with
  BuilderFlag.INT8 only (explicit quantization: no calibrator, no FP16 flag, so every layer the
  file leaves in float runs FP32, as in ONNX Runtime and in a strongly typed build).
* **strongly typed** (TensorRT 11 always, 10.12+ with ``MAPGATE_TRT_TYPING=strong``): precision
  lives in the ONNX graph (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, no precision flags,
  no calibrator). ``fp16`` builds the mixed-precision ONNX of :mod:`mapgate.convert.trt_onnx`;
  ``int8`` builds the same Q/DQ ONNX as weakly typed.

So ``tensorrt:int8`` is one recipe on every supported TensorRT: ``convert.int8_calibration``,
``int8_per_channel`` and ``int8_keep_float`` act through the Q/DQ file, which is checked against
the Q/DQ form that release's ONNX parser takes (:func:`mapgate.convert.trt_onnx.qdq_form_problems`).

Common settings: the manifest's fixed input shape (one min = opt = max profile when the ONNX
input is dynamic); TF32 off, so "fp32" is strict IEEE FP32 on Ampere/Orin; workspace limit
``MAPGATE_TRT_WORKSPACE_MB`` (default 1024 MB). Engines are cached by :mod:`mapgate.cache` (through ``_tensorrt_engine``)
under a key that also holds the build mode, the Polygraphy version and the FP32-pinned layer set,
deserialized with ``EngineFromBytes`` and run by Polygraphy's ``TrtRunner``.

Nothing imports ``tensorrt`` or ``polygraphy`` at module import, and every import of
``tensorrt`` is guarded (:func:`_import_tensorrt`): a broken TensorRT makes this backend
unavailable with the reason, never any other backend.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mapgate.backends.base import PRECISIONS, Availability, BackendFacts, BuildContext, Runner
from mapgate.backends._tensorrt_engine import (
    EXPLICIT_QDQ,
    BuildJob,
    CacheResult,
    CalibrationInfo,
    CorruptEngine,
    DeviceInfo,
    EngineCache,
    EngineSpec,
    calibration_set_digest,
)
from mapgate.calibration import check_disjoint, image_ids_of, quantization_images
from mapgate.convert import onnx_for
from mapgate.convert.trt_onnx import (
    FP16_INSTALL_HINT,
    build_fp16,
    build_int8,
    check_qdq_form,
    fp16_converter,
    keep_float_nodes,
    qdq_parser_form,
)
from mapgate.errors import BackendUnavailable, ConfigError, ConversionError, InferenceError
from mapgate.files import verified_sha256
from mapgate.fsutil import sha256_json
from mapgate.optional import version_of

if TYPE_CHECKING:
    import tensorrt

    from mapgate.manifest import ModelSpec

log = logging.getLogger(__name__)

NAME = "tensorrt"
MIN_TRT_VERSION = (8, 5)  # first release with the named-tensor API Polygraphy's TrtRunner needs
STRONG_OPT_IN_VERSION = (10, 12)  # strong typing complete from 10.12 (weak typing deprecated there)
STRONG_ONLY_VERSION = (11, 0)  # TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8, calibrators)
# 0.49.10: the Calibrator forces calibration inputs to FP32; 0.49.13: no np.unicode_ (NumPy 2);
# 0.53.4 (the first published release after 0.50.3): polygraphy/cuda/cuda.py also searches the pip
# wheel nvidia-cuda-runtime-cuXX (<site-packages>/nvidia/cuda_runtime/lib), the only libcudart of a
# pip-only TensorRT install on x86. 0.49.13 itself was never published on PyPI.
MIN_POLYGRAPHY_VERSION = (0, 53, 4)
WORKSPACE_ENV = "MAPGATE_TRT_WORKSPACE_MB"
TYPING_ENV = "MAPGATE_TRT_TYPING"  # "strong" or "weak"; unset: the installed TensorRT's default
DEFAULT_WORKSPACE_MB = 1024
WEAK, STRONG = "weakly typed", "strongly typed"
# Bump when the build settings below change in a way the key fields would not show.
RECIPE_VERSION = 3  # 3: weakly typed INT8 builds the Q/DQ ONNX (was: entropy calibration of the FP32 ONNX)
NVIDIA_PIP_HINT = "`pip install tensorrt-cu12` (or `tensorrt` for the newest, 11.x)"
TRT_INSTALL_HINT = (
    "on a Jetson the bindings come with JetPack 6 for the system python3 (`sudo apt install python3-libnvinfer`), "
    "so create the venv with `python3 -m venv --system-site-packages` to see them (docs/jetson.md); on x86 with "
    f"an NVIDIA GPU: {NVIDIA_PIP_HINT}"
)

# CUresult values worth naming (cuda.h; numbers checked against numba/cuda/cudadrv/enums.py).
_CUDA_ERRORS = {
    3: "CUDA_ERROR_NOT_INITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY (only the CUDA stub library is present, no driver)",
    46: "CUDA_ERROR_DEVICE_UNAVAILABLE (the GPU is busy or in exclusive mode)",
    100: "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is visible)",
    101: "CUDA_ERROR_INVALID_DEVICE",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: the kernel driver and libcuda differ in version",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    999: "CUDA_ERROR_UNKNOWN",
}
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


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

def select_mode(version: Sequence[int], environ: Mapping[str, str] | None = None) -> str:
    """The build mode for a TensorRT version: strongly typed on 11+, weakly typed before 10.12,
    and on 10.12-10.x weakly typed unless ``MAPGATE_TRT_TYPING=strong`` asks otherwise."""
    env = os.environ if environ is None else environ
    asked = env.get(TYPING_ENV, "").strip().lower()
    if asked not in ("", "strong", "weak"):
        raise ConfigError(f"environment variable {TYPING_ENV}={asked!r} must be 'strong' or 'weak' (or unset)")
    v, shown = tuple(version)[:2], ".".join(map(str, version))
    if v >= STRONG_ONLY_VERSION:
        if asked == "weak":
            raise ConfigError(f"{TYPING_ENV}=weak: TensorRT {shown} removed weakly typed builds "
                              "(BuilderFlag.FP16/INT8, INT8 calibrators, layer precisions); unset it")
        return STRONG
    if asked == "strong":
        if v < STRONG_OPT_IN_VERSION:
            raise ConfigError(f"{TYPING_ENV}=strong needs TensorRT >= 10.12, this is {shown}; "
                              "unset it for weakly typed builds")
        return STRONG
    return WEAK


def build_recipe(precision: str, mode: str = WEAK, fp32_layers: Sequence[str] = ()) -> dict[str, Any]:
    """Builder settings that change the engine beyond the key's explicit fields.

    ``fp32_layers``: the ONNX nodes pinned to FP32 in a weakly typed FP16 build; their
    names are hashed into the recipe, so a changed ``int8_keep_float`` rebuilds the engine.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"backend 'tensorrt' builds {', '.join(PRECISIONS)}, not {precision!r}")
    if mode == STRONG:
        flags: list[str] = []
        source = {"fp32": "fp32 onnx", "fp16": "fp16 mixed-precision onnx", "int8": "q/dq onnx"}[precision]
    else:
        # INT8 alone: explicit quantization needs the flag (a Q/DQ network without it does not build), and
        # without FP16 the layers the Q/DQ file leaves in float run FP32, as onnxruntime:int8 runs them
        flags = {"fp32": [], "fp16": ["fp16"], "int8": ["int8"]}[precision]
        source = "q/dq onnx" if precision == "int8" else "fp32 onnx"
    pinned = sorted(fp32_layers) if pins_layers(precision, mode) else []
    return {"version": RECIPE_VERSION, "mode": mode, "onnx": source, "flags": flags, "tf32": False,
            "explicit_batch": True, "profile": "min=opt=max=input_shape",
            "precision_constraints": "obey" if pinned else None, "fp32_layers": len(pinned),
            "fp32_layers_sha256": sha256_json(pinned) if pinned else None}


def pins_layers(precision: str, mode: str) -> bool:
    """Whether a build pins layers to FP32 by layer precision: weakly typed FP16 only. INT8 keeps its
    float layers in the Q/DQ file (float is what the file says, and no FP16 flag lets TensorRT lower it)."""
    return mode == WEAK and precision == "fp16"


def int8_kind(version: Sequence[int], mode: str) -> str:
    """Which INT8 ``tensorrt:int8`` builds on this TensorRT (``mapgate models``, ``mapgate doctor``)."""
    how = "INT8 flag, no calibrator" if mode == WEAK else "strongly typed"
    return (f"explicit Q/DQ: the onnxruntime:int8 ONNX ({how}; in the Q/DQ form of "
            f"{qdq_parser_form(tuple(version))['name']}'s ONNX parser)")


def layers_to_pin(layers: Sequence[tuple[str, Sequence[str]]], keep_nodes: Sequence[str],
                  keep_outputs: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Names of the network layers (name, output tensor names) that run an FP32-kept ONNX node.

    TensorRT's ONNX parser names a node's layer after the node and its output tensor after the
    ONNX tensor; a node lowered to several layers is caught by either its output name or the
    manifest's name prefixes.
    """
    nodes, outs, pre = set(keep_nodes), set(keep_outputs), tuple(prefixes)
    return [name for name, outputs in layers
            if name in nodes or (pre and name.startswith(pre)) or any(o in outs for o in outputs)]


# ---------------------------------------------------------------------------------------------
# Probes (small, monkeypatchable; the only places that touch tensorrt / CUDA for availability)
# ---------------------------------------------------------------------------------------------
def installed_version() -> tuple[str | None, str]:
    """(TensorRT version, where it came from): the imported module's ``__version__`` (a guarded
    import), since that is the TensorRT that builds. pip metadata can name another one: a
    ``tensorrt`` wheel next to JetPack's apt bindings on the path, or a stale dist-info.
    (None, why) when unusable."""
    try:
        trt = _import_tensorrt()
    except BackendUnavailable as exc:
        return None, exc.reason
    return str(trt.__version__), f"module {getattr(trt, '__file__', '?')}"


def _import_tensorrt() -> Any:
    """``import tensorrt``, or BackendUnavailable saying why: not installed, raising on import (a
    NumPy ABI mismatch raises ValueError/AttributeError, not ImportError), or no ``__version__``
    (a stubs-only package such as tensorrt-stubs, or a broken install)."""
    import importlib

    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(NAME, f"Python module 'tensorrt' is not installed ({exc}); "
                                       f"fix: {TRT_INSTALL_HINT}") from exc
    except Exception as exc:  # noqa: BLE001 - any import failure makes only this backend unavailable
        raise BackendUnavailable(NAME, f"importing 'tensorrt' failed: {type(exc).__name__}: {exc}. The bindings "
                                       "do not match this Python/NumPy (JetPack 6.0's TensorRT 8.6 needs "
                                       f"numpy<2); fix the install: {TRT_INSTALL_HINT}") from exc
    if not isinstance(getattr(trt, "__version__", None), str):
        where = getattr(trt, "__file__", None) or list(getattr(trt, "__path__", []))
        raise BackendUnavailable(NAME, f"the 'tensorrt' module found at {where} has no __version__: it is not "
                                       "TensorRT's bindings (type stubs such as tensorrt-stubs install a package "
                                       f"of that name) or a broken install; fix: {TRT_INSTALL_HINT}")
    return trt


def _polygraphy_version() -> str:
    """Polygraphy's version; BackendUnavailable when missing or older than the tested minimum."""
    polygraphy = BACKEND.facts.require("polygraphy")
    version = str(getattr(polygraphy, "__version__", "0"))
    if parse_version(version) < MIN_POLYGRAPHY_VERSION:
        raise BackendUnavailable(NAME, f"Polygraphy {version} is installed but mapgate needs >= "
                                       f"{'.'.join(map(str, MIN_POLYGRAPHY_VERSION))} (older ones cannot find the CUDA "
                                       "runtime of a pip-installed TensorRT or crash under NumPy 2); fix: pip install 'mapgate[trt]'")
    return version


def _libcuda() -> Any:
    """The CUDA driver library. The driver, not a libcudart: there is one per system and every
    CUDA runtime (TensorRT's, Polygraphy's) goes through it, so the probe cannot disagree with them."""
    return ctypes.CDLL("libcuda.so.1")


def _cuda_status(status: int, call: str) -> str:
    return f"{call} failed with CUDA error {status} ({_CUDA_ERRORS.get(status, 'see CUresult in cuda.h')})"


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why zero) via ``cuInit`` + ``cuDeviceGetCount``."""
    try:
        lib = _libcuda()
    except OSError as exc:
        return 0, f"the NVIDIA driver library libcuda.so.1 cannot be loaded ({exc})"
    status = int(lib.cuInit(ctypes.c_uint(0)))
    if status != 0:
        return 0, _cuda_status(status, "cuInit")
    count = ctypes.c_int(0)
    status = int(lib.cuDeviceGetCount(ctypes.byref(count)))
    if status != 0:
        return 0, _cuda_status(status, "cuDeviceGetCount")
    if count.value < 1:
        return 0, "cuDeviceGetCount reports 0 devices"
    return count.value, ""


def probe_device_info(trt_version: str, ordinal: int = 0) -> DeviceInfo:
    """GPU name and compute capability of CUDA device ``ordinal`` (the one a fresh process's
    TrtRunner uses: device 0 of those CUDA_VISIBLE_DEVICES exposes). Every status is checked."""
    lib = _libcuda()
    device = ctypes.c_int(-1)
    status = int(lib.cuDeviceGet(ctypes.byref(device), ctypes.c_int(ordinal)))
    if status != 0:
        raise BackendUnavailable(NAME, _cuda_status(status, f"cuDeviceGet({ordinal})") + "; check the NVIDIA driver")
    major, minor = ctypes.c_int(-1), ctypes.c_int(-1)
    s1 = int(lib.cuDeviceGetAttribute(ctypes.byref(major), ctypes.c_int(_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                                      device))
    s2 = int(lib.cuDeviceGetAttribute(ctypes.byref(minor), ctypes.c_int(_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
                                      device))
    if s1 or s2:
        raise BackendUnavailable(NAME, _cuda_status(s1 or s2, "cuDeviceGetAttribute(compute capability)"))
    name = ctypes.create_string_buffer(256)
    status = int(lib.cuDeviceGetName(name, ctypes.c_int(len(name)), device))
    gpu = name.value.decode(errors="replace").strip() if status == 0 else ""
    return DeviceInfo(trt_version=trt_version, gpu_name=gpu or "unknown",
                      compute_capability=f"{major.value}.{minor.value}")


# ---------------------------------------------------------------------------------------------
# TensorRT-facing helpers
# ---------------------------------------------------------------------------------------------
def numpy_dtype_name(poly_dtype: Any) -> str:
    """A Polygraphy DataType -> numpy dtype name; a type numpy cannot hold (bfloat16, fp8, int4 ...)
    is refused. Polygraphy 0.53 raises for those, older releases returned None, and
    ``np.dtype(None)`` is float64: the silent wrong answer this check exists to prevent."""
    from polygraphy.datatype import DataType
    from polygraphy.exception import PolygraphyException

    try:
        np_type = DataType.to_dtype(poly_dtype, "numpy")
    except PolygraphyException:
        np_type = None
    if np_type is None:
        raise ConfigError(f"the engine has an IO tensor of type {poly_dtype}, which numpy cannot hold; export the "
                          "ONNX with float32/float16/int32/int64/uint8/bool inputs and outputs")
    return np.dtype(np_type).name


def _trt_dtype_name(trt_dtype: "tensorrt.DataType") -> str:
    from polygraphy.datatype import DataType

    return numpy_dtype_name(DataType.from_dtype(trt_dtype, source_module="tensorrt"))


def _dims(dims: "tensorrt.Dims") -> tuple[int, ...]:
    # tensorrt.Dims is a sequence (__len__/__getitem__), not declared Iterable in the stubs
    return tuple(int(dims[j]) for j in range(len(dims)))


def describe_engine_io(engine: "tensorrt.ICudaEngine") -> list[TensorDesc]:
    """The engine's IO tensors through the named-tensor API (TensorRT >= 8.5, the only one in 10+)."""
    import tensorrt as trt

    out: list[TensorDesc] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(TensorDesc(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                              _dims(engine.get_tensor_shape(name)), _trt_dtype_name(engine.get_tensor_dtype(name))))
    return out


def _onnx_for(model: "ModelSpec", ctx: BuildContext, precision: str = "fp32", mode: str = WEAK,
              trt_version: Sequence[int] | None = None) -> Path:
    """The ONNX the engine is built from: the FP32 model; for INT8 (either mode) the Q/DQ file of
    ``onnxruntime:int8``, checked against ``trt_version``'s Q/DQ form (None: every release's);
    in strongly typed mode for FP16 the mixed-precision conversion."""
    if mode == STRONG and precision == "fp16":
        path = build_fp16(model, ctx)
    elif precision == "int8":
        path = build_int8(model, ctx)
    else:
        path = Path(onnx_for(model, ctx))
    if not path.is_file():
        raise ConversionError(f"model {model.name!r}: the ONNX for tensorrt:{precision} is not a file: {path}")
    if precision == "int8":
        check_qdq_form(path, None if trt_version is None else tuple(trt_version))
    return path


def fp32_nodes(model: "ModelSpec", onnx_path: Path) -> tuple[list[str], list[str]]:
    """(node names, their output tensor names) a weakly typed FP16 build pins to FP32."""
    onnx = BACKEND.facts.require("onnx")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    keep = set(keep_float_nodes(proto, model.convert.int8_keep_float))
    outputs = sorted({o for n in proto.graph.node if n.name in keep for o in n.output})
    return sorted(keep), outputs


def pin_layers_fp32(network: "tensorrt.INetworkDefinition", names: Sequence[str]) -> list[str]:
    """Set precision and output types FP32 on the named float layers; returns what it pinned."""
    import tensorrt as trt

    wanted, pinned = set(names), []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in wanted:
            continue
        floats = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)]
        if len(floats) != layer.num_outputs:
            continue  # shape/index layers: precision constraints do not apply
        layer.precision = trt.float32
        for j in floats:
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def _layers_of(network: "tensorrt.INetworkDefinition") -> list[tuple[str, list[str]]]:
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        out.append((layer.name, [layer.get_output(j).name for j in range(layer.num_outputs)]))
    return out


def _looks_like_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("out of memory", "workspace", "memory", "cudaerrormemoryallocation"))


def qdq_layer_count(network: "tensorrt.INetworkDefinition") -> int:
    """Quantize/dequantize layers of a parsed network: > 0 is what makes TensorRT quantize explicitly."""
    import tensorrt as trt

    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return sum(network.get_layer(i).type in qdq for i in range(network.num_layers))


def _build_engine(model: "ModelSpec", onnx_path: Path, job: BuildJob, mode: str = WEAK,
                  fp32_layers: tuple[Sequence[str], Sequence[str]] = ((), ())) -> bytes:
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    spec = job.spec
    strong = mode == STRONG
    where = f"model {model.name!r} ({model.manifest_path}), ONNX {onnx_path}, {mode}"
    try:
        # Polygraphy adds EXPLICIT_BATCH on TensorRT < 10 (every 10+ network is explicit-batch)
        # and STRONGLY_TYPED when asked (accepted, and the only mode, on TensorRT 11).
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strong)()
    except PolygraphyException as exc:
        raise ConversionError(f"{where}: TensorRT's ONNX parser rejected the model ({exc}); the parser errors "
                              "are logged above (often an unsupported op or opset)") from exc
    inputs = [(network.get_input(i).name, _dims(network.get_input(i).shape)) for i in range(network.num_inputs)]
    plan = plan_network_input(inputs, spec.input_shape, model.input_name, where)
    shape = tuple(spec.input_shape)
    profiles = [Profile().add(plan.name, min=shape, opt=shape, max=shape)] if plan.dynamic else None
    if spec.precision == "int8" and not qdq_layer_count(network):
        # without Q/DQ layers an INT8 flag means implicit quantization: scales mapgate never gated
        raise ConversionError(f"{where}: the INT8 network has no Q/DQ layers; tensorrt:int8 builds only the explicitly "
                              "quantized ONNX of onnxruntime:int8, never TensorRT's own calibration")

    pinned: list[str] = []
    if pins_layers(spec.precision, mode):
        nodes, outputs = fp32_layers
        pinned = pin_layers_fp32(network, layers_to_pin(_layers_of(network), nodes, outputs,
                                                        model.convert.int8_keep_float))
        log.info("%s: %d layers pinned to FP32 (output tail and int8_keep_float)", where, len(pinned))
    config = CreateConfig(
        tf32=False,
        # weakly typed: FP16 for fp16; INT8 alone for the Q/DQ file (explicit quantization needs it, no
        # calibrator: the scales are the file's). Strongly typed: no flags, the ONNX holds every type.
        fp16=not strong and spec.precision == "fp16",
        int8=not strong and spec.precision == "int8",
        profiles=profiles,
        precision_constraints="obey" if pinned else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: spec.workspace_mb * (1 << 20)},
    )
    try:
        # The tuple keeps the parser alive until the build ends (it owns the weights).
        serialized = EngineBytesFromNetwork((builder, network, parser), config=config)()
    except PolygraphyException as exc:
        hint = (f"it looks like memory ran out: lower {WORKSPACE_ENV} (now {spec.workspace_mb} MB) or close "
                "other GPU users" if _looks_like_oom(exc) else "the failing layer and reason are in the TensorRT "
                "log above")
        if pinned:
            hint += f"; {len(pinned)} layers were pinned to FP32 with OBEY_PRECISION_CONSTRAINTS"
        raise ConversionError(f"{where}: building the {spec.precision} engine failed ({exc}); {hint}") from exc
    return bytes(serialized)


def _deserialize(runtime: "tensorrt.Runtime", data: bytes) -> "tensorrt.ICudaEngine":
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

    def _calibration(self) -> CalibrationInfo:
        """The calibration of the Q/DQ file the INT8 engine is built from: its images in its order."""
        images = quantization_images(self.ctx.calib_images, self.ctx.max_calib_images)
        check_disjoint(set(self.ctx.calib_image_ids) | set(image_ids_of(images)), self.ctx.evaluated_image_ids,
                       where=f"{self.where} calibration")
        digest = calibration_set_digest(images)
        return CalibrationInfo(set_sha256=digest.sha256, count=digest.count,
                               preprocess_sha256=preprocess_sha256(self.model), algorithm=EXPLICIT_QDQ,
                               batch_size=self.input_shape[0])

    def engine_spec(self) -> tuple[EngineSpec, str, tuple[list[str], list[str]]]:
        """The cache key inputs of this runner's engine, the build mode and the FP32-pinned nodes
        (weakly typed FP16). Needs the ONNX (converted, cached) and the CUDA device, not a build."""
        trt_version, why = installed_version()
        if trt_version is None:
            raise BackendUnavailable(NAME, why)
        version = parse_version(trt_version)
        mode = select_mode(version)
        onnx_path = _onnx_for(self.model, self.ctx, self.precision, mode, version)
        calibration = self._calibration() if self.precision == "int8" else None
        pinned = fp32_nodes(self.model, onnx_path) if pins_layers(self.precision, mode) else ([], [])
        spec = EngineSpec(
            model=self.model.name, onnx_path=onnx_path, onnx_sha256=verified_sha256(onnx_path),
            precision=self.precision, input_shape=self.input_shape, workspace_mb=self.workspace_mb,
            device=probe_device_info(trt_version), calibration=calibration,
            recipe={**build_recipe(self.precision, mode, pinned[0]), **engine_key_extras()},
        )
        return spec, mode, pinned

    def activate_impl(self) -> None:
        status = BACKEND.precision_availability(self.precision)
        if not status.ok:
            raise BackendUnavailable(NAME, status.reason)
        import tensorrt as trt
        from polygraphy.backend.trt import TrtRunner, get_trt_logger
        from polygraphy.exception import PolygraphyException

        spec, mode, pinned = self.engine_spec()
        onnx_path = spec.onnx_path
        # The engine must not outlive the runtime that deserialized it, so the runner owns both.
        self._runtime = trt.Runtime(get_trt_logger())
        runtime = self._runtime
        result = EngineCache(self.ctx.engines_dir).get_or_build(
            spec,
            build=lambda job: _build_engine(self.model, onnx_path, job, mode, pinned),
            load=lambda data: _deserialize(runtime, data),
        )
        if result.built:
            log.info("%s: built %s (%s)", self.where, result.engine_path, result.reason)
        self.cache_result = result
        self.layout = binding_layout(describe_engine_io(result.value), self.input_shape, self.model.input_name,
                                     self.model.output_names, where=f"{self.where}, engine {result.engine_path}")
        self._input_dtype = np.dtype(self.layout.input_dtype)
        self._trt_runner = TrtRunner(result.value, name=f"mapgate-{self.model.name}-{self.precision}")
        try:
            self._trt_runner.activate()
        except PolygraphyException as exc:
            raise InferenceError(f"{self.where}: cannot create a TensorRT execution context for "
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
            raise InferenceError(f"{self.where}: TensorRT inference failed ({exc})") from exc
        return map_outputs(raw, layout, self.where)

    def deactivate_impl(self) -> None:
        if self._trt_runner is not None and self._trt_runner.is_active:
            self._trt_runner.deactivate()
        self._trt_runner = None
        self.cache_result = None if self.cache_result is None else dataclasses.replace(self.cache_result, value=None)
        self._runtime = None


def engine_key_extras() -> dict[str, Any]:
    """Engine key fields beyond EngineSpec's own: Polygraphy's defaults shape the engine too."""
    return {"polygraphy": version_of("polygraphy")}


class TensorRTBackend:
    name = NAME
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    original_formats: tuple[str, ...] = ()  # engines are always built from an ONNX
    facts = BackendFacts(name=name, precisions=precisions, original_formats=original_formats,
                         modules=("tensorrt", "polygraphy"), extra="trt", install_hint=TRT_INSTALL_HINT,
                         module_hints={"polygraphy": "pip install 'mapgate[trt]'  (polygraphy)",
                                       "onnx": "pip install 'mapgate[onnx]'  (onnx)",
                                       "onnxruntime": "pip install 'mapgate[onnx]'  (onnxruntime)"},
                         distributions={"tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11",
                                                     "tensorrt_libs")},
                         builds_from_onnx=True, marker_help="needs TensorRT and a CUDA device")

    def _installed(self) -> tuple[str, str] | Availability:
        """(version, mode) of a usable TensorRT + Polygraphy, or why not."""
        version, why = installed_version()
        if version is None:
            return Availability.no(why)
        if not trt_version_supported(version):
            return Availability.no(
                f"TensorRT {version} is installed but mapgate needs TensorRT >= 8.5 (the named-tensor API that "
                f"Polygraphy's TrtRunner uses); fix: JetPack 6 (TensorRT 8.6 / 10.3), or on x86 {NVIDIA_PIP_HINT}"
            )
        try:
            mode = select_mode(parse_version(version))
            _polygraphy_version()
        except (BackendUnavailable, ConfigError) as exc:
            return Availability.no(getattr(exc, "reason", str(exc)))
        return version, mode

    def availability(self) -> Availability:
        """Whether TensorRT can run here (any precision); when not, the exact reason and fix."""
        installed = self._installed()
        if isinstance(installed, Availability):
            return installed
        count, why = cuda_device_count()
        if count < 1:
            return Availability.no(
                f"no CUDA device: {why}. TensorRT needs an NVIDIA GPU and driver; check the driver "
                "(`nvidia-smi` on x86; on a Jetson run on the device itself, as a user in the 'video' group)"
            )
        return Availability.yes()

    def build_support(self, precision: str) -> Availability:
        """Whether a ``precision`` engine can be built in the installed TensorRT's mode (no GPU check)."""
        installed = self._installed()
        if isinstance(installed, Availability):
            return installed
        _, mode = installed
        if mode == STRONG and precision == "fp16":
            if fp16_converter() is None:
                return Availability.no("strongly typed FP16 needs a mixed-precision ONNX converter; "
                                       f"fix: {FP16_INSTALL_HINT}")
        if precision == "int8":  # either typing: the Q/DQ ONNX comes from ONNX Runtime's quantizer
            return Availability.probe(self.facts, ("onnx", "onnxruntime"))
        return Availability.yes()

    def precision_availability(self, precision: str) -> Availability:
        support = self.build_support(precision)
        return support if not support.ok else self.availability()

    def describe(self) -> str:
        """One line for ``mapgate models``: version, build mode, what each precision can do here."""
        installed = self._installed()
        if isinstance(installed, Availability):
            return f"{NAME}: unavailable here: {installed.reason}"
        version, mode = installed
        how = ("precision from the ONNX graph: fp16 = mixed-precision ONNX" if mode == STRONG else
               "fp16 = FP16 flag, output tail and int8_keep_float pinned FP32")
        how += f"; int8 = {int8_kind(parse_version(version), mode)}"
        per = ", ".join(f"{p} {'yes' if s.ok else 'no (' + s.reason + ')'}"
                        for p, s in ((p, self.build_support(p)) for p in self.precisions))
        status = self.availability()
        here = "available here" if status.ok else f"unavailable here: {status.reason}"
        return f"{NAME} {version}: {mode} builds ({how}); buildable: {per}; {here}"

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
        status = self.precision_availability(precision)
        if not status.ok:
            raise BackendUnavailable(NAME, status.reason)
        runner = TensorRTRunner(model, precision, ctx, workspace_mb=workspace_mb, batch_size=batch_size)
        spec, _, _ = runner.engine_spec()
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
