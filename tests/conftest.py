"""Shared fixtures of the test suite (the pytest plugin itself is the installed `pytest11` entry point)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mapgate.backends import get_backend
from mapgate.manifest import ModelSpec, load_manifest

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
