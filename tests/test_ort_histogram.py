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
from mapgate.errors import ConversionError

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
    original, collect = calibrate.HistogramCollector, calibrate.HistogramCalibrater.collect_data
    with contextlib.suppress(RuntimeError), fast_percentile_histograms():
        assert calibrate.HistogramCollector is not original
        assert issubclass(calibrate.HistogramCollector, original)
        assert calibrate.HistogramCalibrater.collect_data is not collect
        raise RuntimeError("a failed build")
    assert calibrate.HistogramCollector is original
    assert calibrate.HistogramCalibrater.collect_data is collect


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


# ---- the streaming collect_data: two passes over the images, one image's outputs held at a time ----

def _tiny_model(path: Path) -> Path:
    """x -> Relu, Neg, and a float16 round trip (a tensor the fast histogram leaves to ONNX Runtime)."""
    onnx = pytest.importorskip("onnx")
    h, tp = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Neg", ["x"], ["n"]),
             h.make_node("Cast", ["r"], ["h"], to=tp.FLOAT16), h.make_node("Cast", ["h"], ["y"], to=tp.FLOAT),
             h.make_node("Add", ["y", "n"], ["z"])]
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", tp.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("z", tp.FLOAT, [1, 3, 8, 8])])
    proto = onnx.shape_inference.infer_shapes(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


class _Images:
    """A calibration reader over fixed arrays; ``second`` replaces them after a rewind."""

    def __init__(self, arrays: list[np.ndarray], second: list[np.ndarray] | None = None) -> None:
        self.arrays, self.second, self.i = arrays, second, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return {"x": self.arrays[self.i - 1]} if self.i <= len(self.arrays) else None

    def rewind(self) -> None:
        self.arrays, self.i = self.second or self.arrays, 0


def _calibrated(tmp_path: Path, reader: _Images, streaming: bool, one_pass: str = "ort") -> tuple[dict, dict]:
    """``streaming``: mapgate's two passes; else one pass with ``one_pass``'s collector ("ort" or "fast")."""
    model = _tiny_model(tmp_path / "tiny.onnx")
    with contextlib.ExitStack() as stack:
        if streaming:
            stack.enter_context(fast_percentile_histograms())
        elif one_pass == "fast":
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(calibrate, "HistogramCollector",
                                                                      collector_class(calibrate))
        c = calibrate.create_calibrator(model, augmented_model_path=str(tmp_path / f"aug-{streaming}.onnx"),
                                        calibrate_method=calibrate.CalibrationMethod.Percentile,
                                        extra_options={"symmetric": True, "num_bins": 128, "percentile": 99.9})
        with contextlib.redirect_stdout(None):
            c.collect_data(reader)
        assert c.intermediate_outputs == []
        return dict(c.collector.histogram_dict), dict(c.compute_data().data)


BATCHES = [(RNG.standard_normal((1, 3, 8, 8)) * s).astype(F32) for s in (1.0, 3.0, 0.1, 2.0)]


def _range_bytes(ranges: dict) -> list[tuple[str, bytes]]:
    return [(t, np.asarray(r.range_value).tobytes()) for t, r in ranges.items()]


def test_two_passes_store_exactly_the_histograms_and_ranges_of_onnx_runtimes_one_pass(tmp_path: Path) -> None:
    ours, our_ranges = _calibrated(tmp_path, _Images(BATCHES), streaming=True)
    one_pass, one_pass_ranges = _calibrated(tmp_path, _Images(BATCHES), streaming=False, one_pass="fast")
    theirs, their_ranges = _calibrated(tmp_path, _Images(BATCHES), streaming=False)
    assert set(ours) == set(theirs) == {"x", "r", "n", "h", "y", "z"}  # "x" also the graph input, "h" float16
    assert all(_same(ours[t], theirs[t]) for t in theirs)
    assert sorted(_range_bytes(our_ranges)) == sorted(_range_bytes(their_ranges))
    # in the one-pass fast collector's order too (ONNX Runtime's own tensors last): the same ranges file
    assert list(ours) == list(one_pass) and _range_bytes(our_ranges) == _range_bytes(one_pass_ranges)


def test_images_that_change_between_the_passes_are_an_error_not_a_quiet_histogram(tmp_path: Path) -> None:
    changed = [b * 1.5 for b in BATCHES]
    with pytest.raises(ConversionError, match="differs between two runs"):
        _calibrated(tmp_path, _Images(BATCHES, second=changed), streaming=True)
    with pytest.raises(ConversionError, match="changed between the two passes"):
        _calibrated(tmp_path, _Images(BATCHES, second=BATCHES[:2]), streaming=True)


def test_a_nan_in_a_calibration_tensor_fails_as_in_onnx_runtime(tmp_path: Path) -> None:
    bad = [*BATCHES[:2], np.full((1, 3, 8, 8), np.nan, F32)]
    outcomes = []
    for streaming in (True, False):
        with pytest.raises((ValueError, AssertionError)) as info:
            _calibrated(tmp_path, _Images(bad), streaming=streaming)
        outcomes.append((info.type, str(info.value)))
    assert outcomes[0] == outcomes[1]


def test_a_reader_that_cannot_rewind_gets_onnx_runtimes_one_pass(tmp_path: Path) -> None:
    class OnePass(_Images):
        rewind = None  # type: ignore[assignment]

    ours, _ = _calibrated(tmp_path, OnePass(BATCHES), streaming=True)
    theirs, _ = _calibrated(tmp_path, _Images(BATCHES), streaming=False)
    assert all(_same(ours[t], theirs[t]) for t in theirs)
