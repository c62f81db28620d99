"""The pass/fail rule, alone: precisions, default tolerances, where a tolerance comes from, and
:func:`decide` - a pure function of dAP, its bootstrap interval and the tolerance.

Changing the rule touches this module only: :class:`Decision` carries the numbers and a typed
reason *kind*; mapgate.report turns them into sentences, so rewording a reason changes no logic.
Imports nothing of mapgate, so every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_TOLERANCES = {"fp32": 0.1, "fp16": 0.5, "int8": 1.5}  # AP points allowed to be lost

# The decision is a one-sided non-inferiority test on the paired-bootstrap interval of dAP.
DECISION_RULE = "non-inferiority: pass if ci_low > -tolerance; fail if delta_ap < -tolerance; else inconclusive"
IMAGES_NEEDED_FORMULA = "n_needed = ceil(n * (z * se / (delta_ap + tolerance))^2)"


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class ReasonKind(str, Enum):
    NO_REFERENCE_DETECTIONS = "no_reference_detections"
    LOSS_BEYOND_TOLERANCE = "loss_beyond_tolerance"
    CI_ABOVE_TOLERANCE = "ci_above_tolerance"
    CI_REACHES_BELOW = "ci_reaches_below"
    NO_CI = "no_ci"


def resolve_tolerance(precision: str, manifest_tolerances: Mapping[str, float], manifest_name: str = "",
                      override: float | None = None) -> tuple[float, str]:
    """(AP points, where they come from): the command line, else the manifest, else the default."""
    if override is not None:
        return override, "command line"
    if precision in manifest_tolerances:
        return manifest_tolerances[precision], f"manifest {manifest_name}, {precision}"
    return DEFAULT_TOLERANCES[precision], f"default for {precision}"


# A reference under 1 AP point on a data set of this many images or more says its own pipeline is broken
# (class space, preprocessing, decoder): original and optimized agree, the gate passes, and proves nothing.
SUSPECT_REFERENCE_AP = 1.0
SUSPECT_REFERENCE_MIN_IMAGES = 100  # the bundled val2017-mini has 206; a 20-image smoke run may score low


def reference_suspect(ref_ap_points: float, n_images: int) -> bool:
    """Whether a reference AP (points) is too low to be a detector working on a data set of ``n_images``."""
    return n_images >= SUSPECT_REFERENCE_MIN_IMAGES and ref_ap_points < SUSPECT_REFERENCE_AP


def images_needed(n_images: int, se_points: float | None, delta_points: float, tolerance: float,
                  z: float) -> int | None:
    """Images that would make an inconclusive comparison conclusive, if dAP stayed where it is.

    The bootstrap standard error of dAP shrinks like 1/sqrt(n) (images are the resampling unit), so
    the lower bound ``delta - z * se * sqrt(n / n')`` clears ``-tolerance`` once
    ``n' > n * (z * se / (delta + tolerance))^2``. None when dAP sits on the boundary (no n suffices).
    """
    margin = delta_points + tolerance
    if se_points is None or n_images <= 0 or margin <= 0:
        return None
    return max(n_images + 1, math.ceil(n_images * (z * se_points / margin) ** 2))


@dataclass(frozen=True)
class Decision:
    status: Status
    kind: ReasonKind
    delta_ap: float
    delta_ap50: float
    tolerance: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    z: float
    se_points: float | None
    n_images: int
    images_needed: int | None
    reference_detections: int | None

    def rule(self) -> dict[str, Any]:
        """comparison.json's ``decision_rule``."""
        return {
            "rule": DECISION_RULE, "outcome": self.status.value, "delta_ap": self.delta_ap,
            "tolerance": self.tolerance, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "confidence": self.confidence, "z": self.z, "se_points": self.se_points, "n_images": self.n_images,
            "images_needed": self.images_needed, "images_needed_formula": IMAGES_NEEDED_FORMULA,
            "reference_detections": self.reference_detections,
        }


def decide(delta_ap: float, ci: Mapping[str, Any] | None, tolerance: float, *, delta_ap50: float = 0.0,
           reference_detections: int | None = None) -> Decision:
    """pass / fail / inconclusive of dAP (points, opt - ref) against ``-tolerance``, with its CI."""
    ci = ci or {}
    has_ci = "low_points" in ci and "high_points" in ci
    confidence = float(ci.get("confidence", 0.95))
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    # Bootstrap SE of dAP; an interval without it (older cache entries) gives it from its width.
    se = ci.get("se_points")
    if se is None and has_ci:
        se = (ci["high_points"] - ci["low_points"]) / (2.0 * z)
    n = int(ci.get("n_images", 0) or 0)
    needed = None
    if reference_detections == 0:
        status, kind = Status.FAIL, ReasonKind.NO_REFERENCE_DETECTIONS
    elif delta_ap < -tolerance:
        status, kind = Status.FAIL, ReasonKind.LOSS_BEYOND_TOLERANCE
    elif has_ci and ci["low_points"] > -tolerance:
        status, kind = Status.PASS, ReasonKind.CI_ABOVE_TOLERANCE
    elif has_ci:
        status, kind = Status.INCONCLUSIVE, ReasonKind.CI_REACHES_BELOW
        needed = images_needed(n, se, delta_ap, tolerance, z)
    else:
        status, kind = Status.INCONCLUSIVE, ReasonKind.NO_CI
        needed = images_needed(n, se, delta_ap, tolerance, z)
    return Decision(status, kind, delta_ap, delta_ap50, tolerance, ci.get("low_points"), ci.get("high_points"),
                    confidence, z, se, n, needed, reference_detections)
