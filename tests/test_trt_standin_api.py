"""The stand-in ``tensorrt`` exposes exactly the names of TensorRT's bindings at each tag, as
generated into tests/trt_standin/api/*.json from NVIDIA/TensorRT's python/src sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "trt_standin"
API = {p.stem: json.loads(p.read_text()) for p in sorted((STANDIN / "api").glob("*.json"))}
TAGS = {"8.6.1": "v8.6.1", "10.3.0": "v10.3.0", "10.13.0": "v10.13.0", "11.1.0": "v11.1"}
MIRROR = Path("/work/.mirror/NVIDIA+TensorRT/repo")


def enum(version: str, name: str) -> dict[str, int]:
    return API[version]["enums"][name]["members"]


def standin(version: str, code: str) -> str:
    """Run ``code`` with the stand-in first on the path; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(STANDIN), MAPGATE_STANDIN_TRT_VERSION=version)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_each_data_file_names_the_tag_and_commit_it_came_from() -> None:
    assert sorted(API) == sorted(TAGS)
    for version, data in API.items():
        assert data["tag"] == TAGS[version] and len(data["commit"]) == 40
        assert data["repository"] == "https://github.com/NVIDIA/TensorRT"
        assert "python/src/infer/pyCore.cpp" in data["sources"] and "python/src/infer/pyGraph.cpp" in data["sources"]


