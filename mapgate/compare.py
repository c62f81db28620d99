"""Original vs optimized: deltas, a paired bootstrap CI, detection agreement, and the verdict.

A verdict is an object holding the numbers and the decision (mapgate.decision); it never prints,
renders or exits itself (mapgate.report renders it, its reason included).
All deltas are in AP *points* (x100) and are opt - ref, so a loss is negative.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mapgate.decision import Decision, decide, reference_suspect

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AGREEMENT_MIN_SCORE = 0.3
AGREEMENT_MIN_IOU = 0.9


@dataclass
class Agreement:
    """How many confident reference detections the optimized engine reproduces almost exactly."""

    min_score: float
    min_iou: float
    reference_detections: int
    matched: int
    matched_share: float  # 1.0 when there is nothing to match
    mean_iou: float | None
    worst_images: list[dict[str, Any]] = field(default_factory=list)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a (N,4) vs b (M,4)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def detection_agreement(ref: list[dict], opt: list[dict], min_score: float = AGREEMENT_MIN_SCORE,
                        min_iou: float = AGREEMENT_MIN_IOU, worst: int = 5) -> Agreement:
    """Share of reference detections (score >= min_score) matched one-to-one, greedily in reference
    score order, by an optimized detection of the same class at IoU >= min_iou (any opt score)."""
    by_key: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for d in opt:
        by_key[(d["image_id"], d["category_id"])].append(d)
    ref_by_key: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for d in ref:
        if d["score"] >= min_score:
            ref_by_key[(d["image_id"], d["category_id"])].append(d)
    per_image: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    ious: list[float] = []
    for key, refs in ref_by_key.items():
        refs = sorted(refs, key=lambda d: -d["score"])
        per_image[key[0]][1] += len(refs)
        cands = by_key.get(key)
        if not cands:
            continue
        m = _iou_matrix(np.array([d["bbox"] for d in refs], float), np.array([d["bbox"] for d in cands], float))
        used = np.zeros(m.shape[1], bool)
        for i in range(m.shape[0]):
            row = np.where(used, -1.0, m[i])
            j = int(row.argmax())
            if row[j] >= min_iou:
                used[j] = True
                ious.append(float(row[j]))
                per_image[key[0]][0] += 1
    total = sum(v[1] for v in per_image.values())
    matched = len(ious)
    worst_list = sorted(
        ({"image_id": img, "matched": v[0], "reference": v[1], "share": v[0] / v[1]} for img, v in per_image.items()),
        key=lambda r: (r["share"], -r["reference"]),
    )[:worst]
    return Agreement(min_score, min_iou, total, matched, matched / total if total else 1.0,
                     float(np.mean(ious)) if ious else None, worst_list)


@dataclass
class Verdict:
    """The decision for one (model, optimized target): numbers and the typed decision, no rendering
    (mapgate.report renders it, and its reason, as terminal text, Markdown, JUnit properties and PNGs)."""

    model: str
    ref: dict[str, Any]  # backend, precision, files/engine hashes
    opt: dict[str, Any]
    dataset: str
    ref_stats: dict[str, float]
    opt_stats: dict[str, float]
    deltas: dict[str, float]  # AP points, opt - ref, per named stat
    per_category: dict[str, dict[str, Any]]  # category id -> {name, ref_AP, opt_AP, delta_AP, delta_AP50}
    ci: dict[str, Any]  # paired bootstrap of delta AP
    agreement: Agreement
    tolerance: float  # AP points allowed to be lost
    tolerance_source: str
    expected: str = "pass"  # manifest expected verdict: pass | fail | inconclusive
    ref_detections: int | None = None  # None: not known (a verdict built by hand)
    extras: dict[str, Any] = field(default_factory=dict)  # further analyses by name (e.g. "attribution")
    # mapgate.benchmarking.SpeedVsFp32.to_dict() of an FP16/INT8 engine vs its backend's FP32 (None: not timed)
    speed: dict[str, Any] | None = None
    # the Q/DQ form an INT8 file of mapgate.convert.ort_quant was built in: {"ops", "activation_type"}
    int8_form: dict[str, str] | None = None
    verdict: str = field(init=False)  # pass | fail | inconclusive (mapgate.decision.decide)
    decision_rule: dict[str, Any] = field(init=False)
    reference_suspect: bool = field(init=False)  # mapgate.decision.reference_suspect: ref AP too low to mean much

    def __post_init__(self) -> None:
        self._decision = decide(self.deltas["AP"], self.ci, self.tolerance, delta_ap50=self.deltas["AP50"],
                                reference_detections=self.ref_detections)
        self.verdict = self._decision.status.value
        self.decision_rule = self._decision.rule()
        self.reference_suspect = reference_suspect(100.0 * self.ref_stats["AP"], self._decision.n_images)

    @property
    def decision(self) -> Decision:
        return self._decision

    @property
    def delta_ap(self) -> float:
        return self.deltas["AP"]

    @property
    def delta_ap50(self) -> float:
        return self.deltas["AP50"]

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def images_needed(self) -> int | None:
        return self.decision_rule["images_needed"]

    @property
    def as_expected(self) -> bool:
        return self.verdict == self.expected

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["delta_ap"] = self.delta_ap
        out["delta_ap50"] = self.delta_ap50
        if "attribution" in self.extras:  # comparison.json's documented key, at the top level
            out["attribution"] = self.extras["attribution"]
        return out


@dataclass(frozen=True)
class SpeedDecision:
    """Whether an optimized precision buys speed over its backend's FP32 (FP32 time / its time)."""

    precision: str
    speedup_vs_fp32: float
    pays: bool

    @property
    def slower_by(self) -> float:
        """How many times the FP32 time the optimized engine takes (meaningful when it does not pay)."""
        return 1.0 / self.speedup_vs_fp32 if self.speedup_vs_fp32 > 0 else math.inf


