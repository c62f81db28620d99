"""One step makes every detection: the detection loop (sequential and pipelined), the end-to-end
benchmark and the INT8 sensitivity proxy all take their images through ``detections.detect``, so
a change to that step (here a defect planted in its postprocessor) reaches all three alike, and the
proxy runs its models on the onnxruntime backend's runner, not on a session of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mapgate import detections
from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext
from mapgate.backends.onnxruntime import OrtRunner, file_runner
from mapgate.benchmarking import end_to_end_callable
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.convert import onnx_for
from mapgate.dataset import CocoDataset
from mapgate.detections import run_detections
from mapgate.sensitivity import ImageLog, Proxy, split_calibration

MODEL = "nanodet-m-320"  # an ONNX original: no conversion, a fast engine
ENGINES = Path(__file__).resolve().parent.parent / "engines"


@pytest.fixture
def planted(monkeypatch) -> list[int]:
    """The shared step's postprocessor, with a defect: every record it makes is marked. Returns the
    image ids it was called for."""
    real = detections.postprocess
    calls: list[int] = []

    def defective(outputs: Any, model: Any, transform: Any, image_id: int) -> list[dict[str, Any]]:
        calls.append(image_id)
        return [{**r, "planted": True} for r in real(outputs, model, transform, image_id)]

    monkeypatch.setattr(detections, "postprocess", defective)
    return calls


@pytest.fixture
def model(bundled_models, require_backend):  # noqa: ANN201
    require_backend("onnxruntime")
    return bundled_models[MODEL]


def _all_planted(records: list[dict[str, Any]]) -> bool:
    return bool(records) and all(r.get("planted") for r in records)


@pytest.mark.parametrize("workers", [0, 2], ids=["sequential", "pipelined"])
def test_the_detection_loop_makes_its_records_with_the_step(model, planted, workers) -> None:
    data = CocoDataset(max_images=3)
    with get_backend("onnxruntime").runner(model, None, BuildContext(engines_dir=ENGINES)) as runner:
        run = run_detections(model, runner, data, progress=False, workers=workers)
    assert _all_planted(run.detections)
    assert planted[1:] == data.image_ids  # [0] is the warm-up


def test_the_end_to_end_benchmark_makes_its_records_with_the_step(model, planted) -> None:
    images = calibration_images()[:2]
    with get_backend("onnxruntime").runner(model, None, BuildContext(engines_dir=ENGINES)) as runner:
        timed = end_to_end_callable(model, runner, images)
        records = timed() + timed()
    assert _all_planted(records)
    assert planted == image_ids_of(images)


def test_the_sensitivity_proxy_makes_its_detections_with_the_step_on_the_backends_runner(model, planted,
                                                                                          monkeypatch) -> None:
    ran: list[Path | None] = []
    real_activate = OrtRunner.activate_impl

    def recording_activate(self: OrtRunner) -> None:
        real_activate(self)
        ran.append(self.artifact)

    monkeypatch.setattr(OrtRunner, "activate_impl", recording_activate)
    fp32 = onnx_for(model, BuildContext(engines_dir=ENGINES))
    _, proxy_images = split_calibration(calibration_images()[:6])
    proxy = Proxy(model, fp32, proxy_images, ImageLog())
    assert _all_planted(proxy.fp32_dets)
    assert planted == proxy.ids
    outputs, dets = proxy.run(fp32)
    assert _all_planted(dets) and len(outputs) == len(proxy.ids)
    assert ran == [fp32, fp32, fp32]  # scoring in __init__, the FP32 timing runner, run() again


def test_a_file_runner_runs_the_file_it_is_given(model) -> None:
    fp32 = onnx_for(model, BuildContext(engines_dir=ENGINES))
    with file_runner(model, fp32, threads=1) as runner:
        assert runner.artifact == fp32 and runner.session is not None
        assert runner.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="onnx_file"):
        OrtRunner(model, None, None)
