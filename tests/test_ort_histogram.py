"""mapgate's Percentile histogram collector stores, bit for bit, what ONNX Runtime's own stores, and
hands every case it does not cover back to ONNX Runtime (so ONNX Runtime's own errors still happen)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images
from mapgate.convert import onnx_for, ort_quant
from mapgate.convert.ort_histogram import collector_class, fast_percentile_histograms

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
ARGS = {"method": "percentile", "symmetric": True, "num_bins": 2048, "num_quantized_bins": 128,
        "percentile": 99.999, "scenario": "same"}
RNG = np.random.default_rng(0)
F32 = np.float32


def _with_its_own_bin_edges(scale: float) -> list[np.ndarray]:
    """Data plus numpy's bin edges of it: values where numpy's float32 bin index is one off and its
    corrections decide the bin (both directions occur at this scale)."""
    x = np.abs(np.random.default_rng(1).standard_normal(200_000) * scale).astype(F32)
    edges = np.histogram_bin_edges(x, bins=2048).astype(F32)
    return [np.concatenate([x, edges[1:-1]])]


CASES = {
    "relu outputs": [np.maximum(RNG.standard_normal((1, 16, 20, 20)), 0).astype(F32) for _ in range(5)],
    "signed": [(RNG.standard_normal((1, 8, 30, 30)) * 3).astype(F32) for _ in range(5)],
    "all negative": [(-np.abs(RNG.standard_normal((2, 50))) - 0.5).astype(F32) for _ in range(3)],
    "constant": [np.full((1, 4, 4), 2.5, F32) for _ in range(3)],
    "zeros": [np.zeros((1, 4, 4), F32) for _ in range(2)],
    "signed zeros": [np.array([-0.0, 0.0, 1.0, -1.0], F32), np.array([0.0, -0.0, 0.5, 2.0], F32)],
    "values on the edges": [np.linspace(0, 1, 2049, dtype=F32), np.linspace(-1, 0.5, 2049, dtype=F32)],
    "values on numpy's own bin edges": _with_its_own_bin_edges(37.7),
    "subnormal": [np.array([1e-30, 2e-30, 3e-38, 1e-45], F32)],
    "one array, not a list": np.arange(-7, 9, dtype=F32).reshape(2, 8),
}


def _stored(collector_type: type, data: dict[str, object], *more: dict[str, object]) -> dict[str, tuple]:
    c = collector_type(**ARGS)
    for batch in (data, *more):
        c.collect_absolute_value({k: [a.copy() for a in v] if isinstance(v, list) else v.copy()
                                  for k, v in batch.items()})
    return c.histogram_dict


def _same(ours: tuple, theirs: tuple) -> bool:
    """Equal to the bit: counts, edges (signed zeros included), min, max and their numpy types."""
    return all(type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype
               and np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_collector_stores_exactly_what_onnx_runtime_stores(name: str) -> None:
    fast = _stored(collector_class(calibrate), {name: CASES[name]})
    ort = _stored(calibrate.HistogramCollector, {name: CASES[name]})
    assert _same(fast[name], ort[name])


def test_a_tensor_seen_again_is_merged_by_onnx_runtimes_own_code() -> None:
    first, again = {"t": CASES["signed"]}, {"t": [a * 2 for a in CASES["signed"]]}
    assert _same(_stored(collector_class(calibrate), first, again)["t"],
                 _stored(calibrate.HistogramCollector, first, again)["t"])


def _outcome(collector_type: type, data: dict[str, object]) -> tuple:
    try:
        stored = _stored(collector_type, data)
    except (ValueError, AssertionError) as exc:  # what ONNX Runtime (or numpy under it) raises
        return type(exc), str(exc)
    return tuple(np.asarray(v).tobytes() for entry in stored.values() for v in entry)


@pytest.mark.parametrize(("label", "arrays"), [
    ("float16", [a.astype(np.float16) for a in CASES["signed"]]),
    ("NaN", [np.array([1.0, np.nan], F32)]),
    ("inf", [np.array([1.0, np.inf], F32)]),
    ("ragged batches", [np.zeros((1, 4), F32), np.zeros((1, 5), F32)]),
    ("empty", [np.zeros((0, 4), F32)]),
])
def test_what_it_does_not_cover_ends_exactly_as_in_onnx_runtime(label: str, arrays: list[np.ndarray]) -> None:
    theirs = _outcome(calibrate.HistogramCollector, {label: arrays})
    assert _outcome(collector_class(calibrate), {label: arrays}) == theirs
    if label != "empty":  # each of these is an error in ONNX Runtime: the fast path must not hide it
        assert isinstance(theirs[0], type)


def test_the_collector_is_onnx_runtimes_again_after_the_block_even_after_an_error() -> None:
    original = calibrate.HistogramCollector
    with contextlib.suppress(RuntimeError), fast_percentile_histograms():
        assert calibrate.HistogramCollector is not original
        assert issubclass(calibrate.HistogramCollector, original)
        raise RuntimeError("a failed build")
    assert calibrate.HistogramCollector is original


@pytest.mark.slow  # two Percentile INT8 builds of one model on 4 calibration images, ~10 s
def test_a_percentile_int8_build_is_byte_identical_with_onnx_runtimes_collector(bundled_models, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = bundled_models["picodet-s-416"]
    source = onnx_for(model, BuildContext(engines_dir=tmp_path / "e", progress=False))
    images = calibration_images()[:4]
    ours, theirs = tmp_path / "fast.onnx", tmp_path / "ort.onnx"
    ort_quant.quantize(source, ours, model, images, method="percentile")
    monkeypatch.setattr(ort_quant, "fast_percentile_histograms", contextlib.nullcontext)
    ort_quant.quantize(source, theirs, model, images, method="percentile")
    assert ours.read_bytes() == theirs.read_bytes()
