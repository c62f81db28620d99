"""The OpenVINO backend: it runs the ONNX mapgate already makes for each bundled model and returns
what ONNX Runtime returns, by the same output names; it says how to install it when it is missing;
its identity names the precision the device actually used.

The dAP gate itself (openvino:fp32 within 0.1 points of the original) is the accuracy matrix:
``pytest -m accuracy -k openvino``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mapgate.backends import get_backend
from mapgate.backends.base import BuildContext
from mapgate.backends.openvino import BACKEND, HINTS, device_precision
from mapgate.convert import onnx_for
from mapgate.dataset import CocoDataset
from mapgate.errors import BackendUnavailable, ConfigError
from mapgate.fsutil import sha256_file
from mapgate.gate import Gate
from mapgate.preprocess import preprocess

# every bundled model with an ONNX route (the TFLite-only SSD has none)
ONNX_MODELS = ["yolov3-tiny-416", "yolo-fastest-1.1-320", "yolox-nano-416", "ssdlite_mobilenet_v2_coco"]
NEEDS = {"ssdlite_mobilenet_v2_coco": "tf"}  # its ONNX comes from tf2onnx, which needs TensorFlow
# FP32: OpenVINO's CPU kernels sum in another order than ONNX Runtime's; measured max |diff| is
# <= 6e-5 of each output's range on these models. 1e-4 of the range leaves no room for a wrong layer.
FP32_RTOL = 1e-4


@pytest.fixture(scope="module")
def ctx(pytestconfig: pytest.Config) -> BuildContext:
    # the session's conversion cache: conversions are keyed by content, so sharing it is safe
    return BuildContext(engines_dir=Path(pytestconfig.getoption("engines_dir")), progress=False)


@pytest.fixture(scope="module")
def image() -> object:
    dataset = CocoDataset(max_images=1)
    return dataset.load(dataset.image_ids[0])


def _outputs(backend: str, model: object, precision: str, ctx: BuildContext, image: object) -> dict[str, np.ndarray]:
    batch, _ = preprocess(image.image, model)  # type: ignore[attr-defined]
    with get_backend(backend).runner(model, precision, ctx) as runner:
        return runner.infer(batch)


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_fp32_outputs_equal_onnx_runtime_by_name_on_a_real_image(name: str, bundled_models, ctx, image,
                                                                 require_backend) -> None:
    require_backend("openvino")
    require_backend("onnxruntime")
    if name in NEEDS:
        require_backend(NEEDS[name])
    model = bundled_models[name]
    ref = _outputs("onnxruntime", model, "fp32", ctx, image)
    out = _outputs("openvino", model, "fp32", ctx, image)
    assert sorted(out) == sorted(ref)  # the postprocessor finds its tensors by these names
    for key, want in ref.items():
        assert out[key].shape == want.shape and out[key].dtype == want.dtype, key
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(out[key], want, rtol=0, atol=FP32_RTOL * scale, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("name", ["yolov3-tiny-416", "yolox-nano-416"])
def test_fp16_outputs_are_near_onnx_runtime_and_not_identical(name: str, bundled_models, ctx, image,
                                                              require_backend) -> None:
    require_backend("openvino")
    model = bundled_models[name]
    ref = _outputs("onnxruntime", model, "fp32", ctx, image)
    out = _outputs("openvino", model, "fp16", ctx, image)
    for key, want in ref.items():
        err = np.abs(out[key] - want)
        # a 16-bit float (f16: 10 mantissa bits, bf16: 7) moves raw head values by a few percent at most
        assert float(np.median(err)) < 0.02 * float(np.abs(want).max()), key
    if device_precision("fp16") != "f32":  # reduced precision really ran: the outputs differ from FP32
        assert any(not np.array_equal(out[k], ref[k]) for k in ref)


def test_the_tflite_only_ssd_has_no_openvino_route_and_says_so(bundled_models, ctx) -> None:
    model = bundled_models["ssd_mobilenet_v1_quant_coco"]
    facts = get_backend("openvino").facts
    assert not facts.can_make(model, "openvino:fp32")
    assert "openvino:fp32" not in model.optimized
    with pytest.raises(ConfigError, match=r"no way to make openvino:fp32 from format 'tflite'.*no ONNX route"):
        facts.artifact_for(model, "openvino:fp32", ctx)


def test_every_bundled_model_with_an_onnx_route_lists_both_openvino_targets(bundled_models) -> None:
    for name in ONNX_MODELS:
        model = bundled_models[name]
        assert {"openvino:fp32", "openvino:fp16"} <= set(model.optimized), name
        assert get_backend("openvino").facts.can_make(model, "openvino:fp16"), name


# ------------------------------------------------------------------------- availability


def test_missing_openvino_is_unavailable_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an uninstalled package looks like to import
    available = BACKEND.availability()
    assert not available.ok
    assert "'openvino' is not installed" in available.reason
    assert "pip install 'mapgate[openvino]'" in available.reason


def test_activating_without_openvino_raises_backend_unavailable_with_the_hint(
        monkeypatch: pytest.MonkeyPatch, bundled_models, ctx) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    runner = BACKEND.runner(bundled_models["yolox-nano-416"], "fp32", ctx)  # lazy: nothing imported yet
    with pytest.raises(BackendUnavailable, match=r"openvino.*pip install 'mapgate\[openvino\]'"):
        runner.activate()


def test_only_fp32_and_fp16_and_no_original(bundled_models, ctx) -> None:
    model = bundled_models["yolox-nano-416"]
    with pytest.raises(ConfigError, match="openvino:fp32, openvino:fp16"):
        BACKEND.runner(model, None, ctx)
    with pytest.raises(ConfigError, match="no precision 'int8'"):
        from mapgate.backends import parse_target

        parse_target("openvino:int8")


# ----------------------------------------------------------------------------- identity


def test_identity_names_the_onnx_it_runs_and_the_precision_the_device_used(bundled_models, ctx,
                                                                           require_backend) -> None:
    require_backend("openvino")
    model = bundled_models["yolox-nano-416"]
    for precision in HINTS:
        ident = BACKEND.identity(model, precision, ctx)
        onnx = onnx_for(model, ctx)
        assert ident["artifact"] == str(onnx) and ident["artifact_sha256"] == sha256_file(onnx)
        assert ident["inference_precision_hint"] == HINTS[precision]
        runner = BACKEND.runner(model, precision, ctx)
        with runner:
            assert runner.inference_precision == ident["inference_precision"]  # measured, not assumed
    assert BACKEND.identity(model, "fp32", ctx)["inference_precision"] == "f32"  # always asked for explicitly
    # on a CPU without native fp16 the f16 hint falls back (bf16 or f32): the identity says which
    assert BACKEND.identity(model, "fp16", ctx)["inference_precision"] in ("f16", "bf16", "f32")


def test_gate_identity_adds_the_openvino_version_and_keys_fp16_apart_from_fp32(bundled_models, tmp_path: Path,
                                                                                require_backend) -> None:
    require_backend("openvino")
    from importlib import metadata

    gate = Gate(models=bundled_models, dataset=CocoDataset(max_images=1), engines_dir=tmp_path / "engines",
                reports_dir=tmp_path / "reports", progress=False)
    ctx = BuildContext(engines_dir=gate.engines_dir)
    model = bundled_models["yolox-nano-416"]  # an ONNX original: nothing to convert
    fp32 = gate._identity(model, BACKEND, "fp32", ctx)
    fp16 = gate._identity(model, BACKEND, "fp16", ctx)
    assert fp32["frameworks"] == {"openvino": metadata.version("openvino")}
    assert fp32 != fp16 and fp32["artifact_sha256"] == fp16["artifact_sha256"]
