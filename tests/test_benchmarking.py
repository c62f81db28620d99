"""Benchmark machinery: percentiles, batching, the device fingerprint, per-device storage and
pytest-benchmark's compare/fail on a synthetic slowdown (in subprocess pytest runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mapgate import bench_plugin
from mapgate.backends.base import Runner
from mapgate.benchmarking import (
    Timed,
    engine_only_callable,
    engine_sha256,
    measure,
    percentiles,
    plan_rounds,
    record,
)
from mapgate.fingerprint import device_fingerprint, fingerprint_id
from mapgate.history import history_table

REPO = Path(__file__).resolve().parents[1]


# --- percentiles -------------------------------------------------------------------------

def test_percentiles_hand_worked() -> None:
    # 1..10 ms: numpy's linear rule puts p50 at index 4.5 -> 5.5, p90 at 8.1 -> 9.1, p99 at 8.91 -> 9.91
    stats = percentiles([i / 1000 for i in range(1, 11)], batch_size=1)
    assert stats["p50_ms"] == pytest.approx(5.5)
    assert stats["p90_ms"] == pytest.approx(9.1)
    assert stats["p99_ms"] == pytest.approx(9.91)
    assert stats["max_ms"] == pytest.approx(10.0)
    assert stats["mean_ms"] == pytest.approx(5.5)
    assert stats["images_per_s"] == pytest.approx(10 / 0.055)  # all images over all time
    assert stats["rounds"] == 10


def test_percentiles_match_numpy_and_count_batch_images() -> None:
    rng = np.random.default_rng(0)
    times = rng.lognormal(mean=-4, sigma=0.5, size=257)
    stats = percentiles(times.tolist(), batch_size=4)
    for q in (50, 90, 99):
        assert stats[f"p{q}_ms"] == pytest.approx(np.percentile(times * 1000, q))
    assert stats["max_ms"] == pytest.approx(times.max() * 1000)
    assert stats["images_per_s"] == pytest.approx(4 * times.size / times.sum())


def test_percentiles_single_round_and_bad_input() -> None:
    one = percentiles([0.02])
    assert one["p50_ms"] == one["p99_ms"] == one["max_ms"] == pytest.approx(20.0)
    with pytest.raises(ValueError):
        percentiles([])
    with pytest.raises(ValueError):
        percentiles([0.01, -1.0])
    with pytest.raises(ValueError):
        percentiles([0.01], batch_size=0)


# --- batching and recording (fake runners: no model needed) ---------------------------------

class _FakeRunner(Runner):
    backend = "fake"

    def __init__(self, max_batch: int) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.batches: list[int] = []

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.shape[0] > self.max_batch:
            raise ValueError(f"fixed batch {self.max_batch}")
        self.batches.append(batch.shape[0])
        return {"out": np.zeros((batch.shape[0], 3), np.float32)}


def test_engine_only_runs_native_batches_when_the_engine_takes_them() -> None:
    with _FakeRunner(max_batch=8) as runner:
        timed = engine_only_callable(runner, np.zeros((4, 3, 8, 8), np.float32))
        runner.batches.clear()
        timed()
    assert timed.batching == "native" and runner.batches == [4] and timed.batch_size == 4


def test_engine_only_falls_back_to_sequential_for_fixed_batch_engines() -> None:
    with _FakeRunner(max_batch=1) as runner:
        timed = engine_only_callable(runner, np.zeros((3, 3, 8, 8), np.float32))
        runner.batches.clear()
        timed()
    assert timed.batching.startswith("sequential") and runner.batches == [1, 1, 1]


class _FakeBenchmark:
    """pytest-benchmark's fixture as seen by measure()/record(), disabled mode (no stats)."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}
        self.stats = None

    def pedantic(self, target: Any, rounds: int = 1, warmup_rounds: int = 0, iterations: int = 1) -> Any:
        return target()  # what pytest-benchmark does with --benchmark-disable


