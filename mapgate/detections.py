"""Run one model through one runner over the data set: image -> preprocess -> engine ->
postprocess -> COCO results records, with per-stage timings and a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from mapgate.backends.base import Runner
from mapgate.dataset import CocoDataset
from mapgate.manifest import ModelSpec
from mapgate.postprocess import postprocess
from mapgate.preprocess import preprocess


@dataclass
class DetectionRun:
    detections: list[dict[str, Any]]
    image_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)  # mean ms per image, per stage
    from_cache: bool = False


def run_detections(model: ModelSpec, runner: Runner, dataset: CocoDataset, *, progress: bool = True,
                   desc: str | None = None) -> DetectionRun:
    """``runner`` must be active. Decoding the JPEG is not timed: it is the same for every backend."""
    dets: list[dict[str, Any]] = []
    totals = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    clock = time.perf_counter
    if len(dataset):
        # warm-up, untimed: numba compilation and lazy engine allocations would otherwise land in
        # the first image's timings
        first = dataset.load(dataset.image_ids[0])
        batch, transform = preprocess(first.image, model)
        postprocess(runner.infer(batch), model, transform, first.image_id)
    for sample in tqdm(dataset, total=len(dataset), desc=desc or f"{model.name} [{runner.backend}]",
                       unit="img", disable=not progress, leave=False):
        t0 = clock()
        batch, transform = preprocess(sample.image, model)
        t1 = clock()
        outputs = runner.infer(batch)
        t2 = clock()
        dets.extend(postprocess(outputs, model, transform, sample.image_id))
        t3 = clock()
        totals["preprocess"] += t1 - t0
        totals["inference"] += t2 - t1
        totals["postprocess"] += t3 - t2
    n = max(len(dataset), 1)
    return DetectionRun(dets, list(dataset.image_ids), {k: 1000.0 * v / n for k, v in totals.items()})
