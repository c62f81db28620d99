"""Run one model through one runner over the data set: image -> preprocess -> engine ->
postprocess -> COCO results records, with per-stage timings and a progress bar.

Two loops make the same bytes:

* **sequential** (``workers=0``): decode, preprocess, infer, postprocess, one image at a time;
* **pipelined** (``workers=N``): N threads decode and preprocess ahead (OpenCV and numpy release
  the GIL), at most ``2 * N`` prepared inputs wait at any time (bounded memory); the caller's
  thread stacks them into batches and runs the engine (runners are not thread-safe and some
  engines, TensorRT's CUDA context among them, are bound to the thread that activated them);
  one more thread postprocesses the previous batch while the engine runs the next.

Either way the records come out in image-id order, and every image's input and outputs are
the same arrays, so the detections are byte-identical. ``batch_size > 1`` stacks images into
one ``infer`` when the runner says it takes that batch (``Runner.supports_batch``); images of
any size preprocess to the model's input size, so batches always stack, and the outputs are
split back per image before postprocessing.

Timings are per image and per stage, each measured inside the thread doing that stage. In the
pipelined loop the stages overlap, so they are the time each stage spends on one image (the
work, contention with the other threads included), not shares of the wall time; their sum is
larger than ``wall_ms_per_image`` when the overlap helps.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from mapgate.backends.base import Runner
from mapgate.dataset import CocoDataset
from mapgate.manifest import ModelSpec
from mapgate.postprocess import postprocess
from mapgate.preprocess import Transform, preprocess

STAGES = ("preprocess", "inference", "postprocess")
QUEUE_PER_WORKER = 2  # prepared inputs in flight per decode thread: enough to hide a slow JPEG


def cores_per_process() -> int:
    """The cores this process may use, shared evenly with its pytest-xdist siblings."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    siblings = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    return max(1, cores // max(1, int(siblings) if siblings.isdigit() else 1))


def default_workers() -> int:
    """Decode/preprocess threads: one per core this process may use (the engine thread shares
    them; more threads than cores only adds contention)."""
    return min(cores_per_process(), 8)


@dataclass
class DetectionRun:
    detections: list[dict[str, Any]]
    image_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)  # mean ms per image, per stage
    from_cache: bool = False
    wall_ms_per_image: float = 0.0  # the whole loop's wall time over the images (warm-up excluded)
    workers: int = 0
    batch_size: int = 1  # images per infer() actually used (1 when the runner cannot batch)


@dataclass
class _Prepared:
    image_id: int
    tensor: np.ndarray  # the model's input batch of one
    transform: Transform
    preprocess_s: float


def effective_batch_size(runner: Runner, batch_size: int) -> int:
    """``batch_size`` when the runner takes batches that large in one infer, else 1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return batch_size if batch_size == 1 or runner.supports_batch(batch_size) else 1


def split_outputs(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The raw outputs of a batch of ``n`` as ``n`` outputs of a batch of one each."""
    if n == 1:
        return [outputs]
    for name, value in outputs.items():
        if np.ndim(value) == 0 or value.shape[0] != n:
            raise ValueError(f"output {name!r} of a batch of {n} has shape {np.shape(value)}: no batch dimension")
    return [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(n)]


def run_detections(model: ModelSpec, runner: Runner, dataset: CocoDataset, *, progress: bool = True,
                   desc: str | None = None, workers: int | None = None, batch_size: int = 1) -> DetectionRun:
    """``runner`` must be active. ``workers`` None = :func:`default_workers`, 0 = the sequential
    loop. Decoding the JPEG is not timed: it is the same for every backend."""
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    batch = effective_batch_size(runner, batch_size)
    ids = list(dataset.image_ids)
    if not ids:
        return DetectionRun([], [], dict.fromkeys(STAGES, 0.0), workers=workers, batch_size=batch)
    _warm_up(model, runner, dataset, ids[:batch])
    totals = dict.fromkeys(STAGES, 0.0)
    bar = tqdm(total=len(ids), desc=desc or f"{model.name} [{runner.backend}]", unit="img", disable=not progress,
               leave=False)
    start = time.perf_counter()
    with bar:
        if workers == 0:
            dets = _sequential(model, runner, dataset, ids, batch, totals, bar.update)
        else:
            dets = _pipelined(model, runner, dataset, ids, batch, workers, totals, bar.update)
    wall = time.perf_counter() - start
    n = len(ids)
    return DetectionRun(dets, ids, {k: 1000.0 * v / n for k, v in totals.items()}, workers=workers,
                        batch_size=batch, wall_ms_per_image=1000.0 * wall / n)


