"""Every rendering of a verdict, in one place: terminal text, Markdown, JUnit properties, PNG.

The decision objects (mapgate.compare.Verdict) keep numbers and reasons; this module turns them
into what people read. Its interface, used by the gate (per case files), the CLI (``mapgate
compare``) and the pytest plugin (failures, the session table, report.md):

* :func:`write_case` - a case folder's ``summary.md`` and PNGs (precision/recall, per-class dAP).
* :func:`case_text` - one case as a terminal table (a failing test, ``mapgate compare``).
* :class:`CaseRow` - one line of the run table; plain data, so it travels between xdist workers.
* :func:`run_table` / :func:`run_markdown` / :func:`write_run` - the run-level report.
* :func:`junit_properties` - the per-case JUnit XML properties.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mapgate.baselines import BaselineKind, BaselineStatus
from mapgate.compare import STAT_NAMES, SpeedDecision, Verdict, speed_pays
from mapgate.decision import ReasonKind
from mapgate.attribution import summary_lines
from mapgate.evaluate import IOU_THRS, REC_THRS
from mapgate.fsutil import atomic_path, write_bytes_atomic

PR_CURVES_PNG = "pr-curves.png"
CLASS_DELTAS_PNG = "per-class-dap.png"
REPORT_MD = "report.md"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


# ----------------------------------------------------------------------------------- one case
def reason(v: Verdict) -> str:
    """Why the verdict is what it is, in words, from the decision's kind and numbers alone."""
    d, tol, src = v.decision, v.tolerance, v.tolerance_source
    has_ci = d.ci_low is not None and d.ci_high is not None
    ci_text = f"95% CI [{d.ci_low:+.2f}, {d.ci_high:+.2f}]" if has_ci else "no CI"
    if d.kind is ReasonKind.NO_REFERENCE_DETECTIONS:
        return ("the reference produced no detections on these images: there is nothing to compare "
                "against (check the reference backend, the model files and the pre/post-processing)")
    if d.kind is ReasonKind.LOSS_BEYOND_TOLERANCE:
        return (f"dAP {d.delta_ap:+.2f} points ({ci_text}) loses more than the tolerance of {tol:g} points "
                f"({src}); dAP50 {d.delta_ap50:+.2f}")
    if d.kind is ReasonKind.CI_ABOVE_TOLERANCE:
        return f"dAP {d.delta_ap:+.2f} points and its whole {ci_text} are above -{tol:g} (tolerance from {src})"
    if d.kind is ReasonKind.CI_REACHES_BELOW:
        more = (f"about {d.images_needed} images (this run: {d.n_images}) would make it conclusive if dAP stayed at "
                f"{d.delta_ap:+.2f}" if d.images_needed is not None
                else "no number of images would: dAP sits on the tolerance")
        return (f"dAP {d.delta_ap:+.2f} points is within the tolerance of -{tol:g} ({src}) "
                f"but its {ci_text} reaches below it: the data cannot tell; {more}")
    return f"dAP {d.delta_ap:+.2f} points has no CI to decide with ({src})"


def comparison_record(v: Verdict, baseline: BaselineStatus | None = None) -> dict[str, Any]:
    """comparison.json: the verdict's fields with its reason rendered, and the baseline comparison
    (``baseline``: status within / regressed / missing / other_dataset / to_be_recorded, numbers)."""
    out = {**v.to_dict(), "reason": reason(v)}
    if baseline is not None:
        out["baseline"] = baseline.to_dict()
    return out


BASELINE_WORDS = {BaselineKind.WITHIN: "matched", BaselineKind.REGRESSED: "regressed",
                  BaselineKind.MISSING: "none recorded", BaselineKind.OTHER_DATASET: "other data set",
                  BaselineKind.TO_BE_RECORDED: "to be recorded"}


