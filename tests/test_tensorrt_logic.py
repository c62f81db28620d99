"""TensorRT backend logic and engine keys, run without TensorRT or a GPU (the engine cache's
build/reuse/rebuild rules are in test_cache.py).

Everything TensorRT-dependent is replaced by fakes at the seams the code exposes
(DeviceInfo, build/load callbacks, the small probe functions, Polygraphy's loader classes).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import mapgate.backends.tensorrt as trt_backend
from engine_helpers import CALIB, DEVICE, make_spec
from mapgate.backends.base import BuildContext
from mapgate.backends.tensorrt import BuildJob, DeviceInfo, calibration_set_digest
from mapgate.errors import BackendUnavailable, ConfigError, ConversionError
from mapgate.manifest import ModelSpec, Postprocess, Preprocess

ROOT = Path(__file__).resolve().parents[1]
CALIB_DIR = ROOT / "mapgate" / "data" / "coco" / "calib-val2017" / "images"
STANDIN = ROOT / "tests" / "trt_standin"


def make_model(name: str = "tiny", layout: str = "NCHW", size: tuple[int, int] = (32, 32), **kw: Any) -> ModelSpec:
    return ModelSpec(
        name=name, family="yolox", format="onnx", reference_backend="onnxruntime", files={},
        input_size=size, preprocess=Preprocess(layout=layout), postprocess=Postprocess(),
        tolerances={"fp32": 0.1, "fp16": 0.5, "int8": 1.5}, optimized=(), prebuilt={}, expected_verdicts={},
        manifest_path=Path("/manifests/models.toml"), **kw,
    )


# ---------------------------------------------------------------------------------------------
# Cache key
# ---------------------------------------------------------------------------------------------
def test_key_is_stable_for_equal_inputs() -> None:
    assert make_spec().key() == make_spec().key()
    assert make_spec(precision="int8", calibration=CALIB).key() == make_spec(precision="int8", calibration=CALIB).key()


def test_key_ignores_model_name_and_onnx_location() -> None:
    # Same ONNX bytes build the same engine wherever the file lives.
    assert make_spec(model="other", onnx_path=Path("/elsewhere.onnx")).key() == make_spec().key()


@pytest.mark.parametrize("change", [
    {"onnx_sha256": "1" * 64},
    {"precision": "fp32"},
    {"input_shape": (1, 3, 320, 320)},
    {"input_shape": (2, 3, 416, 416)},
    {"device": dataclasses.replace(DEVICE, trt_version="8.6.2")},
    {"device": dataclasses.replace(DEVICE, gpu_name="Xavier")},
    {"device": dataclasses.replace(DEVICE, compute_capability="7.2")},
    {"workspace_mb": 512},
    {"recipe": {"flags": ["fp16"], "tf32": True}},
], ids=lambda c: next(iter(c)))
def test_key_changes_with_each_input(change: dict[str, Any]) -> None:
    assert make_spec(**change).key() != make_spec().key()


@pytest.mark.parametrize("change", [
    {"set_sha256": "c" * 64}, {"count": 99}, {"preprocess_sha256": "d" * 64}, {"algorithm": "IInt8MinMaxCalibrator"},
], ids=lambda c: next(iter(c)))
def test_int8_key_and_calibration_key_change_with_calibration_set(change: dict[str, Any]) -> None:
    a = make_spec(precision="int8", calibration=CALIB)
    b = make_spec(precision="int8", calibration=dataclasses.replace(CALIB, **change))
    assert a.key() != b.key()
    assert a.calibration_key() != b.calibration_key()


def test_calibration_key_ignores_precision_only_fields() -> None:
    a = make_spec(precision="int8", calibration=CALIB)
    b = make_spec(precision="int8", calibration=CALIB, workspace_mb=256, recipe={"flags": ["int8"]})
    assert a.key() != b.key()
    assert a.calibration_key() == b.calibration_key()
    assert "precision" not in a.calibration_key_fields() and "workspace_mb" not in a.calibration_key_fields()
    # ... but keeps what changes the scales or their validity.
    for change in ({"onnx_sha256": "1" * 64}, {"device": dataclasses.replace(DEVICE, trt_version="8.6.2")},
                   {"input_shape": (1, 3, 320, 320)}):
        assert make_spec(precision="int8", calibration=CALIB, **change).calibration_key() != a.calibration_key()


def test_spec_refuses_inconsistent_calibration() -> None:
    with pytest.raises(ConfigError, match="calibration info is required for int8"):
        make_spec(precision="int8")
    with pytest.raises(ConfigError, match="meaningless for fp16"):
        make_spec(precision="fp16", calibration=CALIB)
    with pytest.raises(ConfigError, match="precision must be one of"):
        make_spec(precision="bf16")


def test_calibration_set_digest_is_by_content_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    d1 = calibration_set_digest([a, b])
    assert d1.count == 2
    assert calibration_set_digest([a, b]) == d1
    assert calibration_set_digest([b, a]).sha256 != d1.sha256  # feed order is what TensorRT sees
    a.write_bytes(b"ONE")  # same name, same size, new content
    assert calibration_set_digest([a, b]).sha256 != d1.sha256


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------
def test_module_import_does_not_import_tensorrt_or_polygraphy() -> None:
    code = ("import sys, mapgate.backends.tensorrt, mapgate.cache; "
            "bad = [m for m in ('tensorrt', 'polygraphy') if m in sys.modules]; "
            "sys.exit(f'imported at module import: {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def test_availability_without_tensorrt_names_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ModuleNotFoundError
    status = trt_backend.BACKEND.availability()
    assert not status.ok
    assert "'tensorrt' is not installed" in status.reason
    assert "JetPack 6" in status.reason and "--system-site-packages" in status.reason
    assert "pip install tensorrt-cu12" in status.reason and "<" not in status.reason  # no placeholder


def _run_with_tensorrt_package(tmp_path: Path, init: str | None, code: str) -> subprocess.CompletedProcess:
    pkg = tmp_path / "site" / "tensorrt"
    pkg.mkdir(parents=True)
    if init is not None:
        (pkg / "__init__.py").write_text(init)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg.parent), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_tensorrt_whose_import_raises_breaks_no_backend(tmp_path: Path) -> None:
    # e.g. bindings built against NumPy 1.x under NumPy 2 raise ValueError, not ImportError
    code = ("from mapgate.backends import get_backend; from mapgate.optional import version_of; "
            "from mapgate.backends.tensorrt import BACKEND; "
            "print(version_of('tensorrt')); print(BACKEND.availability().reason); "
            "print(get_backend('onnxruntime').availability().ok)")
    done = _run_with_tensorrt_package(tmp_path, "raise ValueError('numpy.dtype size changed')", code)
    assert done.returncode == 0, done.stderr
    version, reason, other = done.stdout.strip().splitlines()[-3:]
    assert version == "None" and other == "True"
    assert "importing 'tensorrt' failed: ValueError: numpy.dtype size changed" in reason and "numpy<2" in reason


def test_a_tensorrt_package_without_version_is_named_for_what_it_is(tmp_path: Path) -> None:
    # tensorrt-stubs installs a `tensorrt/` of .pyi files: importable, but no bindings and no __version__
    code = "from mapgate.backends.tensorrt import BACKEND; print(BACKEND.availability().reason)"
    done = _run_with_tensorrt_package(tmp_path, None, code)
    assert done.returncode == 0, done.stderr
    assert "has no __version__" in done.stdout and "tensorrt-stubs" in done.stdout
    assert "TensorRT unknown" not in done.stdout


def load_standin(monkeypatch: pytest.MonkeyPatch, version: str = "10.3.0") -> Any:
    """tests/trt_standin/tensorrt as ``sys.modules['tensorrt']`` (see test_tensorrt_contract.py)."""
    monkeypatch.setenv("MAPGATE_STANDIN_TRT_VERSION", version)
    # a package spec, so the stand-in's own relative imports (its ONNX rules) resolve
    spec = importlib.util.spec_from_file_location("tensorrt", STANDIN / "tensorrt" / "__init__.py",
                                                  submodule_search_locations=[str(STANDIN / "tensorrt")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Any:
    return load_standin(monkeypatch)


def fake_trt(version: str = "10.3.0") -> SimpleNamespace:
    return SimpleNamespace(__version__=version)


def test_availability_old_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt("8.4.3.1"))
    status = trt_backend.BACKEND.availability()
    assert not status.ok and "TensorRT 8.4.3.1" in status.reason and ">= 8.5" in status.reason
    assert "JetPack 6" in status.reason and "5.1" not in status.reason  # JetPack 5's Python 3.8 cannot run mapgate


def test_availability_polygraphy_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise BackendUnavailable("tensorrt", "Python module 'polygraphy' is not installed; fix: pip install 'mapgate[trt]'")

    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt())
    monkeypatch.setattr(trt_backend, "_polygraphy_version", missing)
    status = trt_backend.BACKEND.availability()
    assert not status.ok and "polygraphy" in status.reason and "mapgate[trt]" in status.reason


def test_availability_refuses_a_polygraphy_older_than_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    from mapgate.backends.base import BackendFacts

    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt())
    monkeypatch.setattr(BackendFacts, "require", lambda self, module: SimpleNamespace(__version__="0.49.12"))
    status = trt_backend.BACKEND.availability()
    assert not status.ok and "Polygraphy 0.49.12" in status.reason and ">= 0.53.4" in status.reason
    assert "CUDA runtime" in status.reason


def test_the_tensorrt_version_is_the_imported_modules_not_pip_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    # a `tensorrt` wheel's metadata next to JetPack's apt bindings, which are what `import tensorrt` loads
    monkeypatch.setattr(metadata, "version", lambda dist: "10.13.0.35")
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt("8.6.2.3"))
    version, source = trt_backend.installed_version()
    assert version == "8.6.2.3" and source.startswith("module")


def test_pyproject_pins_the_polygraphy_that_is_tested() -> None:
    from packaging.requirements import Requirement

    from mapgate.optional import version_of

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    (req,) = [Requirement(r) for r in extras if r.startswith("polygraphy")]
    assert not req.specifier.contains("0.49.9")  # Calibrator does not force FP32 inputs: 0 batches, no error
    assert not req.specifier.contains("0.49.12")  # np.unicode_: crashes under NumPy 2 in the calibrator
    # 0.50.3 and older do not search the nvidia-cuda-runtime wheel: no CUDA runtime on a pip-only x86 install
    assert not req.specifier.contains("0.50.3")
    # the floor is a release PyPI has (0.49.13 never was): 0.53.4, first with that search
    (floor,) = [s.version for s in req.specifier if s.operator == ">="]
    assert floor == "0.53.4" and trt_backend.parse_version(floor) == trt_backend.MIN_POLYGRAPHY_VERSION
    installed = version_of("polygraphy")
    assert installed is None or req.specifier.contains(installed), (installed, str(req.specifier))


def test_availability_no_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt())
    monkeypatch.setattr(trt_backend, "cuda_device_count",
                        lambda: (0, "cudaGetDeviceCount failed with CUDA error 100 (cudaErrorNoDevice)"))
    status = trt_backend.BACKEND.availability()
    assert not status.ok and status.reason.startswith("no CUDA device") and "error 100" in status.reason
    described = trt_backend.BACKEND.describe()
    assert described.startswith("tensorrt 10.3.0: weakly typed builds") and "unavailable here: no CUDA device" in described


@pytest.mark.parametrize("version,env,mode", [
    ((8, 6, 1), {}, "weakly typed"), ((10, 3, 0), {}, "weakly typed"), ((10, 13, 0), {}, "weakly typed"),
    ((10, 13, 0), {"MAPGATE_TRT_TYPING": "strong"}, "strongly typed"), ((11, 4, 0), {}, "strongly typed"),
    ((11, 0, 0), {"MAPGATE_TRT_TYPING": "strong"}, "strongly typed"),
])
def test_build_mode_follows_the_installed_tensorrt(version: tuple, env: dict, mode: str) -> None:
    assert trt_backend.select_mode(version, env) == mode


@pytest.mark.parametrize("version,env,match", [
    ((10, 3, 0), {"MAPGATE_TRT_TYPING": "strong"}, ">= 10.12"),
    ((11, 4, 0), {"MAPGATE_TRT_TYPING": "weak"}, "removed weakly typed"),
    ((10, 3, 0), {"MAPGATE_TRT_TYPING": "fast"}, "'strong' or 'weak'"),
])
def test_build_mode_refuses_what_the_tensorrt_cannot_do(version: tuple, env: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        trt_backend.select_mode(version, env)


def test_tensorrt_11_availability_is_per_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt("11.4.0"))
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: (1, ""))
    monkeypatch.setattr(trt_backend, "fp16_converter", lambda: None)  # onnxconverter-common missing
    assert trt_backend.BACKEND.precision_availability("fp32").ok
    fp16 = trt_backend.BACKEND.precision_availability("fp16")
    assert not fp16.ok and "onnxconverter-common" in fp16.reason and "workspace" not in fp16.reason
    assert "fp16 no (" in trt_backend.BACKEND.describe()


class FakeLibcuda:
    """libcuda.so.1's driver API as ctypes sees it: every call returns a CUresult."""

    def __init__(self, **status: int) -> None:
        self.status = status

    def cuInit(self, flags: Any) -> int:
        return self.status.get("cuInit", 0)

    def cuDeviceGetCount(self, ref: Any) -> int:
        ref._obj.value = 1
        return self.status.get("cuDeviceGetCount", 0)

    def cuDeviceGet(self, ref: Any, ordinal: Any) -> int:
        ref._obj.value = ordinal.value
        return self.status.get("cuDeviceGet", 0)

    def cuDeviceGetAttribute(self, ref: Any, attr: Any, dev: Any) -> int:
        ref._obj.value = {75: 8, 76: 7}[attr.value]
        return self.status.get("cuDeviceGetAttribute", 0)

    def cuDeviceGetName(self, buf: Any, length: Any, dev: Any) -> int:
        buf.value = b"Orin"
        return self.status.get("cuDeviceGetName", 0)


