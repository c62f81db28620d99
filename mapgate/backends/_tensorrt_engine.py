"""TensorRT engines and INT8 calibration tables in the artifact cache (:mod:`mapgate.cache`).

An engine is only valid for the exact ONNX, precision, input shape, TensorRT version and GPU it
was built for (and, for INT8, the calibration data): :class:`EngineSpec` holds those facts as
data and its :meth:`EngineSpec.key_fields` is what the cache keys on. Nothing here imports
TensorRT: the facts from TensorRT/CUDA arrive as :class:`DeviceInfo`, and building and
deserializing are callbacks, so all of it is unit-tested without a GPU.

Adding a key field (say the Polygraphy version, a build mode, per-layer precisions) is one line:
a build setting goes into the dict ``build_recipe()`` returns in tensorrt.py (``recipe`` is keyed
and recorded as a whole); a fact of the machine goes into :meth:`DeviceInfo.as_dict` with a new
field. Either changes the key, so old engines miss and are rebuilt; no schema bump needed.

Files (the cache's layout)::

    <engines_dir>/<model>/tensorrt-<precision>-<key16>.engine (+ .provenance.json)
    <engines_dir>/<model>/tensorrt-calib-<calibkey16>.cache   (+ .provenance.json)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from mapgate.calibration import calibration_set_hash
from mapgate.cache import ArtifactCache, CorruptArtifact, Entry, Slot, cache_key
from mapgate.decision import PRECISIONS
from mapgate.errors import ConfigError, ConversionError
from mapgate.fsutil import part_name, sha256_bytes

log = logging.getLogger(__name__)

ENTROPY_CALIBRATOR_2 = "IInt8EntropyCalibrator2"
# mapgate's own INT8 engines (either typing): the scales are in the Q/DQ ONNX, TensorRT calibrates nothing,
# so no calibration table slot is taken for them (the table machinery serves a calibrating build callback).
EXPLICIT_QDQ = "explicit Q/DQ ONNX (mapgate.convert.ort_quant)"
CALIBRATION_KIND = "tensorrt-calib"
_VERSION_HINT = "The TensorRT build and runtime libraries probably differ in version."

T = TypeVar("T")


class CorruptEngine(CorruptArtifact):
    """A cached engine (or calibration cache) exists but cannot be used: raised by ``load``
    callbacks when deserialization fails, so the cache deletes the file and rebuilds."""


@dataclass(frozen=True)
class DeviceInfo:
    """What TensorRT and CUDA report about the build machine (engines are not portable)."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "7.2" (Xavier), "8.6" (RTX 30xx) ...

    def as_dict(self) -> dict[str, str]:
        return {"tensorrt_version": self.trt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability}


@dataclass(frozen=True)
class CalibrationInfo:
    """The INT8 calibration data as a hashable fact.

    ``set_sha256`` is :func:`calibration_set_digest` of the images in the order they are fed.
    ``preprocess_sha256`` covers the model's preprocessing settings: the same images through a
    changed preprocessing produce different activations and so different scales.
    """

    set_sha256: str
    count: int
    preprocess_sha256: str
    algorithm: str = ENTROPY_CALIBRATOR_2
    batch_size: int = 1

    @property
    def explicit(self) -> bool:
        """The scales come with the ONNX (Q/DQ): TensorRT writes no calibration table."""
        return self.algorithm == EXPLICIT_QDQ

    def key_fields(self) -> dict[str, Any]:
        return {"set_sha256": self.set_sha256, "count": self.count, "preprocess_sha256": self.preprocess_sha256,
                "algorithm": self.algorithm, "batch_size": self.batch_size}

    def record(self) -> dict[str, Any]:
        """Provenance of an engine whose calibration is explicit (no table)."""
        return {"key": None, "set_sha256": self.set_sha256, "count": self.count, "algorithm": self.algorithm,
                "preprocess_sha256": self.preprocess_sha256, "cache_file": None, "cache_sha256": None,
                "cache_reused": False}


