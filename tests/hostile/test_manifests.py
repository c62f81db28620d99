"""Careless or hostile manifests: every problem is found when the manifest is loaded (exit 2 from
`mapgate models --models-file`), named by file, model and field, and a model name never becomes a
path outside reports/ or engines/."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_helpers import ROOT, Sandbox, cli
from mapgate.errors import ConfigError
from mapgate.catalog import load_manifest
from mapgate.paths import safe_component

MODEL = "yolox-nano-416"


def _models(capsys: pytest.CaptureFixture, manifest: Path) -> tuple[int, str]:
    return cli(capsys, "models", "--models-file", manifest)


# (text replaced in the yolox-nano-416 entry, its replacement, the field the message must name, what it says)
FIELD_CASES = [
    ('reference_backend = "onnxruntime"', 'reference_backend = "onnxruntme"', "reference_backend", "unknown backend"),
    ("pad_value = 114", "pad_value = nan", "preprocess.pad_value", "finite"),
    ("pad_value = 114", "pad_value = 114\nscale = nan", "preprocess.scale", "finite"),   # issue 11 item 5
    ("pad_value = 114", "pad_value = 114\nscale = inf", "preprocess.scale", "finite"),
    ("pad_value = 114", "pad_value = 114\nmean = [0.0, -inf, 0.0]", "preprocess.mean[1]", "finite"),
    ("pad_value = 114", "pad_value = 114\nstd = [1.0, 0.0, 1.0]", "preprocess.std", "must be positive"),
    ("nms_iou = 0.65", "nms_iou = nan", "postprocess.nms_iou", "finite"),
    ("score_threshold = 0.01", "score_threshold = -nan", "postprocess.score_threshold", "finite"),
    ('optimized = ["tflite:fp16"', 'tolerance.int8 = inf\noptimized = ["tflite:fp16"', "tolerance.int8", "finite"),
    ('family = "yolox"', 'family = "ssd"', "postprocess.decoder.boxes", "Is 'family' right"),
    # the Q/DQ form (issue 21 item 2): a typo, a wrong type, and a CPU-only form where tensorrt:int8 is gated
    ('family = "yolox"', 'family = "yolox"\nconvert.int8_ops = "everything"', "convert.int8_ops", "must be one of"),
    ('family = "yolox"', 'family = "yolox"\nconvert.int8_ops = ["Conv"]', "convert.int8_ops", "must be str"),
    ('family = "yolox"', 'family = "yolox"\nconvert.int8_activation_type = "int4"', "convert.int8_activation_type",
     "must be one of"),
    ('family = "yolox"', 'family = "yolox"\nconvert.int8_ops = "all"', "convert.int8_ops",
     "not TensorRT's explicit-quantization form"),
    ('family = "yolox"', 'family = "yolox"\nconvert.int8_activation_type = "u8"', "convert.int8_activation_type",
     "tensorrt:int8 is gated"),
    ('family = "yolox"', 'family = "od_api_detections"', "postprocess.decoder.boxes", "reads the network outputs"),
    ("strides = [8, 16, 32] }", 'strides = [8, 16, 32], anchors = "x" }', "postprocess.decoder.anchors",
     "is not a known field"),
    ("strides = [8, 16, 32]", "strides = [8, 0, 32]", "postprocess.decoder.strides", "must be at least 1"),
    ('path = "models/yolox-nano/yolox_nano.onnx"', 'path = "../../../etc/passwd"', "files.model.path",
     "outside the manifest's folder"),
    ('path = "models/yolox-nano/yolox_nano.onnx"', 'path = "/etc/passwd"', "files.model.path",
     "outside the manifest's folder"),
    ('path = "models/yolox-nano/yolox_nano.onnx", sha256', 'url = "file:///etc/shadow", sha256', "files.model.url",
     "not an https:// URL"),
    ('path = "models/yolox-nano/yolox_nano.onnx", sha256', 'url = "ftp://example.invalid/m.onnx", sha256',
     "files.model.url", "not an https:// URL"),
    ('path = "models/yolox-nano/yolox_nano.onnx", sha256', 'url = "https://example.invalid/a/..", sha256',
     "files.model.url", "relative folder reference"),
    ('path = "models/yolox-nano/yolox_nano.onnx", sha256',
     'url = "https://example.invalid/m.tar.gz", member = "../../x.pth", sha256', "files.model.member", "without '..'"),
    ('path = "models/yolox-nano/yolox_nano.onnx", sha256',
     'url = "https://example.invalid/m.tar.gz", member = "/usr/lib/x.pth", sha256', "files.model.member",
     "relative path"),
]


@pytest.mark.parametrize(("old", "new", "field", "says"), FIELD_CASES,
                         ids=[f"{c[2]}:{c[1][:24]}" for c in FIELD_CASES])
def test_a_bad_field_is_an_error_naming_manifest_model_and_field(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                 manifest_copy, old: str, new: str, field: str,
                                                                 says: str) -> None:
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", MODEL, {old: new})
    code, err = _models(capsys, manifest)
    assert code == 2
    assert str(manifest) in err and f"model {MODEL!r}" in err and f"field '{field}'" in err and says in err
    assert "root:" not in err, "the content of a file outside the manifest's folder must never be shown"
    sandbox.assert_only_new_under("m")


@pytest.mark.parametrize(("name", "says"), [
    ("../../x", "path separator"), ("/tmp/abs", "path separator"), ("..", "relative folder reference"),
    (".hidden", "starts with '.'"), ("a\\\\b", "path separator"), ("nul\\u0000byte", "control character"),
    ("", "is empty"), ("con", "reserved device name"), ("tab\\tname", "control character"),
])
def test_a_model_name_that_is_not_a_safe_folder_name_is_refused(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                manifest_copy, name: str, says: str) -> None:
    """Issue 11 item 6: such names put cache and report files outside engines/ and reports/."""
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", MODEL, {"models.yolox-nano-416": f'models."{name}"'})
    code, err = _models(capsys, manifest)
    assert code == 2 and str(manifest) in err and "model name" in err and says in err
    sandbox.assert_only_new_under("m")


def test_a_folder_given_as_models_file_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    folder = sandbox.root / "m"
    folder.mkdir()
    code, err = _models(capsys, folder)
    assert code == 2 and str(folder) in err and "is a folder" in err
    with pytest.raises(ConfigError, match="is a folder"):
        load_manifest(folder)
    sandbox.assert_only_new_under("m")


def test_a_manifest_that_is_not_utf8_is_an_error_naming_it(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                          manifest_copy) -> None:
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", MODEL,
                             {"YOLOX-nano (Megvii": "YOLOX-nano (M\u00e9gvii"})
    manifest.write_bytes(manifest.read_text(encoding="utf-8").encode("latin-1"))
    code, err = _models(capsys, manifest)
    assert code == 2 and str(manifest) in err and "not UTF-8" in err
    sandbox.assert_only_new_under("m")


def test_a_missing_models_file_is_a_usage_error(capsys: pytest.CaptureFixture, sandbox: Sandbox) -> None:
    code, err = _models(capsys, sandbox.root / "nope.toml")
    assert code == 2 and "nope.toml" in err and "does not exist" in err
    sandbox.assert_only_new_under()


def test_coco90_on_an_80_class_darknet_model_is_an_error_with_the_fix(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                      manifest_copy) -> None:
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", "yolov3-tiny-416",
                             {"models.yolov3-tiny-416": "models.tiny90", 'class_space = "coco80"': 'class_space = "coco90"'})
    code, err = cli(capsys, "eval", "--models-file", manifest, "--model", "tiny90", "--backend", "opencv",
                    "--max-images", 1, "--no-progress")
    assert code == 2 and "class_space" in err and 'class_space = "coco80"' in err and "80 classes" in err
    sandbox.assert_only_new_under("m")


def test_a_symlinked_folder_beside_the_manifest_is_inside_it(sandbox: Sandbox, manifest_copy) -> None:
    """The confinement is lexical: what the owner links into the manifest's folder is theirs to use."""
    manifest = manifest_copy(sandbox.root / "m" / "models.toml", MODEL, {"models.yolox-nano-416": "models.mine"})
    assert (sandbox.root / "m" / "models").is_symlink()
    spec = load_manifest(manifest)["mine"]
    assert spec.files["model"].path == ROOT / "fixtures" / "models" / "yolox-nano" / "yolox_nano.onnx"
    sandbox.assert_only_new_under("m")


@pytest.mark.parametrize("name", ["yolov3-tiny-416", "yolo-fastest-1.1-320", "ssdlite_mobilenet_v2_coco", "a.b_c-9"])
def test_ordinary_model_names_are_safe_components_unchanged(name: str) -> None:
    assert safe_component(name) == name
