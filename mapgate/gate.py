"""The accuracy gate: run a model's original and an optimized engine on the same images with the
same pre/post-processing, evaluate both, compare, and write JSON artifacts anyone can re-check.

Detections are cached by content (model files, backend, precision, engine/artifact hash,
pre/post-processing contract, image set, mapgate version), so a re-run with nothing changed
only re-evaluates; any change in those inputs misses the cache.
"""

from __future__ import annotations

import json
import os

import orjson  # detections files are ~2 MB per side; orjson reads/writes them ~10x faster than json
import platform
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mapgate import __version__, preflight
from mapgate.backends import get_backend, parse_target
from mapgate.backends.base import BuildContext
from mapgate.benchmarking import SPEED_IMAGES, load_batch, speed_vs_fp32
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.compare import Verdict, build_verdict, detection_agreement
from mapgate.convert.ort_quant import form_of
from mapgate.cpu import this_cpu
from mapgate.cache import ArtifactCache, CorruptArtifact, remembered_hashes, sweep, without_paths
from mapgate.dataset import CocoDataset
from mapgate.errors import BackendUnavailable, ConfigError, ContractError, DataError, InferenceError, MapgateError
from mapgate.failures import is_environment, third_party_message, traceback_lines
from mapgate.files import verified_sha256
from mapgate.decision import resolve_tolerance
from mapgate.fsutil import (INCOMPLETE, fault_point, is_incomplete, mark_complete, mark_incomplete, sha256_bytes,
                            sha256_json, write_bytes_atomic, write_json_atomic)
from mapgate.manifest import ModelSpec
from mapgate.paths import safe_component, target_component
from mapgate import report
from mapgate.attribution import attribute
from mapgate.backends import all_backends
from mapgate.bootstrap import paired_bootstrap, per_image_results
from mapgate.detections import run_detections
from mapgate.evaluate import load_ground_truth
from mapgate.fingerprint import device_fingerprint
from mapgate.optional import version_of

