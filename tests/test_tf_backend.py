"""The `tf` reference backend on the two graph shapes the bundled SSDLite does not cover: a TF OD API
frozen graph with NMS inside (detection_boxes/scores/classes/num_detections), and a SavedModel.

The graphs are tiny real TensorFlow graphs built here (the zoo tarballs are not bundled); they
check the plumbing: tensor names with ':0', outputs by name, the od_api_detections decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext
from mapgate.fsutil import sha256_path
from mapgate.catalog import load_manifest
from mapgate.postprocess import postprocess
from mapgate.preprocess import preprocess
from manifest_helpers import link_into

BOXES = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]], np.float32)
SCORES = np.array([0.9, 0.4, 0.01], np.float32)
CLASSES = np.array([1.0, 18.0, 3.0], np.float32)  # official COCO ids: person, dog, car


@pytest.fixture(scope="module")
def tf():  # noqa: ANN201
    status = get_backend("tf").availability()
    if not status.ok:
        pytest.skip(status.reason)
    from mapgate.optional import quiet_tensorflow

    return quiet_tensorflow()


def _manifest(tmp: Path, fmt: str, role: str, path: Path, extra: str = "") -> Path:
    sha = f', sha256 = "{sha256_path(path)}"'
    text = f"""
[models.tiny]
family = "od_api_detections"
format = "{fmt}"
reference_backend = "tf"
input_size = [64, 64]
{extra}
files.{role} = {{ path = "{link_into(tmp, path)}"{sha} }}
[models.tiny.preprocess]
layout = "NHWC"
dtype = "uint8"
[models.tiny.postprocess]
class_space = "coco90"
class_offset = 0
score_threshold = 0.05
nms = "none"
decoder = {{ boxes = "detection_boxes", scores = "detection_scores", classes = "detection_classes", count = "num_detections" }}
"""
    manifest = tmp / "models.toml"
    manifest.write_text(text)
    return manifest


def _detect(manifest: Path, tmp: Path) -> list[dict]:
    model = load_manifest(manifest)["tiny"]
    image = np.full((128, 256, 3), 100, np.uint8)  # twice the input size in x: boxes scale back by 4 and 2
    batch, transform = preprocess(image, model)
    with get_backend("tf").runner(model, None, BuildContext(engines_dir=tmp)) as runner:
        outputs = runner.infer(batch)
    assert set(outputs) >= {"detection_boxes", "detection_scores", "detection_classes", "num_detections"}
    return postprocess(outputs, model, transform, image_id=7)


def _expected() -> list[dict]:
    # y/x normalised -> pixels of the 256x128 image; the 0.01 score is below the threshold
    return [
        {"image_id": 7, "category_id": 1, "bbox": [0.2 * 256, 0.1 * 128, 0.4 * 256, 0.4 * 128], "score": 0.9},
        {"image_id": 7, "category_id": 18, "bbox": [0.0, 0.0, 256.0, 128.0], "score": 0.4},
    ]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [(d["category_id"], d["image_id"]) for d in got] == [(d["category_id"], d["image_id"]) for d in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["bbox"], w["bbox"], rtol=1e-6, atol=1e-4)
        assert g["score"] == pytest.approx(w["score"], rel=1e-6)


def test_a_frozen_od_api_graph_with_nms_inside_runs_by_tensor_name(tf, tmp_path: Path) -> None:  # noqa: ANN001
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name="image_tensor")
        n = tf.shape(image)[0]
        tile = lambda x: tf.tile(tf.constant(x)[None], tf.stack([n] + [1] * x.ndim))  # noqa: E731
        tf.identity(tile(BOXES), name="detection_boxes")
        tf.identity(tile(SCORES), name="detection_scores")
        tf.identity(tile(CLASSES), name="detection_classes")
        tf.identity(tf.fill(tf.reshape(n, [1]), 3.0), name="num_detections")
    pb = tmp_path / "frozen_inference_graph.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    manifest = _manifest(tmp_path, "tf_frozen", "graph", pb, extra='input_name = "image_tensor:0"\noutput_names = '
                         '["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]')
    _assert_same(_detect(manifest, tmp_path), _expected())


def test_a_saved_model_runs_through_its_serving_signature(tf, tmp_path: Path) -> None:  # noqa: ANN001
    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def serve(self, images):  # noqa: ANN001, ANN202
            return {"detection_boxes": tf.constant(BOXES)[None], "detection_scores": tf.constant(SCORES)[None],
                    "detection_classes": tf.constant(CLASSES)[None], "num_detections": tf.constant([3.0])}

    module = Detector()
    saved = tmp_path / "saved_model"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    manifest = _manifest(tmp_path, "tf_saved_model", "saved_model", saved)
    _assert_same(_detect(manifest, tmp_path), _expected())