def test_record_fills_extra_info_even_when_benchmarking_is_disabled(tmp_path: Path) -> None:
    artifact = tmp_path / "engine.bin"
    artifact.write_bytes(b"engine")
    model = SimpleNamespace(name="fake-model")
    with _FakeRunner(max_batch=1) as runner:
        runner.artifact = artifact
        timed = engine_only_callable(runner, np.zeros((2, 3, 8, 8), np.float32))
        rounds = plan_rounds(timed, warmup_rounds=2, max_time_s=0.01, min_rounds=3)
        bench = _FakeBenchmark()
        times = measure(bench, timed, rounds)
        info = record(bench, timed, times, model=model, runner=runner, backend="fake", precision=None,
                      kind="engine_only", warmup_rounds=2)
    assert len(times) == 1  # disabled: one call, timed by our own clock
    assert bench.extra_info is not info and bench.extra_info == info
    assert info["precision"] == "orig" and info["target"] == "fake:orig" and info["batch_size"] == 2
    assert info["engine_sha256"] == engine_sha256(runner) and len(info["engine_sha256"]) == 64
    for key in ("images_per_s", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms"):
        assert info[key] > 0
    assert info["fingerprint_id"] == fingerprint_id(info["fingerprint"])
    json.dumps(info)  # pytest-benchmark must be able to save it


def test_timed_keeps_its_own_clock() -> None:
    timed = Timed(lambda: None, 1, "native", 1)
    for _ in range(3):
        timed()
    assert len(timed.times_s) == 3 and all(t >= 0 for t in timed.times_s)


# --- fingerprint ---------------------------------------------------------------------------

def test_fingerprint_on_this_machine() -> None:
    fp = device_fingerprint()
    assert isinstance(fp["cpu_model"], str) and fp["cpu_model"].strip()
    assert fp["cpu_cores"] == os.cpu_count()
    if not Path("/proc/driver/nvidia").exists() and not Path("/etc/nv_tegra_release").exists():
        assert fp["gpu_name"] is None and fp["is_jetson"] is False
    fid = fingerprint_id(fp)
    assert fid == fingerprint_id(device_fingerprint())  # stable
    assert fid.replace("-", "").replace("_", "").replace(".", "").isalnum() and len(fid) < 80
    assert f"{os.cpu_count()}c" in fid
    json.dumps(fp)


def test_fingerprint_of_a_fake_jetson(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}')
    for cpu in range(2):
        freq = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_min_freq").write_text("1510400\n")
        (freq / "scaling_max_freq").write_text("1510400\n")
    outputs = {"lscpu": "Architecture: aarch64\nModel name: Cortex-A78AE\n",
               "nvpmodel": "NV Power Mode: MAXN_SUPER\n2\n"}

    def fake_run(cmd: list[str]) -> str | None:  # no nvidia-smi (JetPack 5), jetson_clocks needs root
        return outputs.get(cmd[0])

    fp = device_fingerprint(root=tmp_path, run=fake_run)
    assert fp["is_jetson"] and fp["board_model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert fp["cpu_model"] == "Cortex-A78AE" and fp["l4t_release"] == "R36.4.0"
    assert fp["power_mode"] == "MAXN_SUPER" and fp["jetson_clocks"] is True and fp["cuda_version"] == "12.6.68"
    fid = fingerprint_id(dict(fp, tensorrt_version="10.3.0.30"))
    assert fid.startswith("jetson-orin-nano-maxn-super-clocks-trt10.3-")
    # another power mode is another device for timing purposes
    assert fingerprint_id(dict(fp, power_mode="15W")) != fingerprint_id(fp)


def test_probes_never_fail_when_tools_are_missing() -> None:
    from mapgate.fingerprint import run_probe

    assert run_probe(["mapgate-no-such-tool-xyz"]) is None
    assert run_probe([sys.executable, "-c", "import sys; sys.exit(3)"]) is None
    assert run_probe([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2) is None


# --- per-device storage ----------------------------------------------------------------------

def _fake_fp(cpu: str) -> dict[str, Any]:
    return dict(device_fingerprint(), cpu_model=cpu)


def test_storage_is_redirected_per_fingerprint_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = []
    for cpu in ("Fake CPU A", "Fake CPU B"):
        monkeypatch.setattr(bench_plugin, "current_fingerprint", lambda cpu=cpu: _fake_fp(cpu))
        config = SimpleNamespace(option=SimpleNamespace(benchmark_storage=bench_plugin.DEFAULT_STORAGE))
        bench_plugin.pytest_configure(config)  # type: ignore[arg-type]
        paths.append(config.option.benchmark_storage)
    assert paths[0] != paths[1]
    assert all(p.startswith("file://./.benchmarks/") for p in paths)
    assert paths[0].endswith(fingerprint_id(_fake_fp("Fake CPU A")))
    explicit = SimpleNamespace(option=SimpleNamespace(benchmark_storage="file:///tmp/mine"))
    bench_plugin.pytest_configure(explicit)  # type: ignore[arg-type]
    assert explicit.option.benchmark_storage == "file:///tmp/mine"
    assert bench_plugin.storage_for("/abs/dir/", "dev") == "/abs/dir/dev"


_SLEEPY_TEST = """
import os, time

def test_sleepy(benchmark):
    benchmark.pedantic(time.sleep, args=(float(os.environ["SLEEP_S"]),), rounds=6, warmup_rounds=1)
"""

_FAKE_DEVICE_CONFTEST = """
import os
import mapgate.bench_plugin as bp
from mapgate.fingerprint import device_fingerprint

if os.environ.get("FAKE_CPU"):
    bp.current_fingerprint = lambda: dict(device_fingerprint(), cpu_model=os.environ["FAKE_CPU"])
"""


def _pytest(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A pytest run isolated from this repo's configuration and from auto-loaded plugins."""
    full_env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env}
    full_env.pop("PYTEST_ADDOPTS", None)
    # under `pytest -n 2` this process is an xdist worker: pytest-benchmark reads these variables and
    # would switch itself off in the child too
    for name in [n for n in full_env if n.startswith("PYTEST_XDIST_")]:
        del full_env[name]
    cmd = [sys.executable, "-m", "pytest", "-p", "pytest_benchmark.plugin", "-p", "mapgate.bench_plugin",
           "-p", "no:cacheprovider", "-q", "--rootdir", str(cwd), "-c", str(cwd / "pytest.ini"), *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture()
def sleepy_project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_sleepy.py").write_text(_SLEEPY_TEST)
    (tmp_path / "conftest.py").write_text(_FAKE_DEVICE_CONFTEST)
    return tmp_path


@pytest.mark.slow
def test_autosave_goes_to_one_directory_per_device(sleepy_project: Path) -> None:
    for cpu in ("Fake CPU A", "Fake CPU B"):
        proc = _pytest(sleepy_project, "--benchmark-autosave", SLEEP_S="0.001", FAKE_CPU=cpu)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    devices = sorted(p.name for p in (sleepy_project / ".benchmarks").iterdir())
    assert devices == sorted(fingerprint_id(_fake_fp(c)) for c in ("Fake CPU A", "Fake CPU B"))
    for device in devices:
        saved = list((sleepy_project / ".benchmarks" / device).glob("*/0001_*.json"))
        assert len(saved) == 1, f"{device}: {saved}"
        machine_info = json.loads(saved[0].read_text())["machine_info"]
        assert machine_info["mapgate_fingerprint_id"] == device
        assert machine_info["mapgate_fingerprint"]["cpu_cores"] == os.cpu_count()
    # history reads pytest-benchmark's real files: one table per device
    table = history_table(sleepy_project / ".benchmarks")
    assert all(f"[{device}]" in table for device in devices)


@pytest.mark.slow
def test_compare_fail_catches_a_synthetic_slowdown(sleepy_project: Path) -> None:
    base = _pytest(sleepy_project, "--benchmark-autosave", SLEEP_S="0.002")
    assert base.returncode == 0, base.stdout + base.stderr
    # same code again with a lax threshold: comparing works and does not fail by itself
    same = _pytest(sleepy_project, "--benchmark-compare", "--benchmark-compare-fail=mean:300%", SLEEP_S="0.002")
    assert same.returncode == 0, same.stdout + same.stderr
    slow = _pytest(sleepy_project, "--benchmark-compare", "--benchmark-compare-fail=mean:10%", SLEEP_S="0.010")
    assert slow.returncode != 0
    assert "Performance has regressed" in slow.stdout + slow.stderr
    saved = list((sleepy_project / ".benchmarks").glob("*/*/0*.json"))
    assert len(saved) == 1  # compare runs read the device's history; only --benchmark-autosave writes


def test_benchmark_batch_size_option_is_validated(sleepy_project: Path) -> None:
    proc = _pytest(sleepy_project, "--benchmark-batch-size", "0", "--co")
    assert proc.returncode != 0 and "at least 1" in proc.stderr


@pytest.mark.slow
def test_matrix_is_deselected_without_a_mark_expression(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    benchmark: matrix\n")
    (tmp_path / "test_m.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.benchmark
        def test_matrix(): pass

        def test_smoke(): pass
    """))
    assert _ran(tmp_path) == {"test_smoke"}
    assert _ran(tmp_path, "-m", "benchmark") == {"test_matrix"}
    assert _ran(tmp_path, "test_m.py::test_matrix") == {"test_matrix"}


def _ran(cwd: Path, *args: str) -> set[str]:
    """Names of the tests a run executed and passed, read from its JUnit XML (not from the log text)."""
    import xml.etree.ElementTree as ET

    report = cwd / "report.xml"
    proc = _pytest(cwd, *args, f"--junitxml={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = ET.parse(report).getroot().iter("testcase")
    return {c.get("name", "") for c in cases if not any(child.tag in ("failure", "error", "skipped") for child in c)}
