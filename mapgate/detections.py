"""Run one model through one runner: image -> preprocess -> engine -> postprocess -> COCO
results records, with per-stage timings.

**The one step.** :func:`detect` takes prepared images (:func:`prepare`: image id, the model's
input tensor, the transform back to the image's pixels) in batches through ``runner.infer`` and
``postprocess`` and yields one :class:`Detected` per image: its records, its per-stage seconds and,
when asked, its raw outputs. Everything that turns an engine's outputs into detections goes
through it: :func:`run_detections` (both loops below, and its warm-up), the end-to-end benchmark
(``benchmarking.end_to_end_callable``) and the INT8 sensitivity proxy (``sensitivity.Proxy.run``,
on the onnxruntime backend's runner), so the three cannot drift apart.

:func:`run_detections` runs it over the data set, with a progress bar, in one of two loops that
make the same bytes:

* **sequential** (``workers=0``): decode, preprocess, infer, postprocess, one batch at a time;
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

Timings are per image and per stage, each measured inside the thread doing that stage (an
image's inference time is its share of its batch's ``infer``). In the pipelined loop the stages
overlap, so they are the time each stage spends on one image (the work, contention with the
other threads included), not shares of the wall time; their sum is larger than
``wall_ms_per_image`` when the overlap helps.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import closing
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
class Prepared:
    """One image ready for the engine."""

    image_id: int
    tensor: np.ndarray  # the model's input batch of one
    transform: Transform  # the model's input back to the image's pixels
    preprocess_s: float = 0.0


@dataclass
class Detected:
    """One image after the engine and the postprocessor."""

    image_id: int
    records: list[dict[str, Any]]  # COCO results records
    seconds: dict[str, float]  # per stage of STAGES; inference is this image's share of its batch's infer
    outputs: dict[str, np.ndarray] | None = None  # the raw outputs (a batch of one), when asked for


def prepare(model: ModelSpec, image: np.ndarray, image_id: int) -> Prepared:
    """``image`` (decoded) preprocessed for ``model``, the preprocessing timed."""
    t0 = time.perf_counter()
    tensor, transform = preprocess(image, model)
    return Prepared(image_id, tensor, transform, time.perf_counter() - t0)


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


def detect(model: ModelSpec, runner: Runner, batches: Iterable[Sequence[Prepared]], *, keep_outputs: bool = False,
           overlap: Executor | None = None) -> Iterator[Detected]:
    """Each batch through ``runner.infer`` (on the caller's thread) and ``postprocess``: one
    :class:`Detected` per image, in the order given. ``runner`` must be active and take every batch
    given (:func:`effective_batch_size`). ``keep_outputs``: also the raw outputs (the sensitivity
    proxy compares them). ``overlap``: an executor that postprocesses a batch while the engine runs
    the next; one batch at most waits there, so the order is kept and raw outputs stay bounded."""
    waiting: Future[list[Detected]] | None = None
    for batch in batches:
        outputs, infer_s = _infer(runner, batch)
        if overlap is None:
            yield from _postprocess(model, batch, outputs, infer_s, keep_outputs)
            continue
        if waiting is not None:
            yield from waiting.result()  # re-raises the postprocessor's error here, on the caller's thread
        waiting = overlap.submit(_postprocess, model, batch, outputs, infer_s, keep_outputs)
    if waiting is not None:
        yield from waiting.result()


def _stack(prepared: Sequence[Prepared]) -> np.ndarray:
    if len(prepared) == 1:
        return prepared[0].tensor  # no copy: a batch of one feeds exactly what preprocess made
    return np.concatenate([p.tensor for p in prepared], axis=0)


def _infer(runner: Runner, prepared: Sequence[Prepared]) -> tuple[dict[str, np.ndarray], float]:
    t0 = time.perf_counter()
    outputs = runner.infer(_stack(prepared))
    return outputs, time.perf_counter() - t0


def _postprocess(model: ModelSpec, prepared: Sequence[Prepared], outputs: dict[str, np.ndarray], infer_s: float,
                 keep_outputs: bool) -> list[Detected]:
    done: list[Detected] = []
    share = infer_s / len(prepared)
    for p, out in zip(prepared, split_outputs(outputs, len(prepared))):
        t0 = time.perf_counter()
        records = postprocess(out, model, p.transform, p.image_id)
        seconds = {"preprocess": p.preprocess_s, "inference": share, "postprocess": time.perf_counter() - t0}
        done.append(Detected(p.image_id, records, seconds, out if keep_outputs else None))
    return done


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
    # untimed: numba compilation and lazy engine allocations (per batch shape) would otherwise
    # land in the first images' timings
    for _ in detect(model, runner, [[_prepare(model, dataset, i) for i in ids[:batch]]]):
        pass
    totals = dict.fromkeys(STAGES, 0.0)
    dets: list[dict[str, Any]] = []
    bar = tqdm(total=len(ids), desc=desc or f"{model.name} [{runner.backend}]", unit="img", disable=not progress,
               leave=False)
    start = time.perf_counter()
    if workers == 0:
        stream = _sequential(model, runner, dataset, ids, batch)
    else:
        stream = _pipelined(model, runner, dataset, ids, batch, workers)
    with bar, closing(stream):  # closing: the pipelined loop's threads stop when the loop is left early
        for done in stream:
            dets.extend(done.records)
            for stage, seconds in done.seconds.items():
                totals[stage] += seconds
            bar.update(1)
    wall = time.perf_counter() - start
    n = len(ids)
    return DetectionRun(dets, ids, {k: 1000.0 * v / n for k, v in totals.items()}, workers=workers,
                        batch_size=batch, wall_ms_per_image=1000.0 * wall / n)


def _prepare(model: ModelSpec, dataset: CocoDataset, image_id: int) -> Prepared:
    return prepare(model, dataset.load(image_id).image, image_id)


def _batches(items: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    chunk: list[Prepared] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:  # the last, shorter batch: engines with a dynamic batch dim take it as is
        yield chunk


def _sequential(model: ModelSpec, runner: Runner, dataset: CocoDataset, ids: list[int],
                batch: int) -> Generator[Detected, None, None]:
    yield from detect(model, runner, _batches((_prepare(model, dataset, i) for i in ids), batch))


def _pipelined(model: ModelSpec, runner: Runner, dataset: CocoDataset, ids: list[int], batch: int,
               workers: int) -> Generator[Detected, None, None]:
    # at least one full batch must fit in the queue, or the engine would wait on every batch
    window = max(QUEUE_PER_WORKER * workers, batch)
    pre = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mapgate-preprocess")
    post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapgate-postprocess")
    try:
        def prepared_in_order() -> Iterator[Prepared]:
            # a bounded queue of futures, consumed in submission (= image id) order
            pending: deque[Future[Prepared]] = deque()
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

        yield from detect(model, runner, _batches(prepared_in_order(), batch), overlap=post)
    finally:
        pre.shutdown(wait=True, cancel_futures=True)
        post.shutdown(wait=True, cancel_futures=True)
