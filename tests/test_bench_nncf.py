"""benchmarks/bench_int8_vs_nncf.py: its table, its record and its skip, without running NNCF."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mapgate.errors import BackendUnavailable

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_int8_vs_nncf.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_int8_vs_nncf", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(method: str, delta: float, ci: list[float] | None, speed: float | None) -> dict:
    return {"model": "yolov3-tiny-416", "method": method, "proxy_lost": 9.25, "proxy_tolerance": 15.0,
            "float_layers": 3, "convs": 13, "search_seconds": 321.4,
            "verification": {"delta_ap": delta, "ci": ci, "verdict": "pass", "speedup_vs_fp32": speed}}


def test_the_table_has_one_row_per_method_with_dap_ci_float_layers_speed_and_search_time(bench):
    rows = [_row("mapgate int8-repair", -0.37, [-1.48, 0.16], 1.23), _row("NNCF", -1.5, None, None)]
    table = bench.render_table(rows, "val2017-mini (206 images)").splitlines()
    assert "val2017-mini (206 images) dAP" in table[0]
    assert len(table) == 4
    assert table[2] == ("| yolov3-tiny-416 | mapgate int8-repair | 9.2 (15) | -0.37 | [-1.48, +0.16] | pass | "
                        "3 / 13 | x1.23 | 321 |")
    assert "| -1.50 | n/a | pass | 3 / 13 | n/a |" in table[3]


def test_a_failed_method_is_a_row_naming_the_error(bench):
    table = bench.render_table([{"model": "m", "method": "NNCF", "error": "quantizer failed on node Resize_3"}], "d")
    assert "error: quantizer failed on node Resize_3" in table.splitlines()[2]


def test_the_record_is_written_whole_as_json_in_the_chosen_folder(bench, tmp_path):
    record = {"dataset": "val2017-mini (206 images)", "rows": [_row("NNCF", -1.0, [-2.0, 0.0], 0.8)]}
    path = bench.write_record(tmp_path / "out", record)
    assert path == tmp_path / "out" / "int8_vs_nncf.json"
    assert json.loads(path.read_text()) == record
    assert [p.name for p in path.parent.iterdir()] == ["int8_vs_nncf.json"]  # no temporary left behind


def test_without_nncf_the_benchmark_is_skipped_with_the_missing_module_named(bench, monkeypatch, capsys, tmp_path):
    def missing(module: str, *a: object, **k: object):
        raise BackendUnavailable(module, f"Python module {module!r} is not installed; fix: pip install 'mapgate[nncf]'")

    monkeypatch.setattr(bench, "require", missing)
    assert bench.nncf_missing() == "Python module 'nncf' is not installed; fix: pip install 'mapgate[nncf]'"
    assert bench.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bench_int8_vs_nncf: skipped: Python module 'nncf' is not installed")
    assert list(tmp_path.iterdir()) == []  # nothing written when skipped


def test_float_convolutions_are_those_whose_weight_is_not_dequantized(bench):
    pytest.importorskip("onnx")
    from onnx import helper

    nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], name="int8"),
             helper.make_node("Conv", ["y", "w2"], ["y2"], name="float"),
             helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2]),
             helper.make_node("Conv", ["p", "w"], ["y3"], name="int8_input_quantized_before_the_pool")]
    graph = helper.make_graph(nodes, "g", [], [])
    assert bench.float_convs(helper.make_model(graph)) == (1, 3)