def baseline_text(b: BaselineStatus, where: str = "") -> str:
    """One side's baseline comparison as a sentence (``where``: the baselines file, for the fix)."""
    head = f"{b.model} {b.target}: "
    if b.kind is BaselineKind.WITHIN:
        return head + f"within {b.tolerance_points:g} points of its baseline"
    if b.kind is BaselineKind.MISSING:
        return head + "no baseline recorded (run with --update-baselines to record one)"
    if b.kind is BaselineKind.OTHER_DATASET:
        return head + f"baseline recorded on {b.recorded_on}, this run is on {b.dataset}: not compared"
    if b.kind is BaselineKind.TO_BE_RECORDED:
        return head + f"to be recorded in {where}"
    return head + (f"{b.stat} {b.value:.2f} is {b.drop:.2f} points below its baseline {b.baseline:.2f} (tolerance "
                   f"{b.tolerance_points:g}); if the change is intended, re-record with --update-baselines")


def _ci_text(v: Verdict) -> str:
    ci = v.ci or {}
    return f"[{ci['low_points']:+.2f}, {ci['high_points']:+.2f}]" if "low_points" in ci else "no CI"


def _agreement_text(v: Verdict) -> str:
    a = v.agreement
    return (f"{a.matched}/{a.reference_detections} reference detections (score >= {a.min_score:g}) matched at IoU >= "
            f"{a.min_iou:g} ({100 * a.matched_share:.1f}%)" + (f", mean IoU {a.mean_iou:.4f}" if a.mean_iou else ""))


def _points_went(attribution: Any) -> str:
    """One line: the (at most four) TIDE error types that cost the optimized side the most AP50 points
    ("" when ``attribution`` is not mapgate.attribution's result). A row's points are what an oracle
    fixing that error type gives back, optimized minus reference: positive means lost, so only those
    are named."""
    if not isinstance(attribution, dict) or attribution.get("where_points_went") is None:
        return ""
    lost = [r for r in attribution["where_points_went"] if r["points"] >= 0.005][:4]
    return "AP50 points lost, by TIDE error type: " + (
        ", ".join(f"{r['name']} {r['points']:.2f}" for r in lost) if lost else "none")


def suspect_reference_text(model: str, reference: str, ref_ap: float, n_images: int) -> str:
    return (f"WARNING: {model} {reference} scores AP {ref_ap:.2f} on {n_images} images: the reference pipeline itself "
            "is broken (class_space, preprocess, decoder?), so its comparisons prove nothing")


def does_not_pay(decision: SpeedDecision | None) -> str:
    """The summary line of an optimized precision slower than its backend's FP32 ("" when it pays)."""
    if decision is None or decision.pays:
        return ""
    return f"{decision.precision.upper()} does not pay on this backend: {decision.slower_by:.2f} x slower than FP32"


def _speed_text(v: Verdict) -> str:
    s = v.speed
    if not s:
        return ""
    fp32 = s.get("fp32_backend") or s["backend"]
    versus = "" if fp32 == s["backend"] else f" vs the reference {fp32} FP32: {s['backend']} has no FP32 file"
    return (f"x{s['speedup_vs_fp32']:.2f} FP32 speed ({s['backend']}{versus}, engine only, batch 1, median of "
            f"{s['n_images']} images: FP32 {s['fp32_ms']:.2f} ms, {v.opt.get('precision', 'optimized')} "
            f"{s['optimized_ms']:.2f} ms)")


def form_text(form: dict[str, str] | None) -> str:
    """``conv/s8``: which op types carry Q/DQ and the activation type ("" when not a Q/DQ INT8 file)."""
    return f"{form['ops']}/{form['activation_type']}" if form else ""


def _form_line(v: Verdict) -> str:
    f = v.int8_form
    if not f:
        return ""
    ops = "convolutions only" if f["ops"] == "conv" else "every op type ONNX Runtime quantizes"
    return f"Q/DQ on {ops}, {f['activation_type']} activations (convert.int8_ops = \"{f['ops']}\", " \
           f"convert.int8_activation_type = \"{f['activation_type']}\")"


def _precision_of(v: Verdict) -> str:
    return str(v.opt.get("precision") or v.opt.get("target", "").partition(":")[2] or "optimized")


