"""mapgate's pytest plugin (the ``pytest11`` entry point ``mapgate``): options, the gate session,
and the accuracy matrix collected from manifests.

* A ``mapgate.toml`` at the pytest rootdir, and every ``--mapgate-manifest=FILE``, is collected by
  pytest itself: one item per model x optimized target, node id
  ``mapgate.toml::MODEL::BACKEND:PRECISION``, marked ``accuracy``, the backend's marker, and
  ``xdist_group(MODEL)`` (``--dist loadgroup`` keeps a model's cases, and its reference run, on one
  worker). mapgate's own matrix is the repository's ``mapgate.toml``, which includes
  ``fixtures/models.toml``. The manifest is added to the run only when no test paths were given
  (or it was named with ``--mapgate-manifest``), so ``pytest tests/test_x.py`` runs just that file.
  Manifests, their includes and their ``[dataset]`` are read by mapgate.catalog, as the CLI reads
  them; a manifest that cannot be read is a collection error naming it (the other manifests and
  test files are still collected), and the default engines/ and reports/ are beside the first
  manifest (else at the rootdir), where the CLI puts them.
* Options are grouped under "mapgate" and validated at parse time; one session object is
  ``config.mapgate``; the reference of each model runs once per session and is shared.
* A failing case shows its comparison table (``repr_failure``), its numbers go to JUnit XML
  (``record_property``), and the session ends with a table of every case, written to
  ``reports/<run-id>/report.md`` and ``$GITHUB_STEP_SUMMARY``. Rendering: mapgate.report.
* Baselines live in ``mapgate-baselines.json`` beside the manifest that declares the model;
  ``--update-baselines`` rewrites them there (on the controller, once, at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from mapgate.argtypes import (
    coco_root,
    csv_list,
    existing_dir,
    existing_file,
    non_negative_int,
    one_line,
    output_dir,
    positive_int,
    shard_spec,
)
from mapgate import report
from mapgate.backends import all_backends, get_backend, markers
from mapgate.baselines import BaselineCheck, BaselineKind, BaselineStatus, baselines_path, load_baselines, write_updates
from mapgate.catalog import MANIFEST_NAME, Catalog, add_model, walk
from mapgate.compare import default_inconclusive_policy, outcome
from mapgate.decision import DEFAULT_TOLERANCES, PRECISIONS
from mapgate.errors import ConfigError, MapgateError
from mapgate.fsutil import mark_complete, mark_incomplete, write_json_atomic
from mapgate.gate import DEFAULT_ENGINES, DEFAULT_REPORTS, RUN_ID_ENV, Gate, default_run_id
from mapgate.manifest import read_toml

PACKAGE_DIR = Path(__file__).resolve().parent


def _backend_list(text: str) -> list[str]:
    items = csv_list(text)
    for item in items:
        name, sep, precision = item.partition(":")
        if sep and precision not in PRECISIONS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected BACKEND or BACKEND:PRECISION with precision fp32, fp16 or int8")
    return items


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("mapgate", "mapgate accuracy gate")
    g.addoption("--mapgate-manifest", type=existing_file, action="append", default=[], metavar="FILE",
                help=f"a model manifest to collect as gate cases (repeatable; default: {MANIFEST_NAME} at the rootdir)")
    g.addoption("--models", type=csv_list, metavar="NAMES", help="comma-separated model names (default: all in the manifests)")
    g.addoption("--backends", type=_backend_list, metavar="TARGETS",
                help="comma-separated optimized targets, BACKEND or BACKEND:PRECISION (default: each model's list)")
    g.addoption("--coco-root", type=coco_root, metavar="DIR",
                help="a COCO layout: DIR/val2017/*.jpg and DIR/annotations/instances_val2017.json (another annotation "
                     "file: add --annotations). Overrides the manifest's [dataset]; default: the bundled val2017-mini")
    g.addoption("--images", type=existing_dir, metavar="DIR", help="the evaluated images (with --annotations)")
    g.addoption("--annotations", type=existing_file, metavar="FILE",
                help="their COCO instance annotations (with --images or --coco-root)")
    g.addoption("--dataset-label", type=one_line, metavar="NAME",
                help="the data set's name in reports (default: the manifest's [dataset] label, else the annotation "
                     "file's stem)")
    g.addoption("--max-images", type=positive_int, metavar="N", help="evaluate only the first N image ids")
    g.addoption("--reports-dir", type=output_dir, metavar="DIR",
                help="where run artifacts go (default: reports/ beside the manifest, else <rootdir>/reports)")
    g.addoption("--engines-dir", type=output_dir, metavar="DIR",
                help="conversion/engine/detection cache (default: engines/ beside the manifest, as the CLI's)")
    g.addoption("--models-file", type=existing_file, action="append", default=[], metavar="FILE",
                help="the same as --mapgate-manifest (kept for existing command lines)")
    g.addoption("--calib-dir", type=existing_dir, metavar="DIR",
                help="INT8 calibration images, read only for INT8 targets (default: the manifest's [dataset] "
                     "calib_images, else the bundled calib-val2017; must not overlap the evaluated set)")
    g.addoption("--update-baselines", action="store_true",
                help="rewrite mapgate-baselines.json beside each manifest with this run's AP/AP50 (prints old and new)")
    g.addoption("--no-detection-cache", action="store_true", help="recompute detections even when cached")
    g.addoption("--inconclusive", choices=("fail", "pass"), metavar="fail|pass",
                help="what an inconclusive verdict does to the run: fail or pass (default: fail when the CI "
                     "environment variable is set, else a warning and the case passes)")
    g.addoption("--workers", type=non_negative_int, metavar="N",
                help="threads decoding/preprocessing ahead of the engine (default: one per core; 0 = sequential)")
    g.addoption("--batch-size", type=positive_int, default=1, metavar="N",
                help="images per engine call where the engine has a batch dimension (default 1)")
    g.addoption("--shard", type=shard_spec, metavar="I/N",
                help="gate only shard I of N of the image ids; join the shards' reports with `mapgate merge`")


# --------------------------------------------------------------------------------- session
@dataclass(eq=False)  # hashable by identity: it is registered as a plugin
class MapgateSession:
    """Everything the accuracy cases share in one pytest session."""

    config: pytest.Config
    manifests: list[Path] = field(default_factory=list)  # the collected manifests (resolved)
    unreadable: list[Path] = field(default_factory=list)  # manifests that are not regular files (a folder, a loop)
    collection_errors: int = 0  # broken manifests reported as collection errors (they do not stop the session)
    unreadable_reported: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)  # report.CaseRow dicts, in report order
    baseline_updates: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    table: str = ""  # the session table, once the run is over
    table_title: str = "mapgate accuracy gate"
    refused: list[str] = field(default_factory=list)  # failing cases --update-baselines would not record
    messages: list[str] = field(default_factory=list)  # what was written at the end of the run

    def option(self, name: str) -> Any:
        return self.config.getoption(name)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        _on_logreport(self, report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        _on_sessionfinish(self, interrupted=session.exitstatus == pytest.ExitCode.INTERRUPTED)
        if self.refused and not hasattr(self.config, "workerinput"):
            session.exitstatus = 2  # a usage error: the baselines asked for were not all recorded

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        _on_terminal_summary(self, terminalreporter)

    @cached_property
    def walked(self) -> dict[Path, Any]:
        """Each collected manifest -> (its models, including included files', and the headers read),
        or the error that stopped reading it: one broken manifest is its own collection error."""
        out: dict[Path, Any] = {}
        for root in self.manifests:
            try:
                out[root] = walk(root)
            except MapgateError as exc:
                out[root] = exc
        return out

    @cached_property
    def trees(self) -> dict[Path, tuple[dict[str, Any], list[Any]]]:
        """The manifests that could be read -> (their models, their headers)."""
        return {root: tree for root, tree in self.walked.items() if not isinstance(tree, Exception)}

    @cached_property
    def catalog(self) -> Any:
        merged: dict[str, Any] = {}
        for models, _ in self.trees.values():
            for name, spec in models.items():
                add_model(merged, name, spec)
        return Catalog(tuple(self.trees), {root: models for root, (models, _) in self.trees.items()},
                       tuple(h for _, headers in self.trees.values() for h in headers), merged)

    @property
    def models(self) -> dict[str, Any]:
        return self.catalog.models

    @cached_property
    def data_source(self) -> Any:
        """The data set: the options where given, else the manifests' [dataset] (as the CLI resolves it)."""
        return self.catalog.data_source(coco_root=self.option("coco_root"), images=self.option("images"),
                                        annotations=self.option("annotations"),
                                        calib_images=self.option("calib_dir"), label=self.option("dataset_label"))

    @cached_property
    def gate(self) -> Any:
        # Progress bars only where someone watches them: a terminal, with capture off (-s).
        progress = self.option("capture") == "no" and sys.stderr.isatty()
        source = self.data_source
        dataset = source.open(self.option("max_images"))
        if self.option("shard"):
            dataset = dataset.shard(*self.option("shard"))
        gate = Gate(models=self.models, dataset=dataset,
                    engines_dir=self.option("engines_dir"), reports_dir=self.option("reports_dir"),
                    use_cache=not self.option("no_detection_cache"), calib_dir=source.calib_images,
                    progress=progress, workers=self.option("workers"), batch_size=self.option("batch_size"))
        # the run folder is marked until the controller's sessionfinish: a killed session leaves the mark
        mark_incomplete(gate.run_dir, "a pytest session of the mapgate accuracy gate")
        gate.write_env()
        return gate

    def selected(self, models: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """(model, BACKEND:PRECISION) of ``models`` selected by --models/--backends."""
        names = self.option("models")
        wanted = self.option("backends")
        for name, spec in models.items():
            if names is not None and name not in names:
                continue
            for target in spec.optimized:
                if wanted is None or target in wanted or target.split(":")[0] in wanted:
                    yield name, target

    def matrix(self) -> list[tuple[str, str]]:
        """(model, BACKEND:PRECISION) pairs of every collected manifest selected by --models/--backends."""
        self.check_model_names()
        return list(self.selected(self.models))

    def check_model_names(self) -> None:
        unknown = [n for n in self.option("models") or [] if n not in self.models]
        if unknown:
            raise pytest.UsageError(f"--models: unknown model(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(self.models) or '(no manifest collected)'}")

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
    def inconclusive(self) -> str:
        return self.option("inconclusive") or default_inconclusive_policy()

    def baselines(self, path: Path) -> dict[str, Any]:
        cache = self.__dict__.setdefault("_baselines", {})
        if path not in cache:
            cache[path] = load_baselines(path)
        return cache[path]


def _session(config: pytest.Config) -> MapgateSession:
    return config.mapgate  # type: ignore[attr-defined,no-any-return]


def _manifests(config: pytest.Config) -> list[Path]:
    """The manifests this run collects: <rootdir>/mapgate.toml when present (also when it is broken:
    a folder, a dangling link or a loop is reported, never silently skipped), and every one named."""
    here = Path(config.rootpath) / MANIFEST_NAME
    found = [here] if here.exists() or here.is_symlink() else []
    named = [*config.getoption("mapgate_manifest"), *config.getoption("models_file")]
    for p in named:
        p = Path(p) if Path(p).is_absolute() else Path(config.invocation_params.dir) / p
        if not p.is_file():
            raise pytest.UsageError(f"--mapgate-manifest: {p} does not exist")
        found.append(p)
    out: list[Path] = []
    for p in found:
        # realpath (never raises, even on a loop of links) identifies a file; a broken link keeps
        # its own name, so its error names the manifest the user has, not where it points
        p = Path(os.path.realpath(p)) if p.is_file() else Path(os.path.abspath(p))
        if p not in out:
            out.append(p)
    return out


def _covered(path: Path, args: list[str], base: Path) -> bool:
    """Whether pytest will reach ``path`` anyway from its command-line args."""
    for arg in args:
        target = Path(arg.split("::")[0])
        target = (target if target.is_absolute() else base / target).resolve()
        if target == path or (target.is_dir() and target in path.parents):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    backends = all_backends()
    unknown = [t for t in (config.getoption("backends") or []) if t.split(":")[0] not in backends]
    if unknown:
        raise pytest.UsageError(f"--backends: unknown backend(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(backends))}")
    if not hasattr(config, "workerinput"):  # the controller (or a plain run): xdist workers inherit it
        os.environ.setdefault(RUN_ID_ENV, default_run_id())

    session = MapgateSession(config, _manifests(config))
    # beside the first manifest, where the CLI puts them too (one cache for both), else at the rootdir
    base = session.manifests[0].parent if session.manifests else Path(config.rootpath)
    if config.getoption("reports_dir") is None:
        config.option.reports_dir = base / DEFAULT_REPORTS
    if config.getoption("engines_dir") is None:
        config.option.engines_dir = base / DEFAULT_ENGINES
    config.mapgate = session  # type: ignore[attr-defined]
    config.pluginmanager.register(session, "mapgate-session")
    named = {p.resolve() for p in [*config.getoption("mapgate_manifest"), *config.getoption("models_file")]}
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    for manifest in session.manifests:
        # the rootdir manifest joins a run without test paths (like testpaths); a named one always.
        # One that is not a regular file cannot be a collection argument: its error is reported at
        # the end of collection instead (pytest_collection_finish)
        if (manifest in named or not explicit) and manifest.is_file() \
                and not _covered(manifest, config.args, Path(config.invocation_params.dir)):
            config.args.append(str(manifest))
        elif not manifest.is_file() and (manifest in named or not explicit):
            session.unreadable.append(manifest)
    if config.getoption("models"):
        try:
            session.check_model_names()
        except Exception as exc:  # a manifest error: say it as a usage error, not a traceback
            raise pytest.UsageError(str(exc)) from None
    for line in ("accuracy: the accuracy gate (original vs optimized, per model and backend)",
                 "benchmark: the full throughput benchmark matrix",
                 "xdist_group(name): pytest-xdist --dist loadgroup runs a group on one worker",
                 *(f"{marker}: {help_}" for marker, help_ in markers().items())):  # one per backend
        config.addinivalue_line("markers", line)


def _marker_name(backend: Any, name: str) -> str:
    """The backend's declared pytest marker (backends/base.py BackendFacts), else its name."""
    facts = getattr(backend, "facts", None)
    return getattr(facts, "marker", "") or name


# --------------------------------------------------------------------------------- collection
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session: MapgateSession | None = getattr(parent.config, "mapgate", None)
    if session is not None and Path(os.path.realpath(file_path)) in session.manifests:
        return ManifestFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    """A manifest that is not a regular file (a folder named mapgate.toml, a dangling link, a loop
    of links) is a collection error naming it, as a broken TOML file is; the rest is collected."""
    _report_unreadable(session)


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    """Under pytest-xdist the controller collects nothing (its workers do, and they never see a
    manifest that is not a file), so it reports those manifests itself, before the workers start."""
    if session.config.pluginmanager.getplugin("dsession") is not None:
        _report_unreadable(session)


def _report_unreadable(session: pytest.Session) -> None:
    mapgate: MapgateSession | None = getattr(session.config, "mapgate", None)
    if mapgate is None or hasattr(session.config, "workerinput") or mapgate.unreadable_reported:
        return
    mapgate.unreadable_reported = True

    for path in mapgate.unreadable:
        try:
            read_toml(path)
            message = f"model manifest {path} cannot be collected"
        except ConfigError as exc:
            message = f"ConfigError: {exc}"
        nodeid = os.path.relpath(path, session.config.rootpath)
        report = pytest.CollectReport(nodeid, "failed", message, [])
        mapgate.collection_errors += 1
        session.config.hook.pytest_collectreport(report=report)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A broken manifest's collection error is its one-line message (also in the short summary),
    counted so that it does not interrupt the session: the other manifests and test files run."""
    rep = yield
    session: MapgateSession | None = getattr(collector.config, "mapgate", None)
    if session is not None and rep.failed and isinstance(collector, (ManifestFile, ModelCases)):
        session.collection_errors += 1
        if not isinstance(rep.longrepr, str):
            rep.longrepr = str(rep.longrepr).strip()
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[None]:
    """pytest stops before running anything when collection failed; a broken manifest is reported
    as a collection error but, like --continue-on-collection-errors for it alone, the rest runs.
    The count is restored afterwards, so the run still exits non-zero."""
    mapgate: MapgateSession | None = getattr(session.config, "mapgate", None)
    held = min(mapgate.collection_errors, session.testsfailed) if mapgate is not None else 0
    session.testsfailed -= held
    try:
        return (yield)
    finally:
        session.testsfailed += held


class ManifestFile(pytest.File):
    """A manifest: one child per model it (or a file it includes) declares."""

    def collect(self) -> Iterator[pytest.Collector]:
        session = _session(self.config)
        tree = session.walked[Path(os.path.realpath(self.path))]
        if isinstance(tree, Exception):
            raise tree
        models, _ = tree
        for manifest in sorted({spec.manifest_path for spec in models.values()}):
            # a broken baselines file is a collection error now, never a check silently switched off
            if PACKAGE_DIR not in baselines_path(manifest).resolve().parents:
                session.baselines(baselines_path(manifest))
        pairs: dict[str, list[str]] = {}
        for name, target in session.selected(models):
            pairs.setdefault(name, []).append(target)
        for name, targets in pairs.items():
            yield ModelCases.from_parent(self, name=name, spec=models[name], targets=targets)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return _repr_mapgate_error(excinfo) or super().repr_failure(excinfo)


class ModelCases(pytest.Collector):
    """One model of a manifest: one gate case per optimized target."""

    def __init__(self, *, spec: Any, targets: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.spec, self.targets = spec, targets

    def collect(self) -> Iterator[pytest.Item]:
        for target in self.targets:
            yield GateCase.from_parent(self, name=target, spec=self.spec, target=target)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return _repr_mapgate_error(excinfo) or super().repr_failure(excinfo)


class CaseFailed(Exception):
    """A gate case's verdict (or baseline) failed; ``text`` is the table shown for it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class GateCase(pytest.Item):
    """Original vs one optimized target: the verdict must be what the manifest expects."""

    def __init__(self, *, spec: Any, target: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec, self.target = spec, target

        backend = target.split(":")[0]
        try:
            declared = get_backend(backend)
        except ConfigError as exc:
            raise ConfigError(f"{spec.manifest_path}: model {spec.name!r}, field 'optimized': {exc}") from None
        self.add_marker(pytest.mark.accuracy)
        self.add_marker(_marker_name(declared, backend))
        self.add_marker(pytest.mark.xdist_group(name=spec.name))
        self.mapgate_row: dict[str, Any] | None = None
        self.mapgate_baselines: dict[str, Any] = {}

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.spec.name} {self.target}"

    def setup(self) -> None:
        """What can go wrong before a verdict, so that pytest (and JUnit) report it as an error, not
        as a failed gate: a missing backend (skip), the data set, the baselines' place, the conversion,
        the reference run and the optimized run."""
        session = _session(self.config)
        model, ref_backend = self.spec.name, self.spec.reference_backend
        for name in (self.target.split(":")[0], ref_backend):
            available = get_backend(name).availability()
            if not available.ok:
                self.mapgate_row = report.CaseRow(model, self.target, "skipped", reference=ref_backend,
                                                  reason=f"{name}: {available.reason}").to_dict()
                pytest.skip(f"{name}: {available.reason}")
        self._baselines_path()
        session.gate.prepare(model, self.target)

    def runtest(self) -> None:
        """The verdict alone: a failed gate is CaseFailed (a JUnit <failure>), its properties recorded first."""
        session = _session(self.config)
        model = self.spec.name
        gate = session.gate
        verdict = gate.compare(model, self.target)
        directory = gate.case_dir(model, self.target)
        result = outcome(verdict, session.inconclusive)
        status, path = self._baselines(session, verdict, gate.dataset.label, refuse=result == "fail")
        for key, value in report.junit_properties(verdict, result=result, baseline=status.kind.value):
            self.user_properties.append((key, value))
        failed = result == "fail" or status.regressed
        baseline = report.baseline_text(status, str(path))
        if status.kind in (BaselineKind.MISSING, BaselineKind.OTHER_DATASET):
            baseline += f" [{path.name}]"
        elif status.regressed:
            baseline += f" ({path})"
        write_json_atomic(directory / "comparison.json", report.comparison_record(verdict, status))
        word = "failed" if failed else ("warning" if result == "warn" else "passed")
        pictures = tuple(p.name for p in (directory / report.PR_CURVES_PNG, directory / report.CLASS_DELTAS_PNG)
                         if p.is_file())
        row = report.CaseRow.of(verdict, word, directory=os.path.relpath(directory, gate.run_dir),
                                baseline=baseline, pictures=pictures, baseline_status=status.kind.value)
        self.mapgate_row = row.to_dict()
        if failed:
            text = report.case_text(verdict, directory, result, baseline, status)
            raise CaseFailed(text)
        if result == "warn":
            warnings.warn(pytest.PytestWarning(
                f"{model} {self.target}: inconclusive ({report.reason(verdict)}); passing because --inconclusive is "
                "not set and CI is not set (use --inconclusive=fail to fail)"), stacklevel=1)

    def _baselines(self, session: MapgateSession, verdict: Any, dataset: str,
                   refuse: bool) -> tuple[BaselineStatus, Path]:
        """Both sides against the baselines beside the manifest: the first regressed side, else the
        optimized side's status. ``refuse``: this case fails, so --update-baselines must not record it."""
        path = self._baselines_path()
        data = session.baselines(path)
        precision = self.target.split(":")[1]
        checks = [BaselineCheck(self.spec.name, verdict.ref["target"], verdict.ref_stats["AP"],
                                verdict.ref_stats["AP50"], DEFAULT_TOLERANCES["fp32"], dataset),
                  BaselineCheck(self.spec.name, self.target, verdict.opt_stats["AP"], verdict.opt_stats["AP50"],
                                self.spec.tolerance(precision), dataset)]
        if session.option("update_baselines") and not refuse:  # a failing case is refused at the end of the run
            for check in checks:
                check.refuse_replacing_another_data_set(data, path)
                self.mapgate_baselines.setdefault(str(path), {}).setdefault(check.model, {})[check.target] = \
                    check.record()
            return BaselineStatus(BaselineKind.TO_BE_RECORDED, self.spec.name, self.target,
                                  checks[-1].tolerance_points, dataset=dataset), path
        statuses = [check.compare(data) for check in checks]
        return next((s for s in statuses if s.regressed), statuses[-1]), path

    def _baselines_path(self) -> Path:
        path = baselines_path(self.spec.manifest_path)
        if PACKAGE_DIR in path.resolve().parents:
            raise ConfigError(f"{self.spec.manifest_path} is inside the installed mapgate package; "
                              "copy it into your repository (its baselines must live beside it)")
        return path

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailed):
            return excinfo.value.text
        return _repr_mapgate_error(excinfo) or super().repr_failure(excinfo)


def _repr_mapgate_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    """mapgate's own errors say what, why and the fix: show them, not a traceback."""
    if isinstance(excinfo.value, MapgateError):
        return f"{type(excinfo.value).__name__}: {excinfo.value}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    if isinstance(item, GateCase) and (call.when == "call" or (call.when == "setup" and call.excinfo is not None)):
        row = item.mapgate_row
        if row is None and call.excinfo is not None:  # an error before a verdict (conversion, bad file)
            row = report.CaseRow(item.spec.name, item.target, "error", reference=item.spec.reference_backend,
                          reason=str(call.excinfo.value).splitlines()[0][:300] if str(call.excinfo.value) else
                          type(call.excinfo.value).__name__).to_dict()
        if call.when == "setup" and rep.failed and call.excinfo is not None:
            # pytest renders a setup error as a traceback (item.repr_failure is only asked for the call
            # phase); a mapgate error is its one line, in the terminal and in JUnit's <error>
            rep.longrepr = _repr_mapgate_error(call.excinfo) or rep.longrepr
        rep.mapgate_row = row  # extra report attributes travel from xdist workers to the controller
        rep.mapgate_baselines = item.mapgate_baselines
    return rep


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
    silently stop. A gate case's id names its model (``MANIFEST::MODEL::TARGET``); tests
    parametrized by a model name (``[MODEL]`` or ``[MODEL-TARGET]``) join that model's group, so
    they reuse its reference too."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    session = _session(config)
    models = set(session.models)
    groups = {f"{model}-{target}": model for model, target in session.matrix()}
    groups.update({model: model for model in models})

    class ModelGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            if scope != nodeid:  # xdist's own @group suffix took
                return scope
            parts = nodeid.split("::")
            if len(parts) == 3 and parts[1] in models:  # a collected gate case
                return parts[1]
            if nodeid.endswith("]"):
                return groups.get(nodeid[nodeid.rfind("[") + 1 : -1], nodeid)
            return scope

    return ModelGroupScheduling(config, log)


def _dist_given(config: pytest.Config) -> bool:
    import shlex

    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
            *config.getini("addopts")]
    return any(a == "--dist" or a.startswith("--dist=") or a == "-d" or a == "--distload" for a in args)


