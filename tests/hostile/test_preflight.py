"""A user's manifest mistakes that run without a crash and give a wrong number are stopped before any
model runs: class_space against the class count the model's files state, input_size against a static
ONNX/TFLite input and a Darknet cfg. Each is a one-line ConfigError naming the field and the fix, exit
code 2 from the CLI, and nothing is written outside the manifest's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_helpers import Sandbox, cli
from mapgate import preflight
from mapgate.catalog import load_manifest
from mapgate.errors import ConfigError


def _entry(manifest_copy, tmp_path: Path, model: str, replace: dict[str, str]):
    path = manifest_copy(tmp_path / "m" / "models.toml", model, replace)
    [spec] = load_manifest(path).values()
    return spec


@pytest.mark.parametrize("model", ["yolox-nano-416", "yolov5n-640", "nanodet-m-320", "picodet-s-416"])
def test_coco90_on_an_80_class_onnx_model_is_refused_with_the_fix(model: str, manifest_copy, tmp_path: Path) -> None:
    spec = _entry(manifest_copy, tmp_path, model, {'class_space = "coco80"': 'class_space = "coco90"'})
    with pytest.raises(ConfigError) as err:
        preflight.check(spec)
    text = str(err.value)
    assert "'postprocess.class_space'" in text and "80 classes" in text and 'Use class_space = "coco80"' in text
    assert str(tmp_path / "m" / "models.toml") in text and "\n" not in text


@pytest.mark.parametrize("model", ["yolox-nano-416", "yolov5n-640", "nanodet-m-320", "picodet-s-416",
                                   "yolov3-tiny-416", "yolo-fastest-1.1-320", "ssd_mobilenet_v1_quant_coco",
                                   "ssdlite_mobilenet_v2_coco"])
def test_every_bundled_entry_agrees_with_its_own_files(model: str, bundled_models) -> None:
    preflight.check(bundled_models[model])


def test_an_input_size_against_a_static_onnx_input_names_the_field_and_the_size(manifest_copy, tmp_path: Path) -> None:
    spec = _entry(manifest_copy, tmp_path, "yolov5n-640", {"input_size = [640, 640]": "input_size = [512, 512]"})
    with pytest.raises(ConfigError, match=r"field 'input_size': \[512, 512\] but yolov5n.onnx has a static NCHW "
                                          r"input 'images' of shape \[1, 3, 640, 640\]\. Use input_size = \[640, 640\]"):
        preflight.check(spec)


def test_an_input_size_against_a_static_tflite_input_is_refused(manifest_copy, tmp_path: Path, require_backend) -> None:
    require_backend("tflite")
    spec = _entry(manifest_copy, tmp_path, "ssd_mobilenet_v1_quant_coco",
                  {"input_size = [300, 300]": "input_size = [320, 320]"})
    with pytest.raises(ConfigError, match=r"static NHWC input .* \[1, 300, 300, 3\]\. Use input_size = \[300, 300\]"):
        preflight.check(spec)


def test_an_input_size_against_the_darknet_cfg_is_refused_unless_resize_is_declared(manifest_copy,
                                                                                    tmp_path: Path) -> None:
    spec = _entry(manifest_copy, tmp_path, "yolov3-tiny-416", {"input_size = [416, 416]": "input_size = [320, 320]"})
    with pytest.raises(ConfigError, match=r"field 'input_size': \[320, 320\] but yolov3-tiny.cfg's \[net\] "
                                          r"height/width are \[416, 416\].*resize_network = true"):
        preflight.check(spec)
    resized = _entry(manifest_copy, tmp_path / "r", "yolov3-tiny-416",
                     {"input_size = [416, 416]": "input_size = [320, 320]",
                      'class_space = "coco80"': 'class_space = "coco80"\ndecoder.resize_network = true'})
    preflight.check(resized)  # a declared resize runs: YOLO is fully convolutional


def test_coco80_on_a_90_class_model_is_refused_too(manifest_copy, tmp_path: Path) -> None:
    # the same Ultralytics head with 91 class columns, as a TF-trained 90-id export has them
    spec = _entry(manifest_copy, tmp_path, "yolov5n-640", {})
    with pytest.raises(ConfigError, match=r"\"coco80\" but the outputs of yolov5n.onnx give 91 classes.*\"coco90\""):
        preflight._check_class_space(spec, 91, "the outputs of yolov5n.onnx")


def test_the_cli_stops_the_mistake_before_any_model_runs(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                         manifest_copy) -> None:
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", "yolov5n-640",
                             {'class_space = "coco80"': 'class_space = "coco90"'})
    code, err = cli(capsys, "eval", "--models-file", manifest, "--model", "yolov5n-640", "--backend", "onnxruntime",
                    "--max-images", 1, "--no-progress")
    assert code == 2 and 'Use class_space = "coco80"' in err and "Traceback" not in err
    assert not list((sandbox.root / "m").glob("engines/*/detections-*")), "a model ran before the check"
    sandbox.assert_only_new_under("m")