def _extras_lines(v: Verdict) -> list[str]:
    """Analyses other modules attach to a verdict (``Verdict.extras``), one line each."""
    lines = []
    for name, value in sorted(v.extras.items()):
        if name == "attribution" and (line := _points_went(value)):
            lines.append(line)
            continue
        if isinstance(value, dict):
            body = ", ".join(f"{k} {x:+.2f}" if isinstance(x, float) else f"{k} {x}" for k, x in value.items())
        else:
            body = str(value)
        lines.append(f"{name}: {body}")
    return lines


def case_markdown(v: Verdict, pictures: list[str] | tuple[str, ...] = ()) -> str:
    """A case folder's summary.md."""
    rows = [
        f"# {v.model}: {v.opt['target']} vs {v.ref['target']}",
        "",
        f"Data set: **{v.dataset}** (a subset's mAP is noisy; it is not COCO mAP).",
        "",
        "| metric | reference | optimized | delta (points) |",
        "|---|---:|---:|---:|",
    ]
    for name in STAT_NAMES:
        rows.append(f"| {name} | {100 * v.ref_stats[name]:.2f} | {100 * v.opt_stats[name]:.2f} | "
                    f"{v.deltas[name]:+.2f} |")
    ci = v.ci or {}
    rule = v.decision_rule
    rows += [
        "",
        f"- paired bootstrap 95% CI of dAP: {_ci_text(v)} points ({ci['n_resamples']} resamples of images, seed "
        f"{ci['seed']})" if ci else "- no CI",
        f"- detection agreement: {_agreement_text(v)}",
        f"- tolerance: {v.tolerance:g} AP points ({v.tolerance_source})",
        f"- decision rule: {rule['rule']}"
        + (f"; images needed to be conclusive: ~{rule['images_needed']} ({rule['images_needed_formula']}, "
           f"se {rule['se_points']:.3f}, z {rule['z']:.2f})" if rule["images_needed"] else ""),
        *(f"- {line}" for line in _extras_lines(v)),
        *([f"- int8 form: {_form_line(v)}"] if v.int8_form else []),
        *([f"- speed: {_speed_text(v)}"] if v.speed else []),
        *([f"- **{line}**"] if (line := does_not_pay(speed_pays(v.speed, _precision_of(v)))) else []),
        f"- **verdict: {v.verdict}** (expected: {v.expected}) — {reason(v)}",
        "",
    ]
    if isinstance(v.extras.get("attribution"), dict) and "where_points_went" in v.extras["attribution"]:
        rows += summary_lines(v.extras["attribution"])
    rows += [f"![{p}]({p})" for p in pictures]
    return "\n".join(rows) + ("\n" if pictures else "")


def case_text(v: Verdict, directory: Path | None = None, result: str | None = None,
              baseline: str | None = None, baseline_status: BaselineStatus | None = None) -> str:
    """One case for a terminal: the comparison table, the reason and where the artifacts are."""
    width = 13
    lines = [f"{v.model}: {v.opt['target']} vs {v.ref['target']} on {v.dataset}",
             *([f"  {suspect_reference_text(v.model, v.ref['target'], 100 * v.ref_stats['AP'], v.decision.n_images)}"]
               if v.reference_suspect else []),
             f"  {'':{width}} {'reference':>10} {'optimized':>10} {'delta':>8}"]
    for name in ("AP", "AP50", "AP75"):
        lines.append(f"  {name:{width}} {100 * v.ref_stats[name]:10.2f} {100 * v.opt_stats[name]:10.2f} "
                     f"{v.deltas[name]:+8.2f}")
    lines += [
        f"  {'95% CI dAP':{width}} {_ci_text(v)}",
        f"  {'agreement':{width}} {_agreement_text(v)}",
        f"  {'tolerance':{width}} {v.tolerance:g} points ({v.tolerance_source})",
        *(f"  {line}" for line in _extras_lines(v)),
        *([f"  {'int8 form':{width}} {_form_line(v)}"] if v.int8_form else []),
        *([f"  {'speed':{width}} {_speed_text(v)}"] if v.speed else []),
        *([f"  {'':{width}} {line}"] if (line := does_not_pay(speed_pays(v.speed, _precision_of(v)))) else []),
        (f"  {'verdict':{width}} fail: {baseline_status.stat} {baseline_status.value:.2f} is "
         f"{baseline_status.drop:.2f} points below its baseline ({baseline_status.target}); gate verdict "
         f"{v.verdict} (expected {v.expected})" if baseline_status is not None and baseline_status.regressed else
         f"  {'verdict':{width}} {v.verdict} (expected {v.expected})" + (f" -> {result}" if result else "")),
        f"  {'reason':{width}} {reason(v)}",
    ]
    if baseline:
        lines.append(f"  {'baseline':{width}} {baseline}")
    if directory is not None:
        lines.append(f"  {'artifacts':{width}} {directory}")
    return "\n".join(lines)


