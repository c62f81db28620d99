"""The backend protocol: one small interface every inference engine implements.

A backend module (``mapgate/backends/<anything>.py``) defines a module-level ``BACKEND``,
an object with:

* ``name``: the user-facing name (``tf``, ``opencv``, ``onnxruntime``, ``tflite``, ``tensorrt``);
* ``precisions``: the precisions it can run (``("fp32",)``, ``("fp32", "fp16", "int8")`` ...);
* ``original_formats``: manifest formats it runs as the original, i.e. with precision None;
* ``availability() -> Availability``: can it run on this machine, and if not, exactly why;
* ``runner(model, precision, ctx) -> Runner``: a *lazy* runner for that model (building or
  converting happens in ``activate``, not in the constructor).

Runners follow Polygraphy's shape: context managers with ``activate/infer/deactivate``.
``infer`` takes the model's preprocessed input batch and returns raw output tensors **by
name**; the shared postprocessor of the model turns them into detections, so every
backend of a model differs only in the engine.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from mapgate.manifest import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # when not ok: what is missing and how to fix it

    @classmethod
    def yes(cls) -> "Availability":
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)

    @classmethod
    def probe(cls, backend: str, *modules: str) -> "Availability":
        """Available when every module is installed; otherwise the first missing one and its install hint.

        find_spec, not import: listing models must not pay TensorFlow's seconds-long import; a module
        that is installed but broken fails at activate() with the framework's own error.
        """
        import importlib.util

        from mapgate.errors import BackendUnavailable
        from mapgate.optional import require

        for module in modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package missing
                found = False
            if not found:
                try:
                    require(module, backend)  # raises with the install hint
                except BackendUnavailable as exc:
                    return cls.no(exc.reason)
        return cls.yes()


@dataclass
class BuildContext:
    """Where conversions/engines are cached and which images may calibrate INT8."""

    engines_dir: Path
    calib_images: list[Path] = field(default_factory=list)
    evaluated_image_ids: frozenset[int] = frozenset()
    calib_image_ids: frozenset[int] = frozenset()
    max_calib_images: int = 100
    progress: bool = True


def canonical_name(name: str) -> str:
    """One name per tensor across backends: TF and tf2onnx say 'x:0' where TFLite says 'x'."""
    return name[:-2] if name.endswith(":0") else name


class Runner(abc.ABC):
    """Base class: a context manager around ``activate/infer/deactivate``."""

    backend: str = ""
    precision: str = "fp32"

    def __init__(self) -> None:
        self.is_active = False
        self.artifact: Path | None = None  # the file actually executed (model/engine)
        self.artifact_sha256: str | None = None

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def deactivate_impl(self) -> None:  # most runners only drop references
        pass

    def supports_batch(self, n: int) -> bool:
        """Whether one ``infer`` (after ``activate``) takes every batch of 1 to ``n`` images,
        returning outputs whose first dimension is that batch. Default: batch 1 only; runners whose
        engine has a dynamic batch dimension override it (a fixed-batch TensorRT profile would need
        padding of the last batch: h/i10's hook). ``infer`` must return fresh arrays: the detection
        loop postprocesses a batch while the engine runs the next."""
        return n == 1

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__}.infer() called before activate()")
        return {canonical_name(k): v for k, v in self.infer_impl(batch).items()}

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]
    original_formats: tuple[str, ...]

    def availability(self) -> Availability: ...

    def runner(self, model: "ModelSpec", precision: str, ctx: BuildContext) -> Runner: ...