@dataclass(frozen=True)
class EngineSpec:
    """Everything that determines an engine's bytes (the key) plus where it came from."""

    model: str
    onnx_path: Path
    onnx_sha256: str
    precision: str
    input_shape: tuple[int, ...]
    workspace_mb: int
    device: DeviceInfo
    calibration: CalibrationInfo | None = None
    # Build settings chosen by the backend that change the engine (flags, tf32 ...). JSON-able.
    recipe: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"engine for model {self.model!r}: precision must be one of "
                              f"{', '.join(PRECISIONS)}, got {self.precision!r}")
        if (self.precision == "int8") != (self.calibration is not None):
            raise ConfigError(f"engine for model {self.model!r}: calibration info is required for int8 "
                              f"and meaningless for {self.precision}; got precision={self.precision!r}, "
                              f"calibration={'set' if self.calibration else 'none'}")
        if self.workspace_mb < 1:
            raise ConfigError(f"engine for model {self.model!r}: workspace must be at least 1 MB, "
                              f"got {self.workspace_mb}")

    @property
    def kind(self) -> str:
        return f"tensorrt-{self.precision}"

    def key_fields(self) -> dict[str, Any]:
        """The canonical inputs of the key. The model name and ONNX path are left out on
        purpose: they do not change the engine (a moved ONNX with the same hash is the same)."""
        return {
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            **self.device.as_dict(),
            "workspace_mb": self.workspace_mb,
            "recipe": dict(self.recipe),
            "calibration": self.calibration.key_fields() if self.calibration else None,
        }

    def key(self) -> str:
        return cache_key(self.kind, self.key_fields())

    def calibration_key_fields(self) -> dict[str, Any]:
        """Key of the INT8 calibration cache: the engine key without the precision-only fields
        (precision, workspace, builder flags). The device stays in: NVIDIA does not promise
        that calibration caches carry across TensorRT versions or GPUs, and recalibrating 100
        images is cheap next to an INT8 result skewed by foreign scales."""
        if self.calibration is None:
            raise ConfigError(f"engine for model {self.model!r} ({self.precision}) has no calibration")
        return {
            "onnx_sha256": self.onnx_sha256,
            "input_shape": list(self.input_shape),
            **self.device.as_dict(),
            "calibration": self.calibration.key_fields(),
        }

    def calibration_key(self) -> str:
        return cache_key(CALIBRATION_KIND, self.calibration_key_fields())

    def described(self) -> dict[str, Any]:
        """Provenance fields for people (paths allowed: provenance is not a key)."""
        return {"onnx": {"path": str(self.onnx_path), "sha256": self.onnx_sha256},
                "input_shape": list(self.input_shape), "tensorrt_version": self.device.trt_version,
                "gpu": self.device.gpu_name, "compute_capability": self.device.compute_capability}


@dataclass(frozen=True)
class CalibrationSetDigest:
    sha256: str
    count: int


def calibration_set_digest(images: Iterable[Path]) -> CalibrationSetDigest:
    """:func:`mapgate.calibration.calibration_set_hash` plus the count. The order is kept because it is
    the order TensorRT sees the batches in; callers feed images sorted by file name."""
    paths = list(images)
    return CalibrationSetDigest(calibration_set_hash(paths), len(paths))


@dataclass(frozen=True)
class BuildJob:
    """What a build callback gets.

    ``calibration_cache`` (INT8 only) is a private staging file: it already holds a valid
    cached calibration table when ``calibration_reused`` is true (hand it to Polygraphy's
    ``Calibrator(cache=...)``, which reads it instead of calibrating), and whatever the
    builder leaves there afterwards is validated and published by the cache.
    """

    spec: EngineSpec
    calibration_cache: Path | None = None
    calibration_reused: bool = False


@dataclass
class CacheResult(Entry[T], Generic[T]):
    @property
    def engine_path(self) -> Path:
        return self.path


