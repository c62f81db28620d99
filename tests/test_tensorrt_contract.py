"""Contract: mapgate's TensorRT build path, through the REAL Polygraphy, against a recording
stand-in ``tensorrt`` (tests/trt_standin) whose names and signatures follow TensorRT 8.6/10.x
(tensorrt-stubs) and 11.x (weak typing removed). Unknown attributes are recorded with their
caller and raise AttributeError; unknown keywords are TypeErrors. One fresh process per
TensorRT version (Polygraphy imports ``tensorrt`` once per process), on the bundled
yolox-nano-416 ONNX with 3 real calibration images. See docs/tensorrt-contract.md.
"""

from __future__ import annotations

import json
import os
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
# Polygraphy 0.53.6 probes these inside try/except AttributeError or hasattr (backend/trt/config.py:259,
# backend/trt/util.py:556, 560, 656) and its DataType table probes newer dtypes (mod/importer.py:248);
# on TensorRT 11 the weak-typing ones are gone, which Polygraphy expects.
POLYGRAPHY_PROBES = {("ILayer", "precision_is_set"), ("IBuilderConfig", "int8_calibrator"), ("tensorrt", "QuantizationFlag"),
                     ("tensorrt", "int4"), ("tensorrt", "fp4"), ("tensorrt", "e8m0")}

pytest.importorskip("polygraphy", reason="polygraphy is not installed: pip install 'mapgate[trt]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'mapgate[onnx]'")


def _env(version: str, typing: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAPGATE_TRT_TYPING", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]), MAPGATE_STANDIN_TRT_VERSION=version)
    if typing:
        env["MAPGATE_TRT_TYPING"] = typing
    return env


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-engines")  # shared: conversions are made once


_REPORTS: dict[tuple[str, str | None], dict[str, Any]] = {}


def run(version: str, typing: str | None, engines: Path) -> dict[str, Any]:
    key = (version, typing)
    if key not in _REPORTS:
        out = engines.parent / f"contract-{version}-{typing}.json"
        done = subprocess.run([sys.executable, str(DRIVER), str(out), str(engines)], env=_env(version, typing),
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _REPORTS[key] = json.loads(out.read_text())
    return _REPORTS[key]


def calls(build: dict[str, Any], what: str) -> list[dict[str, Any]]:
    return [args for name, args in build["calls"] if name == what]


WEAK = [("8.6.1", None), ("10.3.0", None)]
STRONG = [("10.13.0", "strong"), ("11.4.0", None)]


@pytest.mark.slow
@pytest.mark.parametrize("version,typing", WEAK + STRONG)
def test_no_unknown_tensorrt_attribute_and_no_error(version: str, typing: str | None, engines: Path) -> None:
    report = run(version, typing, engines)
    from_mapgate = [u for u in report["unknown"] if u[2].startswith(MAPGATE_DIR)]
    assert not from_mapgate, f"mapgate used TensorRT {version} attributes that do not exist: {from_mapgate}"
    unexpected = {(o, a) for o, a, _ in report["unknown"]} - POLYGRAPHY_PROBES
    assert not unexpected, f"Polygraphy probed attributes outside its guarded probes: {unexpected}"
    for build in report["builds"].values():
        assert not calls(build, "error"), calls(build, "error")


@pytest.mark.slow
@pytest.mark.parametrize("version,typing", WEAK)
def test_weakly_typed_builds(version: str, typing: str | None, engines: Path) -> None:
    report = run(version, typing, engines)
    assert report["describe"].startswith(f"tensorrt {version}: weakly typed builds")
    b = report["builds"]
    explicit = ["EXPLICIT_BATCH"] if version.startswith("8.") else []  # implicit (and deprecated) from 10.0
    for build in b.values():
        assert build["mode"] == "weakly typed" and build["onnx"] == "yolox_nano.onnx"
        assert calls(build, "Builder.create_network") == [{"flags": explicit}]
        assert {"flag": "TF32"} in calls(build, "IBuilderConfig.clear_flag")
        assert calls(build, "IBuilderConfig.set_memory_pool_limit")[0]["pool"] == "WORKSPACE"
        assert build["key_fields"]["recipe"]["polygraphy"] == version_of("polygraphy")  # its defaults shape the engine
    flags = {k: calls(v, "Builder.build_serialized_network")[0]["flags"] for k, v in b.items()}
    assert flags["fp32-256"] == []
    assert flags["fp16-256"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert flags["int8-256"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    # the output tail (after the last conv) is pinned FP32: precision and every output type
    for name in ("fp16-256", "int8-256"):
        pinned = {c["layer"] for c in calls(b[name], "ILayer.precision")}
        assert pinned and pinned <= set(b[name]["kept_nodes"]), pinned
        assert all(c["dtype"] == "FLOAT" for c in calls(b[name], "ILayer.precision"))
        assert {c["layer"] for c in calls(b[name], "ILayer.set_output_type")} == pinned
        assert b[name]["recipe"]["fp32_layers"] == len(b[name]["kept_nodes"]) > 0
    assert not calls(b["fp32-256"], "ILayer.precision")
    # INT8: entropy calibrator, FP32 batches of the engine's input shape, every batch accepted,
    # the table written, then reused by an engine that differs only in workspace
    (calibrator,) = calls(b["int8-256"], "IBuilderConfig.int8_calibrator")
    assert calls(b["int8-256"], "IInt8Calibrator.__init__")[-1]["cls"] == "IInt8EntropyCalibrator2"
    (first,) = calls(b["int8-256"], "calibration")
    assert not first["reused"] and first["batch_size"] == 1
    assert first["batches"] == [[{"dtype": "float32", "shape": [1, 3, 416, 416]}]] * 3
    assert b["int8-256"]["calibration"]["cache_file"] and not b["int8-256"]["calibration"]["cache_reused"]
    (second,) = calls(b["int8-512"], "calibration")
    assert second["reused"] and second["batches"] == []
    assert b["int8-512"]["calibration"]["cache_reused"] is True


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


@pytest.mark.slow
def test_mapgate_models_names_the_strongly_typed_mode_without_a_gpu() -> None:
    done = subprocess.run([sys.executable, "-m", "mapgate.cli", "models"], env=_env("11.4.0"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("tensorrt ") and ":" in ln.split()[1]]
    assert line.startswith("tensorrt 11.4.0: strongly typed builds")
    assert "buildable: fp32 yes, fp16 yes, int8 yes" in line and "unavailable here: no CUDA device" in line


def test_weak_typing_asked_on_tensorrt_11_is_refused_with_the_reason() -> None:
    code = "from mapgate.backends.tensorrt import BACKEND; print(BACKEND.describe())"
    done = subprocess.run([sys.executable, "-c", code], env=_env("11.4.0", "weak"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed weakly typed builds" in done.stdout
