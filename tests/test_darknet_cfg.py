"""Darknet cfg parser, shape inference and [yolo] heads; errors name file, section and option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mapgate.darknet_cfg import (
    NET_INDEX,
    LayerShape,
    YoloHead,
    infer_shapes,
    layers,
    net_section,
    net_size,
    parse_cfg,
    yolo_heads,
)
from mapgate.errors import ConfigError

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
TINY_CFG = MODELS / "yolov3-tiny" / "yolov3-tiny.cfg"
FASTEST_CFG = MODELS / "yolo-fastest-1.1" / "yolo-fastest-1.1.cfg"

HEAD = "[net]\nwidth=32\nheight=32\nchannels=3\n\n"
CONV = "[convolutional]\nfilters={f}\nsize=1\nstride=1\npad=1\nactivation=linear\n\n"
YOLO = "[yolo]\nmask=0\nanchors=10,14, 23,27\nclasses=2\nnum=2\n\n"


def write(tmp_path: Path, text: str, name: str = "bad.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, *, heads: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        sections = parse_cfg(path)
        if heads:
            yolo_heads(sections)
        else:
            infer_shapes(sections)
    return str(info.value)


def test_bundled_cfgs_parse_with_darknet_layer_numbering() -> None:
    tiny = parse_cfg(TINY_CFG)
    assert tiny[0].type == "net" and tiny[0].index == NET_INDEX and net_section(tiny) is tiny[0]
    lay = layers(tiny)
    assert [s.index for s in lay] == list(range(24))
    assert lay[0].type == "convolutional" and lay[16].type == "yolo" and lay[23].type == "yolo"
    # whitespace inside lines is dropped, as darknet's read_cfg does ("mask = 3,4,5")
    assert lay[16].options["mask"] == "3,4,5"
    assert lay[16].get_ints("mask") == [3, 4, 5]
    assert lay[16].get_float("ignore_thresh") == pytest.approx(0.7)
    assert net_size(tiny) == (416, 416)
    fastest = parse_cfg(FASTEST_CFG)
    assert len(layers(fastest)) == 131 and net_size(fastest) == (320, 320)
    assert layers(fastest)[2].get_int("groups") == 8


def test_yolo_heads_of_bundled_models() -> None:
    tiny = yolo_heads(parse_cfg(TINY_CFG))
    assert tiny == [
        YoloHead("yolo_16", 16, ((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)), 80, 1.0, 0, (13, 13)),
        YoloHead("yolo_23", 23, ((10.0, 14.0), (23.0, 27.0), (37.0, 58.0)), 80, 1.0, 0, (26, 26)),
    ]
    assert tiny[0].channels == 255 and tiny[0].num_anchors == 3
    # another input size changes the grids, never the anchors (see postprocess/darknet_yolo.py)
    big = yolo_heads(parse_cfg(TINY_CFG), (608, 608))
    assert [h.grid for h in big] == [(19, 19), (38, 38)]
    assert [h.anchors for h in big] == [h.anchors for h in tiny]
    fastest = yolo_heads(parse_cfg(FASTEST_CFG))
    assert [(h.name, h.grid) for h in fastest] == [("yolo_121", (10, 10)), ("yolo_130", (20, 20))]
    assert fastest[1].anchors == ((12.0, 18.0), (37.0, 49.0), (52.0, 132.0))


def test_shapes_include_the_stride_one_maxpool() -> None:
    shapes = infer_shapes(parse_cfg(TINY_CFG))
    assert shapes[10] == LayerShape(512, 13, 13)  # size=2 stride=2 pads right/bottom: 26 -> 13
    assert shapes[11] == LayerShape(512, 13, 13)  # size=2 stride=1 pads right/bottom only: stays 13
    assert shapes[20] == LayerShape(384, 26, 26)  # route -1,8: 128 upsampled + 256


def test_route_groups_and_absolute_refs(tmp_path: Path) -> None:
    cfg = write(tmp_path, HEAD + CONV.format(f=8) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n"
                + CONV.format(f=4) + "[route]\nlayers=0,2\n\n")
    assert [s.channels for s in infer_shapes(parse_cfg(cfg))] == [8, 4, 4, 12]


def assert_names(msg: str, path: Path, *parts: str) -> None:
    assert str(path) in msg, msg
    for part in parts:
        assert part in msg, msg


def test_bad_number_names_file_section_and_option(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + CONV.format(f=8).replace("size=1", "size=three"))
    assert_names(error_of(path), path, "section #0 [convolutional]", "line 6", "option 'size'", "'three'")


def test_missing_option(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "[convolutional]\nsize=1\n")
    assert_names(error_of(path), path, "#0 [convolutional]", "option 'filters'", "required")


def test_unknown_section_type(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + CONV.format(f=8) + "[convolutionall]\nfilters=1\n")
    with pytest.raises(ConfigError, match=re.escape("section #1 [convolutionall]")) as info:
        parse_cfg(path)
    assert_names(str(info.value), path, "unknown section type")


def test_malformed_lines(tmp_path: Path) -> None:
    for text, part in [
        ("width=3\n" + HEAD, "before the first section"),
        (HEAD + "[convolutional]\nfilters\n", "expected key=value"),
        (HEAD + "[convolutional\n", "malformed section header"),
        (CONV.format(f=1), "first section must be [net]"),
        ("", "no sections"),
    ]:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            parse_cfg(path)
        assert_names(str(info.value), path, part)


def test_conflicting_duplicate_option(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + CONV.format(f=8) + "filters=16\n")
    with pytest.raises(ConfigError) as info:
        parse_cfg(path)
    assert_names(str(info.value), path, "#0 [convolutional]", "option 'filters'", "given twice")


def test_semantic_errors_name_the_option(tmp_path: Path) -> None:
    cases = [
        (HEAD + CONV.format(f=8) + "[route]\nlayers=-2\n", "#1 [route]", "option 'layers'"),
        (HEAD + CONV.format(f=8) + "[route]\nlayers=-1\ngroups=3\n", "#1 [route]", "option 'groups'"),
        (HEAD + CONV.format(f=8) + "[shortcut]\nfrom=5\n", "#1 [shortcut]", "option 'from'"),
        (HEAD + CONV.format(f=8) + "[maxpool]\nsize=2\n", "#1 [maxpool]", "option 'stride'"),
        (HEAD + CONV.format(f=8) + "[upsample]\n", "#1 [upsample]", "option 'stride'"),
        (HEAD + CONV.format(f=6).replace("size=1", "size=1\ngroups=4"), "#0 [convolutional]", "option 'groups'"),
        (HEAD + CONV.format(f=8) + "[region]\nclasses=2\n", "#1 [region]", "not supported"),
    ]
    for text, section, option in cases:
        path = write(tmp_path, text)
        assert_names(error_of(path), path, section, option)


def test_yolo_errors(tmp_path: Path) -> None:
    cases = [
        (CONV.format(f=8) + YOLO, "the layer before it outputs 8 channels"),
        (CONV.format(f=7) + YOLO.replace("mask=0", "mask=2"), "option 'mask'"),
        (CONV.format(f=7) + YOLO.replace("num=2", "num=3"), "option 'anchors'"),
        (CONV.format(f=7) + YOLO.replace("classes=2\n", ""), "option 'classes'"),
        (CONV.format(f=7) + YOLO.replace("anchors=10,14", "anchors=10,x"), "option 'anchors'"),
        (CONV.format(f=7), "no [yolo] sections"),
    ]
    for text, part in cases:
        path = write(tmp_path, HEAD + text)
        msg = error_of(path, heads=True)
        assert_names(msg, path, part)
        if "option" in part:
            assert "#1 [yolo]" in msg
    ok = write(tmp_path, HEAD + CONV.format(f=7) + YOLO.replace("mask=0", "mask=1\nscale_x_y=1.1\nnew_coords=1"))
    (head,) = yolo_heads(parse_cfg(ok))
    assert head == YoloHead("yolo_1", 1, ((23.0, 27.0),), 2, 1.1, 1, (32, 32))
