"""Build the TensorRT type stubs `make typecheck` checks against: a published ``tensorrt-stubs``
release (each generated from that TensorRT release's bindings) plus the small fixes below, kept here
as data so each one is visible and reviewable.

    python typings/build_tensorrt_stubs.py SITE_DIR OUT_DIR [VERSION]

VERSION (default: the newest of STUBS_VERSIONS) must be the release installed in SITE_DIR.

SITE_DIR: where ``pip install --no-deps --target SITE_DIR tensorrt-stubs`` put the stubs (they are
installed apart from the venv on purpose: a stubs-only ``tensorrt`` package in site-packages is
importable and would make the TensorRT backend report a TensorRT without ``__version__``).
Every fix must match: a new tensorrt-stubs release that no longer needs one fails loudly here.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

# The releases `make typecheck` checks (its TENSORRT_STUBS_VERSIONS): the oldest and the newest on the
# package index, which has 10.8.0.43.1 to 10.13.0.35.1 and nothing for TensorRT 8.x, 10.0-10.7 or 11.x.
STUBS_VERSIONS = ("10.8.0.43.1", "10.13.0.35.1")
STUBS_VERSION = STUBS_VERSIONS[-1]

# (file, pattern, replacement, why, how many matches expected; -1: at least one)
FIXES: list[tuple[str, str, str, str, int]] = [
    ("tensorrt_bindings/tensorrt.pyi", r"([(,] )in(: )", r"\1in_\2",
     "pybind11-stubgen kept the C++ parameter name `in`, a Python keyword: the file does not parse", 4),
    ("tensorrt_bindings/tensorrt.pyi", r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)",
     "add_scale_nd: a parameter without default after defaulted ones does not parse", 1),
    # The module attribute `tensorrt.bool` (DataType.BOOL, real API) shadows the builtin in every
    # `-> bool` / `: bool` annotation of the stubs, so mypy would see each bool as an invalid type.
    ("tensorrt_bindings/tensorrt.pyi", r"(?<!^)(?<![\w.'])bool\b(?![:'])", "builtins.bool", "bool shadowed by DataType", -1),
    ("tensorrt_bindings/tensorrt.pyi", r"\A", "import builtins\n", "for the bool fix", 1),
    ("tensorrt/__init__.pyi", r"\A", "import builtins\n", "same file layout", 1),
]


def installed_release(site: Path) -> str | None:
    """The tensorrt-stubs release pip put in ``site`` (from its dist-info), or None."""
    found = sorted(site.glob("tensorrt_stubs-*.dist-info"))
    return found[-1].name[len("tensorrt_stubs-"):-len(".dist-info")] if found else None


def build(site: Path, out: Path, version: str = STUBS_VERSION) -> None:
    if version not in STUBS_VERSIONS:
        sys.exit(f"tensorrt-stubs {version} is not one of the checked releases {', '.join(STUBS_VERSIONS)}: "
                 "add it to STUBS_VERSIONS (and the Makefile's TENSORRT_STUBS_VERSIONS) once its fixes are checked")
    installed = installed_release(site)
    if installed != version:
        sys.exit(f"{site} holds tensorrt-stubs {installed or 'nothing'}, not {version}: pip install --no-deps "
                 f"--target {site} tensorrt-stubs=={version}")
    if out.exists():
        shutil.rmtree(out)
    for package in ("tensorrt", "tensorrt_bindings"):
        if not (site / package).is_dir():
            sys.exit(f"{site / package} is missing: pip install --no-deps --target {site} "
                     f"tensorrt-stubs=={version}")
        shutil.copytree(site / package, out / package)
    for rel, pattern, replacement, why, expected in FIXES:
        path = out / rel
        text, count = re.subn(pattern, replacement, path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        if count != expected and not (expected == -1 and count > 0):
            sys.exit(f"stub fix {pattern!r} ({why}) matched {count} times in {path}, expected {expected}: "
                     f"update typings/build_tensorrt_stubs.py for tensorrt-stubs {version}")
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
