"""The TensorRT engine cache: keyed, provenance-checked, atomic and safe across processes.

An engine is only valid for the exact ONNX, precision, input shape, TensorRT version and GPU
it was built for (and, for INT8, the calibration data). Every engine therefore lives under a
key that hashes all of those, with a JSON provenance file beside it::

    <engines_dir>/<model>/<precision>-<key16>.engine
    <engines_dir>/<model>/<precision>-<key16>.json
    <engines_dir>/<model>/calib-<calibkey16>.cache      (INT8 calibration cache)
    <engines_dir>/<model>/calib-<calibkey16>.json

A cached file is reused only if its provenance exists, parses, names the same key and
records the file's exact size and sha256, and (for engines) it deserializes. Anything else
is deleted and rebuilt, never silently reused. Files are published with
:func:`mapgate.fsutil.atomic_path` (a killed build leaves nothing half-written) under an
``fcntl.flock`` lock, so two pytest-xdist workers asking for the same engine build it once.

Nothing here imports TensorRT: the facts that come from TensorRT/CUDA arrive as
:class:`DeviceInfo`, and building/deserializing are callbacks, so all of it is unit-testable
on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

from mapgate import __version__ as MAPGATE_VERSION
from mapgate.errors import ConfigError, ConversionError, DataError
from mapgate.fsutil import atomic_path, file_lock, sha256_bytes, sha256_json

log = logging.getLogger(__name__)

# Bump when the meaning of the key or the provenance layout changes: old entries then miss.
KEY_SCHEMA = 1
ENTROPY_CALIBRATOR_2 = "IInt8EntropyCalibrator2"
_PRECISIONS = ("fp32", "fp16", "int8")

T = TypeVar("T")


class CorruptEngine(DataError):
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
    ``preprocess_sha256`` covers the model's preprocessing settings: the same images through
    a changed preprocessing produce different activations and so different scales, which the
    ONNX hash alone would not notice.
    """

    set_sha256: str
    count: int
    preprocess_sha256: str
    algorithm: str = ENTROPY_CALIBRATOR_2
    batch_size: int = 1

    def key_fields(self) -> dict[str, Any]:
        return {"set_sha256": self.set_sha256, "count": self.count, "preprocess_sha256": self.preprocess_sha256,
                "algorithm": self.algorithm, "batch_size": self.batch_size}


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
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"engine for model {self.model!r}: precision must be one of "
                              f"{', '.join(_PRECISIONS)}, got {self.precision!r}")
        if (self.precision == "int8") != (self.calibration is not None):
            raise ConfigError(f"engine for model {self.model!r}: calibration info is required for int8 "
                              f"and meaningless for {self.precision}; got precision={self.precision!r}, "
                              f"calibration={'set' if self.calibration else 'none'}")
        if self.workspace_mb < 1:
            raise ConfigError(f"engine for model {self.model!r}: workspace must be at least 1 MB, "
                              f"got {self.workspace_mb}")

    def key_fields(self) -> dict[str, Any]:
        """The canonical inputs of the key. The model name and ONNX path are left out on
        purpose: they do not change the engine (a moved ONNX with the same hash is the same)."""
        return {
            "schema": KEY_SCHEMA,
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            **self.device.as_dict(),
            "workspace_mb": self.workspace_mb,
            "recipe": dict(self.recipe),
            "calibration": self.calibration.key_fields() if self.calibration else None,
        }

    def key(self) -> str:
        return sha256_json(self.key_fields())

    def calibration_key_fields(self) -> dict[str, Any]:
        """Key of the INT8 calibration cache: the engine key without the precision-only fields
        (precision, workspace, builder flags). The device stays in: NVIDIA does not promise
        that calibration caches carry across TensorRT versions or GPUs, and recalibrating 100
        images is cheap next to an INT8 result skewed by foreign scales."""
        if self.calibration is None:
            raise ConfigError(f"engine for model {self.model!r} ({self.precision}) has no calibration")
        return {
            "schema": KEY_SCHEMA,
            "kind": "int8-calibration-cache",
            "onnx_sha256": self.onnx_sha256,
            "input_shape": list(self.input_shape),
            **self.device.as_dict(),
            "calibration": self.calibration.key_fields(),
        }

    def calibration_key(self) -> str:
        return sha256_json(self.calibration_key_fields())


