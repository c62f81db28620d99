"""Throughput and latency of a runner, measured the same way for every backend.

Two measurements per (model, backend:precision):

* **engine-only** (:func:`engine_only_callable`): a preprocessed batch in, raw outputs out.
  Runners' ``infer()`` returns only once results are on the host (TensorRT synchronizes its
  stream), so the clock read after it is honest for GPU engines too.
* **end-to-end** (:func:`end_to_end_callable`): decode the JPEG, preprocess, infer,
  postprocess into COCO records, cycling over the given images; infer and postprocess are the
  detection loop's own step (``detections.detect``).

Both return a :class:`Timed` callable; :func:`measure` runs warm-up rounds, then hands it to
``benchmark.pedantic`` (one call = one round = one batch), and :func:`record` puts images/s,
latency percentiles, batch size, precision, engine hash and the device fingerprint into the
benchmark's ``extra_info``, which pytest-benchmark saves with each run.

Batches larger than one: a batch of N is one ``infer`` when the engine accepts it; engines
with a fixed batch of one (most ONNX/TFLite exports of the bundled models) run N sequential
``infer`` calls instead, and ``extra_info["batching"]`` says which happened. Latencies are
per round, i.e. per batch; images/s counts every image of every timed round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.backends.base import Runner
from mapgate.calibration import image_ids_of
from mapgate.dataset import read_image
from mapgate.detections import detect, prepare
from mapgate.errors import ConfigError
from mapgate.fingerprint import device_fingerprint, fingerprint_id
from mapgate.fsutil import sha256_file
from mapgate.manifest import ModelSpec
from mapgate.preprocess import preprocess

KINDS = ("engine_only", "end_to_end")
DEFAULT_WARMUP_ROUNDS = 3
MAX_ROUNDS = 10_000  # a sub-millisecond engine with --benchmark-max-time 1 must still finish


def percentiles(times_s: Sequence[float], batch_size: int = 1) -> dict[str, float]:
    """Latency percentiles (ms, numpy's linear interpolation) and throughput of timed rounds.

    Each time is one round of ``batch_size`` images; ``images_per_s`` is all images over all
    time (not the mean of per-round rates, which overweights fast rounds).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("percentiles() needs at least one timing")
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("timings must be finite and non-negative")
    ms = t * 1000.0
    total = float(t.sum())
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "images_per_s": (batch_size * t.size / total) if total > 0 else math.inf,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "rounds": int(t.size),
    }


@dataclass
class Timed:
    """A zero-argument callable for ``benchmark.pedantic``, one call per round (one batch).

    It also keeps its own clock: with ``--benchmark-disable`` (or under xdist) pytest-benchmark
    only calls the target once and keeps no stats, and :func:`record` still needs timings.
    """

    fn: Callable[[], Any]
    batch_size: int
    batching: str  # "native": one infer per batch | "sequential": batch_size infers of one
    n_images: int
    times_s: list[float] = field(default_factory=list)

    def __call__(self) -> Any:
        t0 = time.perf_counter()
        out = self.fn()
        self.times_s.append(time.perf_counter() - t0)
        return out


def _batching(runner: Runner, batch: np.ndarray) -> tuple[bool, str]:
    """Whether ``runner`` takes ``batch`` (N > 1) in one infer, judged by trying it once.

    Runners expose no common "input shape", so asking the engine is the only backend-neutral
    test. Any failure means "fixed batch": the sequential fallback then runs batches of one,
    which is what every runner supports, and a genuinely broken runner fails there loudly.
    """
    n = batch.shape[0]
    if n == 1:
        return True, "native"
    try:
        outputs = runner.infer(batch)
    except Exception as exc:  # noqa: BLE001 - engines raise their own types for a shape mismatch
        return False, f"sequential (engine refused a batch of {n}: {type(exc).__name__})"
    leading = {k: v.shape[0] if np.ndim(v) else None for k, v in outputs.items()}
    if outputs and all(d == n for d in leading.values()):
        return True, "native"
    return False, f"sequential (outputs of a batch of {n} have leading dims {sorted(set(map(str, leading.values())))})"