# Relative to a run's base (mapgate.catalog: the manifest's folder, else the working directory), so
# the CLI and pytest share one cache; never inside the installed package.
DEFAULT_ENGINES = Path("engines")
DEFAULT_REPORTS = Path("reports")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
QDQ_TARGETS = ("onnxruntime:int8", "tensorrt:int8")  # built from mapgate.convert.ort_quant's Q/DQ file


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of mapgate's own source: a decoder or NMS fix must invalidate cached detections,
    even before anyone bumps the version (costs ~5 ms for the whole package)."""
    package = Path(__file__).resolve().parent
    return sha256_json([[str(p.relative_to(package)), verified_sha256(p)] for p in sorted(package.rglob("*.py"))])


@lru_cache(maxsize=1)
def framework_versions() -> dict[str, str | None]:
    """Versions of every backend's frameworks, as each backend declares them (``facts.version_modules``):
    an upgraded OpenCV or ONNX Runtime must not reuse detections made by the old one, and a backend
    cannot be left out of a hand list (read from package metadata: no imports)."""
    versions: dict[str, str | None] = {}
    for backend in all_backends().values():
        versions.update(backend.facts.versions())
    return dict(sorted(versions.items()))


def contract(model: ModelSpec) -> dict[str, Any]:
    """What both sides of a comparison must share: model files, input, pre- and post-processing."""
    return {
        "files": {role: ref.sha256 for role, ref in sorted(model.files.items())},
        "input_size": list(model.input_size),
        "preprocess": repr(model.preprocess),
        "postprocess": repr(model.postprocess),
        "family": model.family,
    }


def contract_hash(model: ModelSpec) -> str:
    return sha256_json(contract(model))


@dataclass
class Side:
    """One evaluated run of a model on one backend."""

    model: str
    backend: str
    precision: str | None  # None: the original model file as its authors run it
    detections: list[dict[str, Any]]
    metrics: Any  # mapgate.evaluate.Metrics
    timings_ms: dict[str, float]
    identity: dict[str, Any]
    from_cache: bool = False
    directory: Path | None = None
    per_image: Any = None  # mapgate.bootstrap.PerImage: the matching behind ``metrics``, reused by the bootstrap
    cache_key: str | None = None  # content key of the detections (None: not cached)

    @property
    def target(self) -> str:
        return f"{self.backend}:{self.precision}" if self.precision else self.backend

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "backend": self.backend, "precision": self.precision or "original",
                **self.identity}


@dataclass
class Gate:
    """One gate session: the models, the data set, where engines and reports go."""

    models: dict[str, ModelSpec]
    dataset: CocoDataset
    engines_dir: Path = DEFAULT_ENGINES
    reports_dir: Path = DEFAULT_REPORTS
    run_id: str = field(default_factory=lambda: default_run_id())
    use_cache: bool = True
    progress: bool = True
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED
    calib_dir: Path | None = None  # INT8 calibration images (default: the bundled calib-val2017)
    side_dir: Path | None = None  # write a side's detections/metrics here instead of the run tree (`eval --out`)
    workers: int | None = None  # decode/preprocess threads of the detection loop (None: per core, 0: sequential)
    batch_size: int = 1  # images per infer() where the engine takes a batch
    # (model, target) -> a ``speed`` record timed elsewhere (`mapgate merge`: the shards timed it), used
    # instead of timing here
    recorded_speed: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    _sides: dict[tuple[str, str], Side] = field(default_factory=dict)

    @property
    def ground_truth(self) -> Any:
        """The indexed ground truth, built once per gate (every side is evaluated against it)."""
        if "_gt" not in self.__dict__:
            try:
                self.__dict__["_gt"] = load_ground_truth(self.dataset.gt, source=str(self.dataset.annotations_path))
            except (DataError, ContractError) as exc:
                raise DataError(f"annotation file {self.dataset.annotations_path}: {exc}") from exc
        return self.__dict__["_gt"]

    @property
    def run_dir(self) -> Path:
        return self.reports_dir / self.run_id

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ConfigError(f"unknown model {name!r}; known models: {', '.join(self.models)}")
        return self.models[name]

    def build_context(self, calibration: bool = True) -> BuildContext:
        """``calibration=False`` for FP32/FP16 sides: they never read (or need) calibration images."""
        calib = calibration_images(self.calib_dir) if calibration else []
        return BuildContext(engines_dir=self.engines_dir, calib_images=calib,
                            evaluated_image_ids=frozenset(self.dataset.image_ids),
                            calib_image_ids=frozenset(image_ids_of(calib)), progress=self.progress)

    # -- one side ---------------------------------------------------------------------------
    def side(self, model_name: str, target: str | None = None) -> Side:
        """Run (or load from cache) ``model`` on ``target`` (``BACKEND:PRECISION``); None = reference."""
        model = self.model(model_name)
        if target is not None and not target.partition(":")[0]:
            raise ConfigError(f"backend {target!r} is empty; name a backend such as {model.reference_backend!r} "
                              "(or BACKEND:PRECISION), or leave it out for the reference")
        if target is None or ":" not in target:
            backend, precision = (target or model.reference_backend), None
            formats = getattr(get_backend(backend), "original_formats", ())
            if model.format not in formats:
                raise ConfigError(
                    f"backend {backend!r} cannot run model {model_name!r}'s original {model.format} files "
                    f"(it runs {', '.join(formats) or 'no original formats'}); name a converted target such as "
                    f"{backend}:fp32, or the reference backend {model.reference_backend!r}")
        else:
            backend, precision = parse_target(target)
        key = (model_name, f"{backend}:{precision}")
        if key not in self._sides:
            self._sides[key] = self._run_side(model, backend, precision)
        return self._sides[key]

    def add_side(self, side: Side) -> Side:
        """Adopt a side evaluated elsewhere (``mapgate merge``'s union of shards): written like a run's
        own, and used by compare() instead of running the engine."""
        side.directory = self._write_side(self.model(side.model), side)
        self._sides[(side.model, f"{side.backend}:{side.precision}")] = side
        return side

    def _run_side(self, model: ModelSpec, backend_name: str, precision: str | None) -> Side:
        backend = get_backend(backend_name)
        available = backend.availability()
        if not available.ok:
            raise BackendUnavailable(backend_name, available.reason)
        preflight.check(model)
        ctx = self.build_context(calibration=precision == "int8")
        identity = self._identity(model, backend, precision, ctx)
        inputs = {
            "contract": contract_hash(model), "backend": backend_name, "precision": precision or "original",
            "identity": without_paths(identity), "images": self.images_fingerprint(), "mapgate": __version__,
            "code": code_fingerprint(), "frameworks": framework_versions(),
        }
        if self.batch_size > 1:  # a batched engine may differ from batch 1 by its own numeric noise
            inputs["batch_size"] = self.batch_size
        fresh: list[Any] = []  # the DetectionRun, when detections were computed (not loaded) here

        def _detect() -> Any:
            target = f"{backend_name}:{precision}" if precision else backend_name
            try:
                with backend.runner(model, precision, ctx) as runner:
                    fault_point("infer")
                    run = run_detections(model, runner, self.dataset, progress=self.progress,
                                         desc=f"{model.name} [{backend_name}:{precision or 'original'}]",
                                         workers=self.workers, batch_size=self.batch_size)
                    if runner.artifact is not None:
                        identity.setdefault("artifact", str(runner.artifact))
            except Exception as exc:
                if isinstance(exc, MapgateError) or is_environment(exc):
                    raise
                # a framework that cannot load or run the model (OpenVINO, OpenCV's readNet, ONNX Runtime):
                # one line here, its traceback in the side's folder
                raise InferenceError(f"{third_party_message(model.name, f'loading and running {target}', exc)} "
                                     f"[traceback: {self._write_traceback(model, target, exc)}]") from exc
            fresh.append(run)
            return run

        def _build(out: Path) -> dict[str, Any]:
            run = _detect()
            out.write_bytes(orjson.dumps(run.detections))
            return {"timings_ms": run.timings_ms, "image_ids": run.image_ids}

        kind = f"detections-{backend_name}-{precision or 'orig'}"
        if self.use_cache and identity.get("cacheable", True):
            cache = ArtifactCache(self.engines_dir)
            slot = cache.slot(model.name, kind, inputs, ".json")
            detections, timings = cache.get_or_build(slot, _build, load=_load_cached).value
            cache_key = slot.key
        else:
            run = _detect()
            detections, timings = run.detections, run.timings_ms
            cache_key = None
        preflight.class_space_hint(model, detections)
        per_image = self._per_image(detections)
        side = Side(model.name, backend_name, precision, detections, per_image.metrics, timings, identity,
                    from_cache=not fresh, per_image=per_image, cache_key=cache_key)
        side.directory = self._write_side(model, side)
        return side

    def _write_traceback(self, model: ModelSpec, target: str, exc: BaseException) -> Path:
        path = (self.side_dir or self.case_dir(model.name, target)) / "error.txt"
        write_bytes_atomic(path, ("\n".join(traceback_lines(exc)) + "\n").encode())
        return path

    def images_fingerprint(self) -> str:
        """The data set's content key, its image hashes remembered under the engines dir across runs."""
        with remembered_hashes(self.engines_dir):
            return self.dataset.fingerprint

    def _per_image(self, detections: list[dict[str, Any]]) -> Any:
        """One evaluation per side: its per-image matching serves both the metrics and the bootstrap."""
        return per_image_results(self.ground_truth, detections, self.dataset.image_ids, label=self.dataset.label)

    def _identity(self, model: ModelSpec, backend: Any, precision: str | None, ctx: BuildContext) -> dict[str, Any]:
        """What identifies the engine, without starting the framework where the files tell enough: the
        backend's framework versions (its ``facts``) and the artifact's hash, or the backend's own
        ``identity(model, precision, ctx)`` when it declares one (TensorRT engines, OpenVINO's device
        precision)."""
        custom = getattr(backend, "identity", None)
        if custom is not None:
            ident = dict(custom(model, precision, ctx))
        else:
            ident = backend.facts.artifact_identity(model, None if precision is None else f"{backend.name}:{precision}", ctx)
        ident.setdefault("frameworks", backend.facts.versions())
        return ident

    def _write_side(self, model: ModelSpec, side: Side) -> Path:
        d = self.side_dir or self.case_dir(model.name, side.target)
        # half-written files of killed runs (once per process; `eval --out DIR` is the user's: only DIR itself)
        sweep(self.side_dir or self.reports_dir, max_depth=0 if self.side_dir else 4)
        data = orjson.dumps(side.detections)
        mark_incomplete(d, "a mapgate run writing this side")
        write_bytes_atomic(d / "detections.json", data)
        fault_point("report")
        metrics = side.metrics.to_dict()
        metrics.update({
            # what a stored reference is checked against before it is trusted (`compare --ref DIR`)
            "detections_sha256": sha256_bytes(data), "detections_count": len(side.detections),
            "model": model.name, "backend": side.backend, "precision": side.precision or "original",
            "identity": side.identity, "contract": contract(model), "contract_hash": contract_hash(model),
            "timings_ms_per_image": side.timings_ms, "detections_from_cache": side.from_cache,
            "mapgate_version": __version__,
        })
        shard = getattr(self.dataset, "shard_info", None)
        if shard is not None:  # what `mapgate merge` checks before joining shards
            metrics["shard"] = {**shard, "detections_sha256": sha256_bytes(data)}
        write_json_atomic(d / "metrics.json", metrics)
        mark_complete(d)
        return d

    # -- stored reference -------------------------------------------------------------------
    def stored_side(self, model_name: str, detections_json: Path) -> Side:
        """A reference run made elsewhere (e.g. TF on a workstation), checked against this run's
        image set and contract before it is trusted."""
        model = self.model(model_name)
        detections_json = Path(detections_json)
        if detections_json.is_dir():
            detections_json = detections_json / "detections.json"
        meta_path = detections_json.with_name("metrics.json")
        if is_incomplete(detections_json.parent):
            raise DataError(f"stored reference {detections_json.parent}: marked incomplete ({INCOMPLETE}): the run "
                            "that wrote it was killed or is still running; re-run it")
        if not detections_json.is_file() or not meta_path.is_file():
            raise DataError(f"stored reference {detections_json}: needs detections.json and metrics.json side by side "
                            "(as written by `mapgate eval --out DIR`)")
        try:
            meta = json.loads(meta_path.read_bytes())
            raw = detections_json.read_bytes()
            detections = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"stored reference {detections_json.parent}: malformed JSON ({exc})") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), dict):
            raise DataError(f"stored reference {meta_path}: not a mapgate metrics.json (no 'dataset' object)")
        want_sha, want_n = meta.get("detections_sha256"), meta.get("detections_count")
        if not isinstance(want_sha, str) or type(want_n) is not int:
            raise DataError(f"stored reference {meta_path}: no 'detections_sha256'/'detections_count' record, so "
                            f"{detections_json.name} cannot be checked; re-run `mapgate eval --out DIR` to store it again")
        if sha256_bytes(raw) != want_sha or not isinstance(detections, list) or len(detections) != want_n:
            got = len(detections) if isinstance(detections, list) else type(detections).__name__
            raise DataError(f"stored reference {detections_json}: its content (sha256 {sha256_bytes(raw)[:12]}..., "
                            f"{got} detections) is not what {meta_path.name} records (sha256 {want_sha[:12]}..., "
                            f"{want_n} detections): the file was changed after `mapgate eval` wrote it. "
                            "Re-run the reference, or restore the file")
        if meta.get("contract_hash") != contract_hash(model):
            raise ConfigError(f"stored reference {meta_path}: its contract hash {meta.get('contract_hash')} differs "
                              f"from model {model_name!r}'s {contract_hash(model)} (model files or pre/post-processing "
                              "changed); re-run the reference with this manifest")
        ids = meta.get("dataset", {}).get("image_ids")
        if ids != list(self.dataset.image_ids):
            raise ConfigError(f"stored reference {meta_path}: its image set ({len(ids or [])} images) differs from "
                              f"this run's ({self.dataset.label}); use the same --coco-root/--max-images")
        try:
            per_image = self._per_image(detections)
        except ContractError as exc:
            raise DataError(f"stored reference {detections_json}: {exc}") from exc
        return Side(model_name, f"stored:{meta.get('backend', '?')}", None, detections, per_image.metrics,
                    meta.get("timings_ms_per_image", {}), {"stored": str(detections_json),
                                                           "sha256": verified_sha256(detections_json)},
                    from_cache=True, per_image=per_image, cache_key=verified_sha256(detections_json))

    # -- comparison -------------------------------------------------------------------------
    def prepare(self, model_name: str, opt_target: str) -> None:
        """Everything of a comparison before its verdict, which can be an error rather than a failed gate:
        the optimized target's conversion first (it fails in seconds, the reference can take minutes),
        then the reference run and the optimized run. :meth:`compare` reuses both sides."""
        model = self.model(model_name)
        backend_name, precision = parse_target(opt_target)
        backend = get_backend(backend_name)
        if backend.availability().ok:
            preflight.check(model)
            self._identity(model, backend, precision, self.build_context(calibration=precision == "int8"))
        self._reference(model_name, opt_target, None)
        self.side(model_name, opt_target)

    def _reference(self, model_name: str, opt_target: str, ref: str | Path | None) -> Side:
        model = self.model(model_name)
        if ref is not None and not is_backend_ref(str(ref)):
            ref_side = self.stored_side(model_name, Path(ref))
        else:
            ref_side = self.side(model_name, None if ref is None else str(ref))
        if len(ref_side.detections) == 0:
            # both sides detecting nothing would "agree 0/0 (100%)" and pass: no reference, no verdict
            # (checked before the optimized side runs, which can take minutes)
            raise DataError(f"model {model_name!r}: the reference {ref_side.target} made no detections on "
                            f"{self.dataset.label}, so there is nothing to compare {opt_target} against. Check the "
                            f"model's preprocessing and postprocessing in {model.manifest_path} (scale, class_space, "
                            "score_threshold) and its files")
        return ref_side

    def compare(self, model_name: str, opt_target: str, ref: str | Path | None = None,
                tolerance: float | None = None) -> Verdict:
        model = self.model(model_name)
        _, precision = parse_target(opt_target)  # a bad target fails before minutes of reference inference
        ref_side = self._reference(model_name, opt_target, ref)
        opt_side = self.side(model_name, opt_target)
        tol, source = resolve_tolerance(precision, model.tolerances, model.manifest_path.name, tolerance)
        verdict = build_verdict(
            model=model_name, ref=ref_side.describe(), opt=opt_side.describe(), dataset=self.dataset.label,
            ref_metrics=ref_side.metrics, opt_metrics=opt_side.metrics, ci=self._bootstrap(ref_side, opt_side),
            agreement=detection_agreement(ref_side.detections, opt_side.detections), tolerance=tol,
            tolerance_source=source, expected=model.expected_verdict(opt_target, this_cpu().saturates),
            ref_detections=len(ref_side.detections),
        )
        verdict.extras["attribution"] = self._attribution(ref_side, opt_side)
        key = (model_name, opt_side.target)
        verdict.speed = self.recorded_speed[key] if key in self.recorded_speed else self._speed(model, ref_side, opt_side)
        if opt_side.target in QDQ_TARGETS and opt_side.target not in model.prebuilt:
            verdict.int8_form = form_of(model)

        d = self.case_dir(model_name, opt_side.target)
        mark_incomplete(d, "a mapgate comparison")
        write_json_atomic(d / "comparison.json", report.comparison_record(verdict))
        report.write_case(verdict, d, ref_side.metrics, opt_side.metrics)
        mark_complete(d)
        return verdict

    def _speed(self, model: ModelSpec, ref: Side, opt: Side) -> dict[str, Any] | None:
        """An FP16/INT8 engine timed beside its own backend's FP32 on the first evaluation images
        (engine only, batch 1): what the precision buys. A vendor's FP16/INT8 file whose backend has no
        FP32 of the model (YOLOX-nano's TFLite pair) is timed beside the reference engine running the
        original instead (``fp32_backend`` names it): the speed a user trades the original for. None
        for FP32, or where neither exists."""
        backend = get_backend(opt.backend)
        if opt.precision not in ("fp16", "int8"):
            return None
        if "fp32" in backend.precisions and backend.facts.can_make(model, f"{opt.backend}:fp32"):
            fp32_backend, fp32_precision = backend, "fp32"
        elif opt.target in model.prebuilt and ref.precision is None and is_backend_ref(ref.backend) \
                and get_backend(ref.backend).availability().ok:  # a stored reference may name an absent one
            fp32_backend, fp32_precision = get_backend(ref.backend), None
        else:
            return None
        ids = list(self.dataset.image_ids)[:SPEED_IMAGES]
        batches = [load_batch(model, [self.dataset.path_of(i)]) for i in ids]
        with fp32_backend.runner(model, fp32_precision, self.build_context(calibration=False)) as fp32, \
                backend.runner(model, opt.precision, self.build_context(calibration=opt.precision == "int8")) as optimized:
            return speed_vs_fp32(fp32, optimized, batches, opt.backend, fp32_backend=fp32_backend.name).to_dict()

    def case_dir(self, model_name: str, target: str) -> Path:
        """The folder of one comparison's artifacts (``:`` of a target becomes ``-``)."""
        return self.run_dir / safe_component(model_name, "model name") / target_component(target)

    def _attribution(self, ref: Side, opt: Side) -> dict[str, Any]:
        """Where the AP points went (TIDE error types, by size, worst classes): ~0.4 s on 206 images."""
        return attribute(self.ground_truth, ref.detections, opt.detections, self.dataset.image_ids,
                         ref_metrics=ref.metrics, opt_metrics=opt.metrics)

    def _bootstrap(self, ref: Side, opt: Side) -> dict[str, Any]:
        """The paired bootstrap CI, cached by the content keys of both detection sets (it is a pure
        function of them, the images, the resample count and the seed)."""
        def compute() -> dict[str, Any]:
            return paired_bootstrap(ref.per_image, opt.per_image, n_resamples=self.bootstrap_resamples,
                                    seed=self.bootstrap_seed).to_dict()

        if not (self.use_cache and ref.cache_key and opt.cache_key):
            return compute()
        # the detections resampled, by content: a cache entry edited with its recorded hash keeps its
        # slot key, and must not get the CI of the detections it held before
        inputs = {"ref": ref.cache_key, "opt": opt.cache_key, "images": self.images_fingerprint(),
                  "ref_detections": sha256_bytes(orjson.dumps(ref.detections)),
                  "opt_detections": sha256_bytes(orjson.dumps(opt.detections)),
                  "n_resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed, "code": code_fingerprint()}

        def _build(out: Path) -> None:
            out.write_bytes(orjson.dumps(compute()))

        cache = ArtifactCache(self.engines_dir)
        return cache.get_or_build(cache.slot(ref.model, "bootstrap", inputs, ".json"), _build,
                                  load=_load_cached_dict).value

    def write_env(self) -> Path:
        path = self.run_dir / "env.json"
        write_json_atomic(path, environment())
        return path


def is_backend_ref(ref: str) -> bool:
    """``compare --ref``: a known backend name (or BACKEND:PRECISION) is always a backend, even if a
    file of that name exists here; anything else is a stored detections.json or its folder."""
    return ref.partition(":")[0] in all_backends()


RUN_ID_ENV = "MAPGATE_RUN_ID"


def default_run_id() -> str:
    """One id per run: the pytest controller sets MAPGATE_RUN_ID so xdist workers share it; the pid
    keeps two runs started in the same second apart."""
    return os.environ.get(RUN_ID_ENV) or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _load_cached(data: bytes, provenance: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Cached detections and their run's timings; anything malformed is a damaged entry (rebuilt)."""
    try:
        detections = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptArtifact(f"not JSON ({exc})") from exc
    if not isinstance(detections, list) or not all(isinstance(d, dict) for d in detections):
        raise CorruptArtifact("not a list of detection objects")
    timings = provenance.get("timings_ms")
    if not isinstance(timings, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in timings.items()):
        raise CorruptArtifact("its provenance field 'timings_ms' is not an object of numbers")
    return detections, timings


def _load_cached_dict(data: bytes, provenance: dict[str, Any]) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptArtifact(f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CorruptArtifact("not a JSON object")
    return value


def environment() -> dict[str, Any]:
    """Versions and hardware for env.json: what a re-check needs to know about this run."""
    # libraries every run uses or converts with; each backend's frameworks come from its facts
    libraries = ("numpy", "pycocotools", "numba", "onnx", "tf2onnx")
    env: dict[str, Any] = {
        "mapgate": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {**{m: version_of(m) for m in libraries}, **framework_versions()},
        "int8_dot_product": this_cpu().to_dict(),
    }
    try:
        env["device"] = device_fingerprint()
    except ImportError:
        env["device"] = {"cpu": platform.processor()}
    return env