def test_cuda_probe_checks_every_driver_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_libcuda", lambda: FakeLibcuda())
    assert trt_backend.cuda_device_count() == (1, "")
    assert trt_backend.probe_device_info("10.3.0") == DeviceInfo("10.3.0", "Orin", "8.7")
    monkeypatch.setattr(trt_backend, "_libcuda", lambda: FakeLibcuda(cuInit=803))
    count, why = trt_backend.cuda_device_count()
    assert count == 0 and "cuInit failed with CUDA error 803" in why and "DRIVER_MISMATCH" in why
    monkeypatch.setattr(trt_backend, "_libcuda", lambda: FakeLibcuda(cuDeviceGet=101))
    with pytest.raises(BackendUnavailable, match=r"cuDeviceGet\(0\) failed with CUDA error 101"):
        trt_backend.probe_device_info("10.3.0")


def test_availability_ok_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt("8.5.2.2"))
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: (1, ""))
    assert trt_backend.BACKEND.availability().ok


def test_real_cuda_probe_reports_a_reason_here() -> None:
    count, why = trt_backend.cuda_device_count()
    if count:
        pytest.skip(f"this machine has {count} CUDA device(s)")
    assert why  # libcudart missing, no driver, or no device: each is named


@pytest.mark.parametrize("text,supported", [
    ("8.4.3.1", False), ("8.5.2.2", True), ("8.6.1", True), ("10.3.0", True), ("10.0.0b6", True),
    ("7.1", False), ("", False), ("unknown", False),
])
def test_version_gate(text: str, supported: bool) -> None:
    assert trt_backend.trt_version_supported(text) is supported


