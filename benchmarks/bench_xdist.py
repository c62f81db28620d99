"""Does `pytest -m accuracy -n 2` beat `-n 0`? Wall time of the accuracy gate both ways, detection
cache off (conversions stay cached), with the numbers of both runs checked identical.

    .venv/bin/python benchmarks/bench_xdist.py [--max-images N] [--workers 2] [-- extra pytest args]

An untimed first run on one image builds the conversions. Under -n N mapgate distributes by model (--dist loadgroup unless you give --dist), so each
model's reference runs once on one worker; before, every worker recomputed every reference.
Exit status 1 when -n N is not faster or any comparison.json differs.
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


def run(reports: Path, n: int, extra: list[str]) -> tuple[float, dict[str, dict], int]:
    cmd = [sys.executable, "-m", "pytest", "-m", "accuracy", "-p", "no:cacheprovider", "-q", "--no-detection-cache",
           "--reports-dir", str(reports), "-n", str(n), *extra]
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    # without "speed": a clock reading differs between any two runs
    comparisons = {f"{p.parent.parent.name}/{p.parent.name}": {k: v for k, v in json.loads(p.read_text()).items()
                                                               if k != "speed"}
                   for p in reports.glob("*/*/*/comparison.json")}
    return wall, comparisons, code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args(argv)
    extra = [*(["--max-images", str(args.max_images)] if args.max_images else []), *args.extra]
    with tempfile.TemporaryDirectory() as tmp:
        # untimed: builds every conversion (TFLite/INT8) once, so neither timed run pays for it
        run(Path(tmp) / "warm", 0, [*args.extra, "--max-images", "1"])
        serial = run(Path(tmp) / "n0", 0, extra)
        parallel = run(Path(tmp) / "nN", args.workers, extra)
    same = serial[1] == parallel[1] and serial[2] == parallel[2]
    print(f"pytest -m accuracy {' '.join(extra)} (detection cache off)")
    print(f"  -n 0: {serial[0]:.1f} s, exit {serial[2]}, {len(serial[1])} comparisons")
    print(f"  -n {args.workers}: {parallel[0]:.1f} s, exit {parallel[2]}, {len(parallel[1])} comparisons")
    print(f"  speedup {serial[0] / parallel[0]:.2f}x; comparison.json identical: {same}")
    return 0 if same and parallel[0] < serial[0] else 1


if __name__ == "__main__":
    sys.exit(main())
