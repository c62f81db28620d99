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

from mapgate.compare import STAT_NAMES, Verdict

PR_CURVES_PNG = "pr-curves.png"
CLASS_DELTAS_PNG = "per-class-dap.png"
REPORT_MD = "report.md"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


# ----------------------------------------------------------------------------------- one case
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
        f"- **verdict: {v.verdict}** (expected: {v.expected}) — {v.reason}",
        "",
    ]
    if isinstance(v.extras.get("attribution"), dict) and "where_points_went" in v.extras["attribution"]:
        from mapgate.attribution import summary_lines

        rows += summary_lines(v.extras["attribution"])
    rows += [f"![{p}]({p})" for p in pictures]
    return "\n".join(rows) + ("\n" if pictures else "")


def case_text(v: Verdict, directory: Path | None = None, result: str | None = None,
              baseline: str | None = None) -> str:
    """One case for a terminal: the comparison table, the reason and where the artifacts are."""
    width = 13
    lines = [f"{v.model}: {v.opt['target']} vs {v.ref['target']} on {v.dataset}",
             f"  {'':{width}} {'reference':>10} {'optimized':>10} {'delta':>8}"]
    for name in ("AP", "AP50", "AP75"):
        lines.append(f"  {name:{width}} {100 * v.ref_stats[name]:10.2f} {100 * v.opt_stats[name]:10.2f} "
                     f"{v.deltas[name]:+8.2f}")
    lines += [
        f"  {'95% CI dAP':{width}} {_ci_text(v)}",
        f"  {'agreement':{width}} {_agreement_text(v)}",
        f"  {'tolerance':{width}} {v.tolerance:g} points ({v.tolerance_source})",
        *(f"  {line}" for line in _extras_lines(v)),
        f"  {'verdict':{width}} {v.verdict} (expected {v.expected})" + (f" -> {result}" if result else ""),
        f"  {'reason':{width}} {v.reason}",
    ]
    if baseline:
        lines.append(f"  {'baseline':{width}} {baseline}")
    if directory is not None:
        lines.append(f"  {'artifacts':{width}} {directory}")
    return "\n".join(lines)


def junit_properties(v: Verdict) -> list[tuple[str, Any]]:
    """JUnit XML properties of one case (``record_property``)."""
    ci = v.ci or {}
    return [("delta_ap", round(v.delta_ap, 4)), ("ci_low", _round(ci.get("low_points"))),
            ("ci_high", _round(ci.get("high_points"))), ("tolerance", v.tolerance), ("verdict", v.verdict)]


def _round(x: float | None) -> float | str:
    return "" if x is None else round(x, 4)


def write_case(v: Verdict, directory: Path, ref_metrics: Any = None, opt_metrics: Any = None) -> list[Path]:
    """summary.md and, when both evaluations are given, the PNGs, into ``directory``."""
    from mapgate.fsutil import write_bytes_atomic

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
    from mapgate.fsutil import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _plot_pr_curves(v: Verdict, ref: Any, opt: Any, out: Path) -> Path | None:
    from mapgate.evaluate import IOU_THRS, REC_THRS

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
    baseline: str = ""
    directory: str = ""  # the case folder, relative to the run folder
    pictures: tuple[str, ...] = ()
    dataset: str = ""
    points_went: str = ""  # the TIDE attribution line; shown under the table for cases that did not pass

    @classmethod
    def of(cls, v: Verdict, result: str, directory: str = "", baseline: str = "",
           pictures: tuple[str, ...] = ()) -> "CaseRow":
        ci = v.ci or {}
        return cls(model=v.model, optimized=v.opt["target"], result=result, reference=v.ref["target"],
                   ref_ap=100 * v.ref_stats["AP"], opt_ap=100 * v.opt_stats["AP"], delta_ap=v.delta_ap,
                   ci_low=ci.get("low_points"), ci_high=ci.get("high_points"), agreement=v.agreement.matched_share,
                   tolerance=v.tolerance, verdict=v.verdict, expected=v.expected, reason=v.reason, baseline=baseline,
                   directory=directory, pictures=tuple(pictures), dataset=v.dataset,
                   points_went=_points_went(v.extras.get("attribution")))

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
        return [self.model, self.reference, self.optimized, num(self.ref_ap, ".2f"), num(self.opt_ap, ".2f"),
                num(self.delta_ap, "+.2f"), ci, "" if self.agreement is None else f"{100 * self.agreement:.1f}%",
                num(self.tolerance, "g"), verdict or "-", self.result]


HEADERS = ["model", "reference", "optimized", "ref AP", "opt AP", "dAP", "95% CI", "agreement", "tolerance",
           "verdict", "result"]
_NUMERIC = {3, 4, 5, 7, 8}


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
        if r.result in ("failed", "warning", "skipped", "error") or r.verdict == "inconclusive":
            grouped.setdefault(f"{r.result}: {r.reason}", []).append(f"{r.model} {r.optimized}")
        if r.baseline and not r.baseline.endswith("of its baseline"):
            grouped.setdefault(f"baseline: {r.baseline.split(': ', 1)[-1]}", []).append(f"{r.model} {r.optimized}")
    notes = [f"{cases[0]} ({text})" if len(cases) == 1 else
             f"{', '.join(cases)} ({text})" if len(cases) <= 3 else
             f"{len(cases)} cases: {cases[0]} and {len(cases) - 1} more ({text})" for text, cases in grouped.items()]
    # a case that lost points says where they went, one line each (the numbers differ per case)
    return notes + [f"{r.model} {r.optimized}: {r.points_went}" for r in rows
                    if r.points_went and r.verdict in ("fail", "inconclusive")]


def run_markdown(rows: list[CaseRow], title: str = "mapgate accuracy gate", dataset: str = "") -> str:
    """report.md: the session table with a link to each case's summary.md and pictures."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.result] = counts.get(r.result, 0) + 1
    out = [f"# {title}", ""]
    if dataset:
        out += [f"Data set: **{dataset}**.", ""]
    plural = {"warning": "warnings", "error": "errors"}
    out += [", ".join(f"{n} {plural.get(k, k) if n > 1 else k}" for k, n in sorted(counts.items())) or "no cases", "",
            "| " + " | ".join(HEADERS + ["details"]) + " |",
            "|" + "|".join("---:" if i in _NUMERIC else "---" for i in range(len(HEADERS) + 1)) + "|"]
    for r in rows:
        links = []
        if r.directory:
            links.append(f"[summary]({r.directory}/summary.md)")
            links += [f"[{Path(p).stem}]({r.directory}/{p})" for p in r.pictures]
        cells = [c.replace("|", "\\|") for c in r.cells()]
        out.append("| " + " | ".join(cells + [" ".join(links)]) + " |")
    notes = _notes(rows)
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_run(rows: list[CaseRow], run_dir: Path, dataset: str = "") -> Path:
    """reports/<run-id>/report.md, and the same table appended to $GITHUB_STEP_SUMMARY when set."""
    from mapgate.fsutil import write_bytes_atomic

    text = run_markdown(rows, dataset=dataset)
    path = run_dir / REPORT_MD
    write_bytes_atomic(path, text.encode())
    summary = os.environ.get(STEP_SUMMARY_ENV)
    if summary:
        with open(summary, "a", encoding="utf-8") as f:  # appended: other steps write there too
            f.write(text + "\n")
    return path


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