def test_parse_version() -> None:
    assert trt_backend.parse_version("8.6.1.6") == (8, 6, 1, 6)
    assert trt_backend.parse_version("10.0.0b6") == (10, 0, 0)


def test_workspace_setting() -> None:
    assert trt_backend.resolve_workspace_mb(environ={}) == 1024
    assert trt_backend.resolve_workspace_mb(environ={"MAPGATE_TRT_WORKSPACE_MB": "256"}) == 256
    assert trt_backend.resolve_workspace_mb(64, environ={"MAPGATE_TRT_WORKSPACE_MB": "256"}) == 64
    with pytest.raises(ConfigError, match="MAPGATE_TRT_WORKSPACE_MB"):
        trt_backend.resolve_workspace_mb(environ={"MAPGATE_TRT_WORKSPACE_MB": "lots"})
    with pytest.raises(ConfigError, match="positive integer"):
        trt_backend.resolve_workspace_mb(0)


# ---------------------------------------------------------------------------------------------
# Input plan, binding layout, outputs by name
# ---------------------------------------------------------------------------------------------
def test_input_shape_from_manifest() -> None:
    assert trt_backend.input_shape_for(make_model(size=(416, 320))) == (1, 3, 416, 320)
    assert trt_backend.input_shape_for(make_model(layout="NHWC", size=(300, 300)), 4) == (4, 300, 300, 3)
    with pytest.raises(ConfigError):
        trt_backend.input_shape_for(make_model(), 0)