def junit_properties(v: Verdict, result: str | None = None, baseline: str | None = None) -> list[tuple[str, Any]]:
    """JUnit XML properties of one case that reached a verdict (``record_property``): ``result`` is
    what the verdict did to the run (pass, fail, warn), ``baseline`` the baseline comparison."""
    ci = v.ci or {}
    props: list[tuple[str, Any]] = [
        ("delta_ap", round(v.delta_ap, 4)), ("ci_low", _round(ci.get("low_points"))),
        ("ci_high", _round(ci.get("high_points"))), ("tolerance", v.tolerance), ("verdict", v.verdict),
        ("expected", v.expected)]
    if result is not None:
        props.append(("result", result))
    if baseline is not None:
        props.append(("baseline", baseline))
    if v.speed:
        props += [(f"speed_{k}", v.speed[k]) for k in ("fp32_ms", "optimized_ms") if k in v.speed]
    return props


def _round(x: float | None) -> float | str:
    return "" if x is None else round(x, 4)


def write_case(v: Verdict, directory: Path, ref_metrics: Any = None, opt_metrics: Any = None) -> list[Path]:
    """summary.md and, when both evaluations are given, the PNGs, into ``directory``."""
    pictures = []
    if ref_metrics is not None and opt_metrics is not None:
        pictures = [_plot_pr_curves(v, ref_metrics, opt_metrics, directory / PR_CURVES_PNG),
                    _plot_class_deltas(v, directory / CLASS_DELTAS_PNG)]
    pictures = [p for p in pictures if p is not None]
    summary = directory / "summary.md"
    write_bytes_atomic(summary, case_markdown(v, [p.name for p in pictures]).encode())
    return [summary, *pictures]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a Jetson over ssh or in CI
    import matplotlib.pyplot as plt

    return plt


def _pr_curve(metrics: Any, iou_index: int) -> Any:
    """Mean precision over categories with ground truth, per recall threshold (area all, 100 dets)."""
    import numpy as np

    p = metrics.precision[iou_index, :, :, 0, -1]  # (R, K); -1 marks categories without ground truth
    valid = p > -1
    with np.errstate(invalid="ignore"):
        return np.where(valid.any(axis=1), np.where(valid, p, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1),
                        np.nan)


