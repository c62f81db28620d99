"""A recording stand-in for NVIDIA's ``tensorrt`` Python module, for contract tests without a GPU.

Names and signatures follow the real bindings: TensorRT 10.x as published in ``tensorrt-stubs``
(generated from the 10.13 bindings) and TensorRT 11.x as NVIDIA's "Migrating from TensorRT 10.x
to 11.x" describes it (weak typing removed: BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4, precision
constraint flags, INT8 calibrators, ``IBuilderConfig.int8_calibrator``, ``ILayer.precision`` and
``set_output_type``; ``STRONGLY_TYPED`` accepted and the only mode). Set the version with
``MAPGATE_STANDIN_TRT_VERSION`` (default 10.3.0) before the first import.

Every call is appended to :data:`CALLS`; every attribute the real module would not have is
appended to :data:`UNKNOWN` with the caller's file and line, then raises AttributeError exactly
like pybind11 does. Functions take the real keyword names only, so an unknown keyword is a
TypeError. The ONNX parser reads the real ONNX file (one layer per node, ONNX-inferred dtypes);
the builder checks what the real one refuses (precision flags or layer precisions on a strongly
typed network) and drives an INT8 calibrator the way TensorRT does (read cache, else get_batch
until None, then write cache), reading calibration data from :data:`DEVICE_MEMORY`.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Any

_bool = builtins.bool
__version__ = os.environ.get("MAPGATE_STANDIN_TRT_VERSION", "10.3.0")
_VERSION = tuple(int(p) for p in __version__.split(".")[:2])
_WEAK = _VERSION < (11, 0)

CALLS: list[tuple[str, dict[str, Any]]] = []
UNKNOWN: list[tuple[str, str, str]] = []  # (owner, attribute, "file:line" of the caller)
DEVICE_MEMORY: dict[int, Any] = {}  # fake device pointer -> the numpy array "copied" there


def _call(what: str, **args: Any) -> None:
    CALLS.append((what, args))


def _unknown(owner: str, name: str) -> AttributeError:
    frame = sys._getframe(2)
    UNKNOWN.append((owner, name, f"{frame.f_code.co_filename}:{frame.f_lineno}"))
    return AttributeError(f"'{owner}' object has no attribute '{name}' (TensorRT {__version__})")


class _Strict:
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _unknown(type(self).__name__, name)


class _EnumMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _unknown(cls.__name__, name)


class _EnumValue:
    def __init__(self, owner: str, name: str, value: int) -> None:
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EnumValue) and (other.owner, other.value) == (self.owner, self.value)

    def __hash__(self) -> int:
        return hash((self.owner, self.value))

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"

    __str__ = __repr__


def _enum(name: str, members: dict[str, int]) -> Any:
    cls = _EnumMeta(name, (), {})
    values = {k: _EnumValue(name, k, v) for k, v in members.items()}
    for k, v in values.items():
        setattr(cls, k, v)
    cls.__members__ = values
    return cls


_WEAK_FLAGS = {"FP16": 0, "BF16": 17, "INT8": 1, "FP8": 15, "INT4": 22, "FP4": 26,
               "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11}
_FLAGS = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
          "SAFETY_SCOPE": 8, "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
          "ERROR_ON_TIMING_CACHE_MISS": 16, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19,
          "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21}
BuilderFlag = _enum("BuilderFlag", {**(_WEAK_FLAGS if _WEAK else {}), **_FLAGS})
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                      {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if _WEAK else {"STRONGLY_TYPED": 1})
MemoryPoolType = _enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2,
                                          "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5})
DataType = _enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                              "BF16": 7, "INT64": 8, "INT4": 9, "FP4": 10})
float32, float16, int8, int32, bool, uint8, int64 = (DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32,
                                                     DataType.BOOL, DataType.UINT8, DataType.INT64)
bfloat16, fp8 = DataType.BF16, DataType.FP8
LayerType = _enum("LayerType", {"CONVOLUTION": 0, "ACTIVATION": 2, "POOLING": 3, "ELEMENTWISE": 6, "CONCATENATION": 8,
                                "SHUFFLE": 13, "CONSTANT": 20, "SHAPE": 24, "RESIZE": 29, "QUANTIZE": 33,
                                "DEQUANTIZE": 34, "CAST": 41, "UNARY": 5, "SLICE": 22, "REDUCE": 9})
TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
OnnxParserFlag = _enum("OnnxParserFlag", {"NATIVE_INSTANCENORM": 0})
DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
ProfilingVerbosity = _enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
TacticSource = _enum("TacticSource", {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2, "EDGE_MASK_CONVOLUTIONS": 3,
                                      "JIT_CONVOLUTIONS": 4})
PreviewFeature = _enum("PreviewFeature", {"PROFILE_SHARING_0806": 0})
EngineCapability = _enum("EngineCapability", {"STANDARD": 0, "SAFETY": 1, "DLA_STANDALONE": 2})
if _WEAK:
    CalibrationAlgoType = _enum("CalibrationAlgoType", {"LEGACY_CALIBRATION": 0, "ENTROPY_CALIBRATION": 1,
                                                        "ENTROPY_CALIBRATION_2": 2, "MINMAX_CALIBRATION": 3})
    QuantizationFlag = _enum("QuantizationFlag", {"CALIBRATE_BEFORE_FUSION": 0})

_LAYER_TYPES = {"Conv": "CONVOLUTION", "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "LeakyRelu": "ACTIVATION",
                "MaxPool": "POOLING", "Concat": "CONCATENATION", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE",
                "Constant": "CONSTANT", "Shape": "SHAPE", "Resize": "RESIZE", "QuantizeLinear": "QUANTIZE",
                "DequantizeLinear": "DEQUANTIZE", "Cast": "CAST", "Slice": "SLICE", "Exp": "UNARY"}
_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16"}


class ILogger:
    def __init__(self) -> None:
        _call("ILogger.__init__")


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

    def __init__(self, min_severity: int = 2) -> None:
        super().__init__()
        self.min_severity = min_severity


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    _call("init_libnvinfer_plugins", namespace=namespace)
    return True


class Dims(tuple):
    pass


class ITensor(_Strict):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any, is_input: bool = False) -> None:
        self.name, self.shape, self.dtype, self.is_network_input = name, Dims(shape), dtype, is_input
        self.is_shape_tensor = False
        self.is_execution_tensor = True


class ILayer(_Strict):
    def __init__(self, network: "INetworkDefinition", name: str, op: str, outputs: list[ITensor]) -> None:
        self._network, self.name, self._outputs = network, name, outputs
        self.type = getattr(LayerType, _LAYER_TYPES.get(op, "ELEMENTWISE"))
        self._precision: Any = None

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    if _WEAK:
        @property
        def precision(self) -> Any:
            return self._precision if self._precision is not None else DataType.FLOAT

        @precision.setter
        def precision(self, dtype: Any) -> None:
            if self._network._strongly_typed:
                raise RuntimeError("setting layer precision is not allowed in a strongly typed network")
            _call("ILayer.precision", layer=self.name, dtype=dtype.name)
            self._precision = dtype

        @property
        def precision_is_set(self) -> bool:
            return self._precision is not None

        def set_output_type(self, index: int, dtype: Any) -> None:
            if self._network._strongly_typed:
                raise RuntimeError("setting layer output types is not allowed in a strongly typed network")
            _call("ILayer.set_output_type", layer=self.name, index=index, dtype=dtype.name)


class INetworkDefinition(_Strict):
    def __init__(self, flags: int) -> None:
        self._flags, self._inputs, self._outputs, self._layers = flags, [], [], []
        self._strongly_typed = _VERSION >= (11, 0) or _bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

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

    def get_flag(self, flag: Any) -> bool:
        return _bool(self._flags & (1 << int(flag)))


class IOptimizationProfile(_Strict):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the real names
        _call("IOptimizationProfile.set_shape", input=input, min=tuple(min), opt=tuple(opt), max=tuple(max))
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str) -> list:  # noqa: A002
        return [Dims(s) for s in self._shapes.get(input, ())]

    def __bool__(self) -> bool:
        return True


class ITimingCache(_Strict):
    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        return True


class IBuilderConfig(_Strict):
    def __init__(self) -> None:
        self._flags: set[int] = set()
        self._pools: dict[int, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._calibrator: Any = None
        self.DLA_core = -1
        self.default_device_type = DeviceType.GPU
        self.engine_capability = EngineCapability.STANDARD
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_flag(self, flag: Any) -> None:
        _call("IBuilderConfig.set_flag", flag=flag.name)
        self._flags.add(int(flag))

    def clear_flag(self, flag: Any) -> None:
        _call("IBuilderConfig.clear_flag", flag=flag.name)
        self._flags.discard(int(flag))

    def get_flag(self, flag: Any) -> bool:
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

    def get_tactic_sources(self) -> int:
        return 0

    def get_preview_feature(self, feature: Any) -> bool:
        return False

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache()

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> ITimingCache:
        return ITimingCache()

    if _WEAK:
        def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
            _call("IBuilderConfig.set_calibration_profile", shapes=dict(profile._shapes))
            self._calib_profile = profile
            return True

        def get_calibration_profile(self) -> IOptimizationProfile:
            return getattr(self, "_calib_profile", None)

        def get_quantization_flag(self, flag: Any) -> bool:
            return False

        @property
        def int8_calibrator(self) -> Any:
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, calibrator: Any) -> None:
            _call("IBuilderConfig.int8_calibrator", calibrator=type(calibrator).__name__)
            self._calibrator = calibrator


class Builder(_Strict):
    def __init__(self, logger: ILogger) -> None:
        _call("Builder.__init__")

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        names = [k for k, v in NetworkDefinitionCreationFlag.__members__.items() if flags & (1 << int(v))]
        _call("Builder.create_network", flags=names)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Any:
        flags = sorted(k for k, v in BuilderFlag.__members__.items() if config.get_flag(v))
        _call("Builder.build_serialized_network", flags=flags, strongly_typed=network._strongly_typed,
              layer_types=sorted({layer.type.name for layer in network._layers}))
        if network._strongly_typed and set(flags) & set(_WEAK_FLAGS):
            _call("error", message=f"flags {flags} are incompatible with a strongly typed network")
            return None
        has_qdq = any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network._layers)
        if "INT8" in flags and not has_qdq:
            self._calibrate(network, config)
        return b"STANDIN-ENGINE " + repr(sorted(flags)).encode()

    @staticmethod
    def _calibrate(network: INetworkDefinition, config: IBuilderConfig) -> None:
        calibrator = config._calibrator
        if calibrator is None:
            _call("error", message="INT8 without a calibrator or dynamic ranges")
            return
        batch_size = calibrator.get_batch_size()
        cached = calibrator.read_calibration_cache()
        if cached:
            _call("calibration", reused=True, batches=[], batch_size=batch_size)
            return
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        batches = []
        while True:
            ptrs = calibrator.get_batch(names)
            if ptrs is None:
                break
            arrays = [DEVICE_MEMORY[int(p)] for p in ptrs]
            batches.append([{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays])
        _call("calibration", reused=False, batches=batches, batch_size=batch_size)
        calibrator.write_calibration_cache(memoryview(b"TRT-STANDIN-CALIBRATION-TABLE"))


class OnnxParser(_Strict):
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network, self._errors = network, []
        self.flags = 0

    def clear_flag(self, flag: Any) -> None:
        self.flags &= ~(1 << int(flag))

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        _call("OnnxParser.parse_from_file", model=model)
        proto = onnx.shape_inference.infer_shapes(onnx.load(model))
        g = proto.graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
        types.update({i.name: i.data_type for i in g.initializer})
        inits = {i.name for i in g.initializer}

        def dtype(name: str) -> Any:
            return getattr(DataType, _ONNX_TYPES.get(types.get(name, 1), "FLOAT"))

        net = self._network
        for inp in g.input:
            if inp.name in inits:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
            net._inputs.append(ITensor(inp.name, dims, dtype(inp.name), is_input=True))
        for node in g.node:
            net._layers.append(ILayer(net, node.name, node.op_type, [ITensor(o, (), dtype(o)) for o in node.output]))
        net._outputs = [ITensor(o.name, (), dtype(o.name)) for o in g.output]
        return True


class IHostMemory(bytes):
    pass


if _WEAK:
    class IInt8Calibrator(_Strict):
        def __init__(self) -> None:
            _call("IInt8Calibrator.__init__", cls=next(c.__name__ for c in type(self).__mro__ if c.__name__.startswith("IInt8")))

    class IInt8LegacyCalibrator(IInt8Calibrator):
        pass

    class IInt8EntropyCalibrator(IInt8Calibrator):
        pass

    class IInt8EntropyCalibrator2(IInt8Calibrator):
        pass

    class IInt8MinMaxCalibrator(IInt8Calibrator):
        pass


class Runtime(_Strict):
    def __init__(self, logger: ILogger) -> None:
        _call("Runtime.__init__")


def __getattr__(name: str) -> Any:  # PEP 562: module attributes the real module lacks
    if name.startswith("__"):
        raise AttributeError(name)
    raise _unknown("tensorrt", name)
