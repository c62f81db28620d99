"""The ``mapgate`` command line: every subcommand documents its options, ``evaluate`` prints the
pycocotools summary and writes the metrics JSON, ``models`` says what can run here, ``eval`` and
``compare`` write their artifacts, and exit codes are 0 ok/pass, 1 gate failed, 2 usage or input
error (with a message naming the file, entry or option)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import mapgate.gate
from mapgate import __version__
from mapgate.cli import main
from mapgate.dataset import BUNDLED_ANNOTATIONS
from mapgate.fsutil import sha256_file

ROOT = Path(__file__).resolve().parent.parent
MAPGATE_EXE = ROOT / ".venv" / "bin" / "mapgate"
BUNDLED_NAMES = ["ssdlite_mobilenet_v2_coco", "ssd_mobilenet_v1_quant_coco", "yolov3-tiny-416",
                 "yolo-fastest-1.1-320", "yolox-nano-416"]
MODEL = "yolox-nano-416"


@pytest.fixture(autouse=True)
def reports_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI's default reports/ and engines/ folders point into tmp_path: tests never write the repo."""
    monkeypatch.setattr(mapgate.gate, "DEFAULT_REPORTS", tmp_path / "default-reports")
    monkeypatch.setattr(mapgate.gate, "DEFAULT_ENGINES", tmp_path / "default-engines")
    return tmp_path / "default-reports"


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engines/detection cache for the module, so the reference runs once per image set."""
    return tmp_path_factory.mktemp("cli-engines")


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def exit_code(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """For argparse paths that raise SystemExit."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


# ============================================================================ help


