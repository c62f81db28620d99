"""What the TensorRT docs and the type check claim is what the code and the build files do.

* ``make typecheck`` checks every ``tensorrt-stubs`` release ``typings/build_tensorrt_stubs.py`` has
  fixes for (the oldest and the newest on the package index), over every TensorRT module;
* the Polygraphy floor the docs give is the one pyproject pins and the backend enforces;
* the engine key's TensorRT version is documented as the imported module's, not pip metadata's;
* the JetPack table gives each JetPack's CUDA and TensorRT (6.0: 12.2 / 8.6; 6.1, 6.2: 12.6 / 10.3).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JETSON = (ROOT / "docs" / "jetson.md").read_text(encoding="utf-8")
CONTRACT = (ROOT / "docs" / "tensorrt-contract.md").read_text(encoding="utf-8")


def _make_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    (value,) = re.findall(rf"^{name}\s*[:?]?=\s*(.*)$", text, flags=re.MULTILINE)
    return value.split()


def _stub_builder():  # noqa: ANN202 - a script, loaded by path
    spec = importlib.util.spec_from_file_location("build_tensorrt_stubs", ROOT / "typings" / "build_tensorrt_stubs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_typecheck_checks_the_oldest_and_newest_stubs_release() -> None:
    versions = _make_variable("TENSORRT_STUBS_VERSIONS")
    assert versions == list(_stub_builder().STUBS_VERSIONS), "the Makefile and the stub builder must list the same releases"
    majors_minors = {tuple(v.split(".")[:2]) for v in versions}
    assert len(majors_minors) >= 2, f"one stubs release only: {versions}"
    for v in versions:
        assert v in CONTRACT, f"docs/tensorrt-contract.md does not name tensorrt-stubs {v}"


def test_make_typecheck_covers_every_tensorrt_module() -> None:
    checked = set(_make_variable("TYPECHECKED"))
    assert {"mapgate/backends/tensorrt.py", "mapgate/backends/_tensorrt_engine.py",
            "mapgate/convert/trt_onnx.py", "mapgate/calibration.py"} <= checked


def test_the_stub_builder_refuses_a_release_it_has_no_checked_fixes_for(tmp_path: Path) -> None:
    builder = _stub_builder()
    with pytest.raises(SystemExit, match="not one of the checked releases"):
        builder.build(tmp_path / "site", tmp_path / "out", "10.3.0.26.1")
    (tmp_path / "site" / "tensorrt_stubs-10.13.0.35.1.dist-info").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds tensorrt-stubs 10.13.0.35.1, not 10.8.0.43.1"):
        builder.build(tmp_path / "site", tmp_path / "out", "10.8.0.43.1")


def test_the_docs_give_the_polygraphy_floor_that_is_pinned_and_enforced() -> None:
    from mapgate.backends import tensorrt as trt_backend

    floor = ".".join(map(str, trt_backend.MIN_POLYGRAPHY_VERSION))
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"polygraphy>={floor},' in pyproject
    for name, text in (("docs/jetson.md", JETSON), ("docs/tensorrt-contract.md", CONTRACT)):
        assert f">= {floor}" in text, f"{name} does not give the Polygraphy floor {floor}"
        stale = re.findall(r">=\s?0\.49\.\d+", text)
        assert not stale, f"{name} still gives an old Polygraphy floor: {stale}"


def test_the_contract_names_the_imported_module_as_the_tensorrt_version_source() -> None:
    row = next(line for line in CONTRACT.splitlines() if line.startswith("| `tensorrt.__version__`"))
    assert "imported module" in row and "never pip metadata" in row


@pytest.mark.parametrize("jetpack,cuda,tensorrt", [("6.0", "12.2", "8.6"), ("6.1, 6.2", "12.6", "10.3")])
def test_the_jetpack_table_gives_cuda_and_tensorrt(jetpack: str, cuda: str, tensorrt: str) -> None:
    header = next(line for line in JETSON.splitlines() if line.startswith("| JetPack |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in JETSON.splitlines() if re.match(rf"\|\s*{re.escape(jetpack)}\s*\|", line))
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
    assert cells.get("CUDA") == cuda and cells.get("TensorRT") == tensorrt, cells
