"""Per-layer INT8 sensitivity, measured on calibration images only (never on evaluated ones).

The calibration images are split once into a *calibrate* set (ranges for Q/DQ) and a *proxy*
set (held out: judges a quantized model against the FP32 model's own outputs). For each
convolution, the full INT8 model is rebuilt with only that convolution left in float (ONNX
Runtime's ``nodes_to_exclude``; the calibrated ranges are computed once and reused), and it is
scored on the proxy images by

* ``output_error``: relative L2 error of the raw detection-head outputs vs FP32 (mean over
  outputs and images), which ranks the layers, as Polygraphy's ``debug precision`` would;
* ``pseudo_ap``: COCO AP of its detections taking the FP32 model's confident detections
  (score >= 0.3) as ground truth (100 = identical detections);
* ``matched_iou`` / ``score_drift``: mean IoU and mean absolute score change of the FP32
  detections it reproduces (same class, IoU >= 0.5).

Every model (the FP32 one and each candidate file) runs on the onnxruntime backend's runner
(``backends.onnxruntime.file_runner``), its detections made by the detection loop's own step
(``detections.detect``). Each candidate's speed is measured beside the FP32 model's
(:meth:`Proxy.speed`): engine only (``Runner.infer``), batch 1, one engine thread, the two
models alternating image by image so a shared machine's load hits both alike; the ratio is what
the search compares.

Every image read goes through :class:`ImageLog`, so a test can prove the evaluated images were
never touched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.backends.base import Runner
from mapgate.backends.onnxruntime import file_runner
from mapgate.calibration import image_ids_of
from mapgate.dataset import read_image
from mapgate.detections import detect, prepare
from mapgate.errors import ConfigError
from mapgate.manifest import ModelSpec
from mapgate.compare import _iou_matrix
from mapgate.postprocess.coco_ids import VALID_IDS
from mapgate.evaluate import evaluate

PSEUDO_GT_MIN_SCORE = 0.3
MATCH_IOU = 0.5
# Timing: a few proxy images, several interleaved rounds; one intra-op thread, because on a shared
# CPU a second engine thread measures the neighbours' load more than the kernels.
TIMING_IMAGES = 8
TIMING_ROUNDS = 3
TIMING_THREADS = 1


def split_calibration(images: Sequence[Path], proxy_every: int = 3) -> tuple[list[Path], list[Path]]:
    """(calibrate, proxy): every ``proxy_every``-th image (sorted order) is held out for the proxy."""
    if proxy_every < 2:
        raise ConfigError(f"proxy_every must be at least 2, got {proxy_every}")
    if len(images) < proxy_every:
        raise ConfigError(f"{len(images)} calibration image(s) cannot be split into calibrate and proxy sets")
    calib = [p for i, p in enumerate(images) if i % proxy_every != proxy_every - 1]
    proxy = [p for i, p in enumerate(images) if i % proxy_every == proxy_every - 1]
    return calib, proxy


@dataclass
class ImageLog:
    """Which images the search read (their paths and COCO ids)."""

    paths: list[Path] = field(default_factory=list)

    def read(self, path: Path) -> np.ndarray:
        self.paths.append(Path(path))
        return read_image(Path(path))

    def note(self, paths: Iterable[Path]) -> None:
        self.paths.extend(Path(p) for p in paths)

    @property
    def image_ids(self) -> set[int]:
        return set(image_ids_of(self.paths))


@dataclass(frozen=True)
class ProxyScore:
    output_error: float
    pseudo_ap: float  # points, 100 = the FP32 detections
    pseudo_ap50: float
    matched_iou: float
    score_drift: float
    matched_share: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Speed:
    """Median engine-only ms per image of a candidate and of FP32, measured interleaved."""

    ms: float
    fp32_ms: float
    images: int

    @property
    def speedup(self) -> float:
        """FP32 time / candidate time: above 1 the candidate is faster."""
        return self.fp32_ms / self.ms if self.ms > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"ms": self.ms, "fp32_ms": self.fp32_ms, "speedup_vs_fp32": self.speedup, "images": self.images}


class Proxy:
    """The FP32 model's outputs and detections on the proxy images, and how a candidate compares."""

    def __init__(self, model: ModelSpec, fp32_onnx: Path, images: Sequence[Path], log: ImageLog) -> None:
        self.model = model
        self.images = list(images)
        self.ids = [i for i in image_ids_of(self.images)] if len(image_ids_of(self.images)) == len(self.images) \
            else list(range(1, len(self.images) + 1))
        self.inputs = [prepare(model, log.read(path), image_id) for path, image_id in zip(self.images, self.ids)]
        self.fp32_outputs, self.fp32_dets = self.run(fp32_onnx)
        self.fp32_latency_ms = self.last_latency_ms
        self._pseudo_gt = self._pseudo_ground_truth()
        self._fp32_timing = self._timing_runner(fp32_onnx)

    def _timing_runner(self, onnx_path: Path) -> Runner:
        runner = file_runner(self.model, onnx_path, threads=TIMING_THREADS)
        runner.activate()
        runner.infer(self.inputs[0].tensor)  # warm-up
        return runner

    def speed(self, onnx_path: Path, rounds: int = TIMING_ROUNDS, images: int = TIMING_IMAGES) -> Speed:
        """``onnx_path`` and FP32 alternating on the first ``images`` proxy images, ``rounds`` times."""
        batches = [p.tensor for p in self.inputs[:images]]
        times: dict[str, list[float]] = {"cand": [], "fp32": []}
        with self._timing_runner(onnx_path) as cand:
            sides = {"cand": cand, "fp32": self._fp32_timing}
            for r in range(rounds):
                for k, batch in enumerate(batches):
                    for key in (("cand", "fp32") if (r + k) % 2 == 0 else ("fp32", "cand")):
                        t0 = time.perf_counter()
                        sides[key].infer(batch)
                        times[key].append(time.perf_counter() - t0)
        return Speed(1000.0 * float(np.median(times["cand"])), 1000.0 * float(np.median(times["fp32"])), len(batches))

    def run(self, onnx_path: Path) -> tuple[list[dict[str, np.ndarray]], list[dict[str, Any]]]:
        """Raw outputs and detections of ``onnx_path`` on the proxy images (the onnxruntime backend, CPU)."""
        with file_runner(self.model, onnx_path) as runner:
            runner.infer(self.inputs[0].tensor)  # warm-up
            done = list(detect(self.model, runner, ([p] for p in self.inputs), keep_outputs=True))
        self.last_latency_ms = 1000.0 * float(np.median([d.seconds["inference"] for d in done]))
        outputs = [d.outputs for d in done if d.outputs is not None]
        return outputs, [r for d in done for r in d.records]

    def _pseudo_ground_truth(self) -> dict[str, Any]:
        cat_ids = sorted(VALID_IDS | {int(d["category_id"]) for d in self.fp32_dets})
        anns = [{"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"],
                 "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                for k, d in enumerate(x for x in self.fp32_dets if x["score"] >= PSEUDO_GT_MIN_SCORE)]
        return {"images": [{"id": i} for i in self.ids], "annotations": anns,
                "categories": [{"id": c, "name": str(c)} for c in cat_ids]}

    def score(self, onnx_path: Path) -> ProxyScore:
        outputs, dets = self.run(onnx_path)
        return self.compare(outputs, dets)

    def compare(self, outputs: list[dict[str, np.ndarray]], dets: list[dict[str, Any]]) -> ProxyScore:
        errs = []
        for f, q in zip(self.fp32_outputs, outputs):
            for k, v in f.items():
                ref = v.astype(np.float64)
                errs.append(float(np.linalg.norm(q[k].astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-12)))
        stats = evaluate(self._pseudo_gt, dets, label="proxy").stats if dets else {"AP": 0.0, "AP50": 0.0}
        iou, drift, share = _matched(self.fp32_dets, dets)
        return ProxyScore(float(np.mean(errs)), 100.0 * max(stats["AP"], 0.0), 100.0 * max(stats["AP50"], 0.0),
                          iou, drift, share)


def _matched(ref: list[dict[str, Any]], cand: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Mean IoU, mean |score change| and share of confident reference detections a candidate reproduces."""

    by_key: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for d in cand:
        by_key[(d["image_id"], d["category_id"])].append(d)
    ious, drifts, total = [], [], 0
    for d in ref:
        if d["score"] < PSEUDO_GT_MIN_SCORE:
            continue
        total += 1
        cands = by_key.get((d["image_id"], d["category_id"]))
        if not cands:
            continue
        m = _iou_matrix(np.array([d["bbox"]], float), np.array([c["bbox"] for c in cands], float))[0]
        j = int(m.argmax())
        if m[j] >= MATCH_IOU:
            ious.append(float(m[j]))
            drifts.append(abs(float(cands[j]["score"]) - float(d["score"])))
    return (float(np.mean(ious)) if ious else 0.0, float(np.mean(drifts)) if drifts else 1.0,
            len(ious) / total if total else 1.0)


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    score: ProxyScore  # of the INT8 model with only this node in float
    speed: Speed | None = None  # of that model, beside FP32

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, **self.score.to_dict(), **({"speed": self.speed.to_dict()} if self.speed else {})}


def conv_nodes(proto: Any, exclude: Iterable[str] = ()) -> list[str]:
    """The quantizable convolutions, in graph order, minus those already kept in float."""
    skip = set(exclude)
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in skip]


def layer_sensitivity(build: Callable[[Sequence[str]], Path], proxy: Proxy, candidates: Sequence[str],
                      base_keep: Sequence[str] = (), progress: Callable[[str], None] | None = None,
                      timed: bool = False) -> list[LayerSensitivity]:
    """Rebuild the INT8 model with each candidate (alone, on top of ``base_keep``) in float; most
    sensitive first (lowest remaining head-output error; ties by the detection proxy). ``timed``:
    also measure each variant's speed beside FP32, for :func:`rank_per_ms`."""
    out = []
    for k, node in enumerate(candidates):
        if progress:
            progress(f"sensitivity {k + 1}/{len(candidates)}: {node}")
        path = build([*base_keep, node])
        out.append(LayerSensitivity(node, proxy.score(path), proxy.speed(path) if timed else None))
    return sorted(out, key=lambda s: (s.score.output_error, -s.score.pseudo_ap))


# A float layer costs at least this share of the FP32 time in the ranking: below it the measured
# cost is timing noise, and a "free" layer would outrank every real gain.
MIN_COST_SHARE = 0.01


def gain_per_ms(layer: LayerSensitivity, base: ProxyScore, base_speed: Speed) -> tuple[float, float]:
    """(head-output error removed per millisecond, ms the layer costs) of putting ``layer`` back in
    float on top of a base whose score and speed are given. The cost compares the two times as
    shares of the FP32 time each was measured beside, so load drift between measurements cancels."""
    assert layer.speed is not None
    fp32 = base_speed.fp32_ms
    cost = (layer.speed.ms / layer.speed.fp32_ms - base_speed.ms / base_speed.fp32_ms) * fp32
    cost = max(cost, MIN_COST_SHARE * fp32)
    return (base.output_error - layer.score.output_error) / cost, cost


def rank_per_ms(layers: Sequence[LayerSensitivity], base: ProxyScore, base_speed: Speed) -> list[LayerSensitivity]:
    """Timed layers, the most head error removed per millisecond first; layers that remove none last."""
    return sorted(layers, key=lambda s: -gain_per_ms(s, base, base_speed)[0])
