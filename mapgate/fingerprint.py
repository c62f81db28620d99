"""Which device a benchmark ran on, so timings are only ever compared with the same device.

:func:`device_fingerprint` probes the CPU, an NVIDIA GPU (``nvidia-smi``), TensorRT and, on a
Jetson, the board, its power mode and whether ``jetson_clocks`` pinned the clocks. Every probe
has a timeout and any probe that cannot answer gives ``None``: a laptop without a GPU or a
container without ``/proc/device-tree`` is normal, never an error.

:func:`fingerprint_id` turns that into a short, stable, readable directory name such as
``x86_64-amd-epyc-2c-cpu-1f0c9a2b`` or ``jetson-orin-nano-maxn-clocks-trt10.3-4d5e6f70``;
benchmark history is stored per id (see :mod:`mapgate.bench_plugin`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mapgate.fsutil import sha256_json
from mapgate.optional import version_of

PROBE_TIMEOUT_S = 5.0
SCHEMA = 1

# The fields that define "the same device" for comparing timings. Driver, CUDA and L4T
# revisions are recorded but left out: a patch-level driver update should not start a new
# history, it is exactly what a comparison should catch. TensorRT major.minor is in: engines
# and their speed change with it, and engines are not portable across it anyway.
_IDENTITY = ("system", "arch", "cpu_model", "cpu_cores", "gpu_name", "board_model", "power_mode",
             "jetson_clocks", "tensorrt_version")

Run = Callable[[list[str]], "str | None"]


def run_probe(cmd: list[str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """stdout of ``cmd``, or None if it is missing, fails or hangs (probes must never fail a run)."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        # device-tree strings are NUL-terminated
        text = path.read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


_cache: dict[str, Any] | None = None


def device_fingerprint(root: Path | None = None, run: Run | None = None) -> dict[str, Any]:
    """Facts about this machine that decide how fast an engine runs; absent facts are None.

    ``root`` (default ``/``) and ``run`` (default :func:`run_probe`) exist so tests can fake a
    Jetson; the default call is cached because ``nvidia-smi`` can take a second.
    """
    global _cache
    if root is None and run is None:
        if _cache is None:
            _cache = _probe(Path("/"), run_probe)
        return dict(_cache)
    return _probe(root or Path("/"), run or run_probe)


def _probe(root: Path, run: Run) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "schema": SCHEMA,
        "system": platform.system(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(root, run),
        "cpu_cores": os.cpu_count(),
        "gpu_name": None,
        "gpu_count": None,
        "gpu_driver": None,
        "cuda_version": None,
        "tensorrt_version": _tensorrt_version(),
        "board_model": _read(root / "proc/device-tree/model"),
        "l4t_release": _l4t_release(root),
        "is_jetson": False,
        "power_mode": None,
        "jetson_clocks": None,
    }
    fp["is_jetson"] = bool(fp["l4t_release"]) or "jetson" in (fp["board_model"] or "").lower()
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        rows = [[c.strip() for c in line.split(",")] for line in smi.strip().splitlines() if line.strip()]
        if rows:
            fp["gpu_name"] = rows[0][0] or None
            fp["gpu_driver"] = rows[0][1] if len(rows[0]) > 1 and rows[0][1] not in ("", "[N/A]") else None
            fp["gpu_count"] = len(rows)
        header = run(["nvidia-smi"]) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", header)
        fp["cuda_version"] = m.group(1) if m else None
    if fp["is_jetson"]:
        # JetPack 5 has no nvidia-smi; the GPU is the board's integrated one, the toolkit says the CUDA version
        fp["cuda_version"] = fp["cuda_version"] or _cuda_toolkit_version(root)
        fp["gpu_driver"] = fp["gpu_driver"] or fp["l4t_release"]
        fp["power_mode"] = _power_mode(run)
        fp["jetson_clocks"] = _jetson_clocks(root, run)
    return fp


