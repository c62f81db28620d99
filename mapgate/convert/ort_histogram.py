"""ONNX Runtime's Percentile calibration, same histograms: one numba pass per tensor, one image's
outputs held at a time.

ONNX Runtime (1.32) collects the symmetric Percentile histograms in
``HistogramCollector.collect_absolute_value``: per tensor it stacks every calibration batch,
flattens, takes ``np.absolute`` and calls ``np.histogram(|x|, bins=num_bins)`` — four full copies
and numpy's blocked bincount, about 2/3 of an INT8 build's time (PicoDet-S: 12 of 19 s). ``FastHistogramCollector``
computes the same ``(hist, hist_edges, min, max)`` per tensor bin for bin: the edges come from
numpy itself (``np.histogram_bin_edges`` over the same outer edges), and the kernel repeats
numpy's uniform-bin arithmetic in float32 (index = ((|x| - first) / (last - first)) * num_bins,
then the same one-ULP corrections against the edges), so no calibrated range moves.
Anything else (a tensor seen before, float16, NaN or inf, an empty tensor, another method) goes
to ONNX Runtime's own code, which also raises its own errors for NaN/inf.

Keeping the outputs is the other cost: ``HistogramCalibrater.collect_data`` holds every calibration
image's intermediate tensors until the end (SSDLite: 145 MB an image, 14.5 GB for 100, 4M page faults;
30 of its 45 s build). ``streaming_collect_data`` runs the images twice instead, keeping nothing: the
first pass takes each tensor's min, max and min |x| (all the edges depend on), the second counts
each image's |x| into those edges and drops it. Same ``(hist, edges, min, max)`` as the one-pass
collector, bin for bin: counts add, and the second pass checks each image gives the same min and
max as in the first (one calibration thread: ONNX Runtime's CPU kernels are deterministic).

Why by hand: no library computes a numpy-identical histogram without the copies; numba is already
the evaluation kernels' compiler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numba import njit

from mapgate.errors import ConversionError
from mapgate.optional import require


_BLOCK = 16384  # indices of one block stay in L1/L2 between the vectorised and the correcting loop


@njit(cache=True, nogil=True, fastmath=True)
def _min_abs(x: np.ndarray) -> float:
    """min |x| of a flat, all-finite float32 array (finite: checked first, so fastmath's vectorised
    min is exact)."""
    m = abs(x[0])
    for v in x:
        m = min(m, abs(v))
    return m


@njit(cache=True, nogil=True)
def _abs_bincount(x: np.ndarray, edges: np.ndarray, first: np.float32, denom: np.float32,
                  n_bins: np.float32, counts: np.ndarray, idx: np.ndarray) -> None:
    """numpy.histogram's uniform-bin path for |x| (numpy/lib/_histograms_impl.py, ``uniform_bins``):
    the index in float32 exactly as numpy computes it (no fastmath: the division stays a division),
    then its one-ULP corrections against the edges."""
    n = counts.shape[0]
    last = edges[n]
    for start in range(0, x.size, _BLOCK):
        m = min(_BLOCK, x.size - start)
        for j in range(m):
            idx[j] = int(((abs(x[start + j]) - first) / denom) * n_bins)
        for j in range(m):
            a = abs(x[start + j])
            if a < first or a > last:
                continue
            i = idx[j]
            if i == n:
                i -= 1
            if a < edges[i]:
                i -= 1
            elif a >= edges[i + 1] and i != n - 1:
                i += 1
            counts[i] += 1


def _fast_batch(a: Any) -> bool:
    """Whether one batch of a tensor is one the fast path takes (else ONNX Runtime's path decides)."""
    return isinstance(a, np.ndarray) and a.dtype == np.float32 and a.size > 0


def _flat_float32(data: Any) -> list[np.ndarray] | None:
    """The batches of one tensor as flat float32 views, or None where ONNX Runtime's path must decide."""
    arrays = data if isinstance(data, list) else [data]
    if not arrays or not all(_fast_batch(a) for a in arrays):
        return None
    if len({a.shape for a in arrays}) != 1:  # ONNX Runtime stacks the batches and refuses ragged ones
        return None
    return [np.ascontiguousarray(a).reshape(-1) for a in arrays]


def _min_abs_of(arrays: Sequence[np.ndarray], lo: np.float32, hi: np.float32) -> np.float32:
    """min |x| over ``arrays`` whose min and max are ``lo`` and ``hi``: lo itself where nothing is
    negative (ReLU outputs), -hi where nothing is positive, else a scan."""
    return np.abs(lo) if lo >= 0 else (np.abs(hi) if hi <= 0 else np.float32(min(_min_abs(a) for a in arrays)))


class _AbsHistogram:
    """One tensor's ``(hist, edges, min, max)``: the edges from the extremes of all its batches (given),
    then the counts, batch by batch (:meth:`count`); what the one-pass and the two-pass collector share."""

    def __init__(self, lo: np.float32, hi: np.float32, alo: np.float32, num_bins: int) -> None:
        f32 = np.float32
        self.lo, self.hi = lo, hi
        ahi = max(np.abs(lo), np.abs(hi))
        # numpy's own outer edges and bin edges (the +-0.5 widening of an empty range included)
        self.edges = np.histogram_bin_edges(np.array([alo, ahi], dtype=f32), bins=num_bins).astype(f32)
        self.counts = np.zeros(num_bins, dtype=np.intp)
        self._idx = np.empty(_BLOCK, dtype=np.intp)
        self._args = (self.edges, self.edges[0], f32(self.edges[-1] - self.edges[0]), f32(num_bins))

    def count(self, flat: np.ndarray) -> None:
        edges, first, denom, n_bins = self._args
        _abs_bincount(flat, edges, first, denom, n_bins, self.counts, self._idx)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.float32, np.float32]:
        return self.counts, self.edges, self.lo, self.hi


