"""argparse ``type=`` validators shared by the CLI and the pytest options, so a bad value is
rejected at parse time with the same words everywhere (CLI: exit 2; pytest: a usage error, exit 4).

Each raises ``argparse.ArgumentTypeError`` saying what is wrong and what to give instead.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from mapgate.decision import PRECISIONS



def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def target(text: str) -> str:
    """``BACKEND`` or ``BACKEND:PRECISION`` (the backend's name is checked against the installed
    backends later, where the list of known ones can be printed)."""
    backend, sep, precision = text.strip().partition(":")
    if not backend or (sep and precision not in PRECISIONS) or text != text.strip():
        raise argparse.ArgumentTypeError(
            f"expected BACKEND or BACKEND:PRECISION with precision {', '.join(PRECISIONS)} "
            f"(e.g. onnxruntime or tflite:int8), got {text!r}")
    return text


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("expected a folder, got an empty value")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"folder {text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("expected a file, got an empty value")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text} does not exist")
    return path


def coco_root(text: str) -> Path:
    """A COCO layout: ``DIR/val2017/`` (its annotation file, ``DIR/annotations/instances_val2017.json``
    unless ``--annotations`` names another, is checked when the data set is opened)."""
    root = existing_dir(text)
    if not (root / "val2017").is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a COCO layout: {root / 'val2017'} missing (expected "
                                         f"{text}/val2017/*.jpg and {text}/annotations/instances_val2017.json, or "
                                         "another annotation file named by --annotations)")
    return root


def one_line(text: str) -> str:
    """A name printed in reports: one line of text, not empty."""
    if not text.strip() or any(ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError(f"expected one line of text, got {text!r}")
    return text


def output_dir(text: str) -> Path:
    """A folder mapgate may write into: existing and writable, or creatable below a writable folder."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder, got an empty value")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (it is created if missing)")
    _writable(_nearest_existing(path), text)
    return path


def output_file(text: str) -> Path:
    """A file mapgate may (re)write: not a folder, in a writable (or creatable) folder."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got an empty value")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name such as {text}/metrics.json")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {parent} is a file, not a folder")
    _writable(parent, text)
    return path


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path, text: str) -> None:
    # trying beats os.access: root passes access() on read-only file systems and sysfs
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mapgate-write-test-"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {folder} is not writable "
                                         f"({exc.strerror or exc}); choose another folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {folder} is not writable; choose another folder")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def shard_spec(text: str) -> tuple[int, int]:
    """``I/N``: shard I (1-based) of N."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 2/4, got {text!r}") from None
    if not sep or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}")
    return i, n
