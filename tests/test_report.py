"""The reporting module: one case as Markdown and terminal text, the run table with its links, JUnit
properties, and the slot other analyses use (``Verdict.extras``)."""

from __future__ import annotations

from pathlib import Path

from test_gate import verdict  # the hand-built verdict of the verdict-rule tests

import pytest

from mapgate import report


def test_a_case_reads_the_same_in_markdown_and_on_the_terminal() -> None:
    v = verdict(-0.4)
    md = report.case_markdown(v, ["pr-curves.png"])
    text = report.case_text(v, Path("/r/m/tflite-fp16"), "warn", "m tflite:fp16: no baseline recorded")
    for out in (md, text):
        assert "inconclusive" in out and "[-0.70, -0.20]" in out and report.reason(v) in out
    assert "images needed to be conclusive" in md and "![pr-curves.png](pr-curves.png)" in md
    assert "artifacts     /r/m/tflite-fp16" in text and "no baseline recorded" in text


def test_extras_attached_by_other_analyses_are_rendered() -> None:
    v = verdict(0.0)
    v.extras["attribution"] = {"localization": -0.25, "missed": 3}
    assert "- attribution: localization -0.25, missed 3" in report.case_markdown(v)
    assert "attribution: localization -0.25, missed 3" in report.case_text(v)


def test_junit_properties_carry_the_decision_numbers() -> None:
    props = dict(report.junit_properties(verdict(-0.1)))
    assert props == {"delta_ap": -0.1, "ci_low": -0.4, "ci_high": 0.1, "tolerance": 0.5, "verdict": "pass",
                     "expected": "pass"}
    props = dict(report.junit_properties(verdict(-0.1), result="pass", baseline="matched"))
    assert props["result"] == "pass" and props["baseline"] == "matched"


def test_the_run_table_links_every_case_and_explains_what_did_not_pass() -> None:
    rows = [report.CaseRow.of(verdict(0.0), "passed", "m/tflite-fp16", pictures=("pr-curves.png",)),
            report.CaseRow.of(verdict(-0.4), "warning", "m/tflite-int8"),
            report.CaseRow("m", "tensorrt:fp16", "skipped", reference="onnxruntime", reason="tensorrt: missing"),
            report.CaseRow("m", "tensorrt:int8", "skipped", reference="onnxruntime", reason="tensorrt: missing")]
    rows = [report.CaseRow.from_dict(r.to_dict()) for r in rows]  # as they arrive from xdist workers
    md = report.run_markdown(rows, dataset="d (200 images)")
    assert "[summary](m/tflite-fp16/summary.md) [pr-curves](m/tflite-fp16/pr-curves.png)" in md
    assert "1 passed, 2 skipped, 1 warning" in md
    assert "- m tensorrt:fp16, m tensorrt:int8 (skipped: tensorrt: missing)" in md  # one line per reason
    table = report.run_table(rows).splitlines()
    assert table[0].split() == ["model", "reference", "optimized", "ref", "AP", "opt", "AP", "dAP", "speedup", "95%", "CI",
                                "agreement", "tolerance", "verdict", "result", "baseline"]
    assert table[2].split()[-3:] == ["pass", "passed", "-"] and "inconclusive" in table[3]


@pytest.mark.parametrize(("kind", "word"), [("within", "matched"), ("regressed", "regressed"),
                                            ("missing", "none recorded"), ("other_dataset", "other data set")])
def test_every_case_says_what_its_baseline_comparison_did(kind: str, word: str) -> None:
    row = report.CaseRow.of(verdict(0.0), "passed", baseline="m tflite:fp16: words", baseline_status=kind)
    table = report.run_table([report.CaseRow.from_dict(row.to_dict())])
    assert table.splitlines()[2].rstrip().endswith(word)
    assert ("baseline: words" in table) is (kind != "within")  # a match is in the table, not in the notes


def test_a_regressed_baseline_says_fail_first_on_the_verdict_line() -> None:
    from mapgate.baselines import BaselineCheck

    status = BaselineCheck("m", "tflite:fp16", 0.30, 0.40, 0.5).compare({"m": {"tflite:fp16": {"AP": 0.3, "AP50": 0.5}}})
    text = report.case_text(verdict(0.0), None, "pass", report.baseline_text(status), status)
    line = next(x for x in text.splitlines() if x.lstrip().startswith("verdict"))
    assert line.split(None, 1)[1].startswith("fail: AP50 40.00 is 10.00 points below its baseline"), line
    record = report.comparison_record(verdict(0.0), status)
    assert record["baseline"]["status"] == "regressed" and record["baseline"]["stat"] == "AP50"
    assert record["reason"] == report.reason(verdict(0.0)) and record["verdict"] == "pass"


def test_a_case_that_lost_points_says_where_they_went_under_the_run_table() -> None:
    lost, kept = verdict(-1.0), verdict(0.0)
    for v in (lost, kept):
        v.extras["attribution"] = {"where_points_went": [
            {"error": "missed", "name": "missed", "points": 0.9}, {"error": "loc", "name": "localization", "points": 0.3},
            {"error": "dupe", "name": "duplicate", "points": -0.2}]}
    rows = [report.CaseRow.from_dict(report.CaseRow.of(v, r, f"m/{i}").to_dict())
            for i, (v, r) in enumerate([(lost, "failed"), (kept, "passed")])]
    # an oracle fixing an error type gives back what the engine lost through it: only losses are named
    line = "m tflite:fp16: AP50 points lost, by TIDE error type: missed 0.90, localization 0.30"
    assert line in report.run_table(rows).splitlines()
    assert f"- {line}" in report.run_markdown(rows)
    assert report.run_table(rows).count("AP50 points lost") == 1  # the passing case adds no line


def test_a_reference_scoring_near_zero_on_a_bundled_scale_set_is_a_loud_warning_in_the_table() -> None:
    v = verdict(0.0)
    v.ref_stats = dict(v.ref_stats, AP=0.004)  # 0.4 points: what coco90 on an 80-class model gives
    v.__post_init__()
    assert v.reference_suspect and v.to_dict()["reference_suspect"] is True
    row = report.CaseRow.from_dict(report.CaseRow.of(v, "passed").to_dict())
    table = report.run_table([row]).splitlines()
    assert table[2].split()[3:5] == ["0.40", "!"]
    assert table[4].startswith("WARNING: m onnxruntime scores AP 0.40 on 200 images: the reference pipeline itself")
    assert "WARNING: m onnxruntime scores AP 0.40" in report.case_text(v)
    assert "WARNING" not in report.run_table([report.CaseRow.of(verdict(0.0), "passed")])  # 30 points: no warning
