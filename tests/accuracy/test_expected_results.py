"""What the gate must conclude on the bundled val2017-mini (206 images) — issue 4's expectations.

These share the session's gate with the collected mapgate.toml cases, so every side runs once per session.
"""

from __future__ import annotations

import pytest

from mapgate import report
from mapgate.backends import get_backend

pytestmark = pytest.mark.accuracy


def _verdict(session, model: str, target: str):  # noqa: ANN001, ANN202
    # --models/--backends select cases here as they do the gate matrix; the expectations are numbers
    # measured on the whole bundled set, so a subset or another data set skips them rather than failing
    models, backends = session.option("models"), session.option("backends")
    if models and model not in models:
        pytest.skip(f"{model} is not selected by --models {','.join(models)}")
    if backends and target not in backends and target.split(":")[0] not in backends:
        pytest.skip(f"{target} is not selected by --backends {','.join(backends)}")
    if session.option("max_images") or session.option("coco_root"):
        pytest.skip("these expectations hold for the whole val2017-mini (206 images); --max-images/--coco-root "
                    "select another image set")
    for backend in (target.split(":")[0], session.models[model].reference_backend):
        status = get_backend(backend).availability()
        if not status.ok:
            pytest.skip(f"{backend}: {status.reason}")
    return session.gate.compare(model, target)


@pytest.mark.parametrize("model", ["ssdlite_mobilenet_v2_coco", "yolov3-tiny-416", "yolo-fastest-1.1-320"])
def test_an_fp32_onnx_conversion_matches_its_original_within_0_001_ap(mapgate_session, model: str) -> None:  # noqa: ANN001
    v = _verdict(mapgate_session, model, "onnxruntime:fp32")
    assert v.verdict == "pass"
    assert abs(v.ref_stats["AP"] - v.opt_stats["AP"]) <= 0.001, report.reason(v)
    assert v.agreement.matched_share >= 0.99


def test_yolox_vendor_fp16_tflite_passes(mapgate_session) -> None:  # noqa: ANN001
    v = _verdict(mapgate_session, "yolox-nano-416", "tflite:fp16")
    assert v.verdict == "pass", report.reason(v)


def test_yolox_vendor_int8_tflite_is_caught_as_a_large_regression(mapgate_session) -> None:  # noqa: ANN001
    v = _verdict(mapgate_session, "yolox-nano-416", "tflite:int8")
    assert v.verdict == "fail"
    assert v.delta_ap < -10.0, f"the broken INT8 file should lose far more than 10 points: {report.reason(v)}"
    assert v.ci["high_points"] < -v.tolerance, "even the CI's optimistic end must be beyond the tolerance"


@pytest.mark.parametrize(("model", "target"), [
    ("ssdlite_mobilenet_v2_coco", "onnxruntime:int8"), ("ssdlite_mobilenet_v2_coco", "tflite:int8"),
    ("yolov3-tiny-416", "onnxruntime:int8"), ("yolo-fastest-1.1-320", "onnxruntime:int8"),
])
def test_every_int8_result_comes_with_its_bootstrap_ci(mapgate_session, model: str, target: str) -> None:  # noqa: ANN001
    v = _verdict(mapgate_session, model, target)
    assert v.ci["n_resamples"] >= 1000
    assert v.ci["low_points"] <= v.delta_ap <= v.ci["high_points"]
    assert v.verdict == v.expected, report.reason(v)


def test_yolo_fastest_int8_stays_within_the_tolerance_with_its_repaired_recipe(mapgate_session) -> None:  # noqa: ANN001
    # plain symmetric INT8 fails by about 3 points; the manifest's int8-repair recipe (Percentile, 12 of 84
    # convolutions in float, found on calibration images only, on cv2.resize input) passed outright where int8
    # dot products accumulate in int32 (VNNI, ARM). With darknet's own resize as the input (2026-12-07) it
    # measures -0.79, CI [-1.53, +0.25] there: 0.03 past the tolerance, inconclusive. Where they saturate
    # (x86 without VNNI) the ONNX Runtime file has 7-bit weights: inconclusive too. Either way within the tolerance.
    model = mapgate_session.models["yolo-fastest-1.1-320"]
    assert model.expected_verdicts["onnxruntime:int8"] == "inconclusive"
    assert model.expected_verdicts_int8_saturating["onnxruntime:int8"] == "inconclusive"
    assert model.convert.int8_calibration == "percentile" and len(model.convert.int8_keep_float) == 12
    v = _verdict(mapgate_session, "yolo-fastest-1.1-320", "onnxruntime:int8")
    assert v.verdict == "inconclusive" and v.delta_ap > -v.tolerance, report.reason(v)
    assert "attribution" in v.extras  # where the remaining points went, even within the tolerance


def test_picodet_int8_recipe_keeps_it_within_3_ap_points_of_fp32(mapgate_session) -> None:  # noqa: ANN001
    # plain symmetric INT8 collapses PicoDet-S (34.95 -> 0.07 AP: one activation scale per tensor cannot hold
    # its BN-folded channels, 3.7 to 657 in the stem); the manifest keeps the 11 convolutions that alone move
    # the outputs most in float, with Percentile calibration: about -1.3, inconclusive against 1.5
    model = mapgate_session.models["picodet-s-416"]
    assert model.convert.int8_calibration == "percentile" and len(model.convert.int8_keep_float) == 11
    v = _verdict(mapgate_session, "picodet-s-416", "onnxruntime:int8")
    assert v.delta_ap > -3.0, report.reason(v)
    assert v.verdict == v.expected == "inconclusive", report.reason(v)
