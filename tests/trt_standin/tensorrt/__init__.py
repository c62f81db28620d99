"""A recording stand-in for NVIDIA's ``tensorrt`` Python module, for contract tests without a GPU.

Its names come from TensorRT's own binding sources: ``tests/trt_standin/api/<version>.json``
(written by ``tests/trt_standin/generate_api.py`` from NVIDIA/TensorRT at the tag named in the
file) lists every enum with its values, every class with its bases and members, and the module's
attributes and functions. Select the version with ``MAPGATE_STANDIN_TRT_VERSION`` (default 10.3.0;
one of the api/*.json versions) before the first import. The module exposes exactly that
version's names:

* a name the version does not have raises AttributeError, like pybind11, and is appended to
  :data:`UNKNOWN` with the caller's file and line (so a 10-only name on the 8.6 path fails);
* a name the version has but the stand-in does not model raises AttributeError too and is
  appended to :data:`UNMODELED` (the tests require this list to stay empty for what mapgate and
  Polygraphy touch, so no probe silently takes a branch the real module would not);
* the modeled functions take the bindings' keyword names (a test compares every signature with
  the JSON), so an unknown keyword is a TypeError.

Behaviour: the ONNX parser and builder apply TensorRT's rules (see ``_onnx_rules``), record
every call in :data:`CALLS`, and the serialized "engine" names the ONNX it was built from, so the
runtime half (``Runtime.deserialize_cuda_engine`` -> ``ICudaEngine`` -> ``IExecutionContext`` ->
``execute_async_v3``) runs that ONNX with ONNX Runtime on the bytes Polygraphy copied to "device"
memory (``standin_cuda``) and writes the outputs through the caller's ``IOutputAllocator``.
"""

from __future__ import annotations

import builtins as _builtins
import ctypes
import itertools as _itertools
import json as _json
import os
import sys
import weakref as _weakref
from pathlib import Path as _Path
from typing import Any

from . import _onnx_rules

_bool = _builtins.bool
_API_DIR = _Path(__file__).resolve().parent.parent / "api"
__version__ = os.environ.get("MAPGATE_STANDIN_TRT_VERSION", "10.3.0")
_API_FILE = _API_DIR / f"{__version__}.json"
if not _API_FILE.is_file():
    raise ImportError(f"stand-in tensorrt: no binding data for MAPGATE_STANDIN_TRT_VERSION={__version__!r}; "
                      f"available: {sorted(p.stem for p in _API_DIR.glob('*.json'))}")
API: dict[str, Any] = _json.loads(_API_FILE.read_text())
_VERSION = tuple(int(p) for p in __version__.split(".")[:2])

CALLS: list[tuple[str, dict[str, Any]]] = []
UNKNOWN: list[tuple[str, str, str]] = []  # (owner, attribute, "file:line" of the caller)
UNMODELED: list[tuple[str, str, str]] = []  # real in this version, not modeled by the stand-in
_RECORDING = {"CALLS", "UNKNOWN", "UNMODELED", "API", "LIFETIME"}  # stand-in only, not TensorRT's
LIFETIME: list[tuple[str, int]] = []  # ("Runtime.created", id) ... ("ICudaEngine.destroyed", id)


def _call(what: str, **args: Any) -> None:
    CALLS.append((what, args))


def _caller(depth: int) -> str:
    frame = sys._getframe(depth)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "?"


def _missing(owner: str, name: str, exposed: _bool) -> AttributeError:
    (UNMODELED if exposed else UNKNOWN).append((owner, name, _caller(2)))
    why = "not modeled by the stand-in" if exposed else f"not in TensorRT {__version__}"
    return AttributeError(f"'{owner}' object has no attribute '{name}' ({why})")


def _members(api_name: str) -> set[str]:
    info = API["classes"].get(api_name)
    if info is None:
        return set()
    names = set(info["members"])
    for base in info["bases"]:
        names |= _members(base)
    return names


def _exposed(cls: type) -> frozenset[str]:
    cached = cls.__dict__.get("_exposed_names")
    if cached is None:
        cached = frozenset().union(*(_members(k.__dict__["_api_name"]) for k in cls.__mro__
                                     if "_api_name" in k.__dict__))
        cls._exposed_names = cached
    return cached


