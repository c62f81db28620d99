"""`pytest -n 2` runs each model's cases on one worker (so its reference runs once) and gives the
numbers of `-n 0`. Timing lives in benchmarks/bench_xdist.py, not here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")
ROOT = Path(__file__).resolve().parent.parent
MODELS = "yolo-fastest-1.1-320,yolov3-tiny-416"
CASE = re.compile(r"(?:\[(gw\d+)\].*?)?(PASSED|FAILED|SKIPPED|ERROR) mapgate\.toml::(\S+::\S+)"
                  r"|mapgate\.toml::(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)")


def _gate_run(reports: Path, *extra: str) -> tuple[dict[str, tuple[str | None, str]], dict[str, dict]]:
    """Run the accuracy gate in a subprocess; (case id -> (worker, outcome)), (case -> comparison.json)."""
    cmd = [sys.executable, "-m", "pytest", "mapgate.toml", "-m", "accuracy", "-p", "no:cacheprovider", "-v",
           "--models", MODELS, "--backends", "onnxruntime", "--max-images", "10", "--no-detection-cache",
           "--reports-dir", str(reports), *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900).stdout
    cases = {}
    for m in CASE.finditer(out):
        worker, outcome, case = (m.group(1), m.group(2), m.group(3)) if m.group(3) else (None, m.group(5), m.group(4))
        cases.setdefault(case, (worker, outcome))  # the progress line, not the summary that repeats it
    comparisons = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
                   for p in reports.glob("*/*/*/comparison.json")}
    for c in comparisons.values():  # a clock reading differs between any two runs; its presence does not
        speed = c.pop("speed")
        assert speed is None or set(speed) == {"fp32_ms", "optimized_ms", "speedup_vs_fp32", "n_images", "backend", "fp32_backend"}
    return cases, comparisons


@pytest.mark.slow
def test_two_workers_group_cases_by_model_and_match_one_process(tmp_path: Path, require_backend) -> None:
    require_backend("opencv")
    require_backend("onnxruntime")
    serial_cases, serial = _gate_run(tmp_path / "n0", "-n", "0")
    parallel_cases, parallel = _gate_run(tmp_path / "n2", "-n", "2")
    assert len(serial_cases) == 4 and set(parallel_cases) == set(serial_cases)
    assert {c: o for c, (_, o) in parallel_cases.items()} == {c: o for c, (_, o) in serial_cases.items()}
    workers = {}
    for case, (worker, _) in parallel_cases.items():
        workers.setdefault(case.split("::")[0], set()).add(worker)
    assert all(len(w) == 1 for w in workers.values()), workers  # one worker per model: one reference run
    assert len(set().union(*workers.values())) == 2  # and both workers had work
    assert parallel == serial and len(serial) == 4  # every number of every comparison.json but the speed


@pytest.mark.slow
def test_an_explicit_dist_is_left_alone(tmp_path: Path, require_backend) -> None:
    require_backend("opencv")
    require_backend("onnxruntime")
    out = subprocess.run([sys.executable, "-m", "pytest", "mapgate.toml", "-m", "accuracy", "-p",
                          "no:cacheprovider", "--models", "yolo-fastest-1.1-320", "--backends", "onnxruntime:fp32",
                          "--max-images", "2", "--no-detection-cache", "--reports-dir", str(tmp_path), "-n", "2",
                          "--dist", "each", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
    assert "2 passed" in out  # --dist each: every worker ran the case, as the user asked
