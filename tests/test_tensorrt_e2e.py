"""TensorRT end to end: real engines for every bundled model that has an ONNX path.

Runs only where ``import tensorrt`` works and a CUDA device exists (a Jetson, or an x86 box
with an NVIDIA GPU); elsewhere every test is skipped with the backend's exact availability
reason. Engines go to the plugin's ``--engines-dir`` (default: the repository's ``engines/``;
``MAPGATE_ENGINES_DIR`` outside the plugin) so later sessions reuse them, which is the point
of the cache.

    pytest -m tensorrt                  # build + reuse + smoke inference
    pytest -m "accuracy and tensorrt"   # the accuracy gate against each model's reference
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mapgate.backends.base import BuildContext, canonical_name
from mapgate.backends.tensorrt import BACKEND
from mapgate.errors import BackendUnavailable, MapgateError

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "models.toml"
PRECISIONS = ("fp32", "fp16", "int8")

pytestmark = pytest.mark.tensorrt


def _bundled_models() -> dict:
    from mapgate.catalog import load_manifest

    return load_manifest(MANIFEST) if MANIFEST.is_file() else {}


def expected_output_names(model: object) -> list[str]:
    """What a runner returns: the manifest's output names in canonical form (``x:0`` -> ``x``)."""
    return [canonical_name(n) for n in model.output_names]  # type: ignore[attr-defined]


def _has_onnx_path(model: object) -> bool:
    from mapgate.backends import get_backend

    return get_backend("tensorrt").facts.can_make(model, "tensorrt:fp32")  # type: ignore[arg-type]


def _build_params() -> list:
    try:
        models = _bundled_models()
    except MapgateError as exc:  # a broken manifest must show up, not silently empty the matrix
        return [pytest.param("manifest", "fp32", marks=pytest.mark.skip(reason=f"bundled manifest: {exc}"))]
    return [pytest.param(name, p, id=f"{name}-{p}") for name, m in models.items() if _has_onnx_path(m)
            for p in PRECISIONS]


@pytest.fixture(scope="module")
def tensorrt_ready() -> None:
    status = BACKEND.availability()
    if not status.ok:
        pytest.skip(status.reason)


def _engines_dir(config: pytest.Config | None = None) -> Path:
    """The mapgate plugin's --engines-dir when it is loaded, so the gate reuses these engines."""
    if config is not None and getattr(config, "mapgate", None) is not None:
        return Path(config.getoption("engines_dir"))
    return Path(os.environ.get("MAPGATE_ENGINES_DIR") or ROOT / "engines")


def _context(config: pytest.Config | None = None) -> BuildContext:
    from mapgate.calibration import calibration_images
    from mapgate.dataset import CocoDataset

    engines = _engines_dir(config)
    images = calibration_images()
    return BuildContext(engines_dir=engines, calib_images=images,
                        evaluated_image_ids=frozenset(CocoDataset().image_ids))


@pytest.mark.parametrize("model_name,precision", _build_params())
def test_engine_builds_then_is_reused(tensorrt_ready: None, request: pytest.FixtureRequest, model_name: str,
                                     precision: str) -> None:
    from mapgate.calibration import calibration_images
    from mapgate.dataset import read_image
    from mapgate.preprocess import preprocess

    model = _bundled_models()[model_name]
    status = BACKEND.precision_availability(precision)
    if not status.ok:
        pytest.skip(status.reason)
    ctx = _context(request.config)
    first = BACKEND.runner(model, precision, ctx)
    try:
        first.activate()
    except BackendUnavailable as exc:  # e.g. converting a TF model to ONNX needs TensorFlow
        pytest.skip(exc.reason)
    try:
        assert first.cache_result is not None
        prov = first.cache_result.provenance
        assert prov["precision"] == precision and prov["model"] == model_name
        batch, _ = preprocess(read_image(calibration_images()[0]), model)
        outputs = first.infer(batch)
        if model.output_names:
            assert list(outputs) == expected_output_names(model)
        assert outputs and all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f")
    finally:
        first.deactivate()

    second = BACKEND.runner(model, precision, ctx)
    with second:
        assert second.cache_result is not None
        assert not second.cache_result.built, f"rebuilt instead of reusing: {second.cache_result.reason}"
        assert second.cache_result.provenance["built_at"] == prov["built_at"]
        assert second.artifact == first.artifact and second.artifact_sha256 == first.artifact_sha256

# The dAP-vs-original assertion for tensorrt:* targets is the collected gate cases (mapgate.toml::MODEL::tensorrt:*)
# (the manifest lists them in `optimized`), which also checks the baselines.
