"""`mapgate history`: reading pytest-benchmark's saved runs, the table and the trend plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mapgate.errors import DataError
from mapgate.history import history_table, load_points, plot_history, run_history

MACHINE = "Linux-CPython-3.11-64bit"


def _bench(model: str, target: str, kind: str, ips: float, p99: float) -> dict[str, Any]:
    backend, _, precision = target.partition(":")
    return {
        "group": f"{kind} {model}", "name": f"test_throughput[{model}-{target}-{kind}]",
        "fullname": f"tests/benchmark/test_throughput.py::test_throughput[{model}-{target}-{kind}]",
        "params": None, "param": f"{model}-{target}-{kind}",
        "extra_info": {"model": model, "backend": backend, "precision": precision, "target": target, "kind": kind,
                       "batch_size": 1, "images_per_s": ips, "latency_p50_ms": p99 * 0.8,
                       "latency_p90_ms": p99 * 0.9, "latency_p99_ms": p99, "latency_max_ms": p99 * 1.1},
        "stats": {"min": 0.01, "max": 0.02, "mean": 1 / ips, "ops": ips, "rounds": 10},
    }


def _save_run(storage: Path, device: str, num: int, benches: list[dict[str, Any]], *,
              with_id: bool = True) -> Path:
    path = storage / device / MACHINE / f"{num:04d}_abc123_20250101_00000{num}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    machine_info = {"node": "host", "machine": "x86_64"}
    if with_id:
        machine_info["mapgate_fingerprint_id"] = device
    run = {"machine_info": machine_info,
           "commit_info": {"id": f"{num:07d}abcdef", "dirty": num == 3},
           "benchmarks": benches, "datetime": f"2025-01-0{num}T10:00:00.000000+00:00", "version": "5.2.3"}
    path.write_text(json.dumps(run))
    return path


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    root = tmp_path / ".benchmarks"
    for num, (ips, p99) in enumerate([(50.0, 30.0), (55.0, 28.0), (40.0, 41.0)], start=1):
        _save_run(root, "x86_64-amd-epyc-2c-cpu-11111111", num, [
            _bench("yolox-nano-416", "onnxruntime:orig", "engine_only", ips * 1.5, p99 * 0.7),
            _bench("yolox-nano-416", "onnxruntime:orig", "end_to_end", ips, p99),
            _bench("yolox-nano-416", "tflite:fp16", "end_to_end", ips / 2, p99 * 2),
        ])
    # another device, and an id that only the directory name gives (machine_info without ours)
    _save_run(root, "jetson-orin-nano-maxn-trt10.3-22222222", 1,
              [_bench("yolox-nano-416", "tensorrt:fp16", "end_to_end", 300.0, 5.0)], with_id=False)
    return root


def test_points_are_grouped_per_device_in_run_order(storage: Path) -> None:
    points = load_points(storage)
    assert len(points) == 10
    assert {p.device for p in points} == {"x86_64-amd-epyc-2c-cpu-11111111", "jetson-orin-nano-maxn-trt10.3-22222222"}
    e2e = [p for p in points if p.target == "onnxruntime:orig" and p.kind == "end_to_end"]
    assert [p.run for p in e2e] == ["0001", "0002", "0003"]
    assert [p.images_per_s for p in e2e] == [50.0, 55.0, 40.0] and e2e[-1].p99_ms == 41.0


def test_history_table(storage: Path) -> None:
    table = history_table(storage)
    assert "== yolox-nano-416  onnxruntime:orig  [x86_64-amd-epyc-2c-cpu-11111111] ==" in table
    assert "== yolox-nano-416  tensorrt:fp16  [jetson-orin-nano-maxn-trt10.3-22222222] ==" in table
    block = table.split("== yolox-nano-416  onnxruntime:orig")[1].split("\n\n")[0]
    lines = block.strip().splitlines()
    assert "e2e img/s" in lines[1] and "engine p99 ms" in lines[1]
    assert len(lines) == 2 + 3  # title, header, three runs
    assert lines[4].split()[0] == "0003" and "40.0" in lines[4] and "41.0" in lines[4]
    assert "0000003a*" in lines[4]  # dirty working tree is flagged
    # tflite has no engine-only runs: no empty engine columns
    tflite = table.split("tflite:fp16")[1].split("\n\n")[0]
    assert "engine img/s" not in tflite


def test_plot_is_written_and_loads(storage: Path, tmp_path: Path) -> None:
    import matplotlib.image

    out = plot_history(storage, tmp_path / "reports" / "history.png")
    assert out.is_file() and out.stat().st_size > 1024
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list(out.parent.glob(".*.part"))  # written atomically, nothing left behind


def test_run_history_prints_and_plots(storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trend.png"
    assert run_history(storage, out) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime:orig" in printed and str(out) in printed
    assert out.stat().st_size > 1024


def test_other_benchmarks_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "plain"
    generic = {"group": None, "name": "test_sleepy", "fullname": "t.py::test_sleepy", "extra_info": {},
               "stats": {"ops": 200.0, "mean": 0.005, "data": [0.004, 0.005, 0.006]}}
    path = _save_run(root, "dev", 1, [generic], with_id=False)
    (path.parent / "0002_broken.json").write_text("{ not json")
    points = load_points(root)
    assert len(points) == 1 and points[0].model == "test_sleepy" and points[0].images_per_s == 200.0
    assert points[0].p99_ms == pytest.approx(5.98)
    assert "0002_broken.json" in capsys.readouterr().err
    assert "other img/s" in history_table(root)


def test_missing_or_empty_storage_says_how_to_fill_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        history_table(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--benchmark-autosave"):
        history_table(tmp_path / "empty")
