"""The pass/fail rule lives in mapgate.decision alone: every front end asks it, none re-decides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mapgate import compare, decision
from mapgate.decision import DEFAULT_TOLERANCES, PRECISIONS, ReasonKind, Status, decide, resolve_tolerance

MAPGATE = Path(decision.__file__).resolve().parent
CI = {"low_points": -0.3, "high_points": 0.2, "n_images": 200, "confidence": 0.95, "se_points": 0.13}


def test_decide_is_a_pure_function_of_the_numbers() -> None:
    d = decide(0.0, CI, 0.5)
    assert d.status is Status.PASS and d.kind is ReasonKind.CI_ABOVE_TOLERANCE and d.ci_low == -0.3
    assert decide(-0.6, CI, 0.5).kind is ReasonKind.LOSS_BEYOND_TOLERANCE
    assert decide(-0.4, {**CI, "low_points": -0.7}, 0.5).status is Status.INCONCLUSIVE
    assert decide(0.0, {}, 0.5).kind is ReasonKind.NO_CI
    assert decide(5.0, CI, 0.5, reference_detections=0).kind is ReasonKind.NO_REFERENCE_DETECTIONS
    assert decide(0.0, CI, 0.5) == decide(0.0, CI, 0.5)  # frozen, comparable: no hidden state


def test_one_precision_list_and_one_tolerance_lookup() -> None:
    assert tuple(DEFAULT_TOLERANCES) == PRECISIONS
    assert resolve_tolerance("int8", {}) == (1.5, "default for int8")
    assert resolve_tolerance("int8", {"int8": 2.0}, "m.toml") == (2.0, "manifest m.toml, int8")
    assert resolve_tolerance("int8", {"int8": 2.0}, "m.toml", 0.0) == (0.0, "command line")
    for module in ("argtypes", "manifest", "backends/base", "backends/_tensorrt_engine", "pytest_plugin"):
        text = (MAPGATE / f"{module}.py").read_text(encoding="utf-8")
        assert '("fp32", "fp16", "int8")' not in text and "DEFAULT_TOLERANCES = " not in text, module


def test_changing_the_rule_in_decision_py_changes_every_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stricter rule patched into mapgate.decision alone is what the verdict reports."""
    strict = lambda delta_ap, ci, tolerance, **kw: decision.decide(delta_ap, ci, 0.0, **kw)  # noqa: E731
    monkeypatch.setattr(compare, "decide", strict)
    from tests.test_gate import verdict

    assert verdict(-0.1, low=-0.39).verdict == "fail"


@pytest.mark.parametrize("module", ["report.py", "pytest_plugin.py", "cli.py", "gate.py", "merge.py", "compare.py"])
def test_no_front_end_compares_a_delta_with_a_tolerance(module: str) -> None:
    """``delta < -tolerance`` and friends appear in decision.py (and baselines.py) only."""
    tree = ast.parse((MAPGATE / module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Lt, ast.Gt, ast.LtE, ast.GtE)) for op in node.ops):
            names = " ".join(n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
                             if isinstance(n, (ast.Name, ast.Attribute))).lower()
            assert not ("tol" in names and ("delta" in names or "low" in names or "ci" in names)), \
                f"{module}:{node.lineno} decides: {ast.unparse(node)}"


@pytest.mark.parametrize(("ap", "images", "suspect"), [(0.4, 206, True), (0.99, 100, True), (1.0, 206, False),
                                                       (24.6, 206, False), (0.4, 20, False)])
def test_a_reference_under_one_point_is_suspect_only_on_a_data_set_of_bundled_scale(ap: float, images: int,
                                                                                     suspect: bool) -> None:
    assert decision.reference_suspect(ap, images) is suspect