def test_plan_network_input_static_and_dynamic() -> None:
    static = trt_backend.plan_network_input([("images", (1, 3, 416, 416))], (1, 3, 416, 416))
    assert static == trt_backend.InputPlan("images", (1, 3, 416, 416), dynamic=False)
    dynamic = trt_backend.plan_network_input([("images", (-1, 3, -1, -1))], (1, 3, 416, 416), "images")
    assert dynamic.dynamic and dynamic.shape == (1, 3, 416, 416)


@pytest.mark.parametrize("inputs,name,match", [
    ([("images", (1, 3, 320, 320))], None, "input_size"),
    ([("images", (1, 416, 416, 3))], None, "preprocess.layout"),
    ([("images", (1, 3, 416))], None, "has shape"),
    ([("a", (1, 3, 416, 416)), ("b", (1,))], None, "2 inputs"),
    ([("input_1", (1, 3, 416, 416))], "images", "input_name"),
])
def test_plan_network_input_refuses_mismatch(inputs: list, name: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        trt_backend.plan_network_input(inputs, (1, 3, 416, 416), name, where="model 'm'")


ENGINE_IO = [
    trt_backend.TensorDesc("images", True, (1, 3, 416, 416), "float32"),
    trt_backend.TensorDesc("boxes", False, (1, 2535, 4), "float32"),
    trt_backend.TensorDesc("scores", False, (1, 2535, 80), "float32"),
]


def test_binding_layout_maps_outputs_by_name_in_manifest_order() -> None:
    layout = trt_backend.binding_layout(ENGINE_IO, (1, 3, 416, 416), "images", ("scores", "boxes"))
    assert layout.input_name == "images" and layout.input_dtype == "float32"
    assert layout.output_names == ("scores", "boxes")
    assert trt_backend.binding_layout(ENGINE_IO, (1, 3, 416, 416)).output_names == ("boxes", "scores")


def test_binding_layout_refuses_missing_output() -> None:
    with pytest.raises(ConfigError, match=r"missing \['classes'\].*'boxes', 'scores'"):
        trt_backend.binding_layout(ENGINE_IO, (1, 3, 416, 416), None, ("boxes", "classes"))
    with pytest.raises(ConfigError, match="no outputs"):
        trt_backend.binding_layout(ENGINE_IO[:1], (1, 3, 416, 416))
    with pytest.raises(ConfigError, match="input_size"):
        trt_backend.binding_layout(ENGINE_IO, (1, 3, 320, 320))


def test_map_outputs_copies_and_checks() -> None:
    layout = trt_backend.binding_layout(ENGINE_IO, (1, 3, 416, 416))
    raw = {"boxes": np.zeros((1, 2535, 4), np.float32), "scores": np.ones((1, 2535, 80), np.float32)}
    out = trt_backend.map_outputs(raw, layout)
    raw["boxes"][:] = 7  # the runner reuses its host buffers on the next infer
    assert list(out) == ["boxes", "scores"] and not out["boxes"].any()
    with pytest.raises(ConversionError, match="missing"):
        trt_backend.map_outputs({"boxes": raw["boxes"]}, layout)


class NamedTensorEngine:
    """The TensorRT >= 8.5 / 10.x engine surface describe_engine_io uses."""

    def __init__(self, io: list[trt_backend.TensorDesc], input_mode: Any = "INPUT") -> None:
        self.io, self.input_mode = io, input_mode
        self.num_io_tensors = len(io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i].name

    def _t(self, name: str) -> trt_backend.TensorDesc:
        return next(t for t in self.io if t.name == name)

    def get_tensor_mode(self, name: str) -> str:
        return self.input_mode if self._t(name).is_input else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._t(name).shape

    def get_tensor_dtype(self, name: str) -> str:
        return self._t(name).dtype


def test_describe_engine_io_uses_named_tensors(standin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "_trt_dtype_name", str)
    engine = NamedTensorEngine(ENGINE_IO, input_mode=standin.TensorIOMode.INPUT)
    assert trt_backend.describe_engine_io(engine) == ENGINE_IO


def test_engine_io_dtypes_numpy_cannot_hold_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from polygraphy.datatype import DataType

    assert trt_backend.numpy_dtype_name(DataType.FLOAT16) == "float16"
    with pytest.raises(ConfigError, match="bfloat16.*numpy cannot hold"):
        trt_backend.numpy_dtype_name(DataType.BFLOAT16)
    monkeypatch.setattr(DataType, "to_dtype", staticmethod(lambda dtype, module: None))  # Polygraphy < 0.53
    with pytest.raises(ConfigError, match="numpy cannot hold"):
        trt_backend.numpy_dtype_name(DataType.FLOAT32)


def test_an_explicitly_quantized_int8_engine_takes_no_calibration_table(tmp_path: Path) -> None:
    """Every mapgate INT8 engine builds from the Q/DQ file: the build gets no table to read or fill, and
    its provenance says which images calibrated the file, with no cache file."""
    from mapgate.backends._tensorrt_engine import EXPLICIT_QDQ, EngineCache

    spec = make_spec(precision="int8", calibration=dataclasses.replace(CALIB, algorithm=EXPLICIT_QDQ))
    jobs: list[BuildJob] = []
    result = EngineCache(tmp_path).get_or_build(spec, build=lambda job: jobs.append(job) or b"ENGINE",
                                                load=lambda data: data)
    assert [j.calibration_cache for j in jobs] == [None] and not jobs[0].calibration_reused
    record = result.provenance["calibration"]
    assert record["algorithm"] == EXPLICIT_QDQ and record["cache_file"] is None and record["count"] == CALIB.count
    assert not list(tmp_path.rglob("tensorrt-calib-*"))


def test_weak_int8_recipe_is_the_qdq_onnx_with_the_int8_flag_alone() -> None:
    assert trt_backend.build_recipe("fp32")["flags"] == []
    assert trt_backend.build_recipe("fp16")["flags"] == ["fp16"]
    # explicit quantization: no FP16 fallback, so what the Q/DQ file leaves in float runs FP32 (as in ORT)
    weak = trt_backend.build_recipe("int8", trt_backend.WEAK, ["tail/a"])
    strong = trt_backend.build_recipe("int8", trt_backend.STRONG, ["tail/a"])
    assert weak["flags"] == ["int8"] and weak["onnx"] == strong["onnx"] == "q/dq onnx"
    assert weak["fp32_layers"] == 0 and weak["precision_constraints"] is None  # the float layers are in the file
    assert not trt_backend.pins_layers("int8", trt_backend.WEAK) and trt_backend.pins_layers("fp16", trt_backend.WEAK)
    assert trt_backend.build_recipe("fp32")["tf32"] is False


def test_build_recipe_keys_the_mode_and_the_fp32_layer_set() -> None:
    strong = trt_backend.build_recipe("int8", trt_backend.STRONG, ["a"])
    assert strong["flags"] == [] and strong["mode"] == "strongly typed" and strong["fp32_layers"] == 0
    weak = trt_backend.build_recipe("fp16", trt_backend.WEAK, ["tail/a", "tail/b"])
    assert weak["precision_constraints"] == "obey" and weak["fp32_layers"] == 2
    other = trt_backend.build_recipe("fp16", trt_backend.WEAK, ["tail/a"])
    assert weak["fp32_layers_sha256"] != other["fp32_layers_sha256"]
    assert "polygraphy" in trt_backend.engine_key_extras()


def test_layers_to_pin_by_node_name_output_tensor_and_prefix() -> None:
    layers = [("conv1", ["c1"]), ("Postprocessor/Slice", ["s"]), ("decode", ["boxes"]), ("decode_2", ["tmp"]),
              ("Postprocessor/x_3", ["y"]), ("head", ["h"])]
    pinned = trt_backend.layers_to_pin(layers, keep_nodes=["decode"], keep_outputs=["h"], prefixes=["Postprocessor/"])
    assert pinned == ["Postprocessor/Slice", "decode", "Postprocessor/x_3", "head"]


# ---------------------------------------------------------------------------------------------
# The build call, with Polygraphy's loaders replaced by recorders
# ---------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}


@pytest.fixture
def fake_polygraphy(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    import polygraphy.backend.trt as ptrt

    rec = Recorder()
    rec.network_shape = (1, 3, 32, 32)  # type: ignore[attr-defined]
    rec.layer_types = ["QUANTIZE", "DEQUANTIZE", "CONVOLUTION"]  # type: ignore[attr-defined]

    class FakeInput:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class FakeNetwork:
        num_inputs = 1

        @property
        def num_layers(self) -> int:
            return len(rec.layer_types)  # type: ignore[attr-defined]

        def get_input(self, i: int) -> FakeInput:
            return FakeInput("images", rec.network_shape)  # type: ignore[attr-defined]

        def get_layer(self, i: int) -> Any:
            import tensorrt as trt

            return SimpleNamespace(type=getattr(trt.LayerType, rec.layer_types[i]), name=f"layer{i}",  # type: ignore[attr-defined]
                                   num_outputs=0)

    def network_from_onnx_path(path: str, strongly_typed: bool = False) -> Any:
        rec.calls["onnx"] = path
        rec.calls["strongly_typed"] = strongly_typed
        return lambda: ("builder", FakeNetwork(), "parser")

    def calibrator(**kw: Any) -> Any:
        rec.calls["calibrator"] = kw
        return SimpleNamespace(kind="calibrator")

    def create_config(**kw: Any) -> Any:
        rec.calls["config"] = kw
        return SimpleNamespace(kind="config")

    def engine_bytes(network: Any, config: Any) -> Any:
        rec.calls["network_tuple"] = network
        return lambda: b"SERIALIZED"

    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", network_from_onnx_path)
    monkeypatch.setattr(ptrt, "Calibrator", calibrator)
    monkeypatch.setattr(ptrt, "CreateConfig", create_config)
    monkeypatch.setattr(ptrt, "EngineBytesFromNetwork", engine_bytes)
    return rec


@pytest.mark.parametrize("precision,fp16,int8", [("fp32", False, False), ("fp16", True, False), ("int8", False, True)])
def test_build_engine_configures_polygraphy(fake_polygraphy: Recorder, standin: Any, tmp_path: Path, precision: str,
                                            fp16: bool, int8: bool) -> None:
    model = make_model()
    calib = CALIB if precision == "int8" else None
    spec = make_spec(precision=precision, calibration=calib, input_shape=(1, 3, 32, 32), workspace_mb=256)
    job = BuildJob(spec)
    trt = standin
    data = trt_backend._build_engine(model, tmp_path / "m.onnx", job)
    assert data == b"SERIALIZED"
    config = fake_polygraphy.calls["config"]
    assert config["fp16"] is fp16 and config["int8"] is int8 and config["tf32"] is False
    assert config["memory_pool_limits"] == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert config["precision_constraints"] is None and fake_polygraphy.calls["strongly_typed"] is False
    assert config["profiles"] is None  # static ONNX input: no extra profile
    assert fake_polygraphy.calls["network_tuple"] == ("builder", fake_polygraphy.calls["network_tuple"][1], "parser")
    # INT8 too: explicit quantization from the Q/DQ file, never TensorRT's own calibration
    assert "calibrator" not in config and "calibrator" not in fake_polygraphy.calls


def test_a_weak_int8_build_of_a_network_without_qdq_layers_is_refused(fake_polygraphy: Recorder, standin: Any,
                                                                       tmp_path: Path) -> None:
    """The planted defect of the old weak path: the FP32 ONNX with the INT8 flag is implicit quantization."""
    fake_polygraphy.layer_types = ["CONVOLUTION", "ACTIVATION"]  # type: ignore[attr-defined]
    spec = make_spec(precision="int8", calibration=CALIB, input_shape=(1, 3, 32, 32))
    with pytest.raises(ConversionError, match="no Q/DQ layers.*never TensorRT's own calibration"):
        trt_backend._build_engine(make_model(), tmp_path / "m.onnx", BuildJob(spec))
    assert "config" not in fake_polygraphy.calls


def test_build_engine_adds_fixed_profile_for_dynamic_input(fake_polygraphy: Recorder, standin: Any, tmp_path: Path) -> None:
    fake_polygraphy.network_shape = (-1, 3, -1, -1)  # type: ignore[attr-defined]
    spec = make_spec(precision="fp16", input_shape=(1, 3, 32, 32))
    trt_backend._build_engine(make_model(), tmp_path / "m.onnx", BuildJob(spec))
    (profile,) = fake_polygraphy.calls["config"]["profiles"]
    shapes = profile["images"]
    assert tuple(shapes.min) == tuple(shapes.opt) == tuple(shapes.max) == (1, 3, 32, 32)


def test_build_engine_refuses_manifest_mismatch(fake_polygraphy: Recorder, standin: Any, tmp_path: Path) -> None:
    fake_polygraphy.network_shape = (1, 3, 64, 64)  # type: ignore[attr-defined]
    spec = make_spec(precision="fp16", input_shape=(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="input_size"):
        trt_backend._build_engine(make_model(), tmp_path / "m.onnx", BuildJob(spec))


# ---------------------------------------------------------------------------------------------
# The whole runner with fakes: build once, reuse, outputs by name
# ---------------------------------------------------------------------------------------------
class FakeTrtRunner:
    instances: list["FakeTrtRunner"] = []

    def __init__(self, engine: Any, name: str | None = None) -> None:
        self.engine, self.is_active, self.feeds = engine, False, []
        self.host = OrderedDict(boxes=np.zeros((1, 10, 4), np.float32), scores=np.zeros((1, 10, 80), np.float32))
        FakeTrtRunner.instances.append(self)

    def activate(self) -> None:
        self.is_active = True

    def deactivate(self) -> None:
        self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> OrderedDict:
        self.feeds.append(feed)
        value = float(feed["images"].mean())
        for arr in self.host.values():
            arr[:] = value  # same host buffers every call, like Polygraphy
        return self.host


@pytest.fixture
def fake_trt_stack(fake_polygraphy: Recorder, standin: Any, monkeypatch: pytest.MonkeyPatch,
                   tmp_path: Path) -> SimpleNamespace:
    import polygraphy.backend.trt as ptrt

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"fake onnx")
    builds: list[bytes] = []
    real_build = trt_backend._build_engine

    def counting_build(*args: Any, **kw: Any) -> bytes:
        builds.append(real_build(*args, **kw))
        return builds[-1]

    io = [trt_backend.TensorDesc("images", True, (1, 3, 32, 32), "float32"),
          trt_backend.TensorDesc("boxes", False, (1, 10, 4), "float32"),
          trt_backend.TensorDesc("scores", False, (1, 10, 80), "float32")]
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: standin)
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: (1, ""))
    monkeypatch.setattr(trt_backend, "probe_device_info", lambda version: DEVICE)
    monkeypatch.setattr(trt_backend, "_onnx_for", lambda model, ctx, precision="fp32", mode="", version=None: onnx)
    monkeypatch.setattr(trt_backend, "fp32_nodes", lambda model, path: ([], []))
    monkeypatch.setattr(trt_backend, "_build_engine", counting_build)
    monkeypatch.setattr(trt_backend, "_trt_dtype_name", str)
    monkeypatch.setattr(ptrt, "get_trt_logger", lambda: "logger")
    monkeypatch.setattr(ptrt, "EngineFromBytes",
                        lambda data, runtime: (lambda: NamedTensorEngine(io, standin.TensorIOMode.INPUT)))
    monkeypatch.setattr(ptrt, "TrtRunner", FakeTrtRunner)
    FakeTrtRunner.instances.clear()
    return SimpleNamespace(builds=builds, ctx=BuildContext(engines_dir=tmp_path / "engines"))


