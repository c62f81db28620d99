"""What this CPU's INT8 kernels can do: the one place that asks.

On x86 without a VNNI-class instruction, ONNX Runtime's (and OpenVINO's) fused INT8 kernels multiply
u8 activations by s8 weights with VPMADDUBSW, whose int16 pair sums saturate; ORT's documented fix
is 7-bit weights (``reduce_range``), OpenVINO's the same "saturation issue" workaround. VNNI
(AVX512-VNNI, AVX-VNNI) and AMX-INT8 accumulate in int32 and do not saturate; ARM's dot products
(SDOT/UDOT, or widening multiplies) never saturate.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# any one of these gives x86 an int32-accumulating int8 dot product (no int16 intermediate)
NON_SATURATING_X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class Int8DotProduct:
    """The probe's answer, as env.json and a side's identity record it."""

    machine: str
    saturates: bool
    reason: str  # one line: which flag (or architecture) decided
    flags_source: str  # /proc/cpuinfo | py-cpuinfo | none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def int8_dot_product(machine: str | None = None, flags: set[str] | None = None,
                     flags_source: str = "given") -> Int8DotProduct:
    """Does an int8 dot product on this CPU saturate? ``machine``/``flags`` default to this machine's."""
    machine = (machine or platform.machine() or "unknown").lower()
    if machine not in _X86:
        return Int8DotProduct(machine, False, f"{machine}: not x86, int8 dot products accumulate without saturating",
                              "none")
    if flags is None:
        flags, flags_source = cpu_flags()
    found = [f for f in NON_SATURATING_X86_FLAGS if f in flags]
    if found:
        return Int8DotProduct(machine, False, f"x86 with {found[0]}: int8 dot products accumulate in int32",
                              flags_source)
    if not flags:
        # flags unknown: assume the common case of a CPU without VNNI, so the safe (7-bit) weights are used
        return Int8DotProduct(machine, True, "x86 with unknown CPU flags: assumed without VNNI", flags_source)
    return Int8DotProduct(machine, True, f"x86 without {', '.join(NON_SATURATING_X86_FLAGS)}: u8*s8 int16 pair sums "
                                         "(VPMADDUBSW) saturate", flags_source)


def cpu_flags(root: Path = Path("/")) -> tuple[set[str], str]:
    """The CPU's feature flags and where they came from."""
    try:
        text = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    if m:
        return set(m.group(1).split()), "/proc/cpuinfo"
    if root != Path("/"):
        return set(), "none"
    try:
        import cpuinfo  # py-cpuinfo: slow (it spawns a process), so only where /proc/cpuinfo says nothing

        return {str(f).lower() for f in cpuinfo.get_cpu_info().get("flags", [])}, "py-cpuinfo"
    except (ImportError, OSError, ValueError, RuntimeError):
        return set(), "none"


_CACHED: Int8DotProduct | None = None


def this_cpu() -> Int8DotProduct:
    """The probe for this machine, read once per process."""
    global _CACHED
    if _CACHED is None:
        _CACHED = int8_dot_product()
    return _CACHED


THREADS_ENV = "MAPGATE_THREADS"


def engine_threads(environ: dict[str, str] | None = None, cpus: int | None = None) -> int | None:
    """Threads one engine may use (intra-op), or None for the framework's own default.

    ``MAPGATE_THREADS`` when set; under pytest-xdist (``PYTEST_XDIST_WORKER_COUNT``) this machine's CPUs
    shared among the workers: two ONNX Runtime sessions with a thread per core each, spinning, on a
    2-core machine run 25% slower than with one thread each (yolov3-tiny 416: 90 vs 70 ms per image,
    measured with two processes at once), and every bundled ONNX file gives bit-identical outputs with
    1 or 2 threads. A value that is not a positive integer is ignored (the default applies)."""
    env = os.environ if environ is None else environ
    text = env.get(THREADS_ENV, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    workers = env.get("PYTEST_XDIST_WORKER_COUNT", "").strip()
    if workers.isdigit() and int(workers) > 1:
        available = cpus if cpus is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        return max(1, available // int(workers))
    return None


# Calibration runs its sessions with one thread on every machine: the calibrated ranges depend on the
# thread count (ONNX Runtime, optimisations off: yolo-fastest's MinMax Q/DQ file differs between 1 and
# 2 threads), so a fixed count makes an INT8 file the same whatever the cores or xdist workers; one
# thread also keeps two workers' spinning pools apart (two YOLOv3-tiny builds at once: 34 s -> 25 s).
CALIBRATION_THREADS = 1
