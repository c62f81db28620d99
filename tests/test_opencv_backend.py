"""The opencv reference backend and the shared Darknet YOLO decoder.

Includes the thresh pitfall: OpenCV's own [yolo] output zeroes class scores <= 0.2, so the
reference must return raw head tensors and decode them itself.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import mapgate.backends.opencv as opencv_backend
from mapgate.backends.base import BackendFacts, BuildContext
from mapgate.backends.opencv import BACKEND, feed_layer_name
from mapgate.darknet_cfg import YoloHead, infer_shapes, layers, parse_cfg, yolo_heads
from mapgate.errors import BackendUnavailable, ConfigError, DataError
from mapgate.fsutil import sha256_file
from mapgate.manifest import ModelSpec
from mapgate.postprocess import Candidates, decoder_for
from mapgate.postprocess.darknet_yolo import _heads, decode, decode_boxes, heads_for

from darknet_helpers import BUNDLED, ROOT, model_spec, preprocess  # noqa: E402
IMAGE = ROOT / "mapgate/data/coco/val2017-mini/val2017/000000000139.jpg"  # a busy indoor scene
OPENCV_DEFAULT_THRESH = 0.2




def with_thresh_zero(cfg: Path, dest: Path) -> Path:
    dest.write_text(cfg.read_text().replace("[yolo]", "[yolo]\nthresh=0"))
    return dest


def opencv_raw_and_decoded(cfg: Path, weights: Path, x: np.ndarray,
                           heads: list[YoloHead]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One OpenCV forward: raw tensors feeding each [yolo] layer and OpenCV's own [yolo] rows."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    names = list(net.getLayerNames())
    feeds = [feed_layer_name(names, h, str(cfg)) for h in heads]
    net.setInput(x)
    outs = net.forward(feeds + [h.name for h in heads])
    raw = {h.name: o for h, o in zip(heads, outs[: len(heads)])}
    return raw, np.concatenate(outs[len(heads):])


def as_opencv_rows(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """xyxy input pixels -> OpenCV's Region columns: centre x, y, w, h normalised by the input."""
    h, w = size
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
                     (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], axis=1)


# --- availability and runner ---------------------------------------------------------------

def test_module_import_does_not_import_cv2() -> None:
    code = "import sys, mapgate.backends.opencv as m; m.BACKEND; print('cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BACKEND.name == "opencv" and BACKEND.precisions == ("fp32",)
    assert BACKEND.availability().ok

    monkeypatch.setattr(BackendFacts, "require",
                        lambda self, m: SimpleNamespace(__version__="5.0.0", dnn=SimpleNamespace()))
    avail = BACKEND.availability()
    assert not avail.ok and "5.0.0" in avail.reason and "opencv-python-headless<5" in avail.reason

    monkeypatch.setattr(BackendFacts, "require", lambda self, m: SimpleNamespace(__version__="4.9.0"))
    avail = BACKEND.availability()
    assert not avail.ok and "readNetFromDarknet" in avail.reason and "<5" in avail.reason

    def missing(self: BackendFacts, module: str) -> None:
        raise BackendUnavailable("opencv", f"Python module {module!r} is not installed; fix: pip install ...")

    monkeypatch.setattr(BackendFacts, "require", missing)
    avail = BACKEND.availability()
    assert not avail.ok and "'cv2' is not installed" in avail.reason


def test_runner_is_lazy_and_checks_its_arguments(tmp_path: Path) -> None:
    cfg, weights, size = BUNDLED["yolo-fastest-1.1"]
    model = model_spec(tmp_path, "fastest", cfg, weights, size)
    with pytest.raises(ConfigError, match="only fp32"):
        BACKEND.runner(model, "int8", BuildContext(tmp_path))
    with pytest.raises(ConfigError, match="'format'"):
        BACKEND.runner(dataclasses.replace(model, format="onnx"), "fp32", BuildContext(tmp_path))
    gone = dataclasses.replace(model, files={**model.files, "weights": dataclasses.replace(
        model.files["weights"], path=tmp_path / "gone.weights")})
    runner = BACKEND.runner(gone, "fp32", BuildContext(tmp_path))  # nothing read yet
    with pytest.raises(DataError, match="gone.weights"):
        runner.activate()


@pytest.mark.parametrize("name,feeds", [("yolov3-tiny", ["conv_15", "conv_22"]),
                                        ("yolo-fastest-1.1", ["conv_120", "conv_129"])])
def test_runner_returns_raw_heads(name: str, feeds: list[str], tmp_path: Path) -> None:
    cfg, weights, size = BUNDLED[name]
    model = model_spec(tmp_path, name.replace(".", "_"), cfg, weights, size)
    heads = yolo_heads(parse_cfg(cfg), size)
    with BACKEND.runner(model, "fp32", BuildContext(tmp_path)) as runner:
        assert runner._feeds == feeds  # OpenCV's names for the layers feeding the [yolo] layers
        assert runner.artifact == weights and runner.artifact_sha256 == sha256_file(weights)
        out = runner.infer(preprocess(IMAGE, size))
        assert {k: v.shape for k, v in out.items()} == {h.name: (1, 255, *h.grid) for h in heads}
        with pytest.raises(ConfigError, match="input_size"):
            runner.infer(np.zeros((1, 3, size[0] + 32, size[1]), np.float32))
    assert not runner.is_active


