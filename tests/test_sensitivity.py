"""Layer sensitivity on the bundled Yolo-Fastest, calibration images only."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from mapgate.backends.base import BuildContext
from mapgate.calibration import calibration_images, image_ids_of
from mapgate.errors import ConfigError
from mapgate.catalog import CHECKOUT
from mapgate.gate import DEFAULT_ENGINES

MODEL = "yolo-fastest-1.1-320"
pytestmark = pytest.mark.slow


def test_the_split_is_deterministic_disjoint_and_complete() -> None:
    from mapgate.sensitivity import split_calibration

    images = calibration_images()
    calib, proxy = split_calibration(images)
    assert (calib, proxy) == split_calibration(images)
    assert not set(calib) & set(proxy) and sorted(calib + proxy) == sorted(images)
    assert len(proxy) == len(images) // 3
    with pytest.raises(ConfigError, match="cannot be split"):
        split_calibration(images[:2])


@pytest.fixture(scope="module")
def fastest(bundled_models, require_backend):
    require_backend("onnxruntime")
    require_backend("opencv")
    from mapgate.convert import onnx_for
    from mapgate.sensitivity import ImageLog, Proxy, split_calibration

    model = bundled_models[MODEL]
    fp32 = onnx_for(model, BuildContext(engines_dir=CHECKOUT / DEFAULT_ENGINES))
    calib, proxy_images = split_calibration(calibration_images()[:15])
    log = ImageLog()
    return model, fp32, calib, Proxy(model, fp32, proxy_images, log), log


def test_the_fp32_model_is_its_own_perfect_proxy(fastest) -> None:
    _, fp32, _, proxy, log = fastest
    s = proxy.score(fp32)
    assert s.output_error == 0.0 and s.pseudo_ap == 100.0 and s.matched_iou == pytest.approx(1.0)
    assert s.score_drift == 0.0 and s.matched_share == 1.0
    assert log.image_ids == set(image_ids_of(proxy.images)) and len(log.image_ids) == 5


def test_int8_output_is_tensorrt_style_symmetric_int8(fastest) -> None:
    """TensorRT's explicit quantization: signed INT8, zero point 0, per-channel weight scales."""
    import onnx
    from onnx import numpy_helper

    from mapgate.convert import ort_quant

    model, fp32, calib, proxy, _ = fastest
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        ort_quant.quantize(fp32, out, model, calib[:8])
        q = onnx.load(str(out))
        inits = {i.name: i for i in q.graph.initializer}
        zps = [inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               and len(n.input) > 2 and n.input[2] in inits]
        assert zps and all(z.data_type == onnx.TensorProto.INT8 or z.data_type == onnx.TensorProto.INT32 for z in zps)
        assert all(not numpy_helper.to_array(z).any() for z in zps)
        assert any(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in q.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[1] in inits)  # per-channel scales
        assert 0.0 < proxy.score(out).output_error < 1.0


def test_a_layer_back_in_float_ranks_by_the_head_error_it_removes(fastest) -> None:
    from mapgate.convert import ort_quant
    from mapgate.sensitivity import conv_nodes, layer_sensitivity

    model, fp32, calib, proxy, _ = fastest
    with tempfile.TemporaryDirectory() as tmp:
        cache, n = Path(tmp) / "ranges.json", iter(range(100))

        def build(keep):
            out = Path(tmp) / f"q{next(n)}.onnx"
            ort_quant.quantize(fp32, out, model, calib[:8], keep_float=keep, calibration_cache=cache)
            return out

        full = proxy.score(build([]))
        nodes = conv_nodes(ort_quant.load_for_quantization(fp32))[:2]
        ranked = layer_sensitivity(build, proxy, nodes)
    assert sorted(s.node for s in ranked) == sorted(nodes)
    errors = [s.score.output_error for s in ranked]
    assert errors == sorted(errors)
    assert ranked[0].score.output_error < full.output_error
    assert np.isfinite([s.score.pseudo_ap for s in ranked]).all()