def _api_name(cls: type) -> str:
    return next((k.__dict__["_api_name"] for k in cls.__mro__ if "_api_name" in k.__dict__), cls.__name__)


def _is_standin(cls: type) -> _bool:
    return cls.__module__ == __name__


def _class_attr(cls: type, name: str) -> Any:
    """The attribute as defined in the class or its bases, without __getattr__ (which records)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


class _StrictMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):  # private or dunder: never a binding name, not recorded
            raise AttributeError(name)
        raise _missing(_api_name(cls), name, name in _exposed(cls))


class _Strict(metaclass=_StrictMeta):
    """Base of every stand-in class: public state lives in properties, private state in ``_x``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private or dunder: never a binding name, not recorded
            raise AttributeError(name)
        raise _missing(_api_name(type(self)), name, name in _exposed(type(self)))

    def __setattr__(self, name: str, value: Any) -> None:
        # pybind11 objects take no new attributes; Python subclasses (calibrators, loggers,
        # allocators) are ordinary objects.
        if not name.startswith("_") and _is_standin(type(self)):
            descriptor = _class_attr(type(self), name) if name in _exposed(type(self)) else None
            if not hasattr(descriptor, "__set__"):
                raise _missing(_api_name(type(self)), name, name in _exposed(type(self)))
        object.__setattr__(self, name, value)


def _track(obj: Any, what: str) -> None:
    """Record creation and destruction (finalizers run in refcount order, as TensorRT's deletes do)."""
    LIFETIME.append((f"{what}.created", id(obj)))
    _weakref.finalize(obj, LIFETIME.append, (f"{what}.destroyed", id(obj)))


# ---------------------------------------------------------------------------------------------
# Enums (all of them, with the headers' values)
# ---------------------------------------------------------------------------------------------
class _EnumValue:
    def __init__(self, owner: str, name: str, value: int) -> None:
        self.name, self.value, self._owner = name, value, owner

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> _bool:
        return isinstance(other, _EnumValue) and (other._owner, other.value) == (self._owner, self.value)

    def __hash__(self) -> int:
        return hash((self._owner, self.value))

    def __repr__(self) -> str:
        return f"<{self._owner}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{self._owner}.{self.name}"


class _EnumMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):  # private or dunder: never a binding name, not recorded
            raise AttributeError(name)
        raise _missing(cls.__name__, name, False)

    def __iter__(cls) -> Any:
        return iter(cls.__members__.values())


def _enum(name: str, members: dict[str, int]) -> Any:
    short = name.rsplit(".", 1)[-1]
    values = {k: _EnumValue(short, k, v) for k, v in members.items()}
    return _EnumMeta(short, (), {**values, "__members__": values})


_ENUMS = {name: _enum(name, info["members"]) for name, info in API["enums"].items()}
globals().update({n: e for n, e in _ENUMS.items() if "." not in n})
DataType: Any = _ENUMS["DataType"]
for _name, _target in API["module_attributes"].items():
    if _target.startswith("<object"):
        continue
    _enum_name, _, _member = _target.partition(".")
    globals()[_name] = getattr(_ENUMS[_enum_name], _member) if _member else _ENUMS[_enum_name]

_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16"}
_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "BOOL": "bool", "UINT8": "uint8",
          "INT64": "int64"}
_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1, "FP8": 1}


def _dtype(name: str) -> Any:
    return getattr(DataType, name)  # a dtype this version lacks (INT64 on 8.6) raises, as the parser would fail


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------
class ILogger(_Strict):
    def __init__(self) -> None:
        _call("ILogger.__init__")

    def log(self, severity: Any, msg: str) -> None:
        pass


class Logger(ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        super().__init__()
        self._min_severity = min_severity

    min_severity = property(lambda self: self._min_severity, lambda self, v: object.__setattr__(self, "_min_severity", v))


def _log(logger: Any, severity: str, msg: str) -> None:
    """What TensorRT does with an error: tell the logger (Polygraphy's prints it)."""
    _call("log", severity=severity, message=msg)
    if logger is not None:
        logger.log(getattr(_ENUMS["ILogger.Severity"], severity), msg)


def init_libnvinfer_plugins(logger: Any, namespace: str) -> _bool:
    _call("init_libnvinfer_plugins", namespace=namespace)
    return True


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------
class Dims(tuple):
    """tensorrt.Dims: a sequence comparing equal to tuples and lists of the same values."""

    def __eq__(self, other: object) -> _bool:
        return isinstance(other, (tuple, list)) and tuple(self) == tuple(other)

    __hash__ = tuple.__hash__


class ITensor(_Strict):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any, is_input: _bool = False) -> None:
        self._name, self._shape, self._dtype, self._is_input, self._is_output = name, Dims(shape), dtype, is_input, False

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)
    is_network_input = property(lambda self: self._is_input)
    is_network_output = property(lambda self: self._is_output)
    is_shape_tensor = property(lambda self: False)
    is_execution_tensor = property(lambda self: True)