def test_runner_builds_once_reuses_and_returns_outputs_by_name(fake_trt_stack: SimpleNamespace) -> None:
    model = make_model(output_names=("scores", "boxes"))
    runner = trt_backend.BACKEND.runner(model, "fp16", fake_trt_stack.ctx)
    with runner:
        assert runner.cache_result is not None and runner.cache_result.built
        first = runner.infer(np.full((1, 3, 32, 32), 1.0, np.float32))
        second = runner.infer(np.full((1, 3, 32, 32), 2, np.uint8))  # uint8 -> float32 is a safe cast
        assert list(first) == ["scores", "boxes"]
        assert first["boxes"].max() == 1.0 and second["boxes"].max() == 2.0  # outputs are copies
        assert runner.artifact is not None and runner.artifact.suffix == ".engine"
        with pytest.raises(ConfigError, match="built for"):
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))
    built_at = runner.cache_result.provenance["built_at"]

    again = trt_backend.BACKEND.runner(model, "fp16", fake_trt_stack.ctx)
    with again:
        assert again.cache_result is not None and not again.cache_result.built
        assert again.cache_result.provenance["built_at"] == built_at
    assert len(fake_trt_stack.builds) == 1, "the second activation must reuse the cached engine"
    assert all(not r.is_active for r in FakeTrtRunner.instances)


