"""Drives mapgate's TensorRT build path with the REAL Polygraphy against the stand-in ``tensorrt``
(tests/trt_standin, first on PYTHONPATH) and writes what was called as JSON.

Run by tests/test_tensorrt_contract.py in a fresh process per TensorRT version (Polygraphy
imports ``tensorrt`` once per process). The only other stand-ins are the two things that need a
GPU: the CUDA device facts and the host->device copy of calibration batches.

    python tests/trt_contract_driver.py OUT.json ENGINES_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "yolox-nano-416"
CALIB_IMAGES = 3


def main(out: Path, engines: Path) -> None:
    import tensorrt
    import polygraphy.backend.trt.util as trt_util

    import mapgate.backends.tensorrt as backend
    from mapgate.backends.base import BuildContext
    from mapgate.calibration import calibration_images, image_ids_of
    from mapgate.backends._tensorrt_engine import DeviceInfo, EngineCache
    from mapgate.manifest import load_manifest

    assert Path(tensorrt.__file__).parent.parent.name == "trt_standin", tensorrt.__file__

    def host_copy(arr, name, device_buffers, stream=None):  # noqa: ANN001, ANN202 - Polygraphy's signature
        ptr = 0x1000 + len(tensorrt.DEVICE_MEMORY)
        tensorrt.DEVICE_MEMORY[ptr] = np.array(arr, copy=True)
        return ptr

    trt_util._get_array_on_gpu = host_copy
    backend.probe_device_info = lambda version, ordinal=0: DeviceInfo(version, "stand-in GPU", "8.7")

    model = load_manifest(ROOT / "fixtures" / "models.toml")[MODEL]
    calib = calibration_images()[:CALIB_IMAGES]
    ctx = BuildContext(engines_dir=engines, calib_images=calib, calib_image_ids=frozenset(image_ids_of(calib)),
                       max_calib_images=CALIB_IMAGES, progress=False)
    report: dict = {"version": tensorrt.__version__, "describe": backend.BACKEND.describe(), "builds": {}}
    for precision, workspace in (("fp32", 256), ("fp16", 256), ("int8", 256), ("int8", 512)):
        runner = backend.TensorRTRunner(model, precision, ctx, workspace_mb=workspace)
        spec, images, mode, pinned = runner.engine_spec()
        start = len(tensorrt.CALLS)
        result = EngineCache(engines).get_or_build(
            spec, build=lambda job: backend._build_engine(model, spec.onnx_path, job, images, mode, pinned),
            load=lambda data: data)
        report["builds"][f"{precision}-{workspace}"] = {
            "mode": mode, "onnx": spec.onnx_path.name, "recipe": dict(spec.recipe), "key_fields": spec.key_fields(),
            "kept_nodes": pinned[0], "calibration": result.provenance.get("calibration"),
            "calls": [[what, args] for what, args in tensorrt.CALLS[start:]],
        }
    report["unknown"] = tensorrt.UNKNOWN
    out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
