"""TensorFlow reference backend: TF1 frozen GraphDefs (the truncated pre-NMS SSD graph bundled
here, or full TF OD API graphs with NMS inside) and SavedModels, run the way their authors do."""

from __future__ import annotations

import os

import numpy as np

from mapgate.backends.base import Availability, BackendFacts, BuildContext, DeclaredBackend, Runner
from mapgate.errors import ConfigError
from mapgate.files import resolve_role
from mapgate.manifest import ModelSpec
from mapgate.optional import quiet_tensorflow


class TfRunner(Runner):
    backend = "tf"

    def __init__(self, model: ModelSpec, precision: str | None, ctx: BuildContext) -> None:
        super().__init__()
        self.model, self.precision, self.ctx = model, "fp32", ctx
        if not model.output_names and model.format == "tf_frozen":
            raise ConfigError(f"{model.manifest_path}: model {model.name!r} needs 'output_names' for a frozen graph")

    def activate_impl(self) -> None:
        tf = quiet_tensorflow()
        m = self.model
        if m.format == "tf_frozen":
            self.artifact = resolve_role(m, "graph")
            graph_def = tf.compat.v1.GraphDef()
            graph_def.ParseFromString(self.artifact.read_bytes())
            graph = tf.Graph()
            with graph.as_default():
                tf.compat.v1.import_graph_def(graph_def, name="")
            self.session = tf.compat.v1.Session(graph=graph)
            self.fetches = [graph.get_tensor_by_name(_tensor(n)) for n in m.output_names]
            self.feed = graph.get_tensor_by_name(_tensor(m.input_name or "image_tensor:0"))
        elif m.format == "tf_saved_model":
            self.artifact = resolve_role(m, "saved_model")
            loaded = tf.saved_model.load(str(self.artifact))
            self.signature = loaded.signatures["serving_default"]
            self._loaded = loaded  # keep the trackable alive while the signature is used
        else:
            raise ConfigError(f"backend 'tf' cannot run format {m.format!r} (model {m.name!r})")

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.model.format == "tf_frozen":
            values = self.session.run(self.fetches, {self.feed: batch})
            return dict(zip(self.model.output_names, values))
        tf = quiet_tensorflow()
        out = self.signature(tf.constant(batch))
        return {k: v.numpy() for k, v in out.items()}

    def supports_batch(self, n: int) -> bool:
        shape = self.feed.shape if self.model.format == "tf_frozen" else self.signature.inputs[0].shape
        return n == 1 or shape.rank is None or shape[0] is None  # a None leading dim feeds any batch

    def deactivate_impl(self) -> None:
        if self.model.format == "tf_frozen":
            self.session.close()


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


class _TfBackend(DeclaredBackend):
    facts = BackendFacts(
        name="tf", precisions=("fp32",), modules=("tensorflow",),
        extra="tf", install_hint="pip install 'mapgate[tf]'  (tensorflow-cpu or tensorflow)",
        distributions={"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64")},
        original_formats=("tf_frozen", "tf_saved_model"),
        marker_help="runs on TensorFlow (the original of TF models)",
    )

    def availability(self) -> Availability:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return super().availability()

    def runner(self, model: ModelSpec, precision: str | None, ctx: BuildContext) -> Runner:
        return TfRunner(model, precision, ctx)


BACKEND = _TfBackend()
