"""mapgate's pytest plugin: options, the gate session, and the (model x backend) matrix.

Options are grouped under "mapgate" and validated at parse time; one session object is
attached as ``config.mapgate`` in ``pytest_configure``; the reference of each model is
computed once per session and shared by every optimized target of that model.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from mapgate.argtypes import coco_root, csv_list, existing_dir, existing_file, output_dir, positive_int
from mapgate.manifest import DEFAULT_TOLERANCES

REPO = Path(__file__).resolve().parent.parent
BASELINES = REPO / "fixtures" / "baselines.json"


def _backend_list(text: str) -> list[str]:
    items = csv_list(text)
    for item in items:
        name, sep, precision = item.partition(":")
        if sep and precision not in DEFAULT_TOLERANCES:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected BACKEND or BACKEND:PRECISION with precision fp32, fp16 or int8")
    return items


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("mapgate", "mapgate accuracy gate")
    g.addoption("--models", type=csv_list, metavar="NAMES", help="comma-separated model names (default: all in the manifest)")
    g.addoption("--backends", type=_backend_list, metavar="TARGETS",
                help="comma-separated optimized targets, BACKEND or BACKEND:PRECISION (default: each model's list)")
    g.addoption("--coco-root", type=coco_root, metavar="DIR", help="a COCO layout instead of the bundled val2017-mini")
    g.addoption("--max-images", type=positive_int, metavar="N", help="evaluate only the first N image ids")
    g.addoption("--reports-dir", type=output_dir, default=REPO / "reports", metavar="DIR", help="where run artifacts go")
    g.addoption("--engines-dir", type=output_dir, default=REPO / "engines", metavar="DIR",
                help="conversion/engine/detection cache")
    g.addoption("--models-file", type=existing_file, action="append", default=[], metavar="FILE",
                help="an extra TOML model manifest (repeatable)")
    g.addoption("--calib-dir", type=existing_dir, metavar="DIR",
                help="INT8 calibration images (default: the bundled calib-val2017; must not overlap the evaluated set)")
    g.addoption("--update-baselines", action="store_true",
                help="rewrite fixtures/baselines.json with this run's AP/AP50 (prints old and new)")
    g.addoption("--no-detection-cache", action="store_true", help="recompute detections even when cached")


@dataclass
class MapgateSession:
    """Everything the accuracy tests share in one pytest session."""

    config: pytest.Config
    baseline_updates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        return self.config.getoption(name)

    @cached_property
    def models(self) -> dict[str, Any]:
        from mapgate.gate import load_models

        return load_models(self.option("models_file"))

    @cached_property
    def gate(self) -> Any:
        from mapgate.dataset import CocoDataset
        from mapgate.gate import Gate

        gate = Gate(models=self.models, dataset=CocoDataset.open(self.option("coco_root"), self.option("max_images")),
                    engines_dir=self.option("engines_dir"), reports_dir=self.option("reports_dir"),
                    use_cache=not self.option("no_detection_cache"), calib_dir=self.option("calib_dir"))
        gate.write_env()
        return gate

    def matrix(self) -> list[tuple[str, str]]:
        """(model, BACKEND:PRECISION) pairs selected by --models/--backends."""
        names = self.option("models") or list(self.models)
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise pytest.UsageError(f"--models: unknown model(s) {', '.join(unknown)}; known: {', '.join(self.models)}")
        wanted = self.option("backends")
        pairs = []
        for name in names:
            for target in self.models[name].optimized:
                if wanted is None or target in wanted or target.split(":")[0] in wanted:
                    pairs.append((name, target))
        return pairs

    def benchmark_matrix(self) -> list[tuple[str, str, str | None]]:
        """(model, backend, precision) for the throughput matrix: each selected model's original
        (precision None) and its --backends-selected optimized targets."""
        wanted = self.option("backends")
        cases: list[tuple[str, str, str | None]] = []
        seen: set[str] = set()
        for name, target in self.matrix():
            if name not in seen:
                seen.add(name)
                ref = self.models[name].reference_backend
                if wanted is None or ref in wanted:
                    cases.append((name, ref, None))
            backend, _, precision = target.partition(":")
            cases.append((name, backend, precision))
        for name in self.option("models") or list(self.models):  # models with no optimized targets
            if name not in seen and (wanted is None or self.models[name].reference_backend in wanted):
                cases.append((name, self.models[name].reference_backend, None))
        return cases

    @cached_property
    def baselines(self) -> dict[str, dict[str, dict[str, float]]]:
        return json.loads(BASELINES.read_text()) if BASELINES.exists() else {}


def pytest_configure(config: pytest.Config) -> None:
    import os

    from mapgate.backends import all_backends
    from mapgate.gate import RUN_ID_ENV, default_run_id

    unknown = [t for t in (config.getoption("backends") or []) if t.split(":")[0] not in all_backends()]
    if unknown:
        raise pytest.UsageError(f"--backends: unknown backend(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(all_backends()))}")
    from mapgate.argtypes import check_model_selection
    from mapgate.errors import MapgateError

    try:
        check_model_selection(config.getoption("models"), config.getoption("models_file"))
    except MapgateError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not hasattr(config, "workerinput"):  # the controller (or a plain run): xdist workers inherit it
        os.environ.setdefault(RUN_ID_ENV, default_run_id())
    config.mapgate = MapgateSession(config)  # type: ignore[attr-defined]
    for line in ("accuracy: the accuracy gate (original vs optimized, per model and backend)",
                 "benchmark: the full throughput benchmark matrix",
                 "tensorrt: needs TensorRT and a CUDA device"):
        config.addinivalue_line("markers", line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gate_case" in metafunc.fixturenames:
        session: MapgateSession = metafunc.config.mapgate  # type: ignore[attr-defined]
        params = []
        for model, target in session.matrix():
            marks = [pytest.mark.tensorrt] if target.startswith("tensorrt:") else []
            params.append(pytest.param((model, target), id=f"{model}-{target}", marks=marks))
        metafunc.parametrize("gate_case", params)


@pytest.fixture(scope="session")
def mapgate_session(request: pytest.FixtureRequest) -> MapgateSession:
    return request.config.mapgate  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    ms: MapgateSession | None = getattr(session.config, "mapgate", None)
    if ms is None or not ms.option("update_baselines") or not ms.baseline_updates:
        return
    from mapgate.fsutil import write_json_atomic

    merged = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    lines = []
    for model, targets in sorted(ms.baseline_updates.items()):
        for target, new in sorted(targets.items()):
            old = merged.get(model, {}).get(target)
            lines.append(f"  {model} {target}: AP {_fmt(old, 'AP')} -> {new['AP']:.4f}, "
                         f"AP50 {_fmt(old, 'AP50')} -> {new['AP50']:.4f}")
            merged.setdefault(model, {})[target] = new
    write_json_atomic(BASELINES, merged)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = f"mapgate: baselines rewritten in {BASELINES}:\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)


def _fmt(old: dict[str, float] | None, key: str) -> str:
    return f"{old[key]:.4f}" if old and key in old else "(none)"