class ILayer(_Strict):
    def __init__(self, network: "INetworkDefinition", name: str, layer_type: Any, inputs: list[ITensor | None],
                 outputs: list[ITensor]) -> None:
        self._network, self._name, self._type, self._inputs, self._outputs = network, name, layer_type, inputs, outputs
        self._precision: Any = None
        self._output_types: dict[int, Any] = {}

    name = property(lambda self: self._name)
    type = property(lambda self: self._type)
    num_outputs = property(lambda self: len(self._outputs))
    num_inputs = property(lambda self: len(self._inputs))

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index]

    def _get_precision(self) -> Any:
        return self._precision if self._precision is not None else DataType.FLOAT

    def _set_precision(self, dtype: Any) -> None:
        if self._network._strongly_typed:
            raise RuntimeError("setting layer precision is not allowed in a strongly typed network")
        _call("ILayer.precision", layer=self._name, dtype=dtype.name)
        self._precision = dtype

    precision = property(_get_precision, _set_precision)
    precision_is_set = property(lambda self: self._precision is not None)

    def set_output_type(self, index: int, dtype: Any) -> None:
        if self._network._strongly_typed:
            raise RuntimeError("setting layer output types is not allowed in a strongly typed network")
        _call("ILayer.set_output_type", layer=self._name, index=index, dtype=dtype.name)
        self._output_types[index] = dtype

    def output_type_is_set(self, index: int) -> _bool:
        return index in self._output_types


class INetworkDefinition(_Strict):
    def __init__(self, flags: int) -> None:
        self._flags, self._inputs, self._outputs, self._layers = flags, [], [], []
        strong = getattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) if "STRONGLY_TYPED" in \
            NetworkDefinitionCreationFlag.__members__ else None
        # TensorRT 11: every network is strongly typed (the flag is accepted and ignored)
        self._strongly_typed = _VERSION >= (11, 0) or (strong is not None and _bool(flags & (1 << int(strong))))
        self._onnx: str | None = None

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))
    flags = property(lambda self: self._flags)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index: int) -> ILayer:
        if index >= len(self._layers):
            raise IndexError(index)
        return self._layers[index]

    def get_flag(self, flag: Any) -> _bool:
        return _bool(self._flags & (1 << int(flag)))


class IOptimizationProfile(_Strict):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the real names
        _call("IOptimizationProfile.set_shape", input=input, min=tuple(min), opt=tuple(opt), max=tuple(max))
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str) -> list:  # noqa: A002
        return [Dims(s) for s in self._shapes.get(input, ())]

    def __bool__(self) -> _bool:
        return True


class ITimingCache(_Strict):
    def combine(self, input_cache: Any, ignore_mismatch: _bool) -> _bool:
        return True