# --- the decoder ---------------------------------------------------------------------------

def one_cell_tensor(values: dict[int, float], a: int = 2, c: int = 2, gh: int = 2, gw: int = 3,
                    row: int = 1, col: int = 2, anchor: int = 1, fill: float = -30.0) -> np.ndarray:
    t = np.full((1, a * (5 + c), gh, gw), fill, np.float32)
    for ch, v in values.items():
        t[0, anchor * (5 + c) + ch, row, col] = v
    return t


def hand_model(tmp_path: Path, size: tuple[int, int]) -> ModelSpec:
    cfg, weights, _ = BUNDLED["yolov3-tiny"]
    return model_spec(tmp_path, "hand", cfg, weights, size)


def test_decoder_on_one_hand_made_cell(tmp_path: Path) -> None:
    model = hand_model(tmp_path, (64, 96))  # cfg says 416x416: anchors must not be rescaled
    head = YoloHead("yolo_7", 7, ((10.0, 20.0), (30.0, 40.0)), 2, grid=(2, 3))
    # sigmoid(0)=.5, sigmoid(ln 3)=.75, exp(ln 2)=2, sigmoid(ln 4)=.8, sigmoid(-ln 4)=.2, sigmoid(ln 9)=.9
    t = one_cell_tensor({0: 0.0, 1: np.log(3), 2: np.log(2), 3: 0.0, 4: np.log(4), 5: -np.log(4), 6: np.log(9)})
    boxes, scores = decode_boxes({"yolo_7": t}, model, [head])
    assert boxes.shape == (12, 4) and scores.shape == (12, 2)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    i = (1 * 3 + 2) * 2 + 1  # rows go row, column, anchor
    # x = (2 + .5)/3 * 96 = 80, y = (1 + .75)/2 * 64 = 56, w = 2*30 = 60, h = 1*40 = 40
    np.testing.assert_allclose(boxes[i], [50, 36, 110, 76], atol=1e-4)
    np.testing.assert_allclose(scores[i], [0.8 * 0.2, 0.8 * 0.9], atol=1e-6)
    assert np.delete(scores, i, axis=0).max() < 1e-12

    # scale_x_y stretches the cell offset around its centre: (2 + .75*1.2 - .1)/3 * 96 = 89.6
    stretched = dataclasses.replace(head, scale_x_y=1.2)
    t2 = one_cell_tensor({0: np.log(3), 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0})
    boxes, _ = decode_boxes({"yolo_7": t2}, model, [stretched])
    np.testing.assert_allclose(boxes[i], [89.6 - 15, 48 - 20, 89.6 + 15, 48 + 20], atol=1e-4)

    # new_coords=1: inputs are already activated; w = tw^2 * 4 * anchor, score = obj * cls
    scaled = dataclasses.replace(head, new_coords=1, scale_x_y=2.0)
    t3 = one_cell_tensor({0: 0.75, 1: 0.5, 2: 0.5, 3: 0.25, 4: 0.8, 5: 0.5, 6: 0.9}, fill=0.0)
    boxes, scores = decode_boxes({"yolo_7": t3}, model, [scaled])
    # x = (2 + .75*2 - .5)/3*96 = 96, y = (1 + .5*2 - .5)/2*64 = 48, w = .25*4*30 = 30, h = .0625*4*40 = 10
    np.testing.assert_allclose(boxes[i], [81, 43, 111, 53], atol=1e-4)
    np.testing.assert_allclose(scores[i], [0.4, 0.72], atol=1e-6)


def test_decoder_rejects_wrong_tensors(tmp_path: Path) -> None:
    model = hand_model(tmp_path, (64, 96))
    head = YoloHead("yolo_7", 7, ((10.0, 20.0), (30.0, 40.0)), 2, grid=(2, 3))
    two = [head, dataclasses.replace(head, name="yolo_9", layer_index=9)]
    with pytest.raises(ConfigError, match="no output 'yolo_7'"):
        decode_boxes({"other": one_cell_tensor({}), "yolo_9": one_cell_tensor({})}, model, two)
    with pytest.raises(ConfigError, match="no output 'yolo_9'"):
        decode_boxes({"yolo_7": one_cell_tensor({})}, model, two)
    with pytest.raises(ConfigError, match=r"\[N, 14, H, W\]"):
        decode_boxes({"yolo_7": np.zeros((1, 15, 2, 3), np.float32)}, model, [head])
    with pytest.raises(ConfigError, match="another input size"):
        decode_boxes({"yolo_7": np.zeros((1, 14, 4, 6), np.float32)}, model, [head])


@pytest.mark.parametrize("name,size", [("yolov3-tiny", (416, 416)), ("yolo-fastest-1.1", (320, 320)),
                                       ("yolov3-tiny", (320, 512))])
