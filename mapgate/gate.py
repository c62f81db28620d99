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

from mapgate import __version__
from mapgate.backends import get_backend, parse_target
from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.compare import Verdict, build_verdict, detection_agreement
from mapgate.convert.cache import cached_artifact, provenance_path
from mapgate.dataset import CocoDataset
from mapgate.errors import BackendUnavailable, ConfigError, ContractError, DataError
from mapgate.files import verified_sha256
from mapgate.fsutil import sha256_json, write_bytes_atomic, write_json_atomic
from mapgate.manifest import DEFAULT_TOLERANCES, ModelSpec

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO / "fixtures" / "models.toml"
DEFAULT_ENGINES = REPO / "engines"
DEFAULT_REPORTS = REPO / "reports"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of mapgate's own source: a decoder or NMS fix must invalidate cached detections,
    even before anyone bumps the version (costs ~5 ms for the whole package)."""
    package = Path(__file__).resolve().parent
    return sha256_json([[str(p.relative_to(package)), verified_sha256(p)] for p in sorted(package.rglob("*.py"))])


@lru_cache(maxsize=1)
def framework_versions() -> dict[str, str | None]:
    """Versions of every inference framework: an upgraded OpenCV or ONNX Runtime must not reuse
    detections made by the old one (read from package metadata: no imports)."""
    from mapgate.optional import version_of

    return {m: version_of(m) for m in ("cv2", "onnxruntime", "ai_edge_litert", "tensorflow", "tensorrt")}


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
    _sides: dict[tuple[str, str], Side] = field(default_factory=dict)

    @property
    def ground_truth(self) -> Any:
        """The indexed ground truth, built once per gate (every side is evaluated against it)."""
        if "_gt" not in self.__dict__:
            from mapgate.evaluate import load_ground_truth

            try:
                self.__dict__["_gt"] = load_ground_truth(self.dataset.gt)
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

    def build_context(self) -> BuildContext:
        calib = calibration_images(self.calib_dir) if self.calib_dir else calibration_images()
        return BuildContext(engines_dir=self.engines_dir, calib_images=calib,
                            evaluated_image_ids=frozenset(self.dataset.image_ids),
                            calib_image_ids=frozenset(image_ids_of(calib)), progress=self.progress)

    # -- one side ---------------------------------------------------------------------------
    def side(self, model_name: str, target: str | None = None) -> Side:
        """Run (or load from cache) ``model`` on ``target`` (``BACKEND:PRECISION``); None = reference."""
        model = self.model(model_name)
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

    def _run_side(self, model: ModelSpec, backend_name: str, precision: str | None) -> Side:
        backend = get_backend(backend_name)
        available = backend.availability()
        if not available.ok:
            raise BackendUnavailable(backend_name, available.reason)
        ctx = self.build_context()
        identity = self._identity(model, backend, precision, ctx)
        inputs = {
            "contract": contract_hash(model), "backend": backend_name, "precision": precision or "original",
            "identity": identity, "images": self.dataset.fingerprint, "mapgate": __version__,
            "code": code_fingerprint(), "frameworks": framework_versions(),
        }
        fresh: list[Any] = []  # the DetectionRun, when detections were computed (not loaded) here

        def _detect() -> Any:
            from mapgate.detections import run_detections

            with backend.runner(model, precision, ctx) as runner:
                run = run_detections(model, runner, self.dataset, progress=self.progress,
                                     desc=f"{model.name} [{backend_name}:{precision or 'original'}]")
                if runner.artifact is not None:
                    identity.setdefault("artifact", str(runner.artifact))
            fresh.append(run)
            return run

        def _build(out: Path) -> dict[str, Any]:
            run = _detect()
            out.write_bytes(orjson.dumps(run.detections))
            return {"timings_ms": run.timings_ms, "image_ids": run.image_ids}

        kind = f"detections-{backend_name}-{precision or 'orig'}"
        if self.use_cache and identity.get("cacheable", True):
            path = cached_artifact(self.engines_dir, model.name, kind, inputs, _build, ".json")
            detections = _load_cached(path)
            if detections is None:  # damaged entry: discard and recompute, never trust it
                path.unlink(missing_ok=True)
                provenance_path(path).unlink(missing_ok=True)
                path = cached_artifact(self.engines_dir, model.name, kind, inputs, _build, ".json")
                detections = _load_cached(path) or []
            timings = json.loads(provenance_path(path).read_text()).get("timings_ms", {})
            cache_key = path.stem
        else:
            run = _detect()
            detections, timings = run.detections, run.timings_ms
            cache_key = None
        per_image = self._per_image(detections)
        side = Side(model.name, backend_name, precision, detections, per_image.metrics, timings, identity,
                    from_cache=not fresh, per_image=per_image, cache_key=cache_key)
        side.directory = self._write_side(model, side)
        return side

    def _per_image(self, detections: list[dict[str, Any]]) -> Any:
        """One evaluation per side: its per-image matching serves both the metrics and the bootstrap."""
        from mapgate.bootstrap import per_image_results

        return per_image_results(self.ground_truth, detections, self.dataset.image_ids, label=self.dataset.label)

    def _identity(self, model: ModelSpec, backend: Any, precision: str | None, ctx: BuildContext) -> dict[str, Any]:
        """Hashes of what will run, without starting the framework where the files tell enough."""
        custom = getattr(backend, "identity", None)
        if custom is not None:
            return dict(custom(model, precision, ctx))
        from mapgate.convert import artifact_for

        target = None if precision is None else f"{backend.name}:{precision}"
        artifact = artifact_for(model, target, ctx)
        return {"artifact": str(artifact), "artifact_sha256": verified_sha256(artifact),
                "model_files": {r: f.sha256 for r, f in model.files.items()}}

    def _write_side(self, model: ModelSpec, side: Side) -> Path:
        d = self.side_dir or self.run_dir / model.name / side.target.replace(":", "-")
        write_bytes_atomic(d / "detections.json", orjson.dumps(side.detections))
        metrics = side.metrics.to_dict()
        metrics.update({
            "model": model.name, "backend": side.backend, "precision": side.precision or "original",
            "identity": side.identity, "contract": contract(model), "contract_hash": contract_hash(model),
            "timings_ms_per_image": side.timings_ms, "detections_from_cache": side.from_cache,
            "mapgate_version": __version__,
        })
        write_json_atomic(d / "metrics.json", metrics)
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
        if not detections_json.is_file() or not meta_path.is_file():
            raise DataError(f"stored reference {detections_json}: needs detections.json and metrics.json side by side "
                            "(as written by `mapgate eval --out DIR`)")
        try:
            meta = json.loads(meta_path.read_text())
            detections = json.loads(detections_json.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"stored reference {detections_json.parent}: malformed JSON ({exc})") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), dict):
            raise DataError(f"stored reference {meta_path}: not a mapgate metrics.json (no 'dataset' object)")
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
    def compare(self, model_name: str, opt_target: str, ref: str | Path | None = None,
                tolerance: float | None = None) -> Verdict:
        model = self.model(model_name)
        _, precision = parse_target(opt_target)  # a bad target fails before minutes of reference inference
        if ref is not None and (str(ref).endswith(".json") or "/" in str(ref) or Path(ref).exists()):
            ref_side = self.stored_side(model_name, Path(ref))
        else:
            ref_side = self.side(model_name, None if ref is None else str(ref))
        opt_side = self.side(model_name, opt_target)
        if tolerance is not None:
            tol, source = tolerance, "command line"
        elif precision in model.tolerances:
            tol, source = model.tolerances[precision], f"manifest {model.manifest_path.name}, {precision}"
        else:
            tol, source = DEFAULT_TOLERANCES[precision], f"default for {precision}"
        verdict = build_verdict(
            model=model_name, ref=ref_side.describe(), opt=opt_side.describe(), dataset=self.dataset.label,
            ref_metrics=ref_side.metrics, opt_metrics=opt_side.metrics, ci=self._bootstrap(ref_side, opt_side),
            agreement=detection_agreement(ref_side.detections, opt_side.detections), tolerance=tol,
            tolerance_source=source, expected=model.expected_verdicts.get(opt_target, "pass"),
            attribution=self._attribution(ref_side, opt_side),
        )
        d = self.run_dir / model_name / opt_side.target.replace(":", "-")
        write_json_atomic(d / "comparison.json", verdict.to_dict())
        write_bytes_atomic(d / "summary.md", verdict.summary_markdown().encode())
        return verdict

    def _attribution(self, ref: Side, opt: Side) -> dict[str, Any]:
        """Where the AP points went (TIDE error types, by size, worst classes): ~0.4 s on 206 images."""
        from mapgate.attribution import attribute

        return attribute(self.ground_truth, ref.detections, opt.detections, self.dataset.image_ids,
                         ref_metrics=ref.metrics, opt_metrics=opt.metrics)

    def _bootstrap(self, ref: Side, opt: Side) -> dict[str, Any]:
        """The paired bootstrap CI, cached by the content keys of both detection sets (it is a pure
        function of them, the images, the resample count and the seed)."""
        from mapgate.bootstrap import paired_bootstrap

        def compute() -> dict[str, Any]:
            return paired_bootstrap(ref.per_image, opt.per_image, n_resamples=self.bootstrap_resamples,
                                    seed=self.bootstrap_seed).to_dict()

        if not (self.use_cache and ref.cache_key and opt.cache_key):
            return compute()
        inputs = {"ref": ref.cache_key, "opt": opt.cache_key, "images": self.dataset.fingerprint,
                  "n_resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed, "code": code_fingerprint()}

        def _build(out: Path) -> None:
            out.write_bytes(orjson.dumps(compute()))

        path = cached_artifact(self.engines_dir, ref.model, "bootstrap", inputs, _build, ".json")
        cached = _load_cached_dict(path)
        if cached is None:  # damaged: recompute rather than trust it
            cached = compute()
        return cached

    def write_env(self) -> Path:
        path = self.run_dir / "env.json"
        write_json_atomic(path, environment())
        return path


RUN_ID_ENV = "MAPGATE_RUN_ID"


def default_run_id() -> str:
    """One id per run: the pytest controller sets MAPGATE_RUN_ID so xdist workers share it; the pid
    keeps two runs started in the same second apart."""
    return os.environ.get(RUN_ID_ENV) or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _load_cached(path: Path) -> list[dict[str, Any]] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, list) else None


def _load_cached_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def environment() -> dict[str, Any]:
    """Versions and hardware for env.json: what a re-check needs to know about this run."""
    from mapgate.optional import version_of

    env: dict[str, Any] = {
        "mapgate": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {m: version_of(m) for m in ("numpy", "pycocotools", "cv2", "onnx", "onnxruntime", "tensorflow",
                                                 "tf2onnx", "ai_edge_litert", "tensorrt", "polygraphy", "numba")},
    }
    try:
        from mapgate.fingerprint import device_fingerprint

        env["device"] = device_fingerprint()
    except ImportError:
        env["device"] = {"cpu": platform.processor()}
    return env


def load_models(manifest_files: list[Path] | None = None) -> dict[str, ModelSpec]:
    from mapgate.manifest import load_manifests

    return load_manifests([DEFAULT_MANIFEST, *(manifest_files or [])])

