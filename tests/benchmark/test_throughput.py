"""Throughput benchmarks: every model x (its original + its optimized targets) x (engine-only, end-to-end).

The matrix is marked ``benchmark`` and runs with ``pytest -m benchmark``; the default run only
has the small unmarked smoke test at the bottom, which exercises the same code path in a few
seconds. Results (images/s, latency p50/p90/p99/max, batch size, engine hash, device
fingerprint) are in each benchmark's ``extra_info``; see docs/benchmarks.md.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mapgate.bench_plugin
from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext, Runner
from mapgate.benchmarking import (
    DEFAULT_WARMUP_ROUNDS,
    end_to_end_callable,
    engine_only_callable,
    load_batch,
    measure,
    plan_rounds,
    record,
)
from mapgate.calibration import calibration_images
from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec

REPO = Path(__file__).resolve().parents[2]
KINDS = ("engine_only", "end_to_end")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The matrix, from the same manifest and --models/--backends selection as the accuracy gate,
    plus each model's original."""
    if "bench_case" not in metafunc.fixturenames:
        return
    from mapgate.backends import marker_for

    session = metafunc.config.mapgate  # type: ignore[attr-defined]
    params = []
    for name, backend, precision in session.benchmark_matrix():
        marks = [pytest.mark.benchmark] + [getattr(pytest.mark, m) for m in [marker_for(backend)] if m]
        for kind in KINDS:  # kind innermost: both measurements of a case share one active runner
            params.append(pytest.param((name, backend, precision, kind), marks=marks,
                                       id=f"{name}-{backend}:{precision or 'orig'}-{kind}"))
    metafunc.parametrize("bench_case", params)


@pytest.fixture(scope="session")
def bench_ctx(mapgate_session: Any) -> BuildContext:
    """Engines are cached where the accuracy gate caches them (--engines-dir)."""
    return BuildContext(engines_dir=Path(mapgate_session.option("engines_dir")), progress=False)


@pytest.fixture(scope="session")
def MODELS(mapgate_session: Any) -> dict[str, ModelSpec]:  # noqa: N802 - reads like the constant it replaced
    return mapgate_session.models


class _OneRunner:
    """Keeps at most one runner active: the matrix has dozens, each may hold a model in memory."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.runner: Runner | None = None

    def get(self, model: ModelSpec, backend_name: str, precision: str | None, ctx: BuildContext,
            batch_size: int) -> Runner:
        key = (model.name, backend_name, precision, batch_size)
        if key != self.key:
            self.close()
            backend = get_backend(backend_name)
            kwargs = {}
            if batch_size > 1 and "batch_size" in inspect.signature(backend.runner).parameters:
                kwargs["batch_size"] = batch_size  # TensorRT builds an engine for the batch
            runner = backend.runner(model, precision, ctx, **kwargs)
            runner.activate()
            self.key, self.runner = key, runner
        assert self.runner is not None
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
        self.key, self.runner = None, None


@pytest.fixture(scope="module")
def runners() -> Iterator[_OneRunner]:
    cache = _OneRunner()
    yield cache
    cache.close()


def _skip_unless_available(backend_name: str) -> None:
    try:
        availability = get_backend(backend_name).availability()
    except ConfigError as exc:  # the backend's module is not in this checkout
        pytest.skip(str(exc))
    if not availability.ok:
        pytest.skip(availability.reason)


def _bench(benchmark: Any, request: pytest.FixtureRequest, runner: Runner, model: ModelSpec, backend: str,
           precision: str | None, kind: str, images: list[Path], batch_size: int,
           timed_rounds: int | None = None) -> dict[str, Any]:
    """The one measuring path of every case (and the smoke test)."""
    if kind == "engine_only":
        timed = engine_only_callable(runner, load_batch(model, images, batch_size))
    else:
        timed = end_to_end_callable(model, runner, images, batch_size)
    planned = plan_rounds(timed, warmup_rounds=DEFAULT_WARMUP_ROUNDS,
                          max_time_s=float(request.config.getoption("benchmark_max_time", 1.0)),
                          min_rounds=int(request.config.getoption("benchmark_min_rounds", 5)))
    if timed_rounds is None:
        # end-to-end covers every image once; engine-only fills --benchmark-max-time
        timed_rounds = math.ceil(len(images) / batch_size) if kind == "end_to_end" else planned
    benchmark.group = f"{kind} {model.name}"
    times = measure(benchmark, timed, timed_rounds)
    info = record(benchmark, timed, times, model=model, runner=runner, backend=backend, precision=precision,
                  kind=kind, warmup_rounds=DEFAULT_WARMUP_ROUNDS)
    assert info["images_per_s"] > 0
    return info


def test_throughput(benchmark: Any, request: pytest.FixtureRequest, bench_ctx: BuildContext, runners: _OneRunner,
                    MODELS: dict[str, ModelSpec], bench_case: tuple[str, str, str | None, str]) -> None:  # noqa: N803
    model_name, backend, precision, kind = bench_case
    _skip_unless_available(backend)
    model = MODELS[model_name]
    batch_size = mapgate.bench_plugin.batch_size_option(request.config)
    runner = runners.get(model, backend, precision, bench_ctx, batch_size)
    _bench(benchmark, request, runner, model, backend, precision, kind, calibration_images(), batch_size)


SMOKE_MODEL, SMOKE_BACKEND = "ssd_mobilenet_v1_quant_coco", "tflite"


@pytest.mark.parametrize("kind", KINDS)
def test_benchmark_smoke(benchmark: Any, request: pytest.FixtureRequest, bench_ctx: BuildContext,
                         runners: _OneRunner, MODELS: dict[str, ModelSpec], kind: str) -> None:  # noqa: N803
    """Default-run smoke: the matrix's code path on the smallest bundled model, a few rounds."""
    _skip_unless_available(SMOKE_BACKEND)
    model = MODELS[SMOKE_MODEL]
    runner = runners.get(model, SMOKE_BACKEND, None, bench_ctx, 1)
    info = _bench(benchmark, request, runner, model, SMOKE_BACKEND, None, kind, calibration_images(limit=4), 1,
                  timed_rounds=5 if kind == "engine_only" else 4)
    assert info["target"] == "tflite:orig" and info["batch_size"] == 1 and info["rounds"] >= 1
    assert info["latency_p50_ms"] <= info["latency_p99_ms"] <= info["latency_max_ms"]
    assert info["engine_sha256"] and len(info["engine_sha256"]) == 64
    assert info["fingerprint"]["cpu_cores"] == os.cpu_count()
