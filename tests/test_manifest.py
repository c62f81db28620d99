"""Models are data: the bundled manifests load, every wrong field is an error naming the manifest,
the model entry and the field, and model files resolve only after their sha256 checks
(bundled paths, a mirror folder for URLs, members of .tar.gz archives)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mapgate.errors import ConfigError, DataError
from mapgate.files import MIRROR_ENV, missing_files, resolve, resolve_role
from mapgate.fsutil import sha256_bytes, sha256_file
from mapgate.manifest import DEFAULT_TOLERANCES, FileRef
from mapgate.catalog import load_manifest, load_models

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "fixtures" / "models.toml"
TRT_DEMOS = ROOT / "fixtures" / "models-tensorrt-demos.toml"
# relative to the test manifest's folder, where write() links fixtures/models (paths must stay inside it)
YOLOX_ONNX = "models/yolox-nano/yolox_nano.onnx"
YOLOX_SHA = "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"

BUNDLED_NAMES = ["ssdlite_mobilenet_v2_coco", "ssd_mobilenet_v1_quant_coco", "yolov3-tiny-416",
                 "yolo-fastest-1.1-320", "yolox-nano-416", "nanodet-m-320", "picodet-s-416", "yolov5n-640"]

# A minimal valid entry; the tests below break one field at a time.
VALID = f'''
[models.my-model]
family = "yolox"
format = "onnx"
reference_backend = "onnxruntime"
input_size = [416, 416]
files.model = {{ path = "{YOLOX_ONNX}", sha256 = "{YOLOX_SHA}" }}
optimized = ["onnxruntime:fp32"]
'''


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    if not (tmp_path / "models").exists():
        (tmp_path / "models").symlink_to(ROOT / "fixtures" / "models")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> tuple[str, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_manifest(path)
    return str(exc.value), path


# ---------------------------------------------------------------------------- the bundled manifests


def test_bundled_manifest_has_exactly_the_bundled_models() -> None:
    assert list(load_manifest(MANIFEST)) == BUNDLED_NAMES


def test_every_bundled_model_file_exists_with_its_sha256(bundled_models) -> None:
    for model in bundled_models.values():
        for ref in [*model.files.values(), *model.prebuilt.values()]:
            assert ref.path is not None and ref.url is None, f"{model.name} {ref.role} must be bundled"
            assert resolve(model, ref) == ref.path
        assert missing_files(model) == []


def test_yolox_vendor_tflite_files_are_prebuilt_fp16_and_int8(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    assert set(yolox.prebuilt) == {"tflite:fp16", "tflite:int8"}
    assert yolox.prebuilt["tflite:fp16"].path.name == "yolox_nano_float16_quantize.tflite"
    assert yolox.prebuilt["tflite:int8"].path.name == "yolox_nano_int8_quantize.tflite"
    assert {"tflite:fp16", "tflite:int8"} <= set(yolox.optimized)
    assert yolox.expected_verdicts == {"tflite:int8": "fail"}


def test_bundled_entries_carry_their_contract_fields(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    assert (yolox.family, yolox.format, yolox.reference_backend) == ("yolox", "onnx", "onnxruntime")
    assert yolox.input_size == (416, 416)
    assert (yolox.preprocess.resize, yolox.preprocess.letterbox_align, yolox.preprocess.color) == (
        "letterbox", "topleft", "BGR")
    assert yolox.postprocess.score_threshold == 0.01 and yolox.postprocess.multi_label is False
    assert yolox.postprocess.decoder == {"output": "output", "strides": [8, 16, 32]}
    ssd = bundled_models["ssdlite_mobilenet_v2_coco"]
    assert ssd.convert.int8_keep_float == ("Postprocessor/",)
    assert ssd.output_names == ("Postprocessor/Slice:0", "Postprocessor/ExpandDims_1:0")
    fastest = bundled_models["yolo-fastest-1.1-320"]
    # its INT8 recipe (int8-repair, on cv2.resize input) is 0.02 past the tolerance on darknet's own resize
    assert fastest.expected_verdicts == {"onnxruntime:int8": "inconclusive"}
    assert fastest.convert.int8_calibration == "percentile" and len(fastest.convert.int8_keep_float) == 12


def test_tolerances_default_per_precision_and_are_overridable(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, VALID + "tolerance.int8 = 2\n"))["my-model"]
    assert m.tolerance("int8") == 2.0
    assert m.tolerance("fp16") == DEFAULT_TOLERANCES["fp16"] == 0.5
    assert m.tolerance("fp32") == DEFAULT_TOLERANCES["fp32"] == 0.1
    assert m.tolerances == {"int8": 2.0}  # only explicit overrides are recorded


def test_tensorrt_demos_manifest_loads_with_url_files() -> None:
    if not TRT_DEMOS.exists():
        pytest.skip(f"{TRT_DEMOS} does not exist yet (the lead is adding it)")
    models = load_manifest(TRT_DEMOS)
    assert list(models) == ["ssd_mobilenet_v1_coco", "ssd_mobilenet_v2_coco", "yolov3-416", "yolov3-608"]
    for model in models.values():
        for ref in model.files.values():
            assert ref.path is None, f"{model.name} {ref.role} should be a URL"
            assert ref.url is not None and ref.url.startswith(("http://", "https://"))
    assert models["ssd_mobilenet_v1_coco"].files["graph"].member == (
        "ssd_mobilenet_v1_coco_2018_01_28/frozen_inference_graph.pb")
    assert models["yolov3-608"].input_size == (608, 608)
    assert models["yolov3-416"].files["weights"].url == models["yolov3-608"].files["weights"].url


def test_tensorrt_demos_manifest_merges_with_the_bundled_one() -> None:
    if not TRT_DEMOS.exists():
        pytest.skip(f"{TRT_DEMOS} does not exist yet (the lead is adding it)")
    merged = load_models([MANIFEST, TRT_DEMOS])
    assert len(merged) == len(BUNDLED_NAMES) + 4


def test_a_model_defined_in_two_manifests_is_an_error_naming_both(tmp_path: Path) -> None:
    a, b = write(tmp_path, VALID, "a.toml"), write(tmp_path, VALID, "b.toml")
    with pytest.raises(ConfigError) as exc:
        load_models([a, b])
    assert str(a) in str(exc.value) and str(b) in str(exc.value) and "'my-model'" in str(exc.value)


def test_the_minimal_entry_used_below_is_valid(tmp_path: Path) -> None:
    assert list(load_manifest(write(tmp_path, VALID))) == ["my-model"]


# ---------------------------------------------------------------------------- errors name file, entry, field


@pytest.mark.parametrize(("change", "field", "says"), [
    # unknown family
    (('family = "yolox"', 'family = "retinanet"'), "family", "must be one of"),
    # a required field missing
    (("input_size = [416, 416]\n", ""), "input_size", "is required"),
    (('reference_backend = "onnxruntime"\n', ""), "reference_backend", "is required"),
    # wrong types
    (("input_size = [416, 416]", 'input_size = "416"'), "input_size", "must be list"),
    (("input_size = [416, 416]", "input_size = [416, 0]"), "input_size", "[height, width]"),
    (('optimized = ["onnxruntime:fp32"]', 'optimized = "onnxruntime:fp32"'), "optimized", "must be list"),
    (("optimized", 'postprocess.nms_iou = "0.5"\noptimized'), "postprocess.nms_iou", "must be float"),
    (("optimized", "postprocess.multi_label = 1\noptimized"), "postprocess.multi_label", "must be bool"),
    (("optimized", "postprocess.max_detections = 1.5\noptimized"), "postprocess.max_detections", "must be int"),
    (("optimized", "preprocess.mean = [1, 2]\noptimized"), "preprocess.mean", "list of 3 numbers"),
    # a bad sha256
    ((YOLOX_SHA, YOLOX_SHA.upper()), "files.model.sha256", "64 lowercase hex digits"),
    ((YOLOX_SHA, YOLOX_SHA[:-1]), "files.model.sha256", "64 lowercase hex digits"),
    # unknown fields, at every level
    (("optimized", "score_threshold = 0.1\noptimized"), "score_threshold", "is not a known field"),
    (("optimized", "postprocess.score_thresh = 0.1\noptimized"), "postprocess.score_thresh", "is not a known field"),
    (("optimized", 'preprocess.colour = "RGB"\noptimized'), "preprocess.colour", "is not a known field"),
    ((f'sha256 = "{YOLOX_SHA}"', f'sha256 = "{YOLOX_SHA}", md5 = "x"'), "files.model.md5", "is not a known field"),
    # bad BACKEND:PRECISION keys
    (('optimized = ["onnxruntime:fp32"]', 'optimized = ["onnxruntime-fp32"]'), "optimized.onnxruntime-fp32",
     "BACKEND:PRECISION"),
    (('optimized = ["onnxruntime:fp32"]', 'optimized = ["onnxruntime:fp64"]'), "optimized.onnxruntime:fp64",
     "BACKEND:PRECISION"),
    # path and url both given (or neither)
    ((f'path = "{YOLOX_ONNX}"', f'path = "{YOLOX_ONNX}", url = "https://example.org/yolox_nano.onnx"'),
     "files.model.path", "exactly one of"),
    ((f'path = "{YOLOX_ONNX}", ', ""), "files.model.path", "exactly one of"),
    # a bundled file without its hash
    ((f', sha256 = "{YOLOX_SHA}"', ""), "files.model.sha256", "is required for bundled files"),
    # a format without its files
    (('format = "onnx"', 'format = "darknet"'), "files.cfg", "needs files"),
    # values out of range
    (("optimized", "postprocess.score_threshold = 1.0\noptimized"), "postprocess.score_threshold", "[0, 1)"),
    (("optimized", "postprocess.nms_iou = 0.0\noptimized"), "postprocess.nms_iou", "(0, 1]"),
    (("optimized", "postprocess.max_detections = 0\noptimized"), "postprocess.max_detections", "at least 1"),
    (("optimized", 'preprocess.interpolation = "darknet"\npreprocess.dtype = "uint8"\noptimized'),
     "preprocess.interpolation", "needs resize"),
    (("optimized", 'preprocess.interpolation = "darknet"\npreprocess.resize = "warp"\noptimized'),
     "preprocess.interpolation", "needs resize"),
    (("optimized", "postprocess.pre_nms_top_k_per_class = -1\noptimized"), "postprocess.pre_nms_top_k_per_class",
     "positive count"),
    (("optimized", 'expected_verdicts."tflite:int8" = "maybe"\noptimized'), "expected_verdicts.tflite:int8",
     "must be one of"),
])
def test_a_wrong_field_is_an_error_naming_manifest_model_and_field(tmp_path: Path, change: tuple[str, str],
                                                                   field: str, says: str) -> None:
    old, new = change
    assert old in VALID
    msg, path = config_error(tmp_path, VALID.replace(old, new, 1))
    assert str(path) in msg
    assert "model 'my-model'" in msg
    assert f"field '{field}'" in msg
    assert says in msg


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_negative_tolerance_is_an_error_naming_its_own_field(tmp_path: Path, precision: str) -> None:
    msg, path = config_error(tmp_path, VALID + f"tolerance.{precision} = -0.5\n")
    assert str(path) in msg and "model 'my-model'" in msg
    assert ">= 0" in msg
    assert f"field 'tolerance.{precision}'" in msg


@pytest.mark.parametrize("table", ["prebuilt", "expected_verdicts"])
def test_a_bad_target_key_in_a_table_is_an_error_naming_that_key(tmp_path: Path, table: str) -> None:
    value = f'{{ path = "{YOLOX_ONNX}", sha256 = "{YOLOX_SHA}" }}' if table == "prebuilt" else '"fail"'
    msg, path = config_error(tmp_path, VALID + f'{table}."tflite:int9" = {value}\n')
    assert str(path) in msg and "model 'my-model'" in msg
    assert "BACKEND:PRECISION" in msg
    assert f"field '{table}.tflite:int9'" in msg


@pytest.mark.parametrize(("line", "field"), [
    ("optimized = [5]", "optimized"),
    ("output_names = [1]", "output_names"),
])
def test_a_list_of_the_wrong_element_type_is_an_error_naming_the_field(tmp_path: Path, line: str,
                                                                       field: str) -> None:
    msg, path = config_error(tmp_path, VALID.replace('optimized = ["onnxruntime:fp32"]', line))
    assert str(path) in msg and "model 'my-model'" in msg
    assert f"field '{field}" in msg


def test_invalid_toml_is_an_error_naming_the_manifest(tmp_path: Path) -> None:
    msg, path = config_error(tmp_path, VALID + "[models.broken\nfamily = \n")
    assert str(path) in msg
    assert "not valid TOML" in msg


def test_a_manifest_without_models_is_an_error_naming_it(tmp_path: Path) -> None:
    msg, path = config_error(tmp_path, "# only a comment\n")
    assert str(path) in msg and "[models.<name>]" in msg


def test_an_unknown_top_level_table_is_an_error_naming_it(tmp_path: Path) -> None:
    msg, path = config_error(tmp_path, VALID + "[other]\nx = 1\n")
    assert str(path) in msg and "top-level field 'other' is not known" in msg


def test_a_missing_manifest_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "none.toml")):
        load_manifest(tmp_path / "none.toml")


def test_relative_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "m.onnx").write_bytes(b"onnx")
    text = VALID.replace(f'path = "{YOLOX_ONNX}", sha256 = "{YOLOX_SHA}"',
                         f'path = "weights/m.onnx", sha256 = "{sha256_bytes(b"onnx")}"')
    m = load_manifest(write(tmp_path, text))["my-model"]
    assert m.files["model"].path == tmp_path / "weights" / "m.onnx"
    assert resolve_role(m, "model") == tmp_path / "weights" / "m.onnx"


# ---------------------------------------------------------------------------- files.resolve


def test_a_sha256_mismatch_is_an_error_naming_the_entry_and_the_file(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"not the model the manifest pinned")
    ref = FileRef(role="model", sha256=YOLOX_SHA, path=f)
    with pytest.raises(DataError) as exc:
        resolve("my-model", ref)
    msg = str(exc.value)
    assert "'my-model'" in msg and "'model'" in msg and str(f) in msg
    assert "sha256 mismatch" in msg and YOLOX_SHA in msg and sha256_file(f) in msg


def test_a_missing_bundled_file_is_an_error_naming_the_entry_and_the_file(tmp_path: Path) -> None:
    ref = FileRef(role="weights", sha256=YOLOX_SHA, path=tmp_path / "gone.weights")
    with pytest.raises(DataError) as exc:
        resolve("my-model", ref)
    assert "'my-model'" in str(exc.value) and "'weights'" in str(exc.value)
    assert str(tmp_path / "gone.weights") in str(exc.value)


def test_a_file_replaced_after_a_successful_check_is_checked_again(tmp_path: Path) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(b"good")
    ref = FileRef(role="model", sha256=sha256_bytes(b"good"), path=f)
    assert resolve("m", ref) == f
    f.write_bytes(b"evil!")  # different size: the verified-hash memo must not hide it
    with pytest.raises(DataError, match="sha256 mismatch"):
        resolve("m", ref)


def test_resolve_role_names_an_unknown_role(bundled_models) -> None:
    yolox = bundled_models["yolox-nano-416"]
    with pytest.raises(ConfigError) as exc:
        resolve_role(yolox, "weights")
    assert str(yolox.manifest_path) in str(exc.value) and "files.weights" in str(exc.value)


URL = "https://example.invalid/models/tiny-model.onnx"
TAR_URL = "https://example.invalid/models/tiny_2024.tar.gz"
MEMBER = "tiny_2024/frozen_inference_graph.pb"
PAYLOAD = b"a small stand-in for a model file"


def url_manifest(tmp_path: Path, files_line: str) -> Path:
    text = VALID.replace(f'files.model = {{ path = "{YOLOX_ONNX}", sha256 = "{YOLOX_SHA}" }}', files_line)
    return write(tmp_path, text, "url-models.toml")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Downloads forbidden, an empty download cache, no mirror from the environment."""
    monkeypatch.setenv("MAPGATE_OFFLINE", "1")
    monkeypatch.setenv("MAPGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return tmp_path / "cache"


def test_offline_without_a_mirror_a_url_file_is_an_error_naming_the_url(tmp_path: Path, offline: Path) -> None:
    m = load_manifest(url_manifest(tmp_path, f'files.model = {{ url = "{URL}" }}'))["my-model"]
    with pytest.raises(DataError) as exc:
        resolve_role(m, "model")
    msg = str(exc.value)
    assert URL in msg and "'my-model'" in msg and "--mirror" in msg
    assert missing_files(m) == [f"model: {URL} (not downloaded yet, not in a mirror)"]


def test_a_url_file_in_the_mirror_is_used_after_its_sha256_checks(tmp_path: Path, offline: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny-model.onnx").write_bytes(PAYLOAD)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    m = load_manifest(url_manifest(
        tmp_path, f'files.model = {{ url = "{URL}", sha256 = "{sha256_bytes(PAYLOAD)}" }}'))["my-model"]
    assert resolve_role(m, "model") == mirror / "tiny-model.onnx"
    assert missing_files(m) == []
    (mirror / "tiny-model.onnx").write_bytes(PAYLOAD + b" tampered")
    with pytest.raises(DataError) as exc:
        resolve_role(m, "model")
    assert "sha256 mismatch" in str(exc.value) and str(mirror / "tiny-model.onnx") in str(exc.value)