def speed_pays(speed: dict[str, Any] | None, precision: str) -> SpeedDecision | None:
    """The speed decision of a comparison's ``speed`` record: it pays at a speedup of 1.0 or more.
    None when nothing was timed (FP32 targets, or a backend that cannot make FP32 here)."""
    if not speed:
        return None
    s = float(speed["speedup_vs_fp32"])
    return SpeedDecision(precision, s, s >= 1.0)


def default_inconclusive_policy() -> str:
    """``fail`` under CI (the ``CI`` variable is set, as on GitHub Actions and GitLab CI), else
    ``warn``: reported, exit code 0."""
    return "fail" if os.environ.get("CI") else "warn"


def outcome(verdict: Verdict, inconclusive: str | None = None, expected: str | None = None) -> str:
    """What a verdict means for the run: ``pass``, ``fail`` or ``warn`` (an inconclusive result that
    only warns). A case expected to ``fail`` (a known-bad canary) must fail; otherwise a fail is a
    failure, a pass is a pass, and an inconclusive result where ``pass`` was expected is decided by
    ``inconclusive`` (``fail``/``pass``; None: :func:`default_inconclusive_policy`). ``expected``
    overrides the manifest's expectation (``mapgate compare`` judges every verdict as expecting pass)."""
    policy = inconclusive or default_inconclusive_policy()
    v, expected = verdict.verdict, expected or verdict.expected
    if expected == "fail":
        return "pass" if v == "fail" else "fail"
    if v == "fail":
        return "fail"
    if v == "pass" or expected == "inconclusive":
        return "pass"
    return policy


def build_verdict(*, model: str, ref: dict[str, Any], opt: dict[str, Any], dataset: str, ref_metrics: Any,
                  opt_metrics: Any, ci: dict[str, Any], agreement: Agreement, tolerance: float, tolerance_source: str,
                  expected: str = "pass", ref_detections: int | None = None) -> Verdict:
    """Assemble a verdict from two evaluations (mapgate.evaluate.Metrics) and the statistics."""
    rs, os_ = ref_metrics.stats, opt_metrics.stats
    deltas = {k: 100.0 * (os_[k] - rs[k]) for k in STAT_NAMES}
    per_cat: dict[str, dict[str, float]] = {}
    for cid, r in ref_metrics.per_category.items():
        o = opt_metrics.per_category[cid]
        has_gt = r.ap >= 0  # -1: no ground truth of this category in the evaluated images
        per_cat[str(cid)] = {"name": r.name, "ref_AP": r.ap, "opt_AP": o.ap,
                             "delta_AP": 100.0 * (o.ap - r.ap) if has_gt else None,
                             "delta_AP50": 100.0 * (o.ap50 - r.ap50) if has_gt else None}
    return Verdict(model=model, ref=ref, opt=opt, dataset=dataset, ref_stats=dict(rs), opt_stats=dict(os_),
                   deltas=deltas, per_category=per_cat, ci=ci, agreement=agreement, tolerance=tolerance,
                   tolerance_source=tolerance_source, expected=expected, ref_detections=ref_detections)
