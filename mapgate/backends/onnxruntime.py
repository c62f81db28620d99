"""ONNX Runtime (CPU): ONNX originals (YOLOX), Darknet/TF models converted to ONNX, and
static-QDQ INT8 models from onnxruntime.quantization. :func:`file_runner` runs a given ONNX file
as it is (the INT8 sensitivity proxy scores and times its candidates with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mapgate.cpu import engine_threads
from mapgate.backends.base import BackendFacts, BuildContext, DeclaredBackend, Runner
from mapgate.manifest import ModelSpec


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model: ModelSpec, precision: str | None, ctx: BuildContext | None, *,
                 onnx_file: Path | None = None, threads: int | None = None) -> None:
        """``onnx_file``: run that file instead of the target's artifact (then ``ctx`` may be None);
        ``threads``: intra-op threads, else :func:`mapgate.cpu.engine_threads`'s."""
        super().__init__()
        if ctx is None and onnx_file is None:
            raise ValueError("OrtRunner needs a BuildContext to find its artifact, or an onnx_file")
        self.model, self.precision, self.ctx = model, precision or "fp32", ctx
        self.is_reference = precision is None
        self.onnx_file, self.threads = onnx_file, threads
        self.session = None

    def activate_impl(self) -> None:
        ort = BACKEND.facts.require("onnxruntime")
        if self.onnx_file is not None:
            self.artifact = self.onnx_file
        else:
            assert self.ctx is not None
            target = None if self.is_reference else f"onnxruntime:{self.precision}"
            self.artifact = BACKEND.facts.artifact_for(self.model, target, self.ctx)
        opts = ort.SessionOptions()
        threads = engine_threads() if self.threads is None else self.threads
        if threads is not None:  # shared cores (xdist workers): no oversubscribed, spinning thread pools
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(self.artifact), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self.session is not None
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values))

    def supports_batch(self, n: int) -> bool:
        assert self.session is not None
        dim = self.session.get_inputs()[0].shape[0]
        return n == 1 or not isinstance(dim, int) or dim <= 0  # a named/None dim is dynamic

    def deactivate_impl(self) -> None:
        self.session = None


class _OrtBackend(DeclaredBackend):
    facts = BackendFacts(
        name="onnxruntime", precisions=("fp32", "int8"),
        modules=("onnxruntime", "onnx"),  # onnx: the conversions it runs are made and checked with it
        extra="onnx", install_hint="pip install 'mapgate[onnx]'  (onnxruntime, onnx)",
        distributions={"onnxruntime": ("onnxruntime", "onnxruntime-gpu")},
        original_formats=("onnx",),
        builds_from_onnx=True,  # fp32 is the model's ONNX; int8 is a converter route (convert/ort_quant.py)
        marker_help="runs on ONNX Runtime (CPU)",
    )

    def runner(self, model: ModelSpec, precision: str | None, ctx: BuildContext) -> Runner:
        return OrtRunner(model, precision, ctx)


BACKEND = _OrtBackend()


def file_runner(model: ModelSpec, onnx_file: Path, *, threads: int | None = None) -> OrtRunner:
    """A lazy runner for ``onnx_file`` as it is, for ``model``'s inputs: no conversion, no cache
    (the file is the caller's, e.g. one of ``mapgate int8-repair``'s candidates)."""
    return OrtRunner(model, None, None, onnx_file=onnx_file, threads=threads)
