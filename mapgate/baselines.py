"""Recorded baselines: each (model, target) AP/AP50 on a named data set, kept in
``mapgate-baselines.json`` beside the manifest that declares the model, so a retrained model or
changed build settings cannot silently lose accuracy even when original and engine move together.

File format: ``{model: {target: {"AP": f, "AP50": f, "dataset": label}}}`` (fractions, as
pycocotools reports them). A baseline is only compared with a run on the same data set label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapgate.errors import ConfigError, GateFailure

BASELINES_FILE = "mapgate-baselines.json"

Baselines = dict[str, dict[str, dict[str, Any]]]


class BaselineRegression(GateFailure):
    """A result fell below its recorded baseline by more than its tolerance."""


def baselines_path(manifest: Path) -> Path:
    """Where the baselines of a manifest's models live: beside it, never inside mapgate."""
    return Path(manifest).parent / BASELINES_FILE


def load_baselines(path: Path) -> Baselines:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"baselines file {path} is not valid JSON ({exc}); fix it or delete it and re-record "
                          "with --update-baselines") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"baselines file {path}: expected {{model: {{target: {{AP, AP50, dataset}}}}}}")
    return data


@dataclass(frozen=True)
class BaselineCheck:
    model: str
    target: str
    ap: float  # fractions, as pycocotools reports them
    ap50: float
    tolerance_points: float
    dataset: str | None = None  # this run's data set label (None: compare regardless)

    def check(self, baselines: Baselines) -> str:
        """Raise BaselineRegression on a drop beyond tolerance; return a one-line status otherwise."""
        base = baselines.get(self.model, {}).get(self.target)
        if base is None:
            return f"{self.model} {self.target}: no baseline recorded (run with --update-baselines to record one)"
        recorded_on = base.get("dataset")
        if self.dataset is not None and recorded_on is not None and recorded_on != self.dataset:
            return (f"{self.model} {self.target}: baseline recorded on {recorded_on}, this run is on {self.dataset}: "
                    "not compared")
        drops = {k: 100.0 * (base[k] - v) for k, v in (("AP", self.ap), ("AP50", self.ap50)) if k in base}
        worst = max(drops, key=lambda k: drops[k])
        if drops[worst] > self.tolerance_points:
            raise BaselineRegression(
                f"{self.model} {self.target}: {worst} {100 * (self.ap if worst == 'AP' else self.ap50):.2f} is "
                f"{drops[worst]:.2f} points below its baseline {100 * base[worst]:.2f} (tolerance "
                f"{self.tolerance_points:g}); if the change is intended, re-record with --update-baselines")
        return f"{self.model} {self.target}: within {self.tolerance_points:g} points of its baseline"

    def record(self) -> dict[str, Any]:
        """This result as a baseline entry."""
        return {"AP": self.ap, "AP50": self.ap50, "dataset": self.dataset}

    def refuse_replacing_another_data_set(self, baselines: Baselines, path: Path) -> None:
        """--update-baselines on a subset must not overwrite a baseline of the full set (or vice versa)."""
        base = baselines.get(self.model, {}).get(self.target)
        if base and base.get("dataset") not in (None, self.dataset):
            raise ConfigError(f"--update-baselines: {path} holds {self.model} {self.target} recorded on "
                              f"{base['dataset']}; this run is on {self.dataset}. Re-record on that data set, or "
                              "delete the entry to record another one")


def write_updates(path: Path, updates: Baselines) -> list[str]:
    """Merge ``updates`` into the baselines file at ``path`` (atomically); one line per change."""
    from mapgate.fsutil import write_json_atomic

    merged = load_baselines(path)
    lines = []
    for model, targets in sorted(updates.items()):
        for target, new in sorted(targets.items()):
            old = merged.get(model, {}).get(target)
            lines.append(f"  {model} {target}: AP {_fmt(old, 'AP')} -> {new['AP']:.4f}, "
                         f"AP50 {_fmt(old, 'AP50')} -> {new['AP50']:.4f} ({new.get('dataset')})")
            merged.setdefault(model, {})[target] = new
    write_json_atomic(path, merged)
    return lines


def _fmt(old: dict[str, Any] | None, key: str) -> str:
    return f"{old[key]:.4f}" if old and key in old else "(none)"