def _save(fig: Any, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _plot_pr_curves(v: Verdict, ref: Any, opt: Any, out: Path) -> Path | None:
    if getattr(ref, "precision", None) is None or getattr(opt, "precision", None) is None:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, iou in zip(axes, (0.5, 0.75)):
        t = int(abs(IOU_THRS - iou).argmin())
        ax.plot(REC_THRS, _pr_curve(ref, t), label=f"reference {v.ref['target']}", lw=2)
        ax.plot(REC_THRS, _pr_curve(opt, t), label=f"optimized {v.opt['target']}", lw=1.5, ls="--")
        ax.set_title(f"IoU {iou:g}")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision (mean over classes)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{v.model}: {v.dataset}", fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


def _plot_class_deltas(v: Verdict, out: Path) -> Path | None:
    cats = sorted(((c["name"], c["delta_AP"]) for c in v.per_category.values() if c.get("delta_AP") is not None),
                  key=lambda c: c[1])
    if not cats:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.16 * len(cats) + 1)))
    names, deltas = zip(*cats)
    ax.barh(range(len(cats)), deltas, color=["tab:red" if d < -v.tolerance else "tab:blue" for d in deltas])
    ax.set_yticks(range(len(cats)), names, fontsize=6)
    ax.axvline(-v.tolerance, color="tab:red", ls=":", lw=1, label=f"-tolerance ({v.tolerance:g})")
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("dAP per class (points, optimized - reference)")
    ax.set_title(f"{v.model}: {v.opt['target']} vs {v.ref['target']}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------- the run
@dataclass
class CaseRow:
    """One case of a run, as plain data (it travels from xdist workers in the test report)."""

    model: str
    optimized: str
    result: str  # passed | failed | warning | skipped | error
    reference: str = ""
    ref_ap: float | None = None  # AP points
    opt_ap: float | None = None
    delta_ap: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    agreement: float | None = None  # share of reference detections matched
    tolerance: float | None = None
    verdict: str = ""
    expected: str = ""
    reason: str = ""
    baseline: str = ""  # the baseline comparison in words
    baseline_status: str = ""  # its kind (mapgate.baselines.BaselineKind value), "" when none was made
    directory: str = ""  # the case folder, relative to the run folder
    pictures: tuple[str, ...] = ()
    dataset: str = ""
    points_went: str = ""  # the TIDE attribution line; shown under the table for cases that did not pass
    speedup: float | None = None  # FP32 time / optimized time on the same backend (None: not timed)
    speed_note: str = ""  # "INT8 does not pay on this backend: ..." when slower than FP32
    int8_form: str = ""  # "conv/s8": the Q/DQ form of an INT8 file (shown beside the target)
    reference_suspect: bool = False  # the reference AP is too low to mean anything (mapgate.decision)
    n_images: int = 0

    @classmethod
    def of(cls, v: Verdict, result: str, directory: str = "", baseline: str = "",
           pictures: tuple[str, ...] = (), baseline_status: str = "") -> "CaseRow":
        ci = v.ci or {}
        return cls(model=v.model, optimized=v.opt["target"], result=result, reference=v.ref["target"],
                   ref_ap=100 * v.ref_stats["AP"], opt_ap=100 * v.opt_stats["AP"], delta_ap=v.delta_ap,
                   ci_low=ci.get("low_points"), ci_high=ci.get("high_points"), agreement=v.agreement.matched_share,
                   tolerance=v.tolerance, verdict=v.verdict, expected=v.expected, reason=reason(v), baseline=baseline, baseline_status=baseline_status,
                   directory=directory, pictures=tuple(pictures), dataset=v.dataset,
                   points_went=_points_went(v.extras.get("attribution")),
                   speedup=v.speed["speedup_vs_fp32"] if v.speed else None,
                   speed_note=does_not_pay(speed_pays(v.speed, _precision_of(v))), int8_form=form_text(v.int8_form),
                   reference_suspect=v.reference_suspect, n_images=v.decision.n_images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CaseRow":
        d = dict(d)
        d["pictures"] = tuple(d.get("pictures", ()))
        return cls(**d)

    def cells(self) -> list[str]:
        def num(x: float | None, fmt: str) -> str:
            return "" if x is None else format(x, fmt)

        ci = f"[{self.ci_low:+.2f}, {self.ci_high:+.2f}]" if self.ci_low is not None and self.ci_high is not None else ""
        verdict = self.verdict + (f" (expected {self.expected})" if self.expected and self.expected != "pass" else "")
        optimized = self.optimized + (f" ({self.int8_form})" if self.int8_form else "")
        ref_ap = num(self.ref_ap, ".2f") + (" !" if self.reference_suspect else "")
        return [self.model, self.reference, optimized, ref_ap, num(self.opt_ap, ".2f"),
                num(self.delta_ap, "+.2f"), "" if self.speedup is None else f"x{self.speedup:.2f}", ci,
                "" if self.agreement is None else f"{100 * self.agreement:.1f}%",
                num(self.tolerance, "g"), verdict or "-", self.result,
                BASELINE_WORDS[BaselineKind(self.baseline_status)] if self.baseline_status else "-"]


HEADERS = ["model", "reference", "optimized", "ref AP", "opt AP", "dAP", "speedup", "95% CI", "agreement",
           "tolerance", "verdict", "result", "baseline"]
_NUMERIC = {3, 4, 5, 6, 8, 9}


def run_title(dataset: str) -> str:
    """The heading of a run's table: every number in it is on this data set (never "COCO mAP")."""
    return f"mapgate accuracy gate on {dataset}" if dataset else "mapgate accuracy gate"


def run_table(rows: list[CaseRow]) -> str:
    """The session's table for the terminal, with the notes (reasons, baselines) below it."""
    table = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in _NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(HEADERS), "  ".join("-" * w for w in widths)] + [line(c) for c in table[1:]]
    notes = _notes(rows)
    return "\n".join(out + ([""] + notes if notes else []))


def _notes(rows: list[CaseRow]) -> list[str]:
    """Why a case did not simply pass, and baseline remarks; one line per distinct reason."""
    grouped: dict[str, list[str]] = {}
    for r in rows:
        regressed_only = r.baseline_status == BaselineKind.REGRESSED.value and r.verdict == "pass"
        if (r.result in ("failed", "warning", "skipped", "error") or r.verdict == "inconclusive") \
                and not regressed_only:  # a passing verdict's reason does not explain a failed baseline
            grouped.setdefault(f"{r.result}: {r.reason}", []).append(f"{r.model} {r.optimized}")
        if r.baseline and r.baseline_status not in (BaselineKind.WITHIN.value, ""):
            grouped.setdefault(f"baseline: {r.baseline.split(': ', 1)[-1]}", []).append(f"{r.model} {r.optimized}")
    notes = [f"{cases[0]} ({text})" if len(cases) == 1 else
             f"{', '.join(cases)} ({text})" if len(cases) <= 3 else
             f"{len(cases)} cases: {cases[0]} and {len(cases) - 1} more ({text})" for text, cases in grouped.items()]
    # a reference that scores near 0 makes every comparison against it meaningless: first, loud
    suspects = sorted({(r.model, r.reference, r.ref_ap, r.n_images) for r in rows
                       if r.reference_suspect and r.ref_ap is not None})
    loud = [suspect_reference_text(*s) for s in suspects]
    # a case that lost points says where they went, one line each (the numbers differ per case)
    return loud + notes + [f"{r.model} {r.optimized}: {r.points_went}" for r in rows
                    if r.points_went and r.verdict in ("fail", "inconclusive")] \
        + [f"{r.model} {r.optimized}: {r.speed_note}" for r in rows if r.speed_note]


def run_markdown(rows: list[CaseRow], title: str = "mapgate accuracy gate", dataset: str = "",
                 artifacts: Path | None = None) -> str:
    """report.md: the session table with a link to each case's summary.md and pictures. With
    ``artifacts`` (the step summary, rendered away from the run folder, where relative links are
    dead) no links: each case's folder is named as text, under the run folder's absolute path."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.result] = counts.get(r.result, 0) + 1
    out = [f"# {title}", ""]
    if dataset:
        out += [f"Data set: **{dataset}**.", ""]
    if artifacts is not None:
        out += [f"Artifacts (per case: summary.md, comparison.json, pictures): `{artifacts}`", ""]
    plural = {"warning": "warnings", "error": "errors"}
    out += [", ".join(f"{n} {plural.get(k, k) if n > 1 else k}" for k, n in sorted(counts.items())) or "no cases", "",
            "| " + " | ".join(HEADERS + ["details"]) + " |",
            "|" + "|".join("---:" if i in _NUMERIC else "---" for i in range(len(HEADERS) + 1)) + "|"]
    for r in rows:
        links = []
        if r.directory and artifacts is not None:
            links.append(f"`{r.directory}/`")
        elif r.directory:
            links.append(f"[summary]({r.directory}/summary.md)")
            links += [f"[{Path(p).stem}]({r.directory}/{p})" for p in r.pictures]
        cells = [c.replace("|", "\\|") for c in r.cells()]
        out.append("| " + " | ".join(cells + [" ".join(links)]) + " |")
    notes = _notes(rows)
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_run(rows: list[CaseRow], run_dir: Path, dataset: str = "") -> Path:
    """reports/<run-id>/report.md."""
    path = run_dir / REPORT_MD
    write_bytes_atomic(path, run_markdown(rows, dataset=dataset).encode())
    return path


def write_step_summary(rows: list[CaseRow], run_dir: Path, dataset: str = "") -> str | None:
    """Append the run's table to $GITHUB_STEP_SUMMARY when set; returns a one-line warning when it
    cannot be written. A CI summary is a convenience: failing to write it never loses the result
    (the table, report.md, the exit code)."""
    summary = os.environ.get(STEP_SUMMARY_ENV)
    if not summary:
        return None
    text = run_markdown(rows, dataset=dataset, artifacts=Path(run_dir).absolute())
    target = Path(summary)
    problem = None
    if target.is_dir():
        problem = "it is a folder"
    elif not target.parent.is_dir():
        problem = f"its folder {target.parent} does not exist"
    else:
        try:
            with open(target, "a", encoding="utf-8") as f:  # appended: other steps write there too
                f.write(text + "\n")
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem is None:
        return None
    return f"mapgate: warning: step summary not written: {STEP_SUMMARY_ENV}={summary}: {problem}"


def plot_int8_pareto(record: dict[str, Any], out: Path) -> Path:
    """`mapgate int8-repair`'s candidates: proxy dAP (pseudo-AP points vs the FP32 detections) against
    latency, every candidate a point, the chosen one starred, the Pareto front drawn. Each candidate
    was timed beside FP32; its time is put on one scale as its share of FP32 times the run's median
    FP32 time, so load drift between candidates does not move the points."""
    import numpy as np

    cands = record.get("candidates") or []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    fp32 = float(np.median([c["speed"]["fp32_ms"] for c in cands])) if cands else 0.0
    xs = [c["speed"]["ms"] / c["speed"]["fp32_ms"] * fp32 for c in cands]
    ys = [c["pseudo_ap"] - 100.0 for c in cands]
    colors = {"manifest": "tab:gray", "calibration": "tab:blue", "data-free": "tab:green", "float layers": "tab:orange"}
    for stage, color in colors.items():
        pts = [(x, y) for x, y, c in zip(xs, ys, cands) if c["stage"] == stage]
        if pts:
            ax.scatter(*zip(*pts), s=22, color=color, label=stage, alpha=0.8)
    front, best = [], -float("inf")
    for x, y in sorted(zip(xs, ys)):  # fastest first: a point is on the front if nothing faster is better
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        ax.plot(*zip(*front), color="black", lw=0.8, ls=":", label="Pareto front")
    chosen = record.get("chosen", -1)
    if 0 <= chosen < len(cands):
        ax.scatter([xs[chosen]], [ys[chosen]], marker="*", s=220, color="red", edgecolor="black", zorder=5,
                   label=f"chosen ({record.get('status', '')})")
    if fp32:
        ax.axvline(fp32, color="gray", lw=1, label=f"FP32 {fp32:.2f} ms")
        speedup = float(record.get("min_speedup") or 0)
        if speedup > 0 and speedup != 1.0:
            ax.axvline(fp32 / speedup, color="gray", lw=1, ls="--", label=f"min speedup x{speedup:g}")
    tol = record.get("proxy", {}).get("tolerance_pseudo_ap_points_lost")
    if tol is not None:
        ax.axhline(-float(tol), color="tab:red", lw=1, ls="--", label=f"proxy tolerance -{float(tol):g}")
    latency = record.get("latency", {})
    ax.set_xlabel(f"latency, ms per image ({'CPU proxy: ' if latency.get('cpu_proxy') else ''}"
                  f"{latency.get('engine', 'engine')})", fontsize=8)
    ax.set_ylabel("proxy dAP (pseudo-AP points vs FP32)")
    ax.set_title(f"{record.get('model', '')} -> {record.get('target', '')}: int8-repair candidates", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# `mapgate doctor`
# ---------------------------------------------------------------------------------------------
def doctor_text(facts: dict[str, Any]) -> str:
    """What this machine can run (``mapgate doctor``), one line per fact, with the fix for each gap."""
    lines = [f"{'backend':12} {'status':12} versions"]
    for row in facts["backends"]:
        versions = ", ".join(f"{m} {v}" for m, v in row["versions"].items() if v) or "-"
        lines.append(f"{row['backend']:12} {'available' if row['available'] else 'missing':12} {versions}")
        if not row["available"]:
            lines.append(f"{'':12}   why: {row['reason']}")
            if row["fix"]:
                lines.append(f"{'':12}   fix: {row['fix']}")
    trt, gpu = facts["tensorrt"], facts["gpu"]
    if trt["version"] is None:
        lines.append("\nTensorRT: not importable (why and fix: the tensorrt row above)")
    else:
        typing = trt.get("typing") or f"refused: {trt.get('typing_error')}"
        env = f" (MAPGATE_TRT_TYPING={trt['typing_env']})" if trt["typing_env"] else ""
        lines.append(f"\nTensorRT {trt['version']} ({trt['where']}): {typing} builds{env}")
        for precision, st in trt.get("precisions", {}).items():
            lines.append(f"  tensorrt:{precision:5} {'buildable' if st['ok'] else 'not buildable: ' + st['reason']}")
    lines.append("TensorRT typing per version: 8.5-10.11 weakly typed; 10.12-10.x weakly typed unless "
                 "MAPGATE_TRT_TYPING=strong; 11+ strongly typed only")
    gpu_line = f"GPU: {gpu['cuda_devices']} CUDA device(s)"
    if gpu.get("name"):
        gpu_line += f", {gpu['name']} (compute capability {gpu.get('compute_capability', '?')})"
    if gpu["reason"]:
        gpu_line += f"; {gpu['reason']}"
    lines.append(gpu_line)
    lines.append(f"trtexec: {facts['trtexec'] or 'not on PATH (doctor --run then times with mapgate only)'}")
    cpu = facts["cpu_int8_dot_product"]
    lines.append(f"CPU INT8 dot product ({cpu['machine']}): {'saturates' if cpu['saturates'] else 'exact'}: "
                 f"{cpu['reason']}" + ("; onnxruntime:int8 uses 7-bit weights here" if cpu["saturates"] else ""))
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pts(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else (f"{value:+.2f}" if sign else f"{value:.2f}")


def doctor_markdown(record: dict[str, Any]) -> str:
    """The ``doctor --run`` report as Markdown, to attach to an issue."""
    b = record["bounds"]
    out = ["# mapgate doctor --run", "",
           f"Data set: {record['dataset']}. Verdict: **{'PASS' if record['passed'] else 'FAIL'}** "
           f"({', '.join(f'{k} {v}' for k, v in record['counts'].items())}).", "",
           f"Bounds: FP32 |dAP| <= {b['fp32_max_dap']} and FP16 |dAP| <= {b['fp16_max_dap']} AP points vs "
           f"onnxruntime:fp32; Q/DQ INT8 agreement with onnxruntime:int8 >= {b['int8_min_agreement']}.", "",
           "| model | target | typing | reference | AP | ref AP | dAP | agreement | engine ms | ref ms | trtexec ms "
           "| status |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in record["checks"]:
        agreement = "-" if c["agreement"] is None else f"{c['agreement']:.3f}"
        out.append(f"| {c['model']} | tensorrt:{c['precision']} | {c['typing'] or '-'} | {c['reference']} | "
                   f"{_pts(c['ap'])} | {_pts(c['reference_ap'])} | {_pts(c['dap'], True)} | {agreement} | "
                   f"{_ms(c['engine_ms'])} | {_ms(c['reference_engine_ms'])} | {_ms(c['trtexec_ms'])} | "
                   f"{c['status']}{': ' + c['reason'].replace('|', '/') if c['reason'] else ''} |")
    out += ["", "## Machine", "", "```", doctor_text(record["machine"]), "```", ""]
    return "\n".join(out)