def test_86_has_strict_types_and_none_of_the_10_names() -> None:
    assert "STRICT_TYPES" in enum("8.6.1", "BuilderFlag")
    assert "WEIGHT_STREAMING" not in enum("8.6.1", "BuilderFlag")
    assert enum("8.6.1", "NetworkDefinitionCreationFlag") == {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    assert not {"BF16", "INT64"} & set(enum("8.6.1", "DataType"))
    assert "TACTIC_SHARED_MEMORY" not in enum("8.6.1", "MemoryPoolType")
    assert "IInt8EntropyCalibrator2" in API["8.6.1"]["classes"]
    # the header values differ from 10.x: TF32 is 7 on 8.6 (STRICT_TYPES is 4), 6 on 10.x
    assert enum("8.6.1", "BuilderFlag")["TF32"] == 7 and enum("10.3.0", "BuilderFlag")["TF32"] == 6


@pytest.mark.parametrize("version", ["10.3.0", "10.13.0"])
def test_10x_has_strong_typing_and_the_new_types_and_no_strict_types(version: str) -> None:
    assert enum(version, "NetworkDefinitionCreationFlag")["STRONGLY_TYPED"] == 1
    assert {"BF16", "INT64"} <= set(enum(version, "DataType"))
    assert "WEIGHT_STREAMING" in enum(version, "BuilderFlag") and "STRICT_TYPES" not in enum(version, "BuilderFlag")
    assert "TACTIC_SHARED_MEMORY" in enum(version, "MemoryPoolType")
    assert {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} <= set(enum(version, "BuilderFlag"))


def test_11_removed_weak_typing() -> None:
    flags = enum("11.1.0", "BuilderFlag")
    assert not {"FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} & set(flags)
    assert "TF32" in flags
    assert enum("11.1.0", "NetworkDefinitionCreationFlag")["STRONGLY_TYPED"] == 0  # EXPLICIT_BATCH is gone
    classes = API["11.1.0"]["classes"]
    assert not [c for c in classes if c.startswith("IInt8")]
    assert not {"precision", "set_output_type"} & set(classes["ILayer"]["members"])
    assert "int8_calibrator" not in classes["IBuilderConfig"]["members"]


@pytest.mark.parametrize("version", sorted(TAGS))
def test_the_module_exposes_exactly_the_bindings_names(version: str) -> None:
    data = API[version]
    out = json.loads(standin(version, """
import json, tensorrt as t
classes = {n: sorted(a for a in vars(c) if not a.startswith('_')) for n, c in vars(t).items()
           if isinstance(c, type) and c.__module__ == 'tensorrt' and hasattr(c, '_api_name')}
print(json.dumps({"module": sorted(n for n in vars(t) if not n.startswith('_')), "classes": classes,
                  "unknown": t.UNKNOWN}))
"""))
    expected = (set(data["classes"]) | {n for n in data["enums"] if "." not in n}
                | {n for n, v in data["module_attributes"].items() if not v.startswith("<object")}
                | set(data["package"]["functions"]) - {"common_enter", "common_exit"}
                | {"init_libnvinfer_plugins", "ctypes", "os", "sys", "__version__"})
    recording = {"CALLS", "UNKNOWN", "UNMODELED", "API", "LIFETIME"}
    # the bindings' other module functions (get_plugin_registry ...) are real but unmodeled: they raise
    # AttributeError through the module __getattr__ and land in UNMODELED, which the contract tests require empty
    assert set(out["module"]) - recording == {n for n in expected if not n.startswith("_")}
    for name, attrs in out["classes"].items():
        members = set()
        stack = [name]
        while stack:
            cls = stack.pop()
            info = data["classes"][cls]
            members |= set(info["members"]) | {e.split(".")[1] for e in data["enums"] if e.startswith(cls + ".")}
            members |= {a.split(".")[1] for a in data["package"]["class_attributes"] if a.startswith(cls + ".")}
            stack += info["bases"]
        if name == "Logger":  # __init__.py: `for attr, value in ILogger.Severity.__members__.items(): setattr(Logger, ...)`
            members |= set(data["enums"]["ILogger.Severity"]["members"])
        assert set(attrs) <= members, (name, set(attrs) - members)
    assert out["unknown"] == []


@pytest.mark.parametrize("version,name", [("8.6.1", "NetworkDefinitionCreationFlag.STRONGLY_TYPED"),
                                          ("8.6.1", "DataType.BF16"), ("8.6.1", "MemoryPoolType.TACTIC_SHARED_MEMORY"),
                                          ("8.6.1", "BuilderFlag.WEIGHT_STREAMING"), ("10.3.0", "BuilderFlag.STRICT_TYPES"),
                                          ("11.1.0", "BuilderFlag.FP16"), ("11.1.0", "IInt8EntropyCalibrator2"),
                                          ("11.1.0", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH")])
def test_a_name_the_version_lacks_raises_attribute_error_and_is_recorded(version: str, name: str) -> None:
    out = standin(version, f"""
import tensorrt as t
try:
    t.{name}
except AttributeError as exc:
    print("AttributeError", exc)
print(t.UNKNOWN)
""")
    assert out.startswith("AttributeError") and f"not in TensorRT {version}" in out
    owner, _, attr = name.rpartition(".")
    assert f"('{owner or 'tensorrt'}', '{attr}', '<string>:" in out


@pytest.mark.parametrize("version", sorted(TAGS))
def test_every_modeled_method_takes_the_bindings_keyword_names(version: str) -> None:
    # and a keyword the version's bindings lack is a TypeError, as pybind11's overload resolution makes it
    if version == "8.6.1":
        assert "incompatible function arguments" in standin(version, """
import tensorrt as t
try:
    t.ICudaEngine.create_execution_context(None, strategy=None)
except TypeError as exc:
    print(exc)
""")
    out = standin(version, """
import inspect, json, tensorrt as t
bad = []
for cname, cls in vars(t).items():
    if not (isinstance(cls, type) and cls.__module__ == 'tensorrt' and hasattr(cls, '_api_name')):
        continue
    for name, fn in vars(cls).items():
        if name.startswith('_') and name != '__init__' or not inspect.isfunction(fn):
            continue
        info = t.API['classes'][cls._api_name]['members'].get(name)
        if info is None:
            continue
        sig = inspect.signature(inspect.unwrap(fn)).parameters
        params = [p for p in sig if p != 'self']
        # the stand-in's parameters start with the names of one real overload; any further ones have defaults
        # (they serve another overload or version; calls no overload of this version takes are refused by the
        # overload check the module wraps around every modeled method)
        matched = [o for o in info['overloads'] if params[:len(o)] == o]
        if not matched or any(sig[p].default is inspect.Parameter.empty for p in params[len(max(matched, key=len)):]):
            bad.append([cname, name, params, info['overloads']])
print(json.dumps(bad))
""")
    assert json.loads(out) == []


@pytest.mark.slow
@pytest.mark.skipif(not MIRROR.is_dir(), reason="needs a fetched mirror of github.com/NVIDIA/TensorRT")
def test_the_committed_data_is_what_the_generator_makes_from_the_sources(tmp_path: Path) -> None:
    sys.path.insert(0, str(STANDIN))
    try:
        import generate_api
    finally:
        sys.path.remove(str(STANDIN))
    for version, tag in TAGS.items():
        assert generate_api.generate(MIRROR, version, tag) == API[version], version
