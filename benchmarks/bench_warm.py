"""Warm vs cold `pytest -m accuracy`: the second run with nothing changed must be >= 20x faster.

Runs the accuracy gate twice in subprocesses against a fresh engines/reports folder (so the
first run converts, builds and runs every engine, and the second only re-evaluates cached
detections), prints both wall times and the ratio, and exits 1 if the ratio is below --min-ratio.

    .venv/bin/python benchmarks/bench_warm.py [--models a,b] [--min-ratio 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_gate(engines: Path, reports: Path, extra: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "pytest", "-m", "accuracy", "-q", "-p", "no:cacheprovider", "--no-header",
           f"--engines-dir={engines}", f"--reports-dir={reports}", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:]
    print(f"  {elapsed:8.1f} s  exit {proc.returncode}  {tail[0] if tail else ''}")
    return elapsed, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated model names (default: all)")
    ap.add_argument("--min-ratio", type=float, default=20.0)
    ap.add_argument("--json", type=Path, help="write the measured numbers here")
    args = ap.parse_args()
    extra = [f"--models={args.models}"] if args.models else []
    with tempfile.TemporaryDirectory(prefix="mapgate-warm-") as tmp:
        engines, reports = Path(tmp) / "engines", Path(tmp) / "reports"
        print("cold run (conversions, engines and detections computed):")
        cold, rc1 = run_gate(engines, reports, extra)
        print("warm run (nothing changed: cached conversions and detections, evaluation only):")
        warm, rc2 = run_gate(engines, reports, extra)
    ratio = cold / warm
    print(f"cold {cold:.1f} s, warm {warm:.1f} s, ratio {ratio:.1f}x (target >= {args.min_ratio:g}x)")
    if args.json:
        args.json.write_text(json.dumps({"cold_s": cold, "warm_s": warm, "ratio": ratio}, indent=2))
    if rc1 not in (0, 1) or rc1 != rc2:
        print(f"the two runs disagree or errored (exit {rc1} then {rc2})")
        return 2
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