class EngineCache:
    """Engines and INT8 calibration caches for one ``engines_dir``, in the artifact cache."""

    def __init__(self, root: Path, *, lock_timeout_s: float | None = None) -> None:
        self.cache = ArtifactCache(root, lock_timeout_s=lock_timeout_s)

    def engine_slot(self, spec: EngineSpec) -> Slot:
        return self.cache.slot(spec.model, spec.kind, spec.key_fields(), ".engine")

    def calibration_slot(self, spec: EngineSpec) -> Slot:
        return self.cache.slot(spec.model, CALIBRATION_KIND, spec.calibration_key_fields(), ".cache")

    def engine_path(self, spec: EngineSpec) -> Path:
        return self.engine_slot(spec).path

    def provenance_path(self, spec: EngineSpec) -> Path:
        return self.engine_slot(spec).provenance_path

    def calibration_path(self, spec: EngineSpec) -> Path:
        return self.calibration_slot(spec).path

    def calibration_provenance_path(self, spec: EngineSpec) -> Path:
        return self.calibration_slot(spec).provenance_path

    def check(self, spec: EngineSpec) -> tuple[bool, str]:
        """Whether a usable engine file is cached for ``spec`` (file checks only, no deserialization)."""
        return self.cache.check(self.engine_slot(spec))

    def cached_provenance(self, spec: EngineSpec) -> dict[str, Any] | None:
        """The provenance of a valid cached engine for ``spec``, else None (nothing is deleted)."""
        return self.cache.cached_provenance(self.engine_slot(spec))

    def get_or_build(self, spec: EngineSpec, build: Callable[[BuildJob], bytes],
                     load: Callable[[bytes], T]) -> CacheResult[T]:
        """Return the cached engine for ``spec`` or build, publish and return a new one.

        ``build`` returns the serialized engine; ``load`` turns bytes into the usable object
        and raises :class:`CorruptEngine` when they do not deserialize (the file is then
        deleted and rebuilt). Only one process builds a given key at a time.
        """
        def build_into(tmp: Path) -> dict[str, Any]:
            if spec.calibration is not None and spec.calibration.explicit:
                data, record = build(BuildJob(spec)), spec.calibration.record()
            elif spec.calibration is not None:
                data, record = self._build_with_calibration(spec, spec.calibration, build)
            else:
                data, record = build(BuildJob(spec)), None
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise ConversionError(f"building the {spec.precision} engine for model {spec.model!r} produced no "
                                      "bytes; see the TensorRT log above for the failing layer")
            tmp.write_bytes(bytes(data))
            return {**spec.described(), "precision": spec.precision, "workspace_mb": spec.workspace_mb,
                    "recipe": dict(spec.recipe), "calibration": record}

        entry = self.cache.get_or_build(self.engine_slot(spec), build_into, lambda data, prov: load(data),
                                        hint=_VERSION_HINT)
        return CacheResult(entry.path, entry.provenance, entry.value, entry.built, entry.reason)

    def _build_with_calibration(self, spec: EngineSpec, calibration: CalibrationInfo,
                                build: Callable[[BuildJob], bytes]) -> tuple[bytes, dict[str, Any]]:
        slot = self.calibration_slot(spec)
        # Lock order is always engine lock -> calibration lock, so two builders cannot deadlock.
        with self.cache.lock(slot):
            found, reason = self.cache.verify(slot, read=True)
            cached = found.data if found is not None else None
            if cached is not None and not cached:
                cached, reason = None, f"calibration cache {slot.path.name} is empty"
            if cached is None:
                self.cache.discard(slot, reason)
            staging = slot.dir / part_name(slot.path.name)  # swept like any .part if the run is killed
            if cached is not None:
                staging.write_bytes(cached)
            started = time.monotonic()
            try:
                data = build(BuildJob(spec, calibration_cache=staging, calibration_reused=cached is not None))
                written = staging.read_bytes() if staging.exists() else b""
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staging)
            if written and written != cached:
                self.cache.publish_bytes(slot, written, {
                    **spec.described(), "calibration_set_sha256": calibration.set_sha256,
                    "calibration_count": calibration.count, "algorithm": calibration.algorithm,
                }, time.monotonic() - started)
                final, reused = written, False
            elif cached is not None:
                final, reused = cached, True
            else:
                # Explicitly quantized (Q/DQ) networks need no calibrator, so nothing is written.
                final, reused = b"", False
        record = {
            "key": slot.key,
            "set_sha256": calibration.set_sha256,
            "count": calibration.count,
            "algorithm": calibration.algorithm,
            "preprocess_sha256": calibration.preprocess_sha256,
            "cache_file": slot.path.name if final else None,
            "cache_sha256": sha256_bytes(final) if final else None,
            "cache_reused": reused,
        }
        return data, record