def load_batch(model: ModelSpec, image_paths: Sequence[Path], batch_size: int = 1) -> np.ndarray:
    """The first ``batch_size`` images (cycled if fewer) decoded and preprocessed, stacked."""
    if batch_size < 1:
        raise ConfigError(f"--benchmark-batch-size must be at least 1, got {batch_size}")
    if not image_paths:
        raise ConfigError("benchmark needs at least one image")
    tensors = [preprocess(read_image(image_paths[i % len(image_paths)]), model)[0] for i in range(batch_size)]
    return np.concatenate(tensors, axis=0)


def engine_only_callable(runner: Runner, batch: np.ndarray) -> Timed:
    """One round = the engine on ``batch`` (already preprocessed; its first dim is the batch size)."""
    n = int(batch.shape[0])
    native, how = _batching(runner, batch)
    if native:
        def fn() -> dict[str, np.ndarray]:
            return runner.infer(batch)
    else:
        singles = [np.ascontiguousarray(batch[i : i + 1]) for i in range(n)]  # slicing outside the clock

        def fn() -> dict[str, np.ndarray]:
            out: dict[str, np.ndarray] = {}
            for single in singles:
                out = runner.infer(single)
            return out
    return Timed(fn, n, how, n)


def end_to_end_callable(model: ModelSpec, runner: Runner, image_paths: Sequence[Path],
                        batch_size: int = 1) -> Timed:
    """One round = the next ``batch_size`` images (cycling): read JPEG, preprocess, infer, postprocess."""
    paths = list(image_paths)
    if not paths:
        raise ConfigError("end-to-end benchmark needs at least one image")
    ids = image_ids_of(paths)
    ids = ids if len(ids) == len(paths) else list(range(len(paths)))  # non-COCO names: any id will do
    native, how = _batching(runner, load_batch(model, paths, batch_size)) if batch_size > 1 else (True, "native")
    cursor = 0

    def fn() -> list[dict[str, Any]]:
        nonlocal cursor
        picks = [(cursor + i) % len(paths) for i in range(batch_size)]
        cursor = (cursor + batch_size) % len(paths)
        prepared = [prepare(model, read_image(paths[i]), ids[i]) for i in picks]
        batches = [prepared] if native else [[p] for p in prepared]
        return [r for done in detect(model, runner, batches) for r in done.records]

    return Timed(fn, batch_size, how, len(paths))


def plan_rounds(timed: Timed, *, warmup_rounds: int = DEFAULT_WARMUP_ROUNDS, max_time_s: float = 1.0,
                min_rounds: int = 5) -> int:
    """Run the warm-up rounds (untimed by pytest-benchmark) and size the timed part from them.

    Warm-up absorbs lazy allocation, kernel autotuning and cold caches; the rounds then fill
    about ``max_time_s`` (pytest-benchmark's ``--benchmark-max-time``), at least ``min_rounds``.
    """
    for _ in range(max(warmup_rounds, 1)):
        timed()
    estimate = min(timed.times_s[-max(warmup_rounds, 1):])
    timed.times_s.clear()
    if estimate <= 0:
        return MAX_ROUNDS
    return int(min(MAX_ROUNDS, max(min_rounds, math.ceil(max_time_s / estimate))))


def measure(benchmark: Any, timed: Timed, rounds: int) -> list[float]:
    """Time ``rounds`` rounds through pytest-benchmark; returns the per-round times in seconds."""
    timed.times_s.clear()
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=0, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    data = list(getattr(stats, "data", None) or [])
    # pytest-benchmark's own numbers when it ran; our clock when it is disabled (it then calls once)
    return data if data else list(timed.times_s)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def engine_sha256(runner: Runner) -> str | None:
    """The hash of the file the runner executes (the runner's own, else computed; cached)."""
    if runner.artifact_sha256:
        return runner.artifact_sha256
    if runner.artifact is None or not Path(runner.artifact).is_file():
        return None
    st = Path(runner.artifact).stat()
    return _sha256_cached(str(runner.artifact), st.st_size, st.st_mtime_ns)


