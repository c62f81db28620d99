"""Issue 11 item 4: a Darknet .weights file of the wrong size for its .cfg (a half download, 20
bytes) was run by OpenCV and reported AP 0 with exit 0. Now its size is checked against the cfg
before any backend runs or any conversion starts; the files' sha256 is right (the user hashed what
they downloaded), so only the size check can catch it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hostile_helpers import FIXTURES, Sandbox, cli
from mapgate.darknet_cfg import check_weights_size, parse_cfg, weights_floats
from mapgate.errors import DataError
from mapgate.fsutil import sha256_file

CFG = FIXTURES / "models" / "yolov3-tiny" / "yolov3-tiny.cfg"
WEIGHTS = FIXTURES / "models" / "yolov3-tiny" / "yolov3-tiny.weights"


def _manifest(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CFG, folder / "tiny.cfg")
    (folder / "tiny.weights").write_bytes(weights)
    manifest = folder / "models.toml"
    manifest.write_text(f"""
[models.tiny-damaged]
family = "darknet_yolo"
format = "darknet"
reference_backend = "opencv"
input_size = [416, 416]
files.cfg = {{ path = "tiny.cfg", sha256 = "{sha256_file(folder / 'tiny.cfg')}" }}
files.weights = {{ path = "tiny.weights", sha256 = "{sha256_file(folder / 'tiny.weights')}" }}
optimized = ["onnxruntime:fp32"]
[models.tiny-damaged.preprocess]
scale = {1 / 255!r}
""")
    return manifest


def _cut(how: str) -> bytes:
    data = WEIGHTS.read_bytes()
    return {"half": data[: len(data) // 2], "20 bytes": data[:20], "10 bytes": data[:10],
            "extra": data + b"\0" * 400}[how]


@pytest.mark.parametrize("how", ["half", "20 bytes", "10 bytes", "extra"])
@pytest.mark.parametrize("backend", ["opencv", "onnxruntime:fp32"])
def test_weights_of_the_wrong_size_stop_the_run_before_any_backend(capsys: pytest.CaptureFixture, sandbox: Sandbox,
                                                                   how: str, backend: str) -> None:
    manifest = _manifest(sandbox.root / "m", _cut(how))
    code, err = cli(capsys, "eval", "--models-file", manifest, "--model", "tiny-damaged", "--backend", backend,
                    "--max-images", 1, "--no-progress", "--out", sandbox.root / "out" / "side")
    assert code == 2
    assert str(sandbox.root / "m" / "tiny.weights") in err and "tiny.cfg" in err
    assert ("too long" if how == "extra" else "too short") in err
    sandbox.assert_only_new_under("m")  # no engine, no conversion, no report


def test_the_bundled_weights_have_exactly_the_size_their_cfg_needs() -> None:
    check_weights_size(CFG, WEIGHTS, (416, 416))
    header = 20  # version 0.2: 8-byte 'seen'
    assert WEIGHTS.stat().st_size == header + 4 * weights_floats(parse_cfg(CFG), (416, 416))


def test_the_size_check_names_both_files(tmp_path: Path) -> None:
    short = tmp_path / "short.weights"
    short.write_bytes(_cut("half"))
    with pytest.raises(DataError) as exc:
        check_weights_size(CFG, short)
    assert str(short) in str(exc.value) and str(CFG) in str(exc.value)
