"""Build the TensorRT type stubs `make typecheck` checks against: the published ``tensorrt-stubs``
(generated from the TensorRT 10.13 bindings) plus the small fixes below, kept here as data so each
one is visible and reviewable.

    python typings/build_tensorrt_stubs.py SITE_DIR OUT_DIR

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

STUBS_VERSION = "10.13.0.35.1"

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


def build(site: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    for package in ("tensorrt", "tensorrt_bindings"):
        if not (site / package).is_dir():
            sys.exit(f"{site / package} is missing: pip install --no-deps --target {site} "
                     f"tensorrt-stubs=={STUBS_VERSION}")
        shutil.copytree(site / package, out / package)
    for rel, pattern, replacement, why, expected in FIXES:
        path = out / rel
        text, count = re.subn(pattern, replacement, path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        if count != expected and not (expected == -1 and count > 0):
            sys.exit(f"stub fix {pattern!r} ({why}) matched {count} times in {path}, expected {expected}: "
                     "update typings/build_tensorrt_stubs.py for this tensorrt-stubs release")
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
