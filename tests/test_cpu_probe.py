"""Which CPUs get 7-bit INT8 weights for ONNX Runtime (mapgate.cpu), and expectations that hold on
both kinds of CPU (``expected_verdicts_int8_saturating``). Probe cases from the int8-speed branch."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapgate.cpu import cpu_flags, int8_dot_product, this_cpu
from mapgate.errors import ConfigError
from mapgate.gate import environment
from mapgate.catalog import load_manifest

AVX2_EPYC = {"sse4_2", "avx", "avx2", "fma", "bmi2"}  # an AVX2-only EPYC: no AVX512, no VNNI
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"}


@pytest.mark.parametrize(("flags", "saturates"), [
    (AVX2_EPYC, True), (AVX2_EPYC | {"avx512f", "avx512bw"}, True),  # AVX512 without VNNI still saturates
    (AVX2_EPYC | {"avx512_vnni"}, False), (AVX2_EPYC | {"avx_vnni"}, False),  # Alder Lake's AVX-VNNI
    (SAPPHIRE_RAPIDS, False), (AVX2_EPYC | {"amx_int8"}, False),
])
def test_x86_int8_dot_products_saturate_unless_a_vnni_class_flag_is_present(flags: set[str], saturates: bool) -> None:
    probe = int8_dot_product("x86_64", flags)
    assert probe.saturates is saturates
    assert ("VPMADDUBSW" in probe.reason) is saturates


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "armv7l"])
def test_arm_never_saturates(machine: str) -> None:
    assert int8_dot_product(machine, set()).saturates is False


def test_flags_are_read_from_proc_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(tmp_path) == ({"fpu", "sse2", "avx2", "fma"}, "/proc/cpuinfo")
    assert cpu_flags(tmp_path / "nowhere") == (set(), "none")


def test_this_machine_is_probed_once_and_recorded_in_env_json() -> None:
    assert this_cpu() is this_cpu()
    assert environment()["int8_dot_product"] == this_cpu().to_dict()


def test_a_saturating_cpu_takes_its_own_expectation_and_every_other_target_the_common_one(manifest_copy,
                                                                                         tmp_path: Path) -> None:
    path = manifest_copy(tmp_path / "m.toml", "ssdlite_mobilenet_v2_coco")
    model = load_manifest(path)["ssdlite_mobilenet_v2_coco"]
    assert model.expected_verdict("onnxruntime:int8", int8_saturates=False) == "inconclusive"
    assert model.expected_verdict("onnxruntime:int8", int8_saturates=True) == "fail"
    assert model.expected_verdict("tflite:int8", int8_saturates=True) == "inconclusive"
    assert model.expected_verdict("onnxruntime:fp32", int8_saturates=True) == "pass"


@pytest.mark.parametrize(("line", "says"), [
    ('expected_verdicts_int8_saturating."onnxruntime:int8" = "maybe"', "expected_verdicts_int8_saturating"),
    ('expected_verdicts_int8_saturating."onnxruntime" = "fail"', "expected_verdicts_int8_saturating"),
])
def test_a_bad_saturating_expectation_is_an_error_naming_the_field(manifest_copy, tmp_path: Path, line: str,
                                                                   says: str) -> None:
    path = manifest_copy(tmp_path / "m.toml", "yolov3-tiny-416",
                         {'expected_verdicts_int8_saturating."onnxruntime:int8" = "pass"': line})
    with pytest.raises(ConfigError, match=says) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("env", "cpus", "threads"), [
    ({}, 2, None),                                            # alone: the framework's own default
    ({"PYTEST_XDIST_WORKER_COUNT": "2"}, 2, 1),               # two workers on two cores: one thread each
    ({"PYTEST_XDIST_WORKER_COUNT": "2"}, 8, 4),
    ({"PYTEST_XDIST_WORKER_COUNT": "4"}, 2, 1),               # never below one
    ({"PYTEST_XDIST_WORKER_COUNT": "1"}, 2, None),
    ({"MAPGATE_THREADS": "3", "PYTEST_XDIST_WORKER_COUNT": "2"}, 2, 3),  # the user's word wins
    ({"MAPGATE_THREADS": "0"}, 2, None), ({"MAPGATE_THREADS": "two"}, 2, None), ({"MAPGATE_THREADS": "-1"}, 2, None),
])
def test_engines_share_the_cores_among_xdist_workers(env: dict[str, str], cpus: int, threads: int | None) -> None:
    from mapgate.cpu import engine_threads

    assert engine_threads(env, cpus) == threads


def test_every_thread_pool_backend_asks_engine_threads() -> None:
    """ONNX Runtime, OpenVINO, OpenCV and TFLite each size their pool from the one function."""
    from pathlib import Path

    import mapgate.backends as backends

    folder = Path(backends.__file__).parent
    for name in ("onnxruntime", "openvino", "opencv", "tflite"):
        assert "engine_threads()" in (folder / f"{name}.py").read_text(), name
