"""Darknet -> ONNX converter: raw [yolo] head tensors from ONNX Runtime equal OpenCV's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mapgate.backends.base import BuildContext
from mapgate.backends.opencv import BACKEND
from mapgate.convert.darknet_onnx import DarknetToOnnx
from mapgate.darknet_cfg import infer_shapes, layers, parse_cfg
from mapgate.errors import ConfigError, ConversionError
from mapgate.fsutil import sha256_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from darknet_helpers import BUNDLED, ROOT, model_spec, preprocess  # noqa: E402
IMAGES = (sorted((ROOT / "mapgate/data/coco/val2017-mini/val2017").glob("*.jpg"))[:8]
          + sorted((ROOT / "mapgate/data/coco/calib-val2017/images").glob("*.jpg"))[:4])
ATOL = 1e-4




def session(path: Path) -> "ort.InferenceSession":
    # CPU EP with ORT's default (all) graph optimizations: what an optimized deployment runs
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# --- synthetic network: every supported layer kind, random weights -----------------------

SYNTH_CFG = """[net]
width=64
height=48
channels=3

# 0
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish
# 1: stride-1 size-2 maxpool pads right/bottom only
[maxpool]
size=2
stride=1
# 2: depthwise
[convolutional]
batch_normalize=1
filters=16
groups=16
size=3
stride=1
pad=1
activation=relu
# 3: grouped
[convolutional]
batch_normalize=1
filters=16
groups=4
size=1
stride=1
pad=1
activation=logistic
# 4: YOLOv4-tiny channel split
[route]
layers=-1
groups=2
group_id=1
# 5
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=swish
# 6
[shortcut]
from=-2
activation=leaky
# 7
[dropout]
probability=.2
# 8: absolute and relative refs
[route]
layers=-1,2
# 9
[maxpool]
size=2
stride=2
# 10
[convolutional]
filters=16
size=1
stride=1
pad=1
activation=linear
# 11
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes=3
num=3
scale_x_y=1.05
# 12
[route]
layers=9
# 13
[upsample]
stride=2
# 14
[route]
layers=-1,6
# 15: new_coords heads come activated by the conv before them
[convolutional]
filters=16
size=3
stride=1
pad=1
activation=logistic
# 16
[yolo]
mask=1,2
anchors=10,14, 23,27, 37,58
classes=3
num=3
scale_x_y=2.0
new_coords=1
"""


def darknet_header(major: int = 0, minor: int = 2) -> bytes:
    seen = np.array([12345], np.int64 if major * 10 + minor >= 2 else np.int32)
    return np.array([major, minor, 0], np.int32).tobytes() + seen.tobytes()


def random_weights(cfg: Path, seed: int = 0) -> bytes:
    """Payload for ``cfg`` in darknet order: biases, [bn scales, means, variances], weights."""
    sections = parse_cfg(cfg)
    shapes = infer_shapes(sections)
    rng = np.random.default_rng(seed)
    chunks = []
    for sec in layers(sections):
        if sec.type != "convolutional":
            continue
        f, k, g = sec.get_int("filters"), sec.get_int("size"), sec.get_int("groups", 1)
        cin = (shapes[sec.index - 1].channels if sec.index else sections[0].get_int("channels")) // g
        chunks.append(rng.normal(0, 0.1, f))
        if sec.get_int("batch_normalize", 0):
            chunks += [rng.uniform(0.5, 1.5, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 2.0, f)]
        chunks.append(rng.normal(0, 1 / np.sqrt(cin * k * k), f * cin * k * k))
    return np.concatenate(chunks).astype("<f4").tobytes()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("synthetic")
    cfg = d / "synthetic.cfg"
    cfg.write_text(SYNTH_CFG)
    weights = d / "synthetic.weights"
    weights.write_bytes(darknet_header() + random_weights(cfg))
    return cfg, weights


def opencv_heads(tmp_path: Path, name: str, cfg: Path, weights: Path, size: tuple[int, int],
                 batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    model = model_spec(tmp_path, name, cfg, weights, size)
    with BACKEND.runner(model, "fp32", BuildContext(tmp_path)) as runner:
        return [runner.infer(x) for x in batches]


@pytest.mark.parametrize("opset", [13, 18])
def test_synthetic_network_matches_opencv(synthetic: tuple[Path, Path], tmp_path: Path, opset: int) -> None:
    cfg, weights = synthetic
    out = DarknetToOnnx(cfg, weights, opset=opset)(tmp_path / "synthetic.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"Conv", "MaxPool", "Slice", "Concat", "Add", "Resize", "LeakyRelu", "Relu", "Sigmoid"} <= ops
    assert ("Mish" in ops) == (opset >= 18) and ("Softplus" in ops) == (opset < 18)
    rng = np.random.default_rng(1)
    batches = [rng.random((1, 3, 48, 64), dtype=np.float32) for _ in range(3)]
    sess = session(out)
    got = [dict(zip(["yolo_11", "yolo_16"], sess.run(["yolo_11", "yolo_16"], {"input": x}))) for x in batches]
    ref = opencv_heads(tmp_path, "synthetic", cfg, weights, (48, 64), batches)
    assert got[0]["yolo_11"].shape == (1, 16, 12, 16) and got[0]["yolo_16"].shape == (1, 16, 24, 32)
    diff = max(max_diff(g, r) for g, r in zip(got, ref))
    print(f"synthetic opset {opset}: max |ORT - OpenCV| = {diff:.3g}")
    assert diff <= ATOL


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_model_matches_opencv_on_real_images(name: str, tmp_path: Path) -> None:
    cfg, weights, size = BUNDLED[name]
    out = DarknetToOnnx(cfg, weights, size)(tmp_path / f"{name}.onnx")
    batches = [preprocess(p, size) for p in IMAGES]
    sess = session(out)
    names = [o.name for o in sess.get_outputs()]
    got = [dict(zip(names, sess.run(names, {"input": x}))) for x in batches]
    ref = opencv_heads(tmp_path, name.replace(".", "_"), cfg, weights, size, batches)
    diffs = [max_diff(g, r) for g, r in zip(got, ref)]
    print(f"{name}: max |ORT - OpenCV| over {len(IMAGES)} images = {max(diffs):.3g}")
    assert len(IMAGES) == 12 and max(diffs) <= ATOL


def test_input_size_other_than_the_cfgs(tmp_path: Path) -> None:
    """One cfg, several input sizes (yolov3-416/608 share a cfg); non-square catches H/W swaps."""
    cfg, weights, _ = BUNDLED["yolov3-tiny"]
    size = (320, 512)
    out = DarknetToOnnx(cfg, weights, size)(tmp_path / "tiny-320x512.onnx")
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 320, 512]
    x = preprocess(IMAGES[0], size)
    sess = session(out)
    got = dict(zip(["yolo_16", "yolo_23"], sess.run(["yolo_16", "yolo_23"], {"input": x})))
    assert got["yolo_16"].shape == (1, 255, 10, 16) and got["yolo_23"].shape == (1, 255, 20, 32)
    (ref,) = opencv_heads(tmp_path, "tiny_320x512", cfg, weights, size, [x])
    assert max_diff(got, ref) <= ATOL


def test_lazy_atomic_and_provenance(tmp_path: Path) -> None:
    loader = DarknetToOnnx(tmp_path / "missing.cfg", tmp_path / "missing.weights")  # constructor does nothing
    with pytest.raises(ConfigError, match="missing.cfg"):
        loader(tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()

    cfg, weights, size = BUNDLED["yolo-fastest-1.1"]
    dest = tmp_path / "out" / "fastest.onnx"
    assert DarknetToOnnx(cfg, weights, size)(dest) == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["fastest.onnx"]  # no .part left behind
    model = onnx.load(str(dest))
    onnx.checker.check_model(model)
    g = model.graph
    assert [i.name for i in g.input] == ["input"]
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim] == [1, 3, 320, 320]
    assert [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in g.output] == [
        ("yolo_121", [1, 255, 10, 10]), ("yolo_130", [1, 255, 20, 20])]
    assert {op.domain or "" for op in model.opset_import} == {""} and model.opset_import[0].version == 13
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mapgate.source_cfg_sha256"] == sha256_file(cfg)
    assert props["mapgate.source_weights_sha256"] == sha256_file(weights)
    assert json.loads(props["mapgate.input_size"]) == [320, 320]
    assert props["mapgate.converter_version"]
    assert [h["name"] for h in json.loads(props["mapgate.yolo_heads"])] == ["yolo_121", "yolo_130"]
    assert not any(n.op_type in ("BatchNormalization", "Dropout") for n in g.node)  # folded / dropped


def test_weights_of_wrong_length_name_the_file(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, weights = synthetic
    data = weights.read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-8])
    with pytest.raises(ConversionError, match="too short") as info:
        DarknetToOnnx(cfg, short).build()
    assert str(short) in str(info.value) and "#15 [convolutional]" in str(info.value)
    long = tmp_path / "long.weights"
    long.write_bytes(data + b"\0" * 12)
    with pytest.raises(ConversionError, match="too long") as info:
        DarknetToOnnx(cfg, long).build()
    assert str(long) in str(info.value) and "3 float32" in str(info.value)
    odd = tmp_path / "odd.weights"
    odd.write_bytes(data + b"\0")
    with pytest.raises(ConversionError, match=str(odd)):
        DarknetToOnnx(cfg, odd).build()
    stub = tmp_path / "stub.weights"
    stub.write_bytes(b"\0" * 10)
    with pytest.raises(ConversionError, match=str(stub)):
        DarknetToOnnx(cfg, stub).build()


def test_old_header_has_a_32_bit_seen_counter(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, weights = synthetic
    payload = weights.read_bytes()[20:]
    old = tmp_path / "old.weights"
    old.write_bytes(darknet_header(0, 1) + payload)  # version 0.1: seen is int32, as darknet reads it
    a, b = DarknetToOnnx(cfg, weights).build(), DarknetToOnnx(cfg, old).build()
    assert [i.raw_data for i in a.graph.initializer] == [i.raw_data for i in b.graph.initializer]


def test_unsupported_layers_and_options_name_the_section(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, weights = synthetic
    cases = [
        (SYNTH_CFG.replace("# 7\n[dropout]", "# 7\n[reorg]"), "#7 [reorg]", "not supported"),
        (SYNTH_CFG.replace("activation=swish", "activation=elu"), "#5 [convolutional]", "option 'activation'"),
        (SYNTH_CFG.replace("activation=mish", "activation=mish\ndilation=2"), "#0 [convolutional]", "option 'dilation'"),
        (SYNTH_CFG.replace("layers=9\n", "layers=9\nactivation=leaky\n"), "#12 [route]", "option 'activation'"),
        (SYNTH_CFG.replace("# 12\n[route]\nlayers=9", "# 12\n[route]\nlayers=11"), "#12 [route]", "[yolo] layer #11"),
    ]
    for text, section, part in cases:
        bad = tmp_path / "bad.cfg"
        bad.write_text(text)
        with pytest.raises(ConversionError) as info:
            DarknetToOnnx(bad, weights).build()
        msg = str(info.value)
        assert str(bad) in msg and section in msg and part in msg, msg