def test_decoder_equals_opencv_yolo_layer_with_thresh_zero(name: str, size: tuple[int, int],
                                                           tmp_path: Path) -> None:
    """(320, 512) is not the cfg's 416x416: anchors stay in pixels of the input actually run."""
    cfg, weights, _ = BUNDLED[name]
    heads = yolo_heads(parse_cfg(cfg), size)
    model = model_spec(tmp_path, "m", cfg, weights, size)
    raw, rows = opencv_raw_and_decoded(with_thresh_zero(cfg, tmp_path / "t0.cfg"), weights,
                                       preprocess(IMAGE, size), heads)
    boxes, scores = decode_boxes(raw, model, heads)
    assert rows.shape == (boxes.shape[0], 5 + 80)
    np.testing.assert_allclose(as_opencv_rows(boxes, size), rows[:, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, rows[:, 5:], rtol=1e-5, atol=1e-7)


SMALL_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
filters=14
size=3
stride=4
pad=1
activation=linear

[yolo]
mask=0,1
anchors=12,16, 40,30, 60,70
classes=2
num=3
scale_x_y=1.1

[route]
layers=-2

[convolutional]
filters=14
size=3
stride=1
pad=1
activation=logistic

[yolo]
mask=1,2
anchors=12,16, 40,30, 60,70
classes=2
num=3
scale_x_y=2.0
new_coords=1
"""


def test_decoder_equals_opencv_for_scale_x_y_and_new_coords(tmp_path: Path) -> None:
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    sections = parse_cfg(cfg)
    shapes = infer_shapes(sections)
    rng = np.random.default_rng(3)
    payload = []
    for sec in layers(sections):
        if sec.type == "convolutional":
            cin = shapes[sec.index - 1].channels if sec.index else 3
            payload += [rng.normal(0, 0.5, 14), rng.normal(0, 1 / np.sqrt(cin * 9), 14 * cin * 9)]
    weights = tmp_path / "small.weights"
    weights.write_bytes(np.array([0, 2, 0], np.int32).tobytes() + np.zeros(1, np.int64).tobytes()
                        + np.concatenate(payload).astype("<f4").tobytes())
    size = (96, 128)
    heads = yolo_heads(sections, size)
    assert [(h.scale_x_y, h.new_coords) for h in heads] == [(1.1, 0), (2.0, 1)]
    model = model_spec(tmp_path, "small", cfg, weights, size)
    x = rng.random((1, 3, *size), dtype=np.float32)
    raw, rows = opencv_raw_and_decoded(with_thresh_zero(cfg, tmp_path / "t0.cfg"), weights, x, heads)
    boxes, scores = decode_boxes(raw, model, heads)
    np.testing.assert_allclose(as_opencv_rows(boxes, size), rows[:, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, rows[:, 5:], rtol=1e-5, atol=1e-7)


def test_thresh_pitfall(tmp_path: Path) -> None:
    """Stock cfg: OpenCV's [yolo] output has no class score in (0, 0.2]; ours keeps them."""
    cfg, weights, size = BUNDLED["yolov3-tiny"]
    model = model_spec(tmp_path, "tiny", cfg, weights, size)
    x = preprocess(IMAGE, size)
    heads = heads_for(model)
    _, rows = opencv_raw_and_decoded(cfg, weights, x, heads)
    cv_scores = rows[:, 5:]
    assert not np.any((cv_scores > 0) & (cv_scores <= OPENCV_DEFAULT_THRESH))

    with BACKEND.runner(model, "fp32", BuildContext(tmp_path)) as runner:
        outputs = runner.infer(x)
    boxes, scores = decode_boxes(outputs, model, heads)
    low = (scores > model.postprocess.score_threshold) & (scores <= OPENCV_DEFAULT_THRESH)
    print(f"yolov3-tiny, {IMAGE.name}: {int(low.sum())} scores in ({model.postprocess.score_threshold}, "
          f"{OPENCV_DEFAULT_THRESH}] that OpenCV's [yolo] layer drops; OpenCV keeps {int((cv_scores > 0).sum())}")
    assert low.sum() > 100
    # above the thresh both agree: the only difference is the zeroing
    keep = cv_scores > OPENCV_DEFAULT_THRESH
    assert keep.any()
    np.testing.assert_allclose(scores[keep], cv_scores[keep], rtol=1e-4)


def test_dispatcher_and_heads_cache(tmp_path: Path) -> None:
    cfg, weights, size = BUNDLED["yolo-fastest-1.1"]
    model = model_spec(tmp_path, "fastest", cfg, weights, size)
    before = _heads.cache_info().hits
    assert heads_for(model) == heads_for(model) == yolo_heads(parse_cfg(cfg), size)
    assert _heads.cache_info().hits >= before + 1
    with BACKEND.runner(model, "fp32", BuildContext(tmp_path)) as runner:
        outputs = runner.infer(preprocess(IMAGE, size))
    cand = decoder_for(model.family).decode(outputs, model)
    assert isinstance(cand, Candidates) and not cand.final
    assert cand.boxes.shape == (3 * (10 * 10 + 20 * 20), 4) and cand.scores.shape == (1500, 80)
    same = decode(outputs, model, heads_for(model))
    np.testing.assert_array_equal(cand.scores, same.scores)
