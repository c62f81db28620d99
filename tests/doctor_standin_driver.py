"""Runs ``mapgate doctor --run`` with the REAL Polygraphy against the stand-in ``tensorrt``
(tests/trt_standin first on PYTHONPATH), as tests/trt_contract_driver.py drives the backend: only
libcudart under Polygraphy (``standin_cuda``) and mapgate's two CUDA device probes are replaced.
The stand-in engine computes with ONNX Runtime on the ONNX it was built from, so a clean run must
agree with ONNX Runtime; ``--plant`` makes one engine disagree, and the check must fail.

    python tests/doctor_standin_driver.py -- DOCTOR ARGS... [--plant NAME]

Exits with ``mapgate doctor``'s exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

PLANTS = {"fp32-outputs-off": "the FP32 engine's float outputs come back 10% too small (boxes and scores)"}


def main(argv: list[str]) -> int:
    plant = None
    if "--plant" in argv:
        i = argv.index("--plant")
        plant, argv = argv[i + 1], argv[:i] + argv[i + 2:]
        if plant not in PLANTS:
            raise SystemExit(f"unknown plant {plant!r}; known: {sorted(PLANTS)}")
    import standin_cuda

    standin_cuda.install()  # before anything creates a Polygraphy stream
    import tensorrt

    import mapgate.backends.tensorrt as backend
    from mapgate.backends._tensorrt_engine import DeviceInfo
    from mapgate.cli import main as mapgate_main

    assert Path(tensorrt.__file__).parent.parent.name == "trt_standin", tensorrt.__file__
    backend.probe_device_info = lambda version, ordinal=0: DeviceInfo(version, "stand-in GPU", "8.7")
    backend.cuda_device_count = lambda: (1, "")
    if plant == "fp32-outputs-off":
        real_infer = backend.TensorRTRunner.infer_impl

        def infer_off(self: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
            out = real_infer(self, batch)
            if self.precision != "fp32":
                return out
            return {k: (v * np.float32(0.9)).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in out.items()}

        backend.TensorRTRunner.infer_impl = infer_off
    return mapgate_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
