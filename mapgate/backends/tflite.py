"""TFLite through ai-edge-litert: TFLite originals (ssd_mobilenet_v1_quant), vendor TFLite
files of a manifest entry, and TF -> TFLite FP16/INT8 conversions."""

from __future__ import annotations

import os

import numpy as np

from mapgate.cpu import engine_threads
from mapgate.backends.base import BackendFacts, BuildContext, DeclaredBackend, Runner
from mapgate.manifest import ModelSpec


class TfliteRunner(Runner):
    backend = "tflite"

    def __init__(self, model: ModelSpec, precision: str | None, ctx: BuildContext) -> None:
        super().__init__()
        self.model, self.precision, self.ctx = model, precision or "fp32", ctx
        self.is_reference = precision is None

    def activate_impl(self) -> None:
        litert = BACKEND.facts.require("ai_edge_litert.interpreter")
        self.artifact = BACKEND.facts.artifact_for(self.model, None if self.is_reference else f"tflite:{self.precision}", self.ctx)
        threads = engine_threads() or os.cpu_count() or 1
        self.interpreter = litert.Interpreter(model_path=str(self.artifact), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def supports_batch(self, n: int) -> bool:
        """TFLite batches by resize_tensor_input; kept only if every output then leads with n
        (graphs with TFLite_Detection_PostProcess, for one, do not)."""
        if n == 1:
            return True
        ok = False
        try:
            self._resize(n)
            ok = all(int(o["shape"][0]) == n for o in self.interpreter.get_output_details())
        except (RuntimeError, ValueError):  # the interpreter refuses the shape
            ok = False
        self._resize(1)
        return ok

    def _resize(self, n: int) -> None:
        if int(self.input["shape"][0]) != n:
            shape = [n, *map(int, self.input["shape"][1:])]
            try:
                self.interpreter.resize_tensor_input(self.input["index"], shape, strict=False)
                self.interpreter.allocate_tensors()
            finally:  # what the interpreter now holds, even when allocation refused the shape
                self.input = self.interpreter.get_input_details()[0]
                self.outputs = self.interpreter.get_output_details()

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._resize(int(batch.shape[0]))
        self.interpreter.set_tensor(self.input["index"], _quantize(batch, self.input))
        self.interpreter.invoke()
        return {o["name"]: _dequantize(self.interpreter.get_tensor(o["index"]), o) for o in self.outputs}

    def deactivate_impl(self) -> None:
        self.interpreter = None


def _quantize(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if batch.dtype == dtype:
        return batch
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(batch / scale + zero), info.min, info.max).astype(dtype)
    return batch.astype(dtype)


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(value.dtype, np.integer) and scale:
        return (value.astype(np.float32) - zero) * np.float32(scale)
    return value


class _TfliteBackend(DeclaredBackend):
    facts = BackendFacts(
        name="tflite", precisions=("fp32", "fp16", "int8"), modules=("ai_edge_litert",),
        extra="tflite", install_hint="pip install 'mapgate[tflite]'  (ai-edge-litert)",
        distributions={"ai_edge_litert": ("ai-edge-litert",)},
        original_formats=("tflite",),
        marker_help="runs on TFLite (ai-edge-litert)",
    )

    def runner(self, model: ModelSpec, precision: str | None, ctx: BuildContext) -> Runner:
        return TfliteRunner(model, precision, ctx)


BACKEND = _TfliteBackend()
