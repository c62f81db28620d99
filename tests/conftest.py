"""Shared fixtures of the test suite (the pytest plugin itself is the installed `pytest11` entry point)."""

from __future__ import annotations

import os

import re
from pathlib import Path

import pytest

try:  # pytest >= 9.2: node ids are structured (see pytest_collection_modifyitems below)
    from _pytest.nodes import coerce_node_id
except ImportError:  # older pytest reads xdist's own suffix
    coerce_node_id = None

from mapgate.backends import get_backend
from mapgate.manifest import ModelSpec
from mapgate.catalog import load_manifest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = FIXTURES / "models.toml"


@pytest.fixture(scope="session")
def bundled_models() -> dict[str, ModelSpec]:
    """fixtures/models.toml, parsed once per session."""
    return load_manifest(MANIFEST)


def _require_backend(name: str) -> None:
    available = get_backend(name).availability()
    if not available.ok:
        pytest.skip(f"{name}: {available.reason}")


@pytest.fixture(scope="session")
def require_backend():
    """``require_backend(name)`` skips the calling test with the backend's own availability reason."""
    return _require_backend


def _manifest_copy(dest: Path, model: str, replace: dict[str, str] | None = None) -> Path:
    """Write one model's tables of fixtures/models.toml to ``dest`` (a ``models`` symlink beside it
    points at the real fixture files) and ``replace`` applied as text substitutions."""
    text = MANIFEST.read_text(encoding="utf-8")
    header = re.compile(r'^\[models\.(?:"([^"]+)"|([^.\]]+))')
    keep, lines = False, []
    for line in text.splitlines():
        m = header.match(line)
        if m:
            keep = (m.group(1) or m.group(2)) == model
        if keep:
            lines.append(line)
    assert lines, f"model {model!r} not found in {MANIFEST}"
    out = "\n".join(lines) + "\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (dest.parent / "models").exists():  # the entry's relative paths reach the fixtures through a symlink
        (dest.parent / "models").symlink_to(FIXTURES / "models")
    for old, new in (replace or {}).items():
        assert old in out, f"{old!r} not in the {model} entry"
        out = out.replace(old, new)
    dest.write_text(out, encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def manifest_copy():
    """``manifest_copy(dest, model, replace)``: one bundled entry as a standalone manifest (see _manifest_copy)."""
    return _manifest_copy


# ------------------------------------------------------------------------------ the fast tier
# `make check` runs every test not marked slow/accuracy/benchmark and must stay under 2 minutes.
# A test that becomes slow without saying so fails here, so the fast tier cannot rot by accident.
# MAPGATE_FAST_LIMIT_S raises it on a machine shared with other jobs, where wall time says little
FAST_LIMIT_S = float(os.environ.get("MAPGATE_FAST_LIMIT_S", "2.0"))
TIER_MARKERS = ("slow", "accuracy", "benchmark")


def _in_fast_tier(item: pytest.Item) -> bool:
    # timed only in a serial run (`make check`): under `-n 2` a test shares the two cores with a model
    # run on the other worker, so its wall time says nothing about the test itself
    return not hasattr(item.config, "workerinput") and not any(item.get_closest_marker(name) for name in TIER_MARKERS)


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the evaluation, bootstrap and attribution kernels once per
    session, before any test is timed: on a fresh checkout that costs 5-8 s and belongs to no test."""
    from mapgate.attribution import attribute
    from mapgate.bootstrap import paired_bootstrap, per_image_results

    gt = {"images": [{"id": 1, "width": 10, "height": 10}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "person"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.01}]
    side = per_image_results(gt, dets)
    paired_bootstrap(side, side, n_resamples=2)
    attribute(gt, dets, dets)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``xdist_group`` working: loadgroup reads a test's group from an ``@group`` suffix of its node id,
    which xdist still writes to ``item._nodeid``, a field pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386;
    the fix, #1388, writes the structured id as here). Without it a module fixture of a grouped module is
    built once per worker. On workers only (the controller schedules; mapgate's plugin makes it loadgroup
    after the workers' options were sent, so their own ``loadgroup`` flag is False)."""
    if not hasattr(config, "workerinput") or coerce_node_id is None:
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and item.nodeid.rfind("@") <= item.nodeid.rfind("]") and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201 - hook wrapper
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and report.passed and call.duration > FAST_LIMIT_S and _in_fast_tier(item):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {call.duration:.1f} s, over the fast tier's {FAST_LIMIT_S:.0f} s limit "
                           "for a test not marked slow: mark it @pytest.mark.slow (or move a model-on-data test "
                           "under tests/accuracy/) or make it faster")