def record(benchmark: Any, timed: Timed, times_s: Sequence[float], *, model: ModelSpec, runner: Runner,
           backend: str, precision: str | None, kind: str,
           warmup_rounds: int = DEFAULT_WARMUP_ROUNDS) -> dict[str, Any]:
    """Fill ``benchmark.extra_info`` (saved in the run's JSON) and return it.

    ``precision`` None means the model's original file; it is recorded as ``"orig"``.
    """
    if kind not in KINDS:
        raise ConfigError(f"benchmark kind must be one of {', '.join(KINDS)}, got {kind!r}")
    stats = percentiles(times_s, timed.batch_size)
    fp = device_fingerprint()
    info: dict[str, Any] = {
        "model": model.name,
        "backend": backend,
        "precision": precision or "orig",
        "target": f"{backend}:{precision or 'orig'}",
        "kind": kind,
        "batch_size": timed.batch_size,
        "batching": timed.batching,
        "images_per_s": stats["images_per_s"],
        "latency_p50_ms": stats["p50_ms"],
        "latency_p90_ms": stats["p90_ms"],
        "latency_p99_ms": stats["p99_ms"],
        "latency_max_ms": stats["max_ms"],
        "latency_mean_ms": stats["mean_ms"],
        "rounds": stats["rounds"],
        "warmup_rounds": warmup_rounds,
        "n_images": timed.n_images,
        "engine_sha256": engine_sha256(runner),
        "engine_file": str(runner.artifact) if runner.artifact is not None else None,
        "fingerprint_id": fingerprint_id(fp),
        "fingerprint": fp,
    }
    benchmark.extra_info.update(info)
    return info


# ---- speed beside every dAP ---------------------------------------------------------------
SPEED_IMAGES = 20  # the first evaluation images: a few seconds per comparison, and the count is recorded
SPEED_WARMUP = 1


@dataclass(frozen=True)
class SpeedVsFp32:
    """Engine-only, batch-1 median ms per image of an optimized engine and of its backend's FP32,
    timed in one run on the same images (comparison.json's ``speed``)."""

    fp32_ms: float
    optimized_ms: float
    n_images: int
    backend: str
    fp32_backend: str = ""  # the engine timed as FP32: ``backend``, or the reference's for a vendor file

    @property
    def speedup_vs_fp32(self) -> float:
        """FP32 time / optimized time: below 1 the optimized engine is slower."""
        return self.fp32_ms / self.optimized_ms if self.optimized_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_ms": self.fp32_ms, "optimized_ms": self.optimized_ms,
                "speedup_vs_fp32": self.speedup_vs_fp32, "n_images": self.n_images, "backend": self.backend,
                "fp32_backend": self.fp32_backend or self.backend}


def speed_vs_fp32(fp32: Runner, optimized: Runner, batches: Sequence[np.ndarray], backend: str,
                  warmup: int = SPEED_WARMUP, fp32_backend: str = "") -> SpeedVsFp32:
    """Time two active runners on the same preprocessed batch-1 inputs, the order alternating image
    by image so a shared machine's load falls on both alike; medians, after ``warmup`` untimed
    images each. Both runners are the backend's own (``fp32_backend`` names another FP32 engine when
    the backend has none), with their engine settings (threads included) exactly as the benchmarks
    and the gate run them."""
    if not batches:
        raise ConfigError("speed_vs_fp32 needs at least one image")
    for batch in list(batches)[:max(warmup, 0)]:
        fp32.infer(batch)
        optimized.infer(batch)
    times: dict[str, list[float]] = {"fp32": [], "opt": []}
    runners = {"fp32": fp32, "opt": optimized}
    for k, batch in enumerate(batches):
        for key in (("fp32", "opt") if k % 2 == 0 else ("opt", "fp32")):
            t0 = time.perf_counter()
            runners[key].infer(batch)
            times[key].append(time.perf_counter() - t0)
    return SpeedVsFp32(1000.0 * float(np.median(times["fp32"])), 1000.0 * float(np.median(times["opt"])),
                       len(batches), backend, fp32_backend or backend)
