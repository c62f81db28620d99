"""A backend is one file declaring its own facts; everything else about it is derived.

The central test drops a new backend module into a copy of the package, with no other edit,
and finds it in `mapgate models`, the framework versions of cache keys, env.json, the pytest
markers, ``can_make``, and a real gate run. The others check that what the bundled backends
declare is what the rest of mapgate uses (install hints, versions, extras, markers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from mapgate.backends import all_backends, get_backend, marker_for, markers
from mapgate.backends.base import BackendFacts
from mapgate.errors import BackendUnavailable
from mapgate.gate import environment, framework_versions
from mapgate.optional import require, version_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mapgate"

# A complete backend in one file: ONNX Runtime under another name, building from the model's ONNX,
# declaring a module (tqdm) that no other backend declares so its version is traceable.
PROBE_BACKEND = '''
"""A backend added as one file (written by tests/test_backend_registry.py)."""
from mapgate.backends.base import BackendFacts, DeclaredBackend, Runner


class ProbeRunner(Runner):
    backend = "zzprobe"

    def __init__(self, model, precision, ctx):
        super().__init__()
        self.model, self.precision, self.ctx = model, precision, ctx

    def activate_impl(self):
        ort = BACKEND.facts.require("onnxruntime")
        self.artifact = BACKEND.facts.artifact_for(self.model, f"zzprobe:{self.precision}", self.ctx)
        self.session = ort.InferenceSession(str(self.artifact), providers=["CPUExecutionProvider"])

    def infer_impl(self, batch):
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.session.get_inputs()[0].name: batch})))


class ProbeBackend(DeclaredBackend):
    facts = BackendFacts(name="zzprobe", precisions=("fp32",), modules=("onnxruntime", "tqdm"), extra="zzprobe",
                         distributions={"tqdm": ("tqdm",)}, builds_from_onnx=True,
                         marker_help="the registry test's one-file backend")

    def runner(self, model, precision, ctx):
        return ProbeRunner(model, precision, ctx)


BACKEND = ProbeBackend()
'''

PROBE_SCRIPT = '''
import json, sys
from pathlib import Path
import mapgate
from mapgate.backends import get_backend, marker_for, markers
from mapgate.dataset import CocoDataset
from mapgate.catalog import DEMO_MANIFEST, load_models
from mapgate.gate import Gate, framework_versions

work = Path(sys.argv[1])
models = load_models([DEMO_MANIFEST, work / "extra.toml"])
gate = Gate(models=models, dataset=CocoDataset(max_images=3), engines_dir=work / "engines",
            reports_dir=work / "reports", progress=False)
probe = gate.side("my-yolox", "zzprobe:fp32")
ref = gate.side("my-yolox")  # ONNX Runtime on the original ONNX: the same network, the same runtime
print(json.dumps({
    "package": mapgate.__file__,
    "framework_versions": framework_versions(),
    "env": json.loads(gate.write_env().read_text()),
    "markers": markers(), "marker_for": marker_for("zzprobe:fp32"),
    "can_make_onnx_model": get_backend("zzprobe").facts.can_make(models["my-yolox"], "zzprobe:fp32"),
    "can_make_tflite_model": get_backend("zzprobe").facts.can_make(models["ssd_mobilenet_v1_quant_coco"], "zzprobe:fp32"),
    "identity": probe.identity, "same_detections": probe.detections == ref.detections,
    "n_detections": len(probe.detections), "AP": probe.metrics.stats["AP"],
}))
'''


@pytest.fixture(scope="module")
def package_with_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of mapgate with one new file, mapgate/backends/zzprobe.py, and the bundled fixtures."""
    root = tmp_path_factory.mktemp("copy")
    shutil.copytree(PACKAGE, root / "mapgate", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "fixtures").symlink_to(ROOT / "fixtures")  # the bundled data, read-only
    (root / "mapgate" / "backends" / "zzprobe.py").write_text(PROBE_BACKEND)
    return root


