"""The backend protocol: one small interface every inference engine implements.

A backend module (``mapgate/backends/<anything>.py``) defines a module-level ``BACKEND``,
an object with:

* ``facts``: a :class:`BackendFacts`, everything the rest of mapgate needs to know about it
  without running it: its name and precisions, the original formats it runs, the Python
  modules it imports, the distributions their versions are read from, the install hint and
  pyproject extra, whether it builds from the model's ONNX, its pytest marker. Availability
  messages, cache keys, ``env.json``, ``mapgate models``, ``can_make`` and the pytest markers
  are all derived from these, so adding a backend is one file;
* ``name``/``precisions``/``original_formats`` (from the facts: :class:`DeclaredBackend` does it);
* ``availability() -> Availability``: can it run on this machine, and if not, exactly why
  (default: every declared module is installed);
* ``runner(model, precision, ctx) -> Runner``: a *lazy* runner for that model (building or
  converting happens in ``activate``, not in the constructor);
* optionally ``identity(model, precision, ctx) -> dict``: what identifies its engine for the
  detection cache when the artifact hash and framework versions do not tell enough;
* optionally ``describe() -> str`` (one line for ``mapgate models``) and
  ``precision_availability(precision) -> Availability`` (a precision this device cannot run,
  or runs differently, e.g. fp16 on a CPU without native fp16).

Runners follow Polygraphy's shape: context managers with ``activate/infer/deactivate``.
``infer`` takes the model's preprocessed input batch and returns raw output tensors **by
name**; the shared postprocessor of the model turns them into detections, so every
backend of a model differs only in the engine.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from mapgate.decision import PRECISIONS
from mapgate.convert import BuildContext, artifact_for, artifact_identity, can_make
from mapgate.optional import require, version_of

__all__ = ["PRECISIONS", "Availability", "Backend", "BackendFacts", "BuildContext", "DeclaredBackend", "Runner",
           "artifact_for", "artifact_identity", "canonical_name"]

if TYPE_CHECKING:
    from mapgate.manifest import ModelSpec



@dataclass(frozen=True)
class BackendFacts:
    """What a backend declares about itself; everything else about it is derived from these."""

    name: str  # the user-facing name, the part before ':' in a target
    precisions: tuple[str, ...]  # what it runs as BACKEND:PRECISION
    modules: tuple[str, ...]  # Python modules it imports; all must be installed for it to run
    extra: str | None = None  # the pyproject extra that installs it (None: a core dependency)
    install_hint: str = ""  # how to install it (default: pip install 'mapgate[<extra>]')
    # module -> distributions its version is read from (default: the module's own name)
    distributions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    module_hints: Mapping[str, str] = field(default_factory=dict)  # a module needing another hint
    original_formats: tuple[str, ...] = ()  # manifest formats it runs as the original (precision None)
    # True: its targets run the model's ONNX (the original or mapgate's conversion of it) unless a
    # converter route or a prebuilt file makes something else, as tensorrt: and openvino: do
    builds_from_onnx: bool = False
    marker: str = ""  # its pytest marker (default: the name); each of its gate cases carries it
    marker_help: str = ""  # what the marker means in `pytest --markers`
    # modules whose versions identify its engines in cache keys (default: all of ``modules``)
    version_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"backend {self.name!r}: unknown precision(s) {bad}; known: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "distributions", MappingProxyType(dict(self.distributions)))
        object.__setattr__(self, "module_hints", MappingProxyType(dict(self.module_hints)))
        if not self.marker:
            object.__setattr__(self, "marker", self.name)
        if not self.marker_help:
            object.__setattr__(self, "marker_help", f"runs on the {self.name} backend (needs {', '.join(self.modules)})")
        if not self.install_hint:
            object.__setattr__(self, "install_hint", f"pip install 'mapgate[{self.extra}]'" if self.extra
                               else f"pip install {' '.join(self.modules)}")
        if self.version_modules is None:
            object.__setattr__(self, "version_modules", self.modules)

    def declares(self, module: str) -> bool:
        """Whether ``module`` (or its top-level package: ``ai_edge_litert.interpreter``) is one of ours."""
        top = module.split(".")[0]
        return any(m == module or m.split(".")[0] == top for m in self.modules)

    def hint_for(self, module: str) -> str:
        return self.module_hints.get(module) or self.module_hints.get(module.split(".")[0]) or self.install_hint

    def distributions_of(self, module: str) -> tuple[str, ...]:
        return self.distributions.get(module) or self.distributions.get(module.split(".")[0]) or ()

    def versions(self) -> dict[str, str | None]:
        """Installed versions of the modules that identify its engines (package metadata: no imports)."""
        return {m: version_of(m, self.distributions_of(m)) for m in self.version_modules or ()}

    def artifact_for(self, model: "ModelSpec", target: str | None, ctx: BuildContext) -> Path:
        """The file one of its targets executes (mapgate.convert.artifact_for with this backend's facts)."""
        return artifact_for(model, target, ctx, from_onnx=self.builds_from_onnx)

    def can_make(self, model: "ModelSpec", target: str) -> bool:
        return can_make(model, target, from_onnx=self.builds_from_onnx)

    def artifact_identity(self, model: "ModelSpec", target: str | None, ctx: BuildContext) -> dict[str, Any]:
        return artifact_identity(model, target, ctx, from_onnx=self.builds_from_onnx)

    def require(self, module: str) -> ModuleType:
        """Import one of its modules, or raise BackendUnavailable naming this backend and its install hint."""
        return require(module, self.name, self.hint_for(module))


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
    def probe(cls, facts: BackendFacts, modules: tuple[str, ...] | None = None) -> "Availability":
        """Available when every declared module is installed; otherwise the first missing one and its install hint.

        find_spec, not import: listing models must not pay TensorFlow's seconds-long import; a module
        that is installed but broken fails at activate() with the framework's own error.
        """
        import importlib.util

        for module in facts.modules if modules is None else modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package missing
                found = False
            if not found:
                return cls.no(f"Python module {module!r} is not installed; fix: {facts.hint_for(module)}")
        return cls.yes()


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
    facts: BackendFacts
    name: str
    precisions: tuple[str, ...]
    original_formats: tuple[str, ...]

    def availability(self) -> Availability: ...

    def runner(self, model: "ModelSpec", precision: str, ctx: BuildContext) -> Runner: ...


class DeclaredBackend:
    """Base for backends: name/precisions/original_formats and availability come from ``facts``."""

    facts: ClassVar[BackendFacts]

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.facts.precisions

    @property
    def original_formats(self) -> tuple[str, ...]:
        return self.facts.original_formats

    def availability(self) -> Availability:
        return Availability.probe(self.facts)

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

