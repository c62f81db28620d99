"""A TensorRT engine spec made of plain data, shared by the engine-key tests (test_tensorrt_logic.py)
and the engine-cache tests (test_cache.py): no TensorRT, no GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapgate.backends.tensorrt import CalibrationInfo, DeviceInfo, EngineSpec

DEVICE = DeviceInfo(trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
CALIB = CalibrationInfo(set_sha256="a" * 64, count=100, preprocess_sha256="b" * 64)


def make_spec(**changes: Any) -> EngineSpec:
    base: dict[str, Any] = dict(
        model="yolov3-tiny-416", onnx_path=Path("/models/y.onnx"), onnx_sha256="0" * 64, precision="fp16",
        input_shape=(1, 3, 416, 416), workspace_mb=1024, device=DEVICE, calibration=None,
        recipe={"flags": ["fp16"]},
    )
    base.update(changes)
    return EngineSpec(**base)