class IBuilderConfig(_Strict):
    def __init__(self) -> None:
        self._flags: set[int] = set()
        self._pools: dict[int, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._calibrator: Any = None
        self._calib_profile: Any = None
        self._profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_flag(self, flag: Any) -> None:
        _call("IBuilderConfig.set_flag", flag=flag.name)
        self._flags.add(int(flag))

    def clear_flag(self, flag: Any) -> None:
        _call("IBuilderConfig.clear_flag", flag=flag.name)
        self._flags.discard(int(flag))

    def get_flag(self, flag: Any) -> _bool:
        return int(flag) in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        _call("IBuilderConfig.set_memory_pool_limit", pool=pool.name, pool_size=pool_size)
        self._pools[int(pool)] = pool_size

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(int(pool), 1 << 40)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _call("IBuilderConfig.add_optimization_profile", shapes=dict(profile._shapes))
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))
    DLA_core = property(lambda self: -1)
    default_device_type = property(lambda self: DeviceType.GPU)
    engine_capability = property(lambda self: EngineCapability.STANDARD)
    profiling_verbosity = property(lambda self: self._profiling_verbosity,
                                   lambda self, v: object.__setattr__(self, "_profiling_verbosity", v))

    def get_tactic_sources(self) -> int:
        return 0

    def get_preview_feature(self, feature: Any) -> _bool:
        return False

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache()

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: _bool) -> _bool:
        return True

    def get_timing_cache(self) -> ITimingCache:
        return ITimingCache()

    def set_calibration_profile(self, profile: IOptimizationProfile) -> _bool:
        _call("IBuilderConfig.set_calibration_profile", shapes=dict(profile._shapes))
        self._calib_profile = profile
        return True

    def get_calibration_profile(self) -> IOptimizationProfile:
        return self._calib_profile

    def get_quantization_flag(self, flag: Any) -> _bool:
        return False

    def _set_calibrator(self, calibrator: Any) -> None:
        _call("IBuilderConfig.int8_calibrator", calibrator=type(calibrator).__name__)
        self._calibrator = calibrator

    int8_calibrator = property(lambda self: self._calibrator, _set_calibrator)


class IHostMemory(bytes):
    """The serialized engine: bytes with the buffer protocol, as the real one has."""

    dtype = property(lambda self: DataType.UINT8)
    nbytes = property(lambda self: len(self))


_PLAN_MAGIC = b"STANDIN-TRT-PLAN\n"


class Builder(_Strict):
    def __init__(self, logger: ILogger) -> None:
        _call("Builder.__init__")
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        names = [k for k, v in NetworkDefinitionCreationFlag.__members__.items() if flags & (1 << int(v))]
        _call("Builder.create_network", flags=names)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    platform_has_fast_fp16 = property(lambda self: True)
    platform_has_fast_int8 = property(lambda self: True)
    platform_has_tf32 = property(lambda self: True)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        flags = sorted(k for k, v in BuilderFlag.__members__.items() if config.get_flag(v))
        _call("Builder.build_serialized_network", flags=flags, strongly_typed=network._strongly_typed,
              layer_types=sorted({layer.type.name for layer in network._layers}))
        has_qdq = any(layer.type.name in ("QUANTIZE", "DEQUANTIZE") for layer in network._layers)
        errors = _onnx_rules.builder_errors(network, flags, has_qdq)
        if errors:
            for message in errors:
                _call("error", message=message)
                _log(self._logger, "ERROR", message)
            return None
        if has_qdq and config._calibrator is not None:  # [QDQ-INT8] NVIDIA/TensorRT#1837: ignored, with a warning
            message = ("Calibrator won't be used in explicit precision mode. Use quantization aware training to "
                       "generate network with Quantize/Dequantize nodes.")
            _call("warning", message=message)
            _log(self._logger, "WARNING", message)
        if "INT8" in flags and not has_qdq:
            if not self._calibrate(network, config):
                return None
        plan = {"tensorrt": __version__, "onnx": network._onnx, "flags": flags,
                "strongly_typed": network._strongly_typed,
                "io": [{"name": t.name, "mode": "INPUT", "shape": list(_engine_shape(t, config)), "dtype": t.dtype.name}
                       for t in network._inputs]
                + [{"name": t.name, "mode": "OUTPUT", "shape": list(t.shape), "dtype": t.dtype.name}
                   for t in network._outputs],
                "layers": [[layer.name, layer.type.name] for layer in network._layers]}
        return IHostMemory(_PLAN_MAGIC + _json.dumps(plan).encode())

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig) -> _bool:
        """Drive the calibrator as TensorRT does: read the cache, else get_batch until None, write."""
        calibrator = config._calibrator
        if calibrator is None:
            _call("error", message="INT8 without a calibrator or dynamic ranges")
            _log(self._logger, "ERROR", "Calibration failure occurred with no scaling factors detected.")
            return False
        batch_size = calibrator.get_batch_size()
        cached = calibrator.read_calibration_cache()
        if cached:
            _call("calibration", reused=True, batches=[], batch_size=batch_size)
            return True
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        batches = []
        from standin_cuda import CUDART  # the device memory Polygraphy copied the batch into

        while True:
            ptrs = calibrator.get_batch([t.name for t in inputs])
            if ptrs is None:
                break
            batch = []
            for tensor, ptr in zip(inputs, ptrs):
                shape = [batch_size, *tensor.shape[1:]] if tensor.shape and tensor.shape[0] < 0 else list(tensor.shape)
                nbytes = 4 * _volume(shape)  # TensorRT calibrates on FP32 inputs
                data = CUDART.read(int(ptr), nbytes, f"calibration batch for {tensor.name}") if CUDART else b""
                batch.append({"dtype": "float32", "shape": shape, "bytes": len(data),
                              "finite": _bool(data) and _finite_float32(data)})
            batches.append(batch)
        _call("calibration", reused=False, batches=batches, batch_size=batch_size)
        calibrator.write_calibration_cache(memoryview(b"TRT-STANDIN-CALIBRATION-TABLE"))
        return True