def test_an_explicit_mirror_argument_wins_over_the_environment(tmp_path: Path, offline: Path) -> None:
    mirror = tmp_path / "explicit"
    mirror.mkdir()
    (mirror / "tiny-model.onnx").write_bytes(PAYLOAD)
    ref = FileRef(role="model", sha256=sha256_bytes(PAYLOAD), url=URL)
    assert resolve("m", ref, mirror=mirror) == mirror / "tiny-model.onnx"


def tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_tar_gz_member_in_the_mirror_is_extracted_and_checked(tmp_path: Path, offline: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball(mirror / "tiny_2024.tar.gz", {MEMBER: PAYLOAD, "tiny_2024/pipeline.config": b"model {}"})
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    text = url_manifest(tmp_path, f'files.model = {{ url = "{TAR_URL}", member = "{MEMBER}", '
                                  f'sha256 = "{sha256_bytes(PAYLOAD)}" }}')
    m = load_manifest(text)["my-model"]
    path = resolve_role(m, "model")
    assert path.read_bytes() == PAYLOAD
    assert path.name == "frozen_inference_graph.pb"
    assert offline in path.parents  # extracted into the cache, never into the mirror
    assert m.files["model"].display == f"{TAR_URL}#{MEMBER}"


def test_a_tar_gz_member_with_the_wrong_sha256_is_refused(tmp_path: Path, offline: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball(mirror / "tiny_2024.tar.gz", {MEMBER: PAYLOAD})
    ref = FileRef(role="graph", sha256=sha256_bytes(b"something else"), url=TAR_URL, member=MEMBER)
    with pytest.raises(DataError) as exc:
        resolve("m", ref, mirror=mirror)
    assert "sha256 mismatch" in str(exc.value) and "'graph'" in str(exc.value)


def test_a_tar_gz_without_the_member_is_an_error_naming_archive_and_member(tmp_path: Path, offline: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = tarball(mirror / "tiny_2024.tar.gz", {"tiny_2024/other.pb": PAYLOAD})
    ref = FileRef(role="graph", sha256=None, url=TAR_URL, member=MEMBER)
    with pytest.raises(DataError) as exc:
        resolve("m", ref, mirror=mirror)
    assert str(archive) in str(exc.value) and MEMBER in str(exc.value)