def _warm_up(model: ModelSpec, runner: Runner, dataset: CocoDataset, ids: Sequence[int]) -> None:
    # untimed: numba compilation and lazy engine allocations (per batch shape) would otherwise
    # land in the first images' timings
    prepared = [_prepare(model, dataset, i) for i in ids]
    outputs = runner.infer(_stack(prepared))
    for p, out in zip(prepared, split_outputs(outputs, len(prepared))):
        postprocess(out, model, p.transform, p.image_id)


def _prepare(model: ModelSpec, dataset: CocoDataset, image_id: int) -> _Prepared:
    sample = dataset.load(image_id)
    t0 = time.perf_counter()
    tensor, transform = preprocess(sample.image, model)
    return _Prepared(image_id, tensor, transform, time.perf_counter() - t0)


def _stack(prepared: Sequence[_Prepared]) -> np.ndarray:
    if len(prepared) == 1:
        return prepared[0].tensor  # no copy: the sequential batch-1 path feeds exactly what preprocess made
    return np.concatenate([p.tensor for p in prepared], axis=0)


def _infer(runner: Runner, prepared: Sequence[_Prepared], totals: dict[str, float]) -> dict[str, np.ndarray]:
    t0 = time.perf_counter()
    outputs = runner.infer(_stack(prepared))
    totals["inference"] += time.perf_counter() - t0
    totals["preprocess"] += sum(p.preprocess_s for p in prepared)
    return outputs


def _postprocess(model: ModelSpec, prepared: Sequence[_Prepared],
                 outputs: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], float]:
    t0 = time.perf_counter()
    dets: list[dict[str, Any]] = []
    for p, out in zip(prepared, split_outputs(outputs, len(prepared))):
        dets.extend(postprocess(out, model, p.transform, p.image_id))
    return dets, time.perf_counter() - t0


def _batches(items: Iterator[_Prepared], size: int) -> Iterator[list[_Prepared]]:
    chunk: list[_Prepared] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:  # the last, shorter batch: engines with a dynamic batch dim take it as is
        yield chunk


def _sequential(model: ModelSpec, runner: Runner, dataset: CocoDataset, ids: list[int], batch: int,
                totals: dict[str, float], advance: Callable[[int], Any]) -> list[dict[str, Any]]:
    dets: list[dict[str, Any]] = []
    for chunk in _batches((_prepare(model, dataset, i) for i in ids), batch):
        outputs = _infer(runner, chunk, totals)
        records, seconds = _postprocess(model, chunk, outputs)
        dets.extend(records)
        totals["postprocess"] += seconds
        advance(len(chunk))
    return dets


def _pipelined(model: ModelSpec, runner: Runner, dataset: CocoDataset, ids: list[int], batch: int, workers: int,
               totals: dict[str, float], advance: Callable[[int], Any]) -> list[dict[str, Any]]:
    dets: list[dict[str, Any]] = []
    # at least one full batch must fit in the queue, or the engine would wait on every batch
    window = max(QUEUE_PER_WORKER * workers, batch)
    pre = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mapgate-preprocess")
    post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapgate-postprocess")
    try:
        def prepared_in_order() -> Iterator[_Prepared]:
            # a bounded queue of futures, consumed in submission (= image id) order
            pending: deque[Future[_Prepared]] = deque()
            todo = iter(ids)
            for image_id in todo:
                pending.append(pre.submit(_prepare, model, dataset, image_id))
                if len(pending) >= window:
                    break
            while pending:
                item = pending.popleft().result()  # re-raises a worker's DataError here, on the caller's thread
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pre.submit(_prepare, model, dataset, nxt))
                yield item

        in_post: Future[tuple[list[dict[str, Any]], float]] | None = None
        posted = 0

        def collect() -> None:
            nonlocal in_post
            if in_post is not None:
                records, seconds = in_post.result()
                dets.extend(records)
                totals["postprocess"] += seconds
                advance(posted)
                in_post = None

        for chunk in _batches(prepared_in_order(), batch):
            outputs = _infer(runner, chunk, totals)
            collect()  # one batch in postprocessing at a time: order kept, raw outputs bounded
            in_post = post.submit(_postprocess, model, chunk, outputs)
            posted = len(chunk)
        collect()
    finally:
        pre.shutdown(wait=True, cancel_futures=True)
        post.shutdown(wait=True, cancel_futures=True)
    return dets
