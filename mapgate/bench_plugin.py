"""pytest hooks of the benchmark part of mapgate.

* ``--benchmark-batch-size N`` (group ``mapgate``): images per timed round (default 1).
* History per device: unless ``--benchmark-storage`` is given, pytest-benchmark's storage
  becomes ``.benchmarks/<fingerprint-id>/`` so ``--benchmark-autosave`` /
  ``--benchmark-compare`` only ever see runs of the same device (a Jetson in MAXN is never
  compared with a laptop). pytest-benchmark reads ``config.option.benchmark_storage`` in its
  own ``pytest_configure``, which is ``trylast``; ours runs ``tryfirst``, so it is set in time.
* The device fingerprint is added to pytest-benchmark's ``machine_info`` of every saved run.
* Tests marked ``benchmark`` (the full matrix) are deselected unless a ``-m`` expression is
  given or they are named by node id; ``pytest -m benchmark`` runs them.

Registration: options must exist before the command line is parsed, so this module must be
a plugin from the start: ``-p mapgate.bench_plugin``, ``pytest_plugins = ["mapgate.bench_plugin"]``
in the root conftest, or a ``pytest11`` entry point. Registering it from another plugin's
``pytest_configure`` is too late for ``--benchmark-batch-size``.
"""

from __future__ import annotations

from typing import Any

import pytest

from mapgate import fingerprint
from mapgate.argtypes import positive_int

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark 4.x/5.x default for --benchmark-storage


def current_fingerprint() -> dict[str, Any]:
    """The fingerprint the hooks use (a seam so tests can fake a device in a subprocess run)."""
    return fingerprint.device_fingerprint()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mapgate")
    group.addoption(
        "--benchmark-batch-size", dest="benchmark_batch_size", type=positive_int, default=1, metavar="N",
        help="images per timed round in the mapgate benchmarks (default 1). Engines with a fixed batch of "
             "one run N sequential infers per round; extra_info['batching'] says which happened.",
    )


def storage_for(storage: str, fp_id: str) -> str:
    """``file://./.benchmarks`` + id -> ``file://./.benchmarks/<id>`` (any file:// or plain path)."""
    scheme = "file://" if storage.startswith("file://") else ""
    base = storage[len(scheme):].rstrip("/") or "."
    return f"{scheme}{base}/{fp_id}"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    storage = getattr(config.option, "benchmark_storage", None)
    if storage is None:  # pytest-benchmark not loaded (-p no:benchmark)
        return
    # Only the untouched default is redirected: an explicit --benchmark-storage is the user's choice.
    if storage == DEFAULT_STORAGE:
        config.option.benchmark_storage = storage_for(storage, fingerprint.fingerprint_id(current_fingerprint()))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    fp = current_fingerprint()
    machine_info["mapgate_fingerprint"] = fp
    machine_info["mapgate_fingerprint_id"] = fingerprint.fingerprint_id(fp)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr or any("::" in str(a) for a in config.args):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("benchmark") is not None else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def batch_size_option(config: pytest.Config) -> int:
    """``--benchmark-batch-size``, or 1 when this plugin was registered too late to parse it."""
    return int(config.getoption("benchmark_batch_size", 1) or 1)