def test_tf_output_names_come_back_canonical_as_the_e2e_test_expects(fake_trt_stack: SimpleNamespace,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy.backend.trt as ptrt
    from test_tensorrt_e2e import expected_output_names

    io = [trt_backend.TensorDesc("images", True, (1, 3, 32, 32), "float32"),
          trt_backend.TensorDesc("Postprocessor/Slice:0", False, (1, 10, 4), "float32"),
          trt_backend.TensorDesc("Postprocessor/ExpandDims_1:0", False, (1, 10, 80), "float32")]
    monkeypatch.setattr(ptrt, "EngineFromBytes", lambda data, runtime: (lambda: NamedTensorEngine(io, "INPUT")))

    class TfNames(FakeTrtRunner):
        def infer(self, feed: dict[str, np.ndarray]) -> OrderedDict:
            return OrderedDict((t.name, np.zeros(t.shape, np.float32)) for t in io[1:])

    monkeypatch.setattr(ptrt, "TrtRunner", TfNames)
    monkeypatch.setattr(trt_backend, "describe_engine_io", lambda engine: [
        dataclasses.replace(t, is_input=t.name == "images") for t in io])
    model = make_model(output_names=("Postprocessor/Slice:0", "Postprocessor/ExpandDims_1:0"))
    with trt_backend.BACKEND.runner(model, "fp32", fake_trt_stack.ctx) as runner:
        outputs = runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    assert list(outputs) == expected_output_names(model) == ["Postprocessor/Slice", "Postprocessor/ExpandDims_1"]
    assert list(outputs) != list(model.output_names)  # what the e2e test compared before: failed for every TF model


def test_identity_for_the_gate(fake_trt_stack: SimpleNamespace) -> None:
    model = make_model()
    before = trt_backend.BACKEND.identity(model, "fp16", fake_trt_stack.ctx)
    assert before["cacheable"] is False  # no engine yet: the next run's build bytes are unknown
    assert len(fake_trt_stack.builds) == 0, "identity must not build"
    with trt_backend.BACKEND.runner(model, "fp16", fake_trt_stack.ctx) as runner:
        sha = runner.artifact_sha256
    after = trt_backend.BACKEND.identity(model, "fp16", fake_trt_stack.ctx)
    assert "cacheable" not in after and after["artifact_sha256"] == sha
    assert after["engine_key"] == before["engine_key"]
    assert trt_backend.BACKEND.identity(model, "fp32", fake_trt_stack.ctx)["engine_key"] != after["engine_key"]


def test_runner_rejects_bad_precision_and_missing_output(fake_trt_stack: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="never the reference"):
        trt_backend.BACKEND.runner(make_model(), None, fake_trt_stack.ctx)  # type: ignore[arg-type]
    runner = trt_backend.BACKEND.runner(make_model(output_names=("logits",)), "fp32", fake_trt_stack.ctx)
    with pytest.raises(ConfigError, match="output_names"):
        runner.activate()


def test_runner_unavailable_raises_with_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_trt())
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: (0, "cudaGetDeviceCount reports 0 devices"))
    runner = trt_backend.BACKEND.runner(make_model(), "fp32", BuildContext(engines_dir=tmp_path))
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        runner.activate()


