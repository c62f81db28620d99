"""The one place a user-supplied name (a model name, a backend target) becomes a path component.

Model names and targets come from manifests and the command line; they are joined under
``engines/``, ``reports/<run-id>/`` and the calibration cache. ``safe_component`` refuses every
name that could leave that folder or hide in it, instead of rewriting it: two different names
must never map to the same folder, and a user must recognise the folder of their model.
"""

from __future__ import annotations

import re

from mapgate.errors import ConfigError

# Windows-reserved device names are refused too: a report tree is often copied to a Windows share.
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LENGTH = 128


def safe_component(name: object, what: str = "name", where: str = "") -> str:
    """Return ``name`` unchanged if it is safe as one path component, else raise ConfigError.

    Refused: non-strings, empty names, ``.``/``..``, a leading ``.`` (hidden, and the cache's
    temporary-file prefix), ``/`` or ``\\`` (so no absolute or nested paths), NUL and other control
    characters, ``:`` (targets are written ``backend-precision``; on Windows ``:`` opens a stream),
    Windows device names and names over 128 characters. ``what`` names the thing (e.g. "model
    name") and ``where`` the file or option it came from, for the message.
    """
    src = f"{where}: " if where else ""
    fix = "use letters, digits, '-', '_' and '.' (not first), e.g. 'yolov3-tiny-416'"
    if not isinstance(name, str):
        raise ConfigError(f"{src}{what} must be a string, got {name!r}")
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator ('/' or '\\'), so it would become a path outside its folder"
    elif _CONTROL.search(name):
        problem = "contains a control character (e.g. NUL or newline)"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden file, and the prefix of temporary files)"
    elif ":" in name:
        problem = "contains ':' (write targets as BACKEND-PRECISION in paths)"
    elif name.split(".")[0].lower() in _RESERVED:
        problem = "is a reserved device name on Windows"
    elif len(name) > MAX_LENGTH:
        problem = f"is {len(name)} characters long (at most {MAX_LENGTH})"
    elif name != name.strip():
        problem = "starts or ends with whitespace"
    if problem:
        raise ConfigError(f"{src}{what} {name!r} {problem}; it becomes a folder name, so {fix}")
    return name


def target_component(target: str, where: str = "") -> str:
    """``BACKEND:PRECISION`` as the folder name reports use (``onnxruntime-int8``), checked safe."""
    return safe_component(target.replace(":", "-"), "target", where)