@dataclass(frozen=True)
class CalibrationSetDigest:
    sha256: str
    count: int


def calibration_set_digest(images: Iterable[Path]) -> CalibrationSetDigest:
    """:func:`mapgate.calibration.calibration_set_hash` plus the count. The order is kept because it is
    the order TensorRT sees the batches in; callers feed images sorted by file name."""
    from mapgate.calibration import calibration_set_hash

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
class CacheResult(Generic[T]):
    engine_path: Path
    provenance: dict[str, Any]
    value: T  # whatever ``load`` returned (the deserialized engine for the TensorRT backend)
    built: bool  # True: built in this call; False: reused from the cache
    reason: str  # why it was (re)built, or "cache hit"


def _safe_name(name: str) -> str:
    # Model names become directory names; keep them from escaping engines_dir.
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cleaned if cleaned.strip(".") else "_"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unlink(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            # The engine must be on disk before its provenance says it is.
            os.fsync(f.fileno())


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class EngineCache:
    """Engines and INT8 calibration caches for one ``engines_dir``."""

    def __init__(self, root: Path, *, lock_timeout_s: float | None = None) -> None:
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s

    # ---- paths -----------------------------------------------------------------------------
    def model_dir(self, spec: EngineSpec) -> Path:
        return self.root / _safe_name(spec.model)

    def engine_path(self, spec: EngineSpec) -> Path:
        return self.model_dir(spec) / f"{spec.precision}-{spec.key()[:16]}.engine"

    def provenance_path(self, spec: EngineSpec) -> Path:
        return self.engine_path(spec).with_suffix(".json")

    def calibration_path(self, spec: EngineSpec) -> Path:
        return self.model_dir(spec) / f"calib-{spec.calibration_key()[:16]}.cache"

    def calibration_provenance_path(self, spec: EngineSpec) -> Path:
        return self.calibration_path(spec).with_suffix(".json")

    @staticmethod
    def _lock_path(artifact: Path) -> Path:
        return artifact.with_name(f".{artifact.name}.lock")

    # ---- validation ------------------------------------------------------------------------
    @staticmethod
    def _read_valid(artifact: Path, provenance_path: Path, key: str,
                    key_fields: Mapping[str, Any], what: str) -> tuple[bytes | None, dict[str, Any] | None, str]:
        """(bytes, provenance, "") when valid, else (None, None, why not). Reads the file once
        and checks the hash of those very bytes, so a concurrent replace cannot slip through."""
        if not artifact.exists():
            return None, None, f"no cached {what}"
        try:
            prov = json.loads(provenance_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None, f"{what} {artifact.name} has no provenance file {provenance_path.name}"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, None, f"provenance {provenance_path.name} is not valid JSON ({exc})"
        if not isinstance(prov, dict):
            return None, None, f"provenance {provenance_path.name} is not a JSON object"
        if prov.get("key") != key or prov.get("key_fields") != json.loads(json.dumps(dict(key_fields))):
            return None, None, f"stale provenance {provenance_path.name}: {_diff(prov.get('key_fields'), key_fields)}"
        recorded = prov.get("file") if isinstance(prov.get("file"), dict) else {}
        data = artifact.read_bytes()
        if len(data) != recorded.get("size"):
            return None, None, (f"{what} {artifact.name} is truncated or altered: {len(data)} bytes on disk, "
                                f"provenance says {recorded.get('size')}")
        if sha256_bytes(data) != recorded.get("sha256"):
            return None, None, f"{what} {artifact.name} sha256 differs from its provenance (corrupt or replaced)"
        return data, prov, ""

    def check(self, spec: EngineSpec) -> tuple[bool, str]:
        """Whether a usable engine file is cached for ``spec`` (file checks only, no deserialization)."""
        data, _, reason = self._read_valid(self.engine_path(spec), self.provenance_path(spec), spec.key(),
                                           spec.key_fields(), "engine")
        return data is not None, reason or "cache hit"

    def cached_provenance(self, spec: EngineSpec) -> dict[str, Any] | None:
        """The provenance of a valid cached engine for ``spec``, else None (nothing is deleted)."""
        _, prov, _ = self._read_valid(self.engine_path(spec), self.provenance_path(spec), spec.key(),
                                      spec.key_fields(), "engine")
        return prov

    # ---- the one entry point ---------------------------------------------------------------
    def get_or_build(self, spec: EngineSpec, build: Callable[[BuildJob], bytes],
                     load: Callable[[bytes], T]) -> CacheResult[T]:
        """Return the cached engine for ``spec`` or build, publish and return a new one.

        ``build`` returns the serialized engine; ``load`` turns bytes into the usable object
        and raises :class:`CorruptEngine` when they do not deserialize (the file is then
        deleted and rebuilt). Only one process builds a given key at a time.
        """
        engine, prov_path = self.engine_path(spec), self.provenance_path(spec)
        key, fields = spec.key(), spec.key_fields()

        # Fast path without the lock: the common case is a valid engine many workers read.
        data, prov, reason = self._read_valid(engine, prov_path, key, fields, "engine")
        if data is not None and prov is not None:
            try:
                return CacheResult(engine, prov, load(data), built=False, reason="cache hit")
            except CorruptEngine as exc:
                reason = f"engine {engine.name} failed to deserialize ({exc})"

        with file_lock(self._lock_path(engine), self.lock_timeout_s):
            # Re-check: another worker may have built it while we waited.
            data, prov, locked_reason = self._read_valid(engine, prov_path, key, fields, "engine")
            if data is not None and prov is not None:
                try:
                    return CacheResult(engine, prov, load(data), built=False, reason="cache hit")
                except CorruptEngine as exc:
                    locked_reason = f"engine {engine.name} failed to deserialize ({exc})"
            reason = locked_reason or reason
            if engine.exists() or prov_path.exists():
                log.warning("discarding cached engine %s: %s", engine, reason)
            _unlink(engine, prov_path)
            log.info("building %s engine for %s (%s)", spec.precision, spec.model, reason)

            started = time.monotonic()
            calib_record: dict[str, Any] | None = None
            if spec.calibration is not None:
                data, calib_record = self._build_with_calibration(spec, spec.calibration, build)
            else:
                data = build(BuildJob(spec))
            seconds = time.monotonic() - started
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise ConversionError(f"building the {spec.precision} engine for model {spec.model!r} produced no "
                                      "bytes; see the TensorRT log above for the failing layer")
            data = bytes(data)
            try:
                value = load(data)
            except CorruptEngine as exc:
                raise ConversionError(
                    f"the {spec.precision} engine just built for model {spec.model!r} does not deserialize ({exc}); "
                    "it was not cached. The TensorRT build and runtime libraries probably differ in version."
                ) from exc
            prov = self._engine_provenance(spec, data, seconds, calib_record)
            _write_atomic(engine, data)
            _write_json_atomic(prov_path, prov)
            return CacheResult(engine, prov, value, built=True, reason=reason)

    # ---- INT8 calibration cache ------------------------------------------------------------
    def _build_with_calibration(self, spec: EngineSpec, calibration: CalibrationInfo,
                                build: Callable[[BuildJob], bytes]) -> tuple[bytes, dict[str, Any]]:
        cache, cache_prov = self.calibration_path(spec), self.calibration_provenance_path(spec)
        ckey, cfields = spec.calibration_key(), spec.calibration_key_fields()
        # Lock order is always engine lock -> calibration lock, so two builders cannot deadlock.
        with file_lock(self._lock_path(cache), self.lock_timeout_s):
            cached, prov, reason = self._read_valid(cache, cache_prov, ckey, cfields, "calibration cache")
            if cached is not None and not cached:
                cached, reason = None, f"calibration cache {cache.name} is empty"
            if cached is None:
                if cache.exists() or cache_prov.exists():
                    log.warning("discarding calibration cache %s: %s", cache, reason)
                _unlink(cache, cache_prov)
            staging = cache.with_name(f".{cache.name}.{os.getpid()}.staging")
            _unlink(staging)
            if cached is not None:
                staging.write_bytes(cached)
            try:
                data = build(BuildJob(spec, calibration_cache=staging, calibration_reused=cached is not None))
                written = staging.read_bytes() if staging.exists() else b""
            finally:
                _unlink(staging)
            if written and written != cached:
                _write_atomic(cache, written)
                _write_json_atomic(cache_prov, self._calibration_provenance(spec, calibration, written))
                final, reused = written, False
            elif cached is not None:
                final, reused = cached, True
            else:
                # Explicitly quantized (Q/DQ) networks need no calibrator, so nothing is written.
                final, reused = b"", False
        record = {
            "key": ckey,
            "set_sha256": calibration.set_sha256,
            "count": calibration.count,
            "algorithm": calibration.algorithm,
            "preprocess_sha256": calibration.preprocess_sha256,
            "cache_file": cache.name if final else None,
            "cache_sha256": sha256_bytes(final) if final else None,
            "cache_reused": reused,
        }
        return data, record

    # ---- provenance ------------------------------------------------------------------------
    def _engine_provenance(self, spec: EngineSpec, data: bytes, seconds: float,
                           calibration: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "schema": KEY_SCHEMA,
            "kind": "tensorrt-engine",
            "key": spec.key(),
            "key_fields": spec.key_fields(),
            "model": spec.model,
            "onnx": {"path": str(spec.onnx_path), "sha256": spec.onnx_sha256},
            "precision": spec.precision,
            "input_shape": list(spec.input_shape),
            "tensorrt_version": spec.device.trt_version,
            "gpu": spec.device.gpu_name,
            "compute_capability": spec.device.compute_capability,
            "workspace_mb": spec.workspace_mb,
            "recipe": dict(spec.recipe),
            "calibration": calibration,
            "built_at": _now(),
            "build_seconds": round(seconds, 3),
            "mapgate_version": MAPGATE_VERSION,
            "file": {"name": self.engine_path(spec).name, "sha256": sha256_bytes(data), "size": len(data)},
        }

    def _calibration_provenance(self, spec: EngineSpec, calibration: CalibrationInfo, data: bytes
                                ) -> dict[str, Any]:
        return {
            "schema": KEY_SCHEMA,
            "kind": "int8-calibration-cache",
            "key": spec.calibration_key(),
            "key_fields": spec.calibration_key_fields(),
            "model": spec.model,
            "onnx": {"path": str(spec.onnx_path), "sha256": spec.onnx_sha256},
            "input_shape": list(spec.input_shape),
            "tensorrt_version": spec.device.trt_version,
            "gpu": spec.device.gpu_name,
            "compute_capability": spec.device.compute_capability,
            "calibration_set_sha256": calibration.set_sha256,
            "calibration_count": calibration.count,
            "algorithm": calibration.algorithm,
            "created_at": _now(),
            "mapgate_version": MAPGATE_VERSION,
            "file": {"name": self.calibration_path(spec).name, "sha256": sha256_bytes(data), "size": len(data)},
        }


def _diff(old: Any, new: Mapping[str, Any]) -> str:
    """Which key fields changed, for the rebuild message."""
    if not isinstance(old, dict):
        return "it records no key fields"
    new = json.loads(json.dumps(dict(new)))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(changed) if changed else "its key differs"
