"""Failures inside third-party libraries (ONNX Runtime's quantizer, tf2onnx, onnx, OpenVINO, OpenCV...)
as one mapgate line: the model, the step, the library and the first line of its message. The full
traceback goes to a file the line names, never to the terminal or the JUnit message.

Also decides which failures are the inputs' fault (a converter that rejects this model: the same
inputs fail the same way next time, so the cache remembers them) and which the environment's (a
missing package, a full disk, no memory, Ctrl-C: retried on the next run).
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import packages_distributions
from types import TracebackType

from mapgate.errors import BackendUnavailable, MapgateError, StorageError

# Not the inputs' fault: the same conversion may well succeed on the next run.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (ImportError, OSError, MemoryError, BackendUnavailable,
                                                       StorageError)
MESSAGE_CHARS = 240  # of the library's own message: JUnit keeps 500 characters of a message attribute
_OWN = ("mapgate", "_pytest", "pytest", "pluggy")


def is_environment(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the environment's doing, not the inputs'."""
    seen: BaseException | None = exc
    while seen is not None:
        if not isinstance(seen, Exception) or isinstance(seen, ENVIRONMENT_ERRORS):
            return True
        seen = seen.__cause__
    return False


def library_of(exc: BaseException) -> str | None:
    """The third-party package mapgate called when ``exc`` happened: the outermost frame of its
    traceback in an installed distribution other than mapgate, else the package defining its type."""
    installed = packages_distributions()
    for frame_module in _frame_modules(exc.__traceback__):
        top = frame_module.partition(".")[0]
        if top in installed and top not in _OWN:
            return top
    top = type(exc).__module__.partition(".")[0]
    if top in ("builtins", *_OWN) or top in sys.stdlib_module_names:
        return None
    return top


def _frame_modules(tb: TracebackType | None) -> list[str]:
    names = []
    while tb is not None:
        names.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return names


def first_line(exc: BaseException) -> str:
    """``Type: first non-empty line of the message`` (cut to MESSAGE_CHARS)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else "no message"
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + "..."
    return f"{type(exc).__name__}: {text}"


def third_party_message(model: str, step: str, exc: BaseException) -> str:
    """One line: ``model 'M', STEP: LIBRARY failed: Type: message``. A mapgate error says it already."""
    if isinstance(exc, MapgateError):
        return " ".join(str(exc).split())
    library = library_of(exc)
    where = f"{library} failed" if library else "failed"
    return f"model {model!r}, {step}: {where}: {first_line(exc)}"


def traceback_lines(exc: BaseException) -> list[str]:
    """The full traceback (causes included), one string per line, for the file the message names."""
    return "".join(traceback.format_exception(exc)).splitlines()