@pytest.mark.parametrize(("command", "options"), [
    ("evaluate", ["--gt", "--dets", "--out", "--label"]),
    ("models", ["--models-file"]),
    ("eval", ["--model", "--backend", "--out", "--coco-root", "--max-images", "--models-file", "--mirror",
              "--engines-dir", "--no-cache", "--no-progress"]),
    ("compare", ["--model", "--ref", "--opt", "--tolerance", "--out", "--resamples", "--inconclusive", "--coco-root",
                 "--max-images", "--models-file", "--mirror", "--engines-dir", "--no-cache", "--no-progress"]),
    ("history", ["--storage", "--out"]),
])
def test_every_subcommand_help_exits_0_and_lists_its_options(capsys: pytest.CaptureFixture, command: str,
                                                             options: list[str]) -> None:
    code, out, _ = exit_code(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: mapgate {command}")
    for option in options:
        assert option in out, f"{command} --help does not mention {option}"


def test_top_level_help_lists_the_commands_and_exit_codes(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = exit_code(capsys, "--help")
    assert code == 0
    for command in ("evaluate", "models", "eval", "compare", "history"):
        assert command in out
    assert "Exit codes: 0 ok/pass, 1 gate failed, 2 usage or input error" in out


def test_the_installed_console_script_runs(tmp_path: Path) -> None:
    if not MAPGATE_EXE.exists():
        pytest.skip(f"{MAPGATE_EXE} is not installed (pip install -e . in the venv)")
    proc = subprocess.run([str(MAPGATE_EXE), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mapgate")
    assert "compare" in proc.stdout
    proc = subprocess.run([str(MAPGATE_EXE), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mapgate {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    code, _, err = exit_code(capsys)
    assert code == 2 and "COMMAND" in err


# ============================================================================ evaluate


def perfect_detections(path: Path, n_images: int | None = None, category_shift: int = 0) -> Path:
    """Every non-crowd ground-truth box as a detection (AP 1 by construction); score 0.04 keeps it below
    the evaluator's high-lowest-score warning."""
    gt = json.loads(BUNDLED_ANNOTATIONS.read_text())
    keep = {img["id"] for img in gt["images"][:n_images]} if n_images else None
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"] + category_shift, "bbox": a["bbox"],
             "score": 0.04} for a in gt["annotations"]
            if not a.get("iscrowd") and (keep is None or a["image_id"] in keep)]
    path.write_text(json.dumps(dets))
    return path


def test_evaluate_prints_the_12_summary_lines_and_writes_the_metrics_json(capsys: pytest.CaptureFixture,
                                                                          tmp_path: Path) -> None:
    dets = perfect_detections(tmp_path / "dets.json")
    out_json = tmp_path / "out" / "metrics.json"
    code, out, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets, "--out", out_json)
    assert code == 0, err
    lines = out.splitlines()
    assert sum(line.startswith(" Average Precision  (AP) @[ IoU=") for line in lines) == 6
    assert sum(line.startswith(" Average Recall     (AR) @[ IoU=") for line in lines) == 6
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert "data set: val2017-mini (206 images)" in out
    assert f"metrics written to {out_json}" in out
    m = json.loads(out_json.read_text())
    assert set(m) >= {"stats", "voc07_ap50", "voc_area_ap50", "per_category", "dataset"}
    assert list(m["stats"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert m["stats"]["AP50"] > 0.99  # the ground truth itself
    assert m["dataset"]["label"] == "val2017-mini (206 images)" and m["dataset"]["n_images"] == 206
    assert len(m["per_category"]) == 80


def test_evaluate_label_option_names_the_data_set(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    dets = perfect_detections(tmp_path / "dets.json")
    code, out, _ = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets, "--label", "my lab set")
    assert code == 0 and "data set: my lab set (206 images)" in out


def test_a_missing_detections_file_exits_2_naming_it(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    code, out, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", missing)
    assert code == 2 and out == ""
    assert err.startswith("mapgate: error: ") and str(missing) in err and "does not exist" in err


def test_a_missing_annotations_file_exits_2_naming_it(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    dets = perfect_detections(tmp_path / "dets.json", n_images=2)
    code, _, err = run(capsys, "evaluate", "--gt", tmp_path / "gt.json", "--dets", dets)
    assert code == 2 and str(tmp_path / "gt.json") in err


def test_malformed_detections_json_exits_2_naming_the_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 139, "category_id": 1,')
    code, _, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", bad)
    assert code == 2 and str(bad) in err and "not valid JSON" in err


def test_detections_that_are_not_a_list_exit_2_naming_the_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    bad = tmp_path / "obj.json"
    bad.write_text('{"annotations": []}')
    code, _, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", bad)
    assert code == 2 and str(bad) in err


def test_unknown_category_ids_exit_2_with_the_80_index_mixup_hint(capsys: pytest.CaptureFixture,
                                                                  tmp_path: Path) -> None:
    dets = perfect_detections(tmp_path / "dets80.json", n_images=5, category_shift=-1)  # person 1 -> 0
    code, out, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 2 and out == ""
    assert "80-index vs COCO-id mix-up?" in err
    assert "category ids [0" in err


def test_a_contract_error_names_the_detections_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """README: exit 2 'usage or input error (the message names the file, entry or field)'."""
    dets = perfect_detections(tmp_path / "dets80.json", n_images=5, category_shift=-1)
    code, _, err = run(capsys, "evaluate", "--gt", BUNDLED_ANNOTATIONS, "--dets", dets)
    assert code == 2
    assert str(dets) in err


# ============================================================================ models


def test_models_lists_the_five_bundled_models_with_their_targets(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")
            and not line.startswith("tensorrt")]
    assert [r for r in rows if r in BUNDLED_NAMES] == BUNDLED_NAMES
    assert "-> tflite:int8" in out and "prebuilt" in out and "expected verdict fail" in out


def test_models_says_tensorrt_is_unavailable_with_a_reason(capsys: pytest.CaptureFixture) -> None:
    from mapgate.backends import get_backend

    available = get_backend("tensorrt").availability()
    if available.ok:
        pytest.skip("tensorrt is available on this machine, so `mapgate models` has nothing to explain")
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert f"unavailable here: {available.reason}" in out  # the backend's describe() line, mode included when known
    assert len(available.reason) > 20 and "tensorrt" in available.reason
    assert "-> tensorrt:fp16" in out and "unavailable (tensorrt: see below)" in out


def test_models_reads_an_extra_manifest(capsys: pytest.CaptureFixture, tmp_path: Path, manifest_copy) -> None:
    extra = manifest_copy(tmp_path / "extra.toml", MODEL).read_text().replace("yolox-nano-416", "my-yolox")
    (tmp_path / "extra.toml").write_text(extra)
    code, out, _ = run(capsys, "models", "--models-file", tmp_path / "extra.toml")
    assert code == 0 and "my-yolox" in out


def test_models_with_a_broken_manifest_exits_2_naming_it(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nfamily = "nope"\n')
    code, _, err = run(capsys, "models", "--models-file", bad)
    assert code == 2 and str(bad) in err and "'family'" in err


# ============================================================================ eval


def test_eval_writes_detections_and_metrics_and_prints_the_summary(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                   engines: Path, require_backend) -> None:
    require_backend("onnxruntime")
    out_dir = tmp_path / "ssd-ort"
    code, out, err = run(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", 8,
                         "--out", out_dir, "--engines-dir", engines, "--no-progress")
    assert code == 0, err
    dets = json.loads((out_dir / "detections.json").read_text())
    m = json.loads((out_dir / "metrics.json").read_text())
    assert dets and {d["image_id"] for d in dets} <= set(m["dataset"]["image_ids"])
    assert (m["model"], m["backend"], m["precision"]) == (MODEL, "onnxruntime", "original")
    assert m["identity"]["artifact_sha256"] == sha256_file(m["identity"]["artifact"])
    assert m["identity"]["model_files"] == {"model": m["contract"]["files"]["model"]}
    assert m["contract"]["input_size"] == [416, 416] and m["contract"]["family"] == "yolox"
    assert "score_threshold=0.01" in m["contract"]["postprocess"]
    assert set(m["timings_ms_per_image"]) == {"preprocess", "inference", "postprocess"}
    assert m["dataset"]["n_images"] == 8
    assert sum(line.startswith(" Average ") for line in out.splitlines()) == 12
    assert f"model {MODEL} on onnxruntime, data set: val2017-mini subset (first 8 of 206 images)" in out
    assert str(out_dir / "metrics.json") in out


def test_eval_without_the_cache_writes_its_artifacts(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                     require_backend) -> None:
    require_backend("onnxruntime")
    code, _, err = run(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", 2,
                       "--out", tmp_path / "out", "--engines-dir", tmp_path / "engines", "--no-cache", "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["detections_from_cache"] is False


def test_eval_of_an_unknown_model_exits_2_listing_the_known_ones(capsys: pytest.CaptureFixture,
                                                                 tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", "--model", "yolov9", "--backend", "onnxruntime", "--engines-dir", tmp_path)
    assert code == 2 and "unknown model 'yolov9'" in err and MODEL in err


# ============================================================================ compare


def compare(capsys: pytest.CaptureFixture, engines: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "compare", "--model", MODEL, "--max-images", 20, "--out", out, "--engines-dir", engines,
               "--resamples", 100, "--no-progress", *extra)


@pytest.mark.slow
def test_compare_exits_1_for_the_broken_vendor_int8_file(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                         engines: Path, require_backend) -> None:
    require_backend("onnxruntime")
    require_backend("tflite")
    code, out, err = compare(capsys, engines, tmp_path / "reports", "--opt", "tflite:int8")
    assert code == 1, err
    assert re.search(r"verdict\s+fail \(expected fail\) -> fail", out), out
    [comparison] = (tmp_path / "reports").glob(f"*/{MODEL}/tflite-int8/comparison.json")
    assert json.loads(comparison.read_text())["verdict"] == "fail"
    assert list((tmp_path / "reports").glob("*/env.json"))


@pytest.mark.slow
def test_compare_exits_0_for_the_vendor_fp16_file(capsys: pytest.CaptureFixture, tmp_path: Path, engines: Path,
                                                  require_backend) -> None:
    require_backend("onnxruntime")
    require_backend("tflite")
    code, out, err = compare(capsys, engines, tmp_path / "reports", "--opt", "tflite:fp16")
    assert code == 0, err
    assert re.search(r"verdict\s+pass", out), out
    assert "val2017-mini subset (first 20 of 206 images)" in out
    assert list((tmp_path / "reports").glob(f"*/{MODEL}/tflite-fp16/summary.md"))


@pytest.mark.slow
def test_compare_tolerance_option_decides_the_verdict(capsys: pytest.CaptureFixture, tmp_path: Path, engines: Path,
                                                      require_backend) -> None:
    """A tolerance wide enough for the broken INT8 file makes it pass: the option is what the gate uses."""
    require_backend("onnxruntime")
    require_backend("tflite")
    code, out, _ = compare(capsys, engines, tmp_path / "reports", "--opt", "tflite:int8", "--tolerance", 100)
    assert code == 0
    assert re.search(r"tolerance\s+100 points \(command line\)", out), out


@pytest.mark.slow
def test_compare_inconclusive_exits_by_the_inconclusive_option(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                               engines: Path, monkeypatch: pytest.MonkeyPatch,
                                                               require_backend) -> None:
    """On 12 images the vendor FP16 file is within tolerance but its CI reaches below it."""
    require_backend("onnxruntime")
    require_backend("tflite")
    monkeypatch.delenv("CI", raising=False)
    argv = ("compare", "--model", MODEL, "--max-images", 12, "--out", tmp_path / "reports", "--engines-dir", engines,
            "--resamples", 200, "--no-progress", "--opt", "tflite:fp16")
    code, out, err = run(capsys, *argv)
    assert re.search(r"verdict\s+inconclusive", out) and "images (this run: 12) would make it conclusive" in out
    assert code == 0 and "warning: the verdict is inconclusive" in err
    assert run(capsys, *argv, "--inconclusive", "fail")[0] == 1
    assert run(capsys, *argv, "--inconclusive", "pass")[0] == 0
    monkeypatch.setenv("CI", "true")
    assert run(capsys, *argv)[0] == 1


@pytest.mark.slow
def test_compare_against_a_stored_reference_from_eval(capsys: pytest.CaptureFixture, tmp_path: Path, engines: Path,
                                                      require_backend) -> None:
    require_backend("onnxruntime")
    require_backend("tflite")
    ref_dir = tmp_path / "ref"
    code, _, err = run(capsys, "eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", 20,
                       "--out", ref_dir, "--engines-dir", engines, "--no-progress")
    assert code == 0, err
    code, out, err = compare(capsys, engines, tmp_path / "reports", "--opt", "tflite:fp16",
                             "--ref", ref_dir / "detections.json")
    assert code == 0, err
    assert "tflite:fp16 vs stored:onnxruntime" in out
    code, _, err = run(capsys, "compare", "--model", MODEL, "--max-images", 10, "--out", tmp_path / "reports",
                       "--engines-dir", engines, "--resamples", 100, "--no-progress", "--opt", "tflite:fp16",
                       "--ref", ref_dir / "detections.json")
    assert code == 2 and str(ref_dir / "metrics.json") in err and "image set" in err


@pytest.mark.parametrize(("opt", "says"), [
    ("bogus", "must look like BACKEND:PRECISION"),
    ("onnxruntime:fp64", "'onnxruntime:fp64' must look like BACKEND:PRECISION"),
    ("onnxruntime:fp16", "backend 'onnxruntime' has no precision 'fp16'"),
    ("nosuch:int8", "unknown backend 'nosuch'"),
])
def test_compare_with_a_bad_opt_target_exits_2(capsys: pytest.CaptureFixture, tmp_path: Path, engines: Path,
                                               opt: str, says: str) -> None:
    code, _, err = run(capsys, "compare", "--model", MODEL, "--opt", opt, "--max-images", 2,
                       "--out", tmp_path / "reports", "--engines-dir", engines, "--no-progress")
    assert code == 2
    assert says in err


@pytest.mark.parametrize(("argv", "says"), [
    (["compare", "--model", MODEL, "--opt", "tflite:fp16", "--max-images", "0"], "must be at least 1"),
    (["compare", "--model", MODEL, "--opt", "tflite:fp16", "--max-images", "ten"], "expected a whole number"),
    (["eval", "--model", MODEL, "--backend", "onnxruntime", "--max-images", "-1"], "must be at least 1"),
    (["compare", "--model", MODEL, "--opt", "tflite:fp16", "--tolerance", "-1"], ">= 0"),
    (["compare", "--model", MODEL], "--opt"),
    (["evaluate", "--dets", "x.json"], "--gt"),
])
def test_bad_options_are_usage_errors_exiting_2(capsys: pytest.CaptureFixture, argv: list[str], says: str) -> None:
    code, _, err = exit_code(capsys, *argv)
    assert code == 2
    assert says in err