def histogram_of_absolute(arrays: Sequence[np.ndarray], num_bins: int
                          ) -> tuple[np.ndarray, np.ndarray, np.float32, np.float32] | None:
    """``(hist, edges, min, max)`` exactly as ONNX Runtime's first ``collect_absolute_value`` of
    these batches stores them, or None (NaN/inf: numpy refuses to histogram them, let it say so)."""
    f32 = np.float32
    lo, hi = f32(min(a.min() for a in arrays)), f32(max(a.max() for a in arrays))
    if not (np.isfinite(lo) and np.isfinite(hi)):  # a NaN propagates into min and max
        return None
    hist = _AbsHistogram(lo, hi, _min_abs_of(arrays, lo, hi), num_bins)
    for a in arrays:
        hist.count(a)
    return hist.result()


class _Extremes:
    """A tensor's batches seen in the first pass: per batch (min, max), and min |x| over all; None
    once a batch is one ONNX Runtime's own path must judge (see :func:`_flat_float32`)."""

    def __init__(self) -> None:
        self.per_batch: list[tuple[np.float32, np.float32]] | None = []
        self.shape: tuple[int, ...] | None = None
        self.alo = np.float32(np.inf)

    def add(self, a: Any) -> None:
        if self.per_batch is None:
            return
        if not _fast_batch(a) or (self.shape is not None and a.shape != self.shape):
            self.per_batch = None
            return
        self.shape = a.shape
        flat = np.ascontiguousarray(a).reshape(-1)
        lo, hi = flat.min(), flat.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            self.per_batch = None
            return
        self.per_batch.append((lo, hi))
        self.alo = min(self.alo, _min_abs_of([flat], lo, hi))

    def histogram(self, num_bins: int) -> _AbsHistogram | None:
        if not self.per_batch:
            return None
        lo = np.float32(min(b[0] for b in self.per_batch))
        hi = np.float32(max(b[1] for b in self.per_batch))
        return _AbsHistogram(lo, hi, np.float32(self.alo), num_bins)


