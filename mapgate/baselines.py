"""Recorded baselines: each (model, target) AP/AP50 on a named data set, kept in
``mapgate-baselines.json`` beside the manifest that declares the model, so a retrained model or
changed build settings cannot silently lose accuracy even when original and engine move together.

File format: ``{model: {target: {"AP": f, "AP50": f, "dataset": label}}}`` (fractions, as
pycocotools reports them). A baseline is only compared with a run on the same data set label.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mapgate.errors import ConfigError
from mapgate.fsutil import write_json_atomic

BASELINES_FILE = "mapgate-baselines.json"

Baselines = dict[str, dict[str, dict[str, Any]]]


def baselines_path(manifest: Path) -> Path:
    """Where the baselines of a manifest's models live: beside it, never inside mapgate."""
    return Path(manifest).parent / BASELINES_FILE


def load_baselines(path: Path) -> Baselines:
    """The baselines at ``path`` ({} when there is no file), every entry checked: a value that cannot
    be compared (NaN, out of 0..1, missing, not a number) would switch the check off silently."""
    if path.is_dir():
        raise ConfigError(f"baselines file {path} is a folder; it must be a JSON file (or absent)")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"baselines file {path} is not valid JSON ({exc}); fix it or delete it and re-record "
                          "with --update-baselines") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"baselines file {path}: expected {{model: {{target: {{AP, AP50, dataset}}}}}}")
    for model, targets in data.items():
        for target, entry in targets.items():
            where = f"baselines file {path}: {model} {target}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected an object {{AP, AP50, dataset}}, got {entry!r}")
            for key in ("AP", "AP50"):
                value = entry.get(key)
                if key not in entry:
                    raise ConfigError(f"{where}: field {key!r} is missing; re-record with --update-baselines")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or not 0.0 <= value <= 1.0:
                    raise ConfigError(f"{where}: field {key!r} must be a fraction from 0 to 1 as pycocotools "
                                      f"reports it, got {value!r}; fix it or re-record with --update-baselines")
            if entry.get("dataset") is not None and not isinstance(entry["dataset"], str):
                raise ConfigError(f"{where}: field 'dataset' must be a data set label, got {entry['dataset']!r}")
    return data


class BaselineKind(str, Enum):
    WITHIN = "within"
    REGRESSED = "regressed"
    MISSING = "missing"  # none recorded
    OTHER_DATASET = "other_dataset"  # recorded on another data set: not compared
    TO_BE_RECORDED = "to_be_recorded"  # --update-baselines


@dataclass(frozen=True)
class BaselineStatus:
    """One side against its baseline: the kind and the numbers (mapgate.report words them)."""

    kind: BaselineKind
    model: str
    target: str
    tolerance_points: float
    stat: str = ""  # the stat that dropped most (AP or AP50)
    value: float | None = None  # this run's, AP points
    baseline: float | None = None  # the recorded one, AP points
    drop: float | None = None  # points below the baseline (negative: above)
    recorded_on: str | None = None
    dataset: str | None = None

    @property
    def regressed(self) -> bool:
        return self.kind is BaselineKind.REGRESSED

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.kind.value, "model": self.model, "target": self.target,
                "tolerance": self.tolerance_points, "stat": self.stat or None, "value": self.value,
                "baseline": self.baseline, "drop": self.drop, "recorded_on": self.recorded_on,
                "dataset": self.dataset}


@dataclass(frozen=True)
class BaselineCheck:
    model: str
    target: str
    ap: float  # fractions, as pycocotools reports them
    ap50: float
    tolerance_points: float
    dataset: str | None = None  # this run's data set label (None: compare regardless)

    def compare(self, baselines: Baselines) -> BaselineStatus:
        """This result against its recorded baseline (a drop beyond tolerance is REGRESSED)."""
        base = baselines.get(self.model, {}).get(self.target)
        status = dict(model=self.model, target=self.target, tolerance_points=self.tolerance_points,
                      dataset=self.dataset)
        if base is None:
            return BaselineStatus(BaselineKind.MISSING, **status)
        recorded_on = base.get("dataset")
        if self.dataset is not None and recorded_on is not None and recorded_on != self.dataset:
            return BaselineStatus(BaselineKind.OTHER_DATASET, recorded_on=recorded_on, **status)
        values = {"AP": self.ap, "AP50": self.ap50}
        drops = {k: 100.0 * (base[k] - v) for k, v in values.items() if k in base}
        worst = max(drops, key=lambda k: drops[k])
        kind = BaselineKind.REGRESSED if drops[worst] > self.tolerance_points else BaselineKind.WITHIN
        return BaselineStatus(kind, stat=worst, value=100 * values[worst], baseline=100 * base[worst],
                              drop=drops[worst], recorded_on=recorded_on, **status)

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
