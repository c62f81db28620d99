"""The accuracy gate, parametrized over (model x optimized target) from the manifest.

Each case runs the model's original (once per session, shared) and the optimized engine on
the same images with the same pre/post-processing, and asserts the gate's verdict equals the
manifest's expectation ("pass", or "fail" for known-broken canaries such as YOLOX-nano's
vendor INT8 TFLite), then checks both results against the committed baselines.
"""

from __future__ import annotations

import pytest

from mapgate.backends import get_backend
from mapgate.baselines import BaselineCheck
from mapgate.manifest import DEFAULT_TOLERANCES


@pytest.mark.accuracy
def test_gate(gate_case: tuple[str, str], mapgate_session) -> None:  # noqa: ANN001
    model, target = gate_case
    backend, precision = target.split(":")
    for name in (backend, mapgate_session.models[model].reference_backend):
        available = get_backend(name).availability()
        if not available.ok:
            pytest.skip(f"{name}: {available.reason}")

    gate = mapgate_session.gate
    verdict = gate.compare(model, target)
    assert verdict.verdict == verdict.expected, (
        f"{model} {target}: verdict {verdict.verdict}, expected {verdict.expected}: {verdict.reason}; agreement {100 * verdict.agreement.matched_share:.1f}%; "
        f"artifacts in {gate.run_dir / model}"
    )

    ref_target = mapgate_session.models[model].reference_backend
    results = {ref_target: (verdict.ref_stats, DEFAULT_TOLERANCES["fp32"]),
               target: (verdict.opt_stats, mapgate_session.models[model].tolerance(precision))}
    on_bundled_set = gate.dataset.label == "val2017-mini (206 images)"  # baselines are for the bundled set only
    if mapgate_session.option("update_baselines") and not on_bundled_set:
        pytest.fail(f"--update-baselines records the bundled val2017-mini only; this run is on {gate.dataset.label}")
    for name, (stats, tol) in results.items():
        if mapgate_session.option("update_baselines"):
            mapgate_session.baseline_updates.setdefault(model, {})[name] = {"AP": stats["AP"], "AP50": stats["AP50"]}
        elif on_bundled_set:
            BaselineCheck(model, name, stats["AP"], stats["AP50"], tol).check(mapgate_session.baselines)
