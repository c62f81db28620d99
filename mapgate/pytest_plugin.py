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

from mapgate.argtypes import csv_list, non_negative_int, positive_int, shard_spec
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
    g.addoption("--coco-root", type=Path, metavar="DIR", help="a COCO layout instead of the bundled val2017-mini")
    g.addoption("--max-images", type=positive_int, metavar="N", help="evaluate only the first N image ids")
    g.addoption("--reports-dir", type=Path, default=REPO / "reports", metavar="DIR", help="where run artifacts go")
    g.addoption("--engines-dir", type=Path, default=REPO / "engines", metavar="DIR",
                help="conversion/engine/detection cache")
    g.addoption("--models-file", type=Path, action="append", default=[], metavar="FILE",
                help="an extra TOML model manifest (repeatable)")
    g.addoption("--calib-dir", type=Path, metavar="DIR",
                help="INT8 calibration images (default: the bundled calib-val2017; must not overlap the evaluated set)")
    g.addoption("--update-baselines", action="store_true",
                help="rewrite fixtures/baselines.json with this run's AP/AP50 (prints old and new)")
    g.addoption("--no-detection-cache", action="store_true", help="recompute detections even when cached")
    g.addoption("--workers", type=non_negative_int, metavar="N",
                help="threads decoding/preprocessing ahead of the engine (default: one per core; 0 = sequential)")
    g.addoption("--batch-size", type=positive_int, default=1, metavar="N",
                help="images per engine call where the engine has a batch dimension (default 1)")
    g.addoption("--shard", type=shard_spec, metavar="I/N",
                help="gate only shard I of N of the image ids; join the shards' reports with `mapgate merge`")


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

        dataset = CocoDataset.open(self.option("coco_root"), self.option("max_images"))
        if self.option("shard"):
            dataset = dataset.shard(*self.option("shard"))
        gate = Gate(models=self.models, dataset=dataset,
                    engines_dir=self.option("engines_dir"), reports_dir=self.option("reports_dir"),
                    use_cache=not self.option("no_detection_cache"), calib_dir=self.option("calib_dir"),
                    workers=self.option("workers"), batch_size=self.option("batch_size"))
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
    if not hasattr(config, "workerinput"):  # the controller (or a plain run): xdist workers inherit it
        os.environ.setdefault(RUN_ID_ENV, default_run_id())
    config.mapgate = MapgateSession(config)  # type: ignore[attr-defined]
    for line in ("accuracy: the accuracy gate (original vs optimized, per model and backend)",
                 "benchmark: the full throughput benchmark matrix",
                 "tensorrt: needs TensorRT and a CUDA device",
                 "xdist_group(name): cases that share a worker under pytest -n (pytest-xdist's mark)"):
        config.addinivalue_line("markers", line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gate_case" in metafunc.fixturenames:
        session: MapgateSession = metafunc.config.mapgate  # type: ignore[attr-defined]
        params = []
        for model, target in session.matrix():
            marks = [pytest.mark.tensorrt] if target.startswith("tensorrt:") else []
            # one xdist worker per model: its reference then runs once (see pytest_xdist_make_scheduler)
            marks.append(pytest.mark.xdist_group(name=model))
            params.append(pytest.param((model, target), id=f"{model}-{target}", marks=marks))
        metafunc.parametrize("gate_case", params)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``pytest -n N`` with no --dist given, distribute by model (``--dist loadgroup``): the
    cases of a model then share its reference on one worker instead of every worker recomputing
    it. xdist's pytest_cmdline_main has turned "no" into "load" by now; it builds the scheduler
    from this option later, in pytest_runtestloop."""
    config = session.config
    if getattr(config.option, "dist", None) == "load" and not hasattr(config, "workerinput") \
            and not _dist_given(config):
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadgroup that also groups when xdist could not suffix the group to the node ids: with
    pytest 9.2 its suffix no longer takes (pytest-dev/pytest-xdist#1386), so grouping would
    silently stop. A gate case's id names its model (pytest_generate_tests below); other accuracy
    tests parametrized by a model name or the same MODEL-TARGET ids join that model's group, so
    they reuse its reference too."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    session = config.mapgate  # type: ignore[attr-defined]
    groups = {f"{model}-{target}": model for model, target in session.matrix()}
    groups.update({model: model for model in session.models})

    class ModelGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            if scope != nodeid or not nodeid.endswith("]"):  # xdist's own @group suffix, or not a gate case
                return scope
            return groups.get(nodeid[nodeid.rfind("[") + 1 : -1], nodeid)

    return ModelGroupScheduling(config, log)


def _dist_given(config: pytest.Config) -> bool:
    import os
    import shlex

    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
            *config.getini("addopts")]
    return any(a == "--dist" or a.startswith("--dist=") or a == "-d" or a == "--distload" for a in args)


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