@pytest.fixture(scope="session")
def mapgate_session(request: pytest.FixtureRequest) -> MapgateSession:
    return _session(request.config)


# --------------------------------------------------------------------------------- the end of the run
# (hooks of MapgateSession, registered as a plugin object in pytest_configure)
def _on_logreport(session: MapgateSession, report: pytest.TestReport) -> None:
    row = getattr(report, "mapgate_row", None)
    if row is None or report.when not in ("setup", "call"):  # setup: skipped, or an error before a verdict
        return
    session.rows.append(row)
    for path, models in (getattr(report, "mapgate_baselines", None) or {}).items():
        for model, targets in models.items():
            session.baseline_updates.setdefault(path, {}).setdefault(model, {}).update(targets)


def _on_sessionfinish(session: MapgateSession, interrupted: bool = False) -> None:
    """Write the baselines and report.md (the terminal summary only prints what was written), then
    unmark the run folder, unless the session was interrupted (Ctrl-C): its folder stays marked."""
    if hasattr(session.config, "workerinput"):  # xdist workers: the controller reports
        return
    run_dir = Path(session.option("reports_dir")) / default_run_id()
    _write_session_outputs(session, run_dir)
    if not interrupted and run_dir.is_dir():
        mark_complete(run_dir)


def _write_session_outputs(session: MapgateSession, run_dir: Path) -> None:
    if session.option("update_baselines"):
        session.refused = [f"{r['model']} {r['optimized']}" for r in session.rows if r["result"] == "failed"]
        if session.refused:
            session.messages.append(
                f"mapgate: --update-baselines refused to record {len(session.refused)} failing case(s) "
                f"({', '.join(session.refused)}): fix them first, a baseline must be a result that passes")
    if session.baseline_updates and session.option("update_baselines"):
        for path, updates in sorted(session.baseline_updates.items()):
            lines = write_updates(Path(path), updates)
            session.messages.append(f"mapgate: baselines rewritten in {path}:\n" + "\n".join(lines))
    if not session.rows:
        return

    rows = [report.CaseRow.from_dict(r) for r in session.rows]
    dataset = next((r.dataset for r in rows if r.dataset), "")
    session.messages.append(f"mapgate: report {report.write_run(rows, run_dir, dataset=dataset)}")
    warning = report.write_step_summary(rows, run_dir, dataset=dataset)
    if warning:
        session.messages.append(warning)
    session.table = report.run_table(rows)
    session.table_title = report.run_title(dataset)


def _on_terminal_summary(session: MapgateSession, terminalreporter: Any) -> None:
    if session.table:
        terminalreporter.write_sep("=", session.table_title)
        for line in session.table.splitlines():
            terminalreporter.write_line(line)
    for message in session.messages:
        terminalreporter.write_line(message)