def _volume(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _finite_float32(data: bytes) -> _bool:
    import numpy as np

    return _bool(np.isfinite(np.frombuffer(data, dtype=np.float32)).all())


def _engine_shape(tensor: ITensor, config: IBuilderConfig) -> tuple[int, ...]:
    return tuple(tensor.shape)  # dynamic dims stay -1 in the engine; the profile bounds them


class ParserError(_Strict):
    def __init__(self, node: str, message: str) -> None:
        self._node, self._message = node, message

    def desc(self) -> str:
        return self._message

    def __str__(self) -> str:
        return f"In node {self._node}: {self._message}"


class OnnxParser(_Strict):
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network, self._errors, self._logger = network, [], logger
        self._flags = 0

    flags = property(lambda self: self._flags, lambda self, v: object.__setattr__(self, "_flags", int(v)))

    def clear_flag(self, flag: Any) -> None:
        self._flags &= ~(1 << int(flag))

    def set_flag(self, flag: Any) -> None:
        self._flags |= 1 << int(flag)

    def get_flag(self, flag: Any) -> _bool:
        return _bool(self._flags & (1 << int(flag)))

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse_from_file(self, model: str) -> _bool:
        _call("OnnxParser.parse_from_file", model=model)
        net = self._network
        _onnx_rules.WARNINGS.clear()
        try:
            lowered = _onnx_rules.lower(model, strongly_typed=net._strongly_typed, version=_VERSION)
        except _onnx_rules.ParseError as exc:
            self._errors.append(ParserError(exc.node, str(exc)))
            _call("parser_error", node=exc.node, message=str(exc))
            return False
        for message in _onnx_rules.WARNINGS:
            _call("parser_warning", message=message)
            _log(self._logger, "WARNING", message)
        net._onnx = str(_Path(model).resolve())
        try:
            tensors: dict[str, ITensor] = {}
            for name, shape, dtype in lowered.inputs:
                tensors[name] = ITensor(name, shape, _dtype(dtype), is_input=True)
                net._inputs.append(tensors[name])
            for layer in lowered.layers:
                outs = [tensors.setdefault(o, ITensor(o, (), _dtype(t))) for o, t in layer.outputs]
                net._layers.append(ILayer(net, layer.name, getattr(LayerType, layer.type),
                                          [tensors.get(i) for i in layer.inputs], outs))
            for name, shape, dtype in lowered.outputs:
                tensor = tensors.get(name) or ITensor(name, shape, _dtype(dtype))
                tensor._shape, tensor._is_output = Dims(shape), True
                net._outputs.append(tensor)
        except AttributeError as exc:  # a dtype or layer type this version lacks
            self._errors.append(ParserError("?", f"unsupported by TensorRT {__version__}: {exc}"))
            return False
        return True


# ---------------------------------------------------------------------------------------------
# INT8 calibrators (TensorRT < 11)
# ---------------------------------------------------------------------------------------------
class IInt8Calibrator(_Strict):
    def __init__(self) -> None:
        _call("IInt8Calibrator.__init__",
              cls=next(c.__name__ for c in type(self).__mro__ if c.__name__.startswith("IInt8")))


class IInt8LegacyCalibrator(IInt8Calibrator):
    pass


class IInt8EntropyCalibrator(IInt8Calibrator):
    pass


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IInt8MinMaxCalibrator(IInt8Calibrator):
    pass


# ---------------------------------------------------------------------------------------------
# Runtime half
# ---------------------------------------------------------------------------------------------
class IOutputAllocator(_Strict):
    """Subclassed by Polygraphy (``reallocate_output[_async]``, ``notify_shape`` are its methods)."""

    def __init__(self) -> None:
        pass


class IDebugListener(_Strict):
    def __init__(self) -> None:
        pass


class Runtime(_Strict):
    def __init__(self, logger: ILogger) -> None:
        _call("Runtime.__init__")
        self._logger = logger
        self._engine_host_code_allowed = False
        _track(self, "Runtime")

    engine_host_code_allowed = property(lambda self: self._engine_host_code_allowed,
                                        lambda self, v: object.__setattr__(self, "_engine_host_code_allowed", v))

    def deserialize_cuda_engine(self, serialized_engine: Any) -> "ICudaEngine | None":
        data = bytes(serialized_engine)
        _call("Runtime.deserialize_cuda_engine", nbytes=len(data))
        plan = None
        if data.startswith(_PLAN_MAGIC):
            try:
                plan = _json.loads(data[len(_PLAN_MAGIC):])
            except ValueError:
                plan = None
        if plan is None:
            _log(self._logger, "ERROR", "1: [stdArchiveReader.cpp::StdArchiveReader] Error Code 1: Serialization "
                                        "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        if plan["tensorrt"] != __version__:
            _log(self._logger, "ERROR", f"1: [stdArchiveReader.cpp::StdArchiveReader] Error Code 1: Serialization "
                                        f"(The engine plan file is not compatible with this version of TensorRT, "
                                        f"expecting {__version__} got {plan['tensorrt']})")
            return None
        return ICudaEngine(self, plan)


class ICudaEngine(_Strict):
    def __init__(self, runtime: Runtime, plan: dict[str, Any]) -> None:
        self._runtime = runtime  # py::keep_alive<0, 1>: the engine keeps its runtime alive
        self._plan = plan
        self._io = {t["name"]: t for t in plan["io"]}
        self._session: Any = None
        _track(self, "ICudaEngine")

    num_io_tensors = property(lambda self: len(self._plan["io"]))
    num_layers = property(lambda self: len(self._plan["layers"]))
    num_optimization_profiles = property(lambda self: 1)
    streamable_weights_size = property(lambda self: 0)

    def _tensor(self, name: str) -> dict[str, Any]:
        if name not in self._io:
            raise RuntimeError(f"stand-in engine: no IO tensor named {name!r}")  # real: logs, returns invalid
        return self._io[name]

    def get_tensor_name(self, index: int) -> str:
        return self._plan["io"][index]["name"]

    def get_tensor_mode(self, name: str) -> Any:
        return getattr(TensorIOMode, self._io[name]["mode"]) if name in self._io else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        return _dtype(self._tensor(name)["dtype"])

    def get_tensor_format(self, name: str, profile_index: int = 0) -> Any:
        return TensorFormat.LINEAR

    def is_shape_inference_io(self, name: str) -> _bool:
        return False

    def get_aliased_input_tensor(self, name: str) -> str | None:
        return None

    def create_execution_context(self, strategy: Any = None) -> "IExecutionContext":
        _call("ICudaEngine.create_execution_context", strategy=None if strategy is None else strategy.name)
        return IExecutionContext(self)

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The engine's math: the ONNX it was built from, through ONNX Runtime (CPU)."""
        if self._session is None:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(self._plan["onnx"], providers=["CPUExecutionProvider"])
        names = [t["name"] for t in self._plan["io"] if t["mode"] == "OUTPUT"]
        return dict(zip(names, self._session.run(names, feeds)))


_contexts = _itertools.count(1)


class IExecutionContext(_Strict):
    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine  # py::keep_alive<0, 1>: the context keeps its engine alive
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._allocators: dict[str, Any] = {}
        self._debug_listener: Any = None
        self._debug_all = False
        self._id = next(_contexts)
        _track(self, "IExecutionContext")

    engine = property(lambda self: self._engine)
    active_optimization_profile = property(lambda self: 0)

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> _bool:
        return profile_index == 0

    def set_all_tensors_debug_state(self, flag: _bool) -> _bool:
        self._debug_all = flag
        return True

    def set_debug_listener(self, listener: Any) -> _bool:
        self._debug_listener = listener
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        if name in self._shapes:
            return Dims(self._shapes[name])
        return self._engine.get_tensor_shape(name)

    def set_input_shape(self, name: str, shape: Any) -> _bool:
        _call("IExecutionContext.set_input_shape", context=self._id, name=name, shape=list(shape))
        spec = self._engine._io.get(name)
        if spec is None or spec["mode"] != "INPUT":
            return False
        if len(shape) != len(spec["shape"]) or any(e >= 0 and e != int(d) for e, d in zip(spec["shape"], shape)):
            return False  # outside the (only) profile
        self._shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_tensor_address(self, name: str, memory: int) -> _bool:
        _call("IExecutionContext.set_tensor_address", context=self._id, name=name)
        if name not in self._engine._io:
            return False
        self._addresses[name] = int(memory)
        return True

    def set_output_allocator(self, name: str, output_allocator: Any) -> _bool:
        _call("IExecutionContext.set_output_allocator", context=self._id, name=name,
              allocator=type(output_allocator).__name__)
        if self._engine._io.get(name, {}).get("mode") != "OUTPUT":
            return False
        self._allocators[name] = output_allocator  # py::keep_alive<1, 3>
        return True

    def get_output_allocator(self, name: str) -> Any:
        return self._allocators.get(name)

    def execute_async_v3(self, stream_handle: int) -> _bool:
        """Checks what TensorRT checks before enqueueing, then runs the engine on the device bytes."""
        import numpy as np
        from standin_cuda import CUDART, VIOLATIONS

        _call("IExecutionContext.execute_async_v3", context=self._id, stream=stream_handle)
        if CUDART is None or int(stream_handle) not in CUDART.streams:
            VIOLATIONS.append(f"execute_async_v3 on stream {stream_handle!r}, which is not a live CUDA stream")
            return False
        feeds = {}
        for spec in self._engine._plan["io"]:
            name = spec["name"]
            if spec["mode"] == "INPUT":
                shape = self._shapes.get(name, tuple(spec["shape"]))
                if any(d < 0 for d in shape):
                    _log(self._engine._runtime._logger, "ERROR", f"3: [executionContext.cpp::enqueueV3] input {name} "
                                                                 "has dynamic dims and no shape was set")
                    return False
                if name not in self._addresses:
                    _log(self._engine._runtime._logger, "ERROR", f"3: [executionContext.cpp::enqueueV3] Error Code 3: "
                                                                 f"API Usage Error (tensor {name} has no address)")
                    return False
                dtype = np.dtype(_NUMPY[spec["dtype"]])
                nbytes = dtype.itemsize * _volume(shape)
                data = CUDART.read(self._addresses[name], nbytes, f"execute_async_v3 input {name}")
                feeds[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
            elif name not in self._allocators and name not in self._addresses:
                _log(self._engine._runtime._logger, "ERROR", f"3: [executionContext.cpp::enqueueV3] Error Code 3: "
                                                             f"API Usage Error (output {name} has no address or allocator)")
                return False
        outputs = self._engine._run(feeds)
        for name, value in outputs.items():
            value = np.ascontiguousarray(value.astype(_NUMPY[self._engine._io[name]["dtype"]], copy=False))
            allocator = self._allocators.get(name)
            if allocator is not None:
                # pyCore.cpp PyOutputAllocator: 10.x calls a Python reallocate_output_async when defined, else
                # reallocate_output; 8.6 has only reallocate_output. Polygraphy defines both.
                realloc = (getattr(allocator, "reallocate_output_async")
                           if _VERSION >= (10, 0) and _class_attr(type(allocator), "reallocate_output_async") else None)
                current = self._addresses.get(name, 0)
                ptr = (realloc(name, current, value.nbytes, 256, stream_handle) if realloc is not None
                       else allocator.reallocate_output(name, current, value.nbytes, 256))
                _call("IOutputAllocator.reallocate", context=self._id, name=name, ptr=int(ptr), nbytes=value.nbytes,
                      method="reallocate_output_async" if realloc is not None else "reallocate_output")
                allocator.notify_shape(name, Dims(value.shape))
            else:
                ptr = self._addresses[name]
            CUDART.write(int(ptr), value.tobytes(), f"execute_async_v3 output {name}")
        return True


# ---------------------------------------------------------------------------------------------
# The package's own Python (python/packaging/bindings_wheel/tensorrt/__init__.py)
# ---------------------------------------------------------------------------------------------
def volume(iterable: Any) -> int:
    return _volume(iterable)


def nptype(trt_type: Any) -> Any:
    import numpy as np

    name = _NUMPY.get(trt_type.name) if isinstance(trt_type, _EnumValue) else None
    if name is None:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(name).type


def _itemsize(trt_type: Any) -> Any:
    return _ITEMSIZE.get(trt_type.name) if trt_type.name != "INT4" else 0.5


def _overloads(fn: Any, where: str, overloads: list[list[str]]) -> Any:
    """pybind11's overload resolution by argument names: a call no overload of this version takes is a
    TypeError (e.g. 8.6's ``create_execution_context()`` takes no ``strategy``)."""
    import functools

    @functools.wraps(fn)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not any(len(args) <= len(o) and set(kwargs) <= set(o[len(args):]) for o in overloads):
            raise TypeError(f"{where}(): incompatible function arguments for TensorRT {__version__}: "
                            f"{len(args)} positional, keywords {sorted(kwargs)}; the bindings take {overloads}")
        return fn(self, *args, **kwargs)

    return checked


# ---------------------------------------------------------------------------------------------
# Exactly this version's names
# ---------------------------------------------------------------------------------------------
def _install() -> None:
    module = globals()
    handwritten = {n: c for n, c in module.items() if isinstance(c, type) and issubclass(c, _Strict)
                   and c is not _Strict and c.__module__ == __name__}
    classes = API["classes"]

    def make(name: str) -> type:
        if name in ("Dims", "IHostMemory") or (isinstance(module.get(name), type)
                                               and module[name].__dict__.get("_api_name") == name):
            return module[name]  # Dims and IHostMemory are tuple/bytes subclasses, not _Strict
        for base in classes[name]["bases"]:
            make(base)
        if name in handwritten:
            cls = handwritten[name]
        else:  # real, not modeled: the name exists, its members are UNMODELED
            bases = tuple(module[b] for b in classes[name]["bases"]) or (_Strict,)
            cls = _StrictMeta(name, bases, {"__module__": __name__})
        cls._api_name = name
        module[name] = cls
        return cls

    for name in classes:
        make(name)
    for name, cls in handwritten.items():
        if name not in classes:
            del module[name]  # e.g. the INT8 calibrators on TensorRT 11
            continue
        exposed = _exposed(cls)
        for attr in [a for a in vars(cls) if not a.startswith("_") and a not in exposed]:
            delattr(cls, attr)
        for attr, fn in list(vars(cls).items()):
            info = classes[name]["members"].get(attr)
            if callable(fn) and not isinstance(fn, type) and info and info["kind"] == "def" and not attr.startswith("_"):
                type.__setattr__(cls, attr, _overloads(fn, f"{name}.{attr}", info["overloads"]))
    for owner, enum in ((n.rsplit(".", 1)[0], e) for n, e in _ENUMS.items() if "." in n):
        type.__setattr__(module[owner], enum.__name__, enum)
    # package __init__.py: Logger.Severity = ILogger.Severity and its members on Logger
    severity = _ENUMS["ILogger.Severity"]
    type.__setattr__(module["Logger"], "Severity", severity)
    for k, v in severity.__members__.items():
        type.__setattr__(module["Logger"], k, v)
    type.__setattr__(DataType, "itemsize", property(lambda this: _itemsize(this)))
    _EnumValue.itemsize = property(lambda this: _itemsize(this))
    allowed = (set(classes) | {n for n in _ENUMS if "." not in n} | set(API["module_attributes"])
               | set(API["module_functions"]) | set(API["package"]["functions"]) | set(API["package"]["attributes"])
               | _RECORDING)
    allowed |= {"ctypes", "os", "sys"}  # the package's __init__.py imports these too
    for name in [n for n in module if not n.startswith("_") and n not in allowed]:
        del module[name]


_install()
_MODULE_NAMES = (set(API["classes"]) | set(API["module_attributes"]) | set(API["module_functions"])
                 | set(API["package"]["functions"]))


def __getattr__(name: str) -> Any:  # PEP 562: module attributes this version lacks or the stand-in does not model
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing("tensorrt", name, name in _MODULE_NAMES)