# ---------------------------------------------------------------------------------------------
# Calibration input (needs the lead's mapgate.calibration)
# ---------------------------------------------------------------------------------------------
def test_int8_refuses_calibration_images_that_are_evaluated(tmp_path: Path) -> None:
    images = sorted(CALIB_DIR.iterdir())[:4]
    from mapgate.calibration import image_ids_of

    ids = image_ids_of(images)
    ctx = BuildContext(engines_dir=tmp_path, calib_images=images, evaluated_image_ids=frozenset({ids[1], 123456789}))
    runner = trt_backend.TensorRTRunner(make_model(), "int8", ctx)
    with pytest.raises(ConfigError, match=rf"also evaluated \(image ids {ids[1]}\)"):
        runner._calibration()


def test_int8_calibration_info_is_the_qdq_files_images_in_its_order(tmp_path: Path) -> None:
    """The engine keys and records the images ONNX Runtime's quantizer calibrated the Q/DQ file on, in the
    order it read them (all of those given), not a sorted or truncated list."""
    from mapgate.calibration import calibration_images, calibration_set_hash

    images = list(reversed(sorted(CALIB_DIR.iterdir())[:5]))
    ctx = BuildContext(engines_dir=tmp_path, calib_images=images, max_calib_images=3)
    info = trt_backend.TensorRTRunner(make_model(), "int8", ctx)._calibration()
    assert info.set_sha256 == calibration_set_hash(images) and info.count == 5
    assert info.algorithm == trt_backend.EXPLICIT_QDQ and info.batch_size == 1
    assert trt_backend.TensorRTRunner(make_model(), "int8", ctx)._calibration() == info
    other_pre = trt_backend.TensorRTRunner(make_model(layout="NHWC"), "int8", ctx)._calibration()
    assert other_pre.preprocess_sha256 != info.preprocess_sha256
    # none given: the bundled set's first max_calib_images, as ort_quant.build reads them
    bundled = trt_backend.TensorRTRunner(make_model(), "int8", BuildContext(engines_dir=tmp_path, max_calib_images=3))
    assert bundled._calibration().set_sha256 == calibration_set_hash(calibration_images(limit=3))
