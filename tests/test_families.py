"""Families are found in mapgate/postprocess/, each declared by its own module: the manifest's
list of families, its check of ``postprocess.decoder`` and ``mapgate models`` all derive from
the declarations, so adding a family is one new file plus manifest entries."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mapgate.postprocess as postprocess_pkg
from mapgate.errors import ConfigError
from mapgate.catalog import load_manifest
from mapgate.postprocess import postprocess
from mapgate.postprocess.family import Family, all_families
from mapgate.preprocess import Transform

ENTRY = '''
[models.m]
family = "{family}"
format = "onnx"
reference_backend = "onnxruntime"
input_size = [64, 64]
files.model = {{ path = "x.onnx", sha256 = "{sha}" }}
[models.m.postprocess]
{post}
'''


def manifest(tmp_path: Path, family: str, post: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(ENTRY.format(family=family, sha="0" * 64, post=post))
    return path


def test_every_family_module_declares_itself_and_the_list_is_derived() -> None:
    found = all_families()
    assert set(found) == {"darknet_yolo", "yolox", "ssd", "od_api_detections", "gfl", "ultralytics", "nms_outputs"}
    for name, (family, module) in found.items():
        assert isinstance(family, Family) and family.name == name and callable(module.decode)
        assert family.summary
    assert {n for n, (f, _) in found.items() if f.nms_in_graph} == {"od_api_detections", "nms_outputs"}


def test_an_unknown_family_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'family': must be one of darknet_yolo, gfl, nms_outputs, "
                                          r"od_api_detections, ssd, ultralytics, yolox; got 'nanodet'"):
        load_manifest(manifest(tmp_path, "nanodet"))


def test_decoder_settings_are_checked_against_the_familys_declaration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.stride': is not a known field \(known: box_outputs"):
        load_manifest(manifest(tmp_path, "gfl", "decoder = { stride = [8, 16, 32] }"))
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.strides': must be a list of int values"):
        load_manifest(manifest(tmp_path, "gfl", 'decoder = { strides = [8, "16"] }'))
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.reg_max': must be int, got '7'"):
        load_manifest(manifest(tmp_path, "gfl", 'decoder = { reg_max = "7" }'))
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.strides': must be at least 1, got \[8, 0\]"):
        load_manifest(manifest(tmp_path, "gfl", "decoder = { strides = [8, 0] }"))
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.boxes': is required"):
        load_manifest(manifest(tmp_path, "ssd", 'decoder = { scores = "s" }'))
    with pytest.raises(ConfigError, match=r"'postprocess.decoder.x': is not a known field \(known: resize_network\)"):
        load_manifest(manifest(tmp_path, "darknet_yolo", "decoder = { x = 1 }"))
    gfl = load_manifest(manifest(tmp_path, "gfl", "decoder = { strides = [8, 16, 32, 64] }"))["m"]
    assert gfl.postprocess.decoder["strides"] == [8, 16, 32, 64]
    assert gfl.postprocess.decoder["reg_max"] == 7 and gfl.postprocess.decoder["cell_offset"] == 0.5  # defaults


def test_where_nms_happens_follows_the_family(tmp_path: Path) -> None:
    assert load_manifest(manifest(tmp_path, "nms_outputs"))["m"].postprocess.nms == "none"
    assert load_manifest(manifest(tmp_path, "gfl"))["m"].postprocess.nms == "per_class"
    with pytest.raises(ConfigError, match=r"family 'od_api_detections' takes detections after the graph's own NMS"):
        load_manifest(manifest(tmp_path, "od_api_detections",
                               'nms = "agnostic"\ndecoder = { boxes = "b", scores = "s", classes = "c", count = "n" }'))


def test_adding_a_family_is_one_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module dropped into the postprocess package (here: a directory added to its path) is a family
    the manifest accepts, with its own decoder settings, and the pipeline decodes with it."""
    (tmp_path / "corners.py").write_text(textwrap.dedent('''
        import numpy as np
        from mapgate.postprocess import Candidates, output, to_xyxy
        from mapgate.postprocess.family import Family, Setting

        FAMILY = Family(name="corners", summary="one [1, N, 4 + C] output", nms_in_graph=False,
                        decoder={"output": Setting(str, "out", "name of the output")})

        def decode(outputs, model):
            a = output(outputs, model.postprocess.decoder["output"], model)[0]
            return Candidates(to_xyxy(a[:, :4], "xyxy", "pixels", model.input_size), a[:, 4:])
    '''))
    monkeypatch.setattr(postprocess_pkg, "__path__", [*postprocess_pkg.__path__, str(tmp_path)])
    all_families.cache_clear()
    try:
        model = load_manifest(manifest(tmp_path, "corners", 'decoder = { output = "dets" }'))["m"]
        raw = np.zeros((1, 3, 84), np.float32)
        raw[0, 1, :4], raw[0, 1, 4 + 2] = (8, 8, 24, 40), 0.9
        (rec,) = postprocess({"dets": raw}, model, Transform(1.0, 1.0, 0.0, 0.0, 64, 64), image_id=5)
        assert rec["bbox"] == [8.0, 8.0, 16.0, 32.0] and rec["category_id"] == 3
        with pytest.raises(ConfigError, match="decoder.outptu"):
            load_manifest(manifest(tmp_path, "corners", 'decoder = { outptu = "dets" }'))
    finally:
        all_families.cache_clear()
        sys.modules.pop("mapgate.postprocess.corners", None)


def test_mapgate_models_lists_the_families_and_where_they_run_nms(capsys: pytest.CaptureFixture) -> None:
    from mapgate.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[out.splitlines().index(
        next(line for line in out.splitlines() if line.startswith("family "))) + 1:] if line and line[0] != " "}
    assert set(rows) == set(all_families())
    assert "in graph" in rows["nms_outputs"] and "mapgate" in rows["gfl"] and "reg_max" in rows["gfl"]
    assert "head" in rows["ultralytics"]


def test_every_readme_family_example_is_a_valid_entry(tmp_path: Path) -> None:
    """README's "One example per family", completed with the fields it leaves out, loads as a manifest."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### One example per family"):]
    block = section[section.index("```toml\n") + 8: section.index("```\n", section.index("```toml\n") + 8)]
    models = tomllib.loads(block)["models"]
    assert {m["family"] for m in models.values()} == set(all_families())
    # the README's own text, each entry completed with the fields the examples leave out
    def complete(m: re.Match) -> str:
        name = m.group(1)
        size = "" if "input_size" in models[name] else "\ninput_size = [416, 416]"
        return (f'{m.group(0)}\nformat = "onnx"\nreference_backend = "onnxruntime"{size}\n'
                f'files.model = {{ path = "x.onnx", sha256 = "{"0" * 64}" }}')

    path = tmp_path / "readme.toml"
    path.write_text(re.sub(r"^\[models\.([\w-]+)\](?=\s)", complete, block, flags=re.M), encoding="utf-8")
    loaded = load_manifest(path)
    assert loaded["my-yolov8n-end2end"].postprocess.nms == "none"
    assert loaded["my-nanodet-m-416"].postprocess.decoder["pre_nms_top_k_per_level"] == 1000


def test_the_manifest_keeps_no_hand_list_of_families() -> None:
    import mapgate.manifest

    assert not hasattr(mapgate.manifest, "FAMILIES")
