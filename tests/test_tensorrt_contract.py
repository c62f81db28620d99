"""Contract: mapgate's TensorRT path, through the REAL Polygraphy, against a recording stand-in
``tensorrt`` (tests/trt_standin) that exposes exactly the names of TensorRT's own bindings at
v8.6.1, v10.3.0, v10.13.0 and v11.1 (tests/trt_standin/api/*.json, generated from the binding
sources) and applies the ONNX parser's and builder's rules. Only the CUDA runtime under
Polygraphy's CUDA wrapper and mapgate's two CUDA device probes are replaced. One fresh process
per TensorRT version (Polygraphy imports ``tensorrt`` once per process), on the bundled
yolox-nano-416 ONNX with 3 real calibration images: builds, then mapgate's runner activate ->
infer (a real image) -> deactivate. Planted defects show that each check can fail.
See tests/trt_standin/README.md and docs/tensorrt-contract.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mapgate.optional import version_of

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "trt_standin"
DRIVER = ROOT / "tests" / "trt_contract_driver.py"
MAPGATE_DIR = str(ROOT / "mapgate")
# Polygraphy 0.53.6's guarded probes: names it reads inside try/except AttributeError or hasattr, and
# which some TensorRT versions lack: runner.py:270 (hasattr set_all_tensors_debug_state, not on 8.6),
# runner.py:437 (try get_aliased_input_tensor, 11.x only), util.py:503 (hasattr network.get_flag, not
# on 8.6), util.py:556/656 and config.py:259 (int8_calibrator / precision_is_set, gone on 11), its
# DataType table (datatype/tensorrt.py via mod/importer.py:248: newer dtypes, QuantizationFlag).
POLYGRAPHY_PROBES = {("IExecutionContext", "set_all_tensors_debug_state"), ("ICudaEngine", "get_aliased_input_tensor"),
                     ("INetworkDefinition", "get_flag"), ("ILayer", "precision_is_set"),
                     ("IBuilderConfig", "int8_calibrator"), ("tensorrt", "QuantizationFlag"),
                     ("tensorrt", "bfloat16"), ("tensorrt", "int64"), ("tensorrt", "int4"), ("tensorrt", "fp4"),
                     ("tensorrt", "e8m0")}

pytest.importorskip("polygraphy", reason="polygraphy is not installed: pip install 'mapgate[trt]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'mapgate[onnx]'")


def _load_driver() -> Any:
    spec = importlib.util.spec_from_file_location("trt_contract_driver", DRIVER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


checks = _load_driver()  # the pure check functions; the driver itself only runs in subprocesses


def _env(version: str, typing: str | None = None, mapgate_root: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAPGATE_TRT_TYPING", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join([str(STANDIN), str(mapgate_root)]), MAPGATE_STANDIN_TRT_VERSION=version)
    if typing:
        env["MAPGATE_TRT_TYPING"] = typing
    return env


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-engines")  # shared: conversions are made once


_REPORTS: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}


def run(version: str, typing: str | None, engines: Path, plant: str | None = None,
        mapgate_root: Path = ROOT) -> dict[str, Any]:
    key = (version, typing, plant)
    if key not in _REPORTS or mapgate_root != ROOT:
        out = engines.parent / f"contract-{version}-{typing}-{plant}.json"
        args = [sys.executable, str(DRIVER), str(out), str(engines)] + (["--plant", plant] if plant else [])
        done = subprocess.run(args, env=_env(version, typing, mapgate_root), cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        report = json.loads(out.read_text())
        if mapgate_root != ROOT:
            return report
        _REPORTS[key] = report
    return _REPORTS[key]


def calls(build: dict[str, Any], what: str) -> list[dict[str, Any]]:
    return [args for name, args in build["calls"] if name == what]


WEAK = [("8.6.1", None), ("10.3.0", None)]
STRONG = [("10.13.0", "strong"), ("11.1.0", None)]


@pytest.mark.slow
@pytest.mark.parametrize("version,typing", WEAK + STRONG)
def test_every_name_exists_in_that_tensorrt_and_nothing_fails(version: str, typing: str | None, engines: Path) -> None:
    report = run(version, typing, engines)
    assert report["version"] == version
    assert checks.contract_violations(report, MAPGATE_DIR, POLYGRAPHY_PROBES) == []


@pytest.mark.slow
@pytest.mark.parametrize("version,typing", WEAK)
def test_weakly_typed_builds(version: str, typing: str | None, engines: Path) -> None:
    report = run(version, typing, engines)
    assert report["describe"].startswith(f"tensorrt {version}: weakly typed builds")
    assert "int8 = explicit Q/DQ: the onnxruntime:int8 ONNX (INT8 flag, no calibrator" in report["describe"]
    b = report["builds"]
    explicit = ["EXPLICIT_BATCH"] if version.startswith("8.") else []  # implicit (and deprecated) from 10.0
    for build in b.values():
        assert build["mode"] == "weakly typed"
        assert calls(build, "Builder.create_network") == [{"flags": explicit}]
        assert {"flag": "TF32"} in calls(build, "IBuilderConfig.clear_flag")
        assert calls(build, "IBuilderConfig.set_memory_pool_limit")[0]["pool"] == "WORKSPACE"
        assert build["key_fields"]["recipe"]["polygraphy"] == version_of("polygraphy")  # its defaults shape the engine
    assert b["fp32-256"]["onnx"] == b["fp16-256"]["onnx"] == "yolox_nano.onnx"
    flags = {k: calls(v, "Builder.build_serialized_network")[0]["flags"] for k, v in b.items()}
    assert flags["fp32-256"] == []
    assert flags["fp16-256"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    # the output tail (after the last conv) is pinned FP32 in FP16: precision and every output type
    pinned = {c["layer"] for c in calls(b["fp16-256"], "ILayer.precision")}
    assert pinned and pinned <= set(b["fp16-256"]["kept_nodes"]), pinned
    assert all(c["dtype"] == "FLOAT" for c in calls(b["fp16-256"], "ILayer.precision"))
    assert {c["layer"] for c in calls(b["fp16-256"], "ILayer.set_output_type")} == pinned
    assert b["fp16-256"]["recipe"]["fp32_layers"] == len(b["fp16-256"]["kept_nodes"]) > 0
    assert not calls(b["fp32-256"], "ILayer.precision")
    # INT8 is explicit quantization, as on TensorRT 11: the very Q/DQ file onnxruntime:int8 evaluates, the
    # INT8 flag alone (its float layers stay FP32, nothing pinned), no calibrator, no calibration, no table
    for name in ("int8-256", "int8-512"):
        build = b[name]
        assert build["onnx"].startswith("ort-int8-") and build["recipe"]["onnx"] == "q/dq onnx"
        assert flags[name] == ["INT8"]
        assert {"QUANTIZE", "DEQUANTIZE"} <= set(calls(build, "Builder.build_serialized_network")[0]["layer_types"])
        assert not calls(build, "ILayer.precision") and not calls(build, "ILayer.set_output_type")
        assert not calls(build, "IInt8Calibrator.__init__") and not calls(build, "IBuilderConfig.int8_calibrator")
        assert not calls(build, "calibration") and not calls(build, "warning")
        assert build["calibration"]["cache_file"] is None and build["calibration"]["algorithm"].startswith("explicit")
    assert b["int8-256"]["onnx"] == b["int8-512"]["onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("version,typing", STRONG)
def test_strongly_typed_builds(version: str, typing: str | None, engines: Path) -> None:
    report = run(version, typing, engines)
    assert report["describe"].startswith(f"tensorrt {version}: strongly typed builds")
    b = report["builds"]
    for build in b.values():
        assert build["mode"] == "strongly typed"
        assert calls(build, "Builder.create_network") == [{"flags": ["STRONGLY_TYPED"]}]
        built = calls(build, "Builder.build_serialized_network")[0]
        assert built["strongly_typed"] and built["flags"] == []  # no FP16/INT8/precision-constraint flags
        assert not calls(build, "ILayer.precision") and not calls(build, "ILayer.set_output_type")
        assert not calls(build, "IBuilderConfig.int8_calibrator") and not calls(build, "calibration")
    assert b["fp32-256"]["onnx"] == "yolox_nano.onnx"
    assert b["fp16-256"]["onnx"].startswith("trt-fp16-onnx-")
    assert "CAST" in calls(b["fp16-256"], "Builder.build_serialized_network")[0]["layer_types"]
    assert b["int8-256"]["onnx"].startswith("ort-int8-")  # the very file onnxruntime:int8 evaluates
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(calls(b["int8-256"], "Builder.build_serialized_network")[0]["layer_types"])
    assert b["int8-256"]["calibration"]["cache_file"] is None  # explicit quantization: no calibration table


# ---------------------------------------------------------------------------------------------
# The runtime half: deserialize -> engine IO -> TrtRunner activate / infer / deactivate
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("version,typing", WEAK + STRONG)
def test_runner_loads_the_cached_engine_runs_it_and_frees_it_in_order(version: str, typing: str | None,
                                                                       engines: Path) -> None:
    report = run(version, typing, engines)
    for precision, r in report["runs"].items():
        assert "error" not in r, r.get("traceback")
        assert checks.lifetime_violations(r) == [], precision
        sequence = [w for w, _ in r["calls"] if w.startswith(("Runtime.", "ICudaEngine.", "IExecutionContext."))]
        # the engine comes from the cache (built above) through EngineFromBytes, never rebuilt
        assert not calls(r, "Builder.build_serialized_network")
        assert sequence[:3] == ["Runtime.__init__", "Runtime.deserialize_cuda_engine",
                                "ICudaEngine.create_execution_context"], sequence
        assert sequence[-1] == "IExecutionContext.execute_async_v3"
        (address,) = calls(r, "IExecutionContext.set_tensor_address")
        assert address["name"] == "images"
        assert [c["name"] for c in calls(r, "IExecutionContext.set_output_allocator")] == ["output"]
        # TensorRT 8.6 calls the allocator's reallocate_output, 10+ reallocate_output_async (pyCore.cpp)
        (realloc,) = calls(r, "IOutputAllocator.reallocate")
        assert realloc["method"] == ("reallocate_output" if version.startswith("8.") else "reallocate_output_async")
        # what mapgate returns is exactly what the engine computed on the bytes Polygraphy copied in
        assert r["outputs"] == {"output": {"shape": [1, 3549, 85], "dtype": "float32"}}
        assert r["max_abs_diff_vs_onnxruntime"] == 0.0


@pytest.mark.slow
def test_a_runner_that_skips_deactivate_fails_the_lifetime_check(engines: Path) -> None:
    report = run("10.3.0", None, engines, plant="skip-deactivate")
    found = checks.lifetime_violations(report["runs"]["fp32"])
    assert "deactivate() did not destroy the runner's CUDA stream" in found, found
    assert any("never freed" in f for f in found), found  # the input buffer stays allocated


@pytest.mark.slow
def test_a_ten_only_name_on_the_86_path_fails_the_contract(tmp_path: Path) -> None:
    """A copy of mapgate whose build uses MemoryPoolType.TACTIC_SHARED_MEMORY (10.0+): on 8.6 the
    stand-in raises AttributeError where it is used and the check names mapgate's line."""
    mutant = tmp_path / "mutant"
    shutil.copytree(ROOT / "mapgate", mutant / "mapgate", ignore=shutil.ignore_patterns("__pycache__"))
    (mutant / "fixtures").symlink_to(ROOT / "fixtures")
    source = mutant / "mapgate" / "backends" / "tensorrt.py"
    text = source.read_text()
    assert text.count("trt.MemoryPoolType.WORKSPACE") == 1
    source.write_text(text.replace("trt.MemoryPoolType.WORKSPACE", "trt.MemoryPoolType.TACTIC_SHARED_MEMORY"))
    report = run("8.6.1", None, tmp_path / "engines", mapgate_root=mutant)
    found = checks.contract_violations(report, str(mutant / "mapgate"), POLYGRAPHY_PROBES)
    assert any("MemoryPoolType.TACTIC_SHARED_MEMORY, which TensorRT 8.6.1 does not have" in f
               and f"{source}:" in f for f in found), found


@pytest.mark.slow
def test_mapgate_models_names_the_strongly_typed_mode_without_a_gpu() -> None:
    done = subprocess.run([sys.executable, "-m", "mapgate.cli", "models"], env=_env("11.1.0"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("tensorrt ") and ":" in ln.split()[1]]
    assert line.startswith("tensorrt 11.1.0: strongly typed builds")
    assert "buildable: fp32 yes, fp16 yes, int8 yes" in line and "unavailable here: no CUDA device" in line


def test_weak_typing_asked_on_tensorrt_11_is_refused_with_the_reason() -> None:
    code = "from mapgate.backends.tensorrt import BACKEND; print(BACKEND.describe())"
    done = subprocess.run([sys.executable, "-c", code], env=_env("11.1.0", "weak"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed weakly typed builds" in done.stdout
