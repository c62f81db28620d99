"""`mapgate int8-repair`: the search reads calibration images only, writes a recipe the manifest
accepts, and refuses what it cannot do. The full run on the bundled models is a documented command
whose results are committed (README "When INT8 fails"); CI runs a reduced search."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.cli import main
from mapgate.dataset import CocoDataset
from mapgate.errors import ConfigError
from mapgate.catalog import CHECKOUT, DEMO_MANIFEST
from mapgate.gate import DEFAULT_ENGINES
from mapgate.catalog import load_manifest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# one worker runs the module's bounded search once (loadgroup)
pytestmark = pytest.mark.xdist_group("int8-repair")

MODEL = "yolo-fastest-1.1-320"


def _bundled_recipe_lines() -> str:
    """The consecutive convert.int8_* lines of the bundled Yolo-Fastest entry (its committed recipe)."""
    text = DEMO_MANIFEST.read_text(encoding="utf-8")
    entry = text[text.index(f'[models."{MODEL}"]'):]
    lines = [line for line in entry.splitlines()[:40] if line.startswith("convert.int8_")]
    assert lines and "\n".join(lines) in entry
    return "\n".join(lines)


@pytest.fixture(scope="module")
def reduced_search(bundled_models, require_backend):
    """A bounded search (15 calibration images, MinMax only, 2 candidate layers) with every image
    decode in the process logged: every image mapgate reads goes through dataset.read_image."""
    require_backend("onnxruntime")
    require_backend("opencv")
    import cv2

    from mapgate.convert import onnx_for
    from mapgate.int8_repair import RepairConfig, search

    model = bundled_models[MODEL]
    fp32 = onnx_for(model, BuildContext(engines_dir=CHECKOUT / DEFAULT_ENGINES))
    import mapgate.calibration
    import mapgate.dataset
    import mapgate.sensitivity

    read: list[str] = []
    real_read = mapgate.dataset.read_image
    mp = pytest.MonkeyPatch()
    for module in (mapgate.dataset, mapgate.calibration, mapgate.sensitivity):
        mp.setattr(module, "read_image", lambda path, *a: (read.append(str(path)), real_read(path, *a))[1])
    # proxy_tolerance 0 is unreachable: forces the greedy steps; min_speedup near 0 and no data-free stage keep
    # that stage running on a CPU where INT8 is slower than FP32 (the data-free fixes: tests/test_dfq.py)
    cfg = RepairConfig(methods=("minmax",), per_channel=(True,), max_candidates=2, max_float_layers=1,
                       proxy_tolerance=0.0, data_free=False, min_speedup=0.01)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = search(model, fp32, calibration_images()[:15], cfg, Path(tmp))
    finally:
        mp.undo()
    return model, result, read


@pytest.mark.slow
def test_the_search_never_reads_an_evaluated_image(reduced_search) -> None:
    _, result, read = reduced_search
    ids = set(image_ids_of(Path(p) for p in read))
    assert len(ids) == 15 and len(read) >= 15
    assert ids <= set(image_ids_of(calibration_images()))
    assert not ids & set(CocoDataset().image_ids)
    assert result.images_read == ids


@pytest.mark.slow
def test_the_search_tries_free_options_then_gives_layers_back_greedily(reduced_search) -> None:
    model, result, _ = reduced_search
    assert result.n_calibrate == 10 and result.n_proxy == 5
    assert [o["images"] for o in result.options] == [10, 5]  # all of the calibrate set, then half
    # one tried option wins, unless the manifest's own recipe (always a candidate) was better than all of them
    winners = sum(o["won"] for o in result.options)
    assert winners == 1 or (winners == 0 and result.recipe.calibration == model.convert.int8_calibration)
    assert len(result.sensitivity) == 2 and 1 <= len(result.steps) <= 2
    accepted = [s["node"] for s in result.steps if s["accepted"]]
    assert result.recipe.added == accepted and len(accepted) <= 1
    # the recipe is the whole list the manifest must hold: its earlier entries, then the added layers
    assert result.recipe.keep_float == [*model.convert.int8_keep_float, *accepted]
    if accepted:
        assert result.proxy_after.pseudo_ap > result.options[0]["pseudo_ap"]
    assert not result.proxy_met
    assert set(result.latency_ms) == {"fp32", "int8", "int8_repaired"} and min(result.latency_ms.values()) > 0


@pytest.mark.slow
def test_the_recipe_file_is_manifest_keys_the_loader_accepts(reduced_search, manifest_copy, tmp_path: Path) -> None:
    from mapgate.int8_repair import recipe_toml

    model, result, _ = reduced_search
    text = recipe_toml(result)
    data = tomllib.loads(text)
    convert = data["models"][MODEL]["convert"]
    assert convert["int8_keep_float"] == result.recipe.keep_float
    assert (convert["int8_ops"], convert["int8_activation_type"]) == (result.recipe.ops, result.recipe.activation_type)
    assert data["int8_repair"][MODEL]["onnxruntime:int8"]["float_layers_added"] == len(result.recipe.added)
    keys = "\n".join(f"convert.{k} = {v}" for k, v in (line.split(" = ", 1) for line in text.splitlines()
                                                         if line.startswith("int8_")))
    path = manifest_copy(tmp_path / "m.toml", MODEL, {_bundled_recipe_lines(): keys})
    spec = load_manifest(path)[MODEL]
    assert spec.convert.int8_calibration == result.recipe.calibration
    assert spec.convert.int8_keep_float == tuple(result.recipe.keep_float)
    assert spec.convert.int8_per_channel is result.recipe.per_channel
    applied = result.recipe.apply(model, "onnxruntime:int8")
    assert "onnxruntime:int8" not in applied.expected_verdicts and applied.convert.int8_calibration == result.recipe.calibration


def test_an_unknown_calibration_method_names_the_field(manifest_copy, tmp_path: Path) -> None:
    path = manifest_copy(tmp_path / "m.toml", MODEL,
                         {_bundled_recipe_lines(): 'convert.int8_calibration = "kl"'})
    with pytest.raises(ConfigError, match=r"field 'convert.int8_calibration': must be one of minmax, percentile, entropy"):
        load_manifest(path)


def test_an_existing_out_file_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "recipe.toml"
    out.write_text("# mine\n")
    assert main(["int8-repair", "--model", MODEL, "--out", str(out), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "# mine\n"


def test_tensorrt_int8_without_tensorrt_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mapgate.backends import get_backend

    if get_backend("tensorrt").availability().ok:
        pytest.skip("TensorRT is installed here: the refusal cannot be shown")
    out = tmp_path / "recipe.toml"
    assert main(["int8-repair", "--model", MODEL, "--target", "tensorrt:int8", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err.lower() and "verifies on tensorrt" in err and not out.exists()


def test_only_int8_targets_can_be_repaired(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["int8-repair", "--model", MODEL, "--target", "tflite:fp16", "--out", str(tmp_path / "r.toml"),
                 "--no-progress"]) == 2
    assert "--target must be one of onnxruntime:int8, tensorrt:int8" in capsys.readouterr().err


def test_the_qdq_forms_tried_are_every_form_only_where_no_tensorrt_int8_is_gated(bundled_models) -> None:
    from mapgate.int8_repair import RepairConfig, forms_for

    gated = bundled_models[MODEL]  # gates tensorrt:int8: its convert.* keys must stay TensorRT's form
    assert "tensorrt:int8" in gated.optimized
    cpu_only = dataclasses.replace(gated, optimized=("onnxruntime:int8",))
    every = (("conv", "s8"), ("conv", "u8"), ("all", "s8"), ("all", "u8"))
    assert forms_for(RepairConfig(target="onnxruntime:int8"), cpu_only) == every
    assert forms_for(RepairConfig(target="onnxruntime:int8"), gated) == (("conv", "s8"),)
    assert forms_for(RepairConfig(target="tensorrt:int8"), cpu_only) == (("conv", "s8"),)
    assert forms_for(RepairConfig(forms=(("all", "u8"),)), cpu_only) == (("all", "u8"),)
    with pytest.raises(ConfigError, match=r"gates tensorrt:int8, whose Q/DQ form is conv/s8 only"):
        forms_for(RepairConfig(forms=(("all", "u8"),)), gated)


def test_a_form_recipe_round_trips_through_the_manifest(manifest_copy, tmp_path: Path) -> None:
    from mapgate.int8_repair import Recipe

    path = manifest_copy(tmp_path / "m.toml", MODEL, {
        'optimized = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:fp16", "tensorrt:fp32", '
        '"tensorrt:fp16", "tensorrt:int8"]': 'optimized = ["onnxruntime:int8"]'})
    spec = load_manifest(path)[MODEL]
    applied = Recipe("minmax", True, [], ops="all", activation_type="u8").apply(spec, "onnxruntime:int8")
    assert (applied.convert.int8_ops, applied.convert.int8_activation_type) == ("all", "u8")