def _run(root: Path, *args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy shadows the installed mapgate
    proc = subprocess.run([sys.executable, *args], cwd=cwd or root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def probe_manifest(tmp_path_factory: pytest.TempPathFactory, manifest_copy) -> Path:
    work = tmp_path_factory.mktemp("work")
    manifest_copy(work / "extra.toml", "yolox-nano-416",
                   {"[models.yolox-nano-416": "[models.my-yolox",
                    'optimized = ["tflite:fp16", "tflite:int8", "openvino:fp32", "openvino:fp16", "tensorrt:fp32", '
                    '"tensorrt:fp16", "tensorrt:int8"]': 'optimized = ["zzprobe:fp32"]'})
    return work


@pytest.mark.slow
def test_a_backend_dropped_in_as_one_file_is_everywhere(package_with_probe: Path, probe_manifest: Path,
                                                        require_backend) -> None:
    require_backend("onnxruntime")
    (probe_manifest / "run.py").write_text(PROBE_SCRIPT)
    got = json.loads(_run(package_with_probe, str(probe_manifest / "run.py"), str(probe_manifest)).splitlines()[-1])
    assert got["package"].startswith(str(package_with_probe))  # the copy ran, not the installed package
    tqdm_version = metadata.version("tqdm")
    # cache keys and env.json carry its frameworks' versions, with no hand list edited
    assert got["framework_versions"]["tqdm"] == tqdm_version
    assert got["env"]["versions"]["tqdm"] == tqdm_version
    assert got["identity"]["frameworks"] == {"onnxruntime": metadata.version("onnxruntime"), "tqdm": tqdm_version}
    # its marker, and its targets get the model's ONNX because it says it builds from ONNX
    assert got["markers"]["zzprobe"] == "the registry test's one-file backend" and got["marker_for"] == "zzprobe"
    assert got["can_make_onnx_model"] and not got["can_make_tflite_model"]
    # and it really ran: the same ONNX on the same runtime gives the reference's detections
    assert got["n_detections"] > 0 and got["same_detections"] and got["AP"] > 0


@pytest.mark.slow
def test_a_dropped_in_backend_is_listed_by_mapgate_models(package_with_probe: Path, probe_manifest: Path) -> None:
    out = _run(package_with_probe, "-m", "mapgate.cli", "models", "--models-file", str(probe_manifest / "extra.toml"))
    target_line = next(line for line in out.splitlines() if "-> zzprobe:fp32" in line)
    assert "converted" in target_line and "unknown backend" not in target_line
    backend_line = next(line for line in out.splitlines() if line.startswith("zzprobe "))
    assert "fp32" in backend_line and "(from ONNX)" in backend_line


def test_a_dropped_in_backend_registers_its_pytest_marker(package_with_probe: Path, tmp_path: Path) -> None:
    out = _run(package_with_probe, "-m", "pytest", "--markers", "-p", "no:cacheprovider",  # the plugin loads by its pytest11 entry point
               cwd=tmp_path)
    assert "@pytest.mark.zzprobe: the registry test's one-file backend" in out
    assert "@pytest.mark.openvino:" in out and "@pytest.mark.tensorrt: needs TensorRT and a CUDA device" in out


# ------------------------------------------------------------ what the bundled backends declare


def test_every_bundled_backend_declares_its_facts() -> None:
    backends = all_backends()
    assert {"onnxruntime", "opencv", "openvino", "tensorrt", "tf", "tflite"} <= set(backends)
    for name, backend in backends.items():
        facts = backend.facts
        assert isinstance(facts, BackendFacts) and facts.name == name == backend.name
        assert facts.modules and facts.install_hint and facts.marker
        assert tuple(backend.original_formats) == facts.original_formats


def test_every_declared_extra_is_in_pyproject_and_in_all() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    in_all = extras["all"][0].split("[")[1].rstrip("]").split(",")
    for backend in all_backends().values():
        extra = backend.facts.extra
        if extra is None:  # a core dependency (opencv)
            continue
        assert extra in extras and extra in in_all, f"{backend.name}: extra {extra!r}"
        assert f"mapgate[{extra}]" in backend.facts.install_hint or backend.name == "tensorrt"
    assert any(req.startswith("openvino") for req in extras["openvino"])


@pytest.mark.parametrize("backend", sorted(all_backends()))
def test_a_missing_module_names_its_backends_install_hint(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = get_backend(backend).facts
    for module in facts.modules:
        monkeypatch.setitem(sys.modules, module, None)  # as if uninstalled
        with pytest.raises(BackendUnavailable) as exc:
            facts.require(module)
        assert f"'{module}' is not installed" in exc.value.reason and facts.hint_for(module) in exc.value.reason
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, facts.modules[0], None)
    available = get_backend(backend).availability()
    assert not available.ok and facts.hint_for(facts.modules[0]) in available.reason


def test_a_module_outside_every_backend_keeps_a_library_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'mapgate\[tf\]'  \(tf2onnx\)"):
        require("tf2onnx")


def test_framework_versions_are_exactly_what_the_backends_declare() -> None:
    declared = {m for b in all_backends().values() for m in b.facts.version_modules}
    assert set(framework_versions()) == declared
    assert {"cv2", "onnxruntime", "openvino", "tensorflow", "ai_edge_litert", "tensorrt"} <= declared
    assert framework_versions()["openvino"] == version_of("openvino")
    assert set(declared) <= set(environment()["versions"])  # env.json lists every one of them


def test_versions_come_from_the_declared_distributions() -> None:
    # cv2's distribution is opencv-python-headless, not "cv2": only the declaration can say so
    assert version_of("cv2") == metadata.version("opencv-python-headless")


def test_one_marker_per_backend_and_each_target_maps_to_its_backends() -> None:
    assert set(markers()) == {b.facts.marker for b in all_backends().values()}
    assert markers()["tensorrt"] == "needs TensorRT and a CUDA device"
    assert marker_for("tensorrt:int8") == "tensorrt" and marker_for("openvino:fp16") == "openvino"
    assert marker_for("nope:fp32") is None


def test_can_make_follows_builds_from_onnx_not_a_backend_name(bundled_models) -> None:
    yolov3 = bundled_models["yolov3-tiny-416"]  # Darknet: its ONNX is mapgate's conversion
    for backend in all_backends().values():
        for precision in backend.precisions:
            target = f"{backend.name}:{precision}"
            if backend.facts.builds_from_onnx:
                assert backend.facts.can_make(yolov3, target), target
    assert not get_backend("opencv").facts.can_make(yolov3, "opencv:fp32")
    assert not get_backend("tflite").facts.can_make(yolov3, "tflite:fp16")


@pytest.mark.slow
def test_the_gate_case_of_a_target_carries_its_backends_marker(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "openvino",
                           "-p", "no:cacheprovider", "mapgate.toml"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids and all("openvino:" in i for i in ids), proc.stdout + proc.stderr
    assert any("mapgate.toml::yolox-nano-416::openvino:fp32" in i for i in ids)


def test_a_backend_module_without_facts_is_refused_naming_its_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mapgate.backends as registry

    (tmp_path / "zzbroken.py").write_text(textwrap.dedent('''
        class _B:
            name = "zzbroken"
        BACKEND = _B()
    '''))
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    registry.all_backends.cache_clear()
    try:
        with pytest.raises(TypeError, match=r"zzbroken\.py: BACKEND has no 'facts'"):
            registry.all_backends()
    finally:
        monkeypatch.undo()
        sys.modules.pop("mapgate.backends.zzbroken", None)
        registry.all_backends.cache_clear()