def streaming_collect_data(calibrate: Any, original: Any) -> Any:
    """``HistogramCalibrater.collect_data`` for symmetric Percentile in two passes over a reader that
    can ``rewind()``, holding one image's outputs at a time (module docstring); anything else, and
    every tensor the fast histogram does not take, is ONNX Runtime's own ``original``."""

    def collect_data(self: Any, data_reader: Any) -> None:
        if not (getattr(self, "method", None) == "percentile" and getattr(self, "symmetric", False)
                and self.collector is None and callable(getattr(data_reader, "rewind", None))
                and isinstance(getattr(self, "tensors_to_calibrate", None), (set, frozenset, list, tuple))):
            return original(self, data_reader)
        input_names = {a.name for a in self.infer_session.get_inputs()}
        output_names = [a.name for a in self.infer_session.get_outputs()]
        wanted = [(i, name) for i, name in enumerate(output_names) if name in self.tensors_to_calibrate]
        seen = {name: _Extremes() for _, name in wanted}
        n_batches = 0
        while inputs := data_reader.get_next():
            outputs = self.infer_session.run(None, inputs)
            n_batches += 1
            for i, name in wanted:
                seen[name].add(outputs[i])
        if n_batches == 0:
            raise ValueError("No data is collected.")  # ONNX Runtime's own words for an empty reader
        hists = {name: seen[name].histogram(self.num_bins) for _, name in wanted}
        rest: dict[str, list[np.ndarray]] = {name: [] for name, h in hists.items() if h is None}
        data_reader.rewind()
        batch = 0
        while inputs := data_reader.get_next():
            outputs = self.infer_session.run(None, inputs)
            if batch >= n_batches:
                raise ConversionError("the calibration images changed between the two passes over them")
            for i, name in wanted:
                hist = hists[name]
                if hist is None:  # kept for ONNX Runtime's own path, copied as it copies graph inputs
                    rest[name].append(outputs[i].copy() if name in input_names else outputs[i])
                    continue
                flat = np.ascontiguousarray(outputs[i]).reshape(-1)
                if (flat.min(), flat.max()) != seen[name].per_batch[batch]:  # type: ignore[index]
                    raise ConversionError(f"INT8 calibration: tensor {name!r} differs between two runs of the "
                                          "same image (ONNX Runtime not deterministic here); report it with "
                                          "the model")
                hist.count(flat)
            batch += 1
        if batch != n_batches:
            raise ConversionError("the calibration images changed between the two passes over them")
        self.collector = calibrate.HistogramCollector(
            method=self.method, symmetric=self.symmetric, num_bins=self.num_bins,
            num_quantized_bins=self.num_quantized_bins, percentile=self.percentile, scenario=self.scenario)
        # the one-pass collector's order: the fast tensors as they come, then ONNX Runtime's
        self.collector.histogram_dict.update({name: h.result() for name, h in hists.items() if h is not None})
        self.collector.collect(rest)

    return collect_data


def collector_class(calibrate: Any) -> type:
    """A subclass of ``calibrate.HistogramCollector`` whose symmetric Percentile collection is
    :func:`histogram_of_absolute`; every other case is ONNX Runtime's own."""
    base = calibrate.HistogramCollector

    class FastHistogramCollector(base):  # type: ignore[misc, valid-type]
        def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
            rest = {}
            for tensor, data in name_to_arr.items():
                arrays = None if tensor in self.histogram_dict else _flat_float32(data)
                done = None if arrays is None else histogram_of_absolute(arrays, self.num_bins)
                if done is None:
                    rest[tensor] = data
                else:
                    self.histogram_dict[tensor] = done
            if rest:
                super().collect_absolute_value(rest)

    return FastHistogramCollector


@contextlib.contextmanager
def fast_percentile_histograms() -> Iterator[None]:
    """While inside, ONNX Runtime's histogram calibrators build :func:`collector_class`'s collector
    (they look ``HistogramCollector`` up in their module when they first collect) and collect with
    :func:`streaming_collect_data`; both are ONNX Runtime's own again on the way out."""
    calibrate = require("onnxruntime.quantization.calibrate", "onnxruntime")
    original = getattr(calibrate, "HistogramCollector", None)
    if original is None or not hasattr(original, "collect_absolute_value"):
        yield  # another ONNX Runtime layout: its own collector, slower and identical
        return
    calibrater = getattr(calibrate, "HistogramCalibrater", None)
    collect = getattr(calibrater, "collect_data", None)
    calibrate.HistogramCollector = collector_class(calibrate)
    if collect is not None:
        calibrater.collect_data = streaming_collect_data(calibrate, collect)
    try:
        yield
    finally:
        calibrate.HistogramCollector = original
        if collect is not None:
            calibrater.collect_data = collect
