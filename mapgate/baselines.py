"""Committed baselines: each (model, target) AP/AP50 on the bundled set, so a retrained model or
changed build settings cannot silently lose accuracy even when original and engine move together."""

from __future__ import annotations

from dataclasses import dataclass

from mapgate.errors import GateFailure


class BaselineRegression(GateFailure):
    """A result fell below its committed baseline by more than its tolerance."""


@dataclass(frozen=True)
class BaselineCheck:
    model: str
    target: str
    ap: float  # fractions, as pycocotools reports them
    ap50: float
    tolerance_points: float

    def check(self, baselines: dict[str, dict[str, dict[str, float]]]) -> str:
        """Raise BaselineRegression on a drop beyond tolerance; return a one-line status otherwise."""
        base = baselines.get(self.model, {}).get(self.target)
        if base is None:
            return f"{self.model} {self.target}: no baseline recorded (run with --update-baselines to record one)"
        drops = {k: 100.0 * (base[k] - v) for k, v in (("AP", self.ap), ("AP50", self.ap50)) if k in base}
        worst = max(drops, key=lambda k: drops[k])
        if drops[worst] > self.tolerance_points:
            raise BaselineRegression(
                f"{self.model} {self.target}: {worst} {100 * (self.ap if worst == 'AP' else self.ap50):.2f} is "
                f"{drops[worst]:.2f} points below its baseline {100 * base[worst]:.2f} (tolerance "
                f"{self.tolerance_points:g}); if the change is intended, re-record with --update-baselines")
        return f"{self.model} {self.target}: within {self.tolerance_points:g} points of its baseline"