def _cpu_model(root: Path, run: Run) -> str | None:
    text = _read(root / "proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    name = m.group(1).strip() if m else None
    if name is None or name.startswith("ARMv"):
        # ARM kernels report only the ISA ("ARMv8 Processor rev 1"); lscpu knows the core (Cortex-A78AE)
        out = run(["lscpu"]) or ""
        m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if m and m.group(1).strip() != "-":
            name = m.group(1).strip()
    if name is None and root == Path("/"):
        try:
            import cpuinfo  # py-cpuinfo: slow (it spawns a process), so only as the last resort

            name = cpuinfo.get_cpu_info().get("brand_raw") or None
        except (ImportError, OSError, ValueError):
            name = None
    return name or platform.processor() or platform.machine() or None


def _tensorrt_version() -> str | None:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("tensorrt") is None:
        return None
    # JetPack's apt package may ship no dist-info: ask the module itself

    return version_of("tensorrt")


def _l4t_release(root: Path) -> str | None:
    text = _read(root / "etc/nv_tegra_release")
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else text.splitlines()[0][:60]


def _cuda_toolkit_version(root: Path) -> str | None:
    text = _read(root / "usr/local/cuda/version.json")
    if text:
        m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([\d.]+)"', text)
        if m:
            return m.group(1)
    text = _read(root / "usr/local/cuda/version.txt") or ""
    m = re.search(r"CUDA Version\s+([\d.]+)", text)
    return m.group(1) if m else None


def _power_mode(run: Run) -> str | None:
    out = run(["nvpmodel", "-q"]) or ""
    m = re.search(r"NV Power Mode:\s*(\S+)", out)
    return m.group(1) if m else None


def _jetson_clocks(root: Path, run: Run) -> bool | None:
    """jetson_clocks pins every CPU's minimum frequency to its maximum; that is what we look for."""
    out = run(["jetson_clocks", "--show"]) or ""  # needs root; without it we read sysfs below
    pairs = re.findall(r"^cpu\d+:.*?MinFreq=(\d+)\s+MaxFreq=(\d+)", out, re.MULTILINE)
    if not pairs:
        pairs = []
        for cpufreq in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
            lo, hi = _read(cpufreq / "scaling_min_freq"), _read(cpufreq / "scaling_max_freq")
            if lo and hi:
                pairs.append((lo, hi))
    if not pairs:
        return None
    return all(lo == hi for lo, hi in pairs)


def _slug(text: str | None, drop: tuple[str, ...] = (), max_words: int = 4) -> str:
    if not text:
        return ""
    t = text.lower()
    t = re.sub(r"\((r|tm|c)\)|®|™", " ", t)
    t = re.sub(r"@.*$", " ", t)  # clock speed: part of the model name, noise in a directory name
    t = re.sub(r"\b\d+-core\b|\(.*?\)", " ", t)
    words = [w for w in re.split(r"[^a-z0-9.]+", t) if w and w not in drop]
    return "-".join(words[:max_words]).strip(".-")


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    return ".".join(version.split(".")[:2])


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """Short stable directory name: readable slug + 8 hex digits of the identity fields' hash."""
    identity = {k: fp.get(k) for k in _IDENTITY}
    identity["tensorrt_version"] = _major_minor(identity["tensorrt_version"])
    digest = sha256_json(identity)[:8]
    if fp.get("is_jetson"):
        board = _slug(fp.get("board_model"), drop=("nvidia", "jetson", "developer", "kit", "engineering",
                                                   "reference", "module", "p3768", "p3767")) or "board"
        parts = ["jetson", board, _slug(fp.get("power_mode"), max_words=2),
                 "clocks" if fp.get("jetson_clocks") else ""]
    else:
        cpu = _slug(fp.get("cpu_model"), drop=("cpu", "processor", "with", "radeon", "graphics")) or "cpu"
        gpu = _slug(fp.get("gpu_name"), drop=("nvidia", "geforce", "gpu"))
        cores = fp.get("cpu_cores")
        arch = re.sub(r"[^a-z0-9_]+", "-", str(fp.get("arch") or "unknown").lower())  # keep x86_64 whole
        parts = [arch, cpu, f"{cores}c" if cores else "",
                 gpu or "cpu"]
    trt = _major_minor(fp.get("tensorrt_version"))
    if trt:
        parts.append(f"trt{trt}")
    return "-".join(p for p in parts if p) + f"-{digest}"
