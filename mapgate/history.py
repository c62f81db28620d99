"""Benchmark history: the runs pytest-benchmark saved, as a table and a trend plot.

pytest-benchmark saves one JSON per run (``--benchmark-autosave`` / ``--benchmark-save``) as
``<storage>/<machine-id>/NNNN_<name>.json``; mapgate's plugin puts each device under its own
``<storage>`` (``.benchmarks/<fingerprint-id>/``). Given the top directory, this module finds
every run below it, groups benchmarks per device, model and backend:precision, and shows
images/s and p99 latency over the runs (``mapgate history``).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapgate.errors import DataError
from mapgate.fsutil import atomic_path

DEFAULT_STORAGE = Path(".benchmarks")
DEFAULT_OUT = Path("reports") / "benchmark-history.png"
_RUN_FILE = re.compile(r"^(\d{4})_.*\.json$")


@dataclass(frozen=True)
class Point:
    """One benchmark of one saved run."""

    device: str  # fingerprint id
    run: str  # 'NNNN' of the saved file
    path: Path
    datetime: str
    commit: str
    model: str
    target: str  # backend:precision ('orig' = the original file)
    kind: str  # engine_only | end_to_end | '-' for benchmarks that are not mapgate's
    batch_size: int | None
    images_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None


def run_files(storage: Path) -> list[Path]:
    """Every ``NNNN_*.json`` below ``storage`` (any depth: per-device and per-python directories)."""
    storage = Path(storage)
    if not storage.is_dir():
        raise DataError(f"benchmark storage {storage} does not exist; save runs first with "
                        "pytest -m benchmark --benchmark-autosave")
    return sorted(p for p in storage.rglob("*.json") if _RUN_FILE.match(p.name))


def _device_of(path: Path, storage: Path, machine_info: dict[str, Any]) -> str:
    fid = machine_info.get("mapgate_fingerprint_id")
    if isinstance(fid, str) and fid:
        return fid
    rel = path.relative_to(storage).parts
    # <fp-id>/<machine-id>/NNNN.json -> fp-id; a plain pytest-benchmark storage has no device level
    return rel[0] if len(rel) >= 3 else "unknown-device"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _point(path: Path, storage: Path, run: dict[str, Any], bench: dict[str, Any]) -> Point:
    info = bench.get("extra_info") or {}
    stats = bench.get("stats") or {}
    machine_info = run.get("machine_info") or {}
    commit = run.get("commit_info") or {}
    ours = "images_per_s" in info
    p50 = _number(info.get("latency_p50_ms"))
    p99 = _number(info.get("latency_p99_ms"))
    ips = _number(info.get("images_per_s"))
    if not ours:
        # Any other benchmark still gets a line: ops/s as its rate, percentiles if --benchmark-save-data kept them
        ops = _number(stats.get("ops"))
        ips = ops
        data = stats.get("data")
        if isinstance(data, list) and data:
            p50, p99 = (float(v) * 1000.0 for v in np.percentile(np.asarray(data, float), [50, 99]))
    return Point(
        device=_device_of(path, storage, machine_info),
        run=path.name[:4],
        path=path,
        datetime=str(run.get("datetime") or ""),
        commit=str(commit.get("id") or "")[:8] + ("*" if commit.get("dirty") else ""),
        model=str(info.get("model") or bench.get("group") or bench.get("name") or "?"),
        target=str(info.get("target") or "-"),
        kind=str(info.get("kind") or "-"),
        batch_size=int(info["batch_size"]) if isinstance(info.get("batch_size"), int) else None,
        images_per_s=ips,
        p50_ms=p50,
        p99_ms=p99,
    )


def load_points(storage: Path) -> list[Point]:
    """All benchmarks of all saved runs below ``storage``, oldest run first.

    A file that is not a pytest-benchmark run (or was cut short by a killed run: pytest-benchmark
    does not write atomically) is reported on stderr and left out, so one bad file does not hide
    the whole history.
    """
    storage = Path(storage)
    points: list[Point] = []
    for path in run_files(storage):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"mapgate history: skipping {path}: not readable JSON ({exc})", file=sys.stderr)
            continue
        if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
            print(f"mapgate history: skipping {path}: no 'benchmarks' list (not a pytest-benchmark run)",
                  file=sys.stderr)
            continue
        points.extend(_point(path, storage, run, b) for b in run["benchmarks"] if isinstance(b, dict))
    points.sort(key=lambda p: (p.device, p.datetime, p.run, str(p.path)))
    return points


def _series(points: list[Point]) -> dict[tuple[str, str, str], list[Point]]:
    """(device, model, target) -> points in run order."""
    out: dict[tuple[str, str, str], list[Point]] = defaultdict(list)
    for p in points:
        out[(p.device, p.model, p.target)].append(p)
    return dict(out)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(row: dict[str, Any], col: str) -> str:
    value = row.get(col)
    if col in ("run", "date", "commit", "batch"):
        return "-" if value in (None, "") else str(value)
    return _fmt(value)


def history_table(storage: Path) -> str:
    """One table per device and model/backend: a row per saved run, engine-only and end-to-end side by side."""
    points = load_points(storage)
    if not points:
        raise DataError(f"no saved benchmark runs (NNNN_*.json) below {storage}; save one with "
                        "pytest -m benchmark --benchmark-autosave")
    header = ("run", "date", "commit", "batch", "e2e img/s", "e2e p50 ms", "e2e p99 ms",
              "engine img/s", "engine p50 ms", "engine p99 ms", "other img/s")
    blocks: list[str] = []
    for (device, model, target), series in _series(points).items():
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for p in series:
            row = rows.setdefault((p.datetime, p.run), {"run": p.run, "date": p.datetime[:19].replace("T", " "),
                                                        "commit": p.commit or "-", "batch": p.batch_size})
            prefix = {"end_to_end": "e2e", "engine_only": "engine"}.get(p.kind, "other")
            row[f"{prefix} img/s"] = p.images_per_s
            row[f"{prefix} p50 ms"] = p.p50_ms
            row[f"{prefix} p99 ms"] = p.p99_ms
        # only columns that some run filled; a non-mapgate benchmark has just 'other'
        cols = [h for h in header if h in ("run", "date", "commit") or any(r.get(h) is not None for r in rows.values())]
        cells = [[_cell(r, c) for c in cols] for r in rows.values()]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = [f"== {model}  {target}  [{device}] ==",
                 "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
        lines += ["  ".join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
                  for row in cells]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_history(storage: Path, out_png: Path) -> Path:
    """Trend plot (one row per device): images/s and p99 latency against the saved runs."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and Jetsons over SSH have no display
    import matplotlib.pyplot as plt

    points = load_points(storage)
    if not points:
        raise DataError(f"no saved benchmark runs (NNNN_*.json) below {storage}; nothing to plot")
    devices = sorted({p.device for p in points})
    # tall enough for the legend of the device with the most lines (the full matrix has ~30)
    most = max(len({(p.model, p.target, p.kind) for p in points if p.device == d}) for d in devices)
    row_height = max(4.2, 0.13 * most + 1.2)
    fig, axes = plt.subplots(len(devices), 2, figsize=(15, row_height * len(devices)), squeeze=False)
    for row, device in enumerate(devices):
        mine = [p for p in points if p.device == device]
        runs = sorted({(p.datetime, p.run) for p in mine})
        x_of = {r: i for i, r in enumerate(runs)}
        lines: dict[tuple[str, str, str], list[Point]] = defaultdict(list)
        for p in mine:
            lines[(p.model, p.target, p.kind)].append(p)
        ax_rate, ax_p99 = axes[row]
        colors = plt.get_cmap("tab20")
        pairs = sorted({(m, t) for m, t, _ in lines})
        for (model, target, kind), series in sorted(lines.items()):
            color = colors(pairs.index((model, target)) % 20)
            style = "--" if kind == "engine_only" else "-"
            label = f"{model} {target}" + ("" if kind == "-" else f" ({'engine' if kind == 'engine_only' else 'e2e'})")
            xs = [x_of[(p.datetime, p.run)] for p in series]
            for ax, values in ((ax_rate, [p.images_per_s for p in series]), (ax_p99, [p.p99_ms for p in series])):
                pts = [(x, v) for x, v in zip(xs, values) if v is not None]
                if pts:
                    ax.plot([x for x, _ in pts], [v for _, v in pts], style, marker="o", color=color, label=label)
        for ax, title in ((ax_rate, "images/s (higher is better)"), (ax_p99, "p99 latency, ms (lower is better)")):
            ax.set_title(f"{device}: {title}", fontsize=9)
            ax.set_xticks(range(len(runs)))
            ax.set_xticklabels([f"{r}\n{dt[5:10]}" for dt, r in runs], fontsize=7)  # run number + MM-DD
            ax.set_xlabel("saved run")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.set_yscale("log")  # models span 10x in speed; equal steps = equal relative change
        handles, labels = ax_rate.get_legend_handles_labels()
        if handles:
            ax_p99.legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                          title="solid: end-to-end, dashed: engine-only", title_fontsize=6)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # keep the outside legend
    plt.close(fig)
    return out_png


def run_history(storage: Path = DEFAULT_STORAGE, out: Path | None = None) -> int:
    """``mapgate history``: print the table, write the plot (``out`` None: reports/benchmark-history.png)."""
    table = history_table(Path(storage))
    print(table, end="")
    png = plot_history(Path(storage), Path(out) if out is not None else DEFAULT_OUT)
    print(f"trend plot: {png}")
    return 0
