"""Darknet cfg+weights -> ONNX through mapgate's own converter, cached by content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapgate.convert import BuildContext
from mapgate.cache import cached_artifact
from mapgate.files import resolve_role, verified_sha256
from mapgate.manifest import ModelSpec
from mapgate import darknet_cfg
from mapgate.convert import darknet_onnx
from mapgate.convert.darknet_onnx import CONVERTER_VERSION, DarknetToOnnx


def build(model: ModelSpec, ctx: BuildContext, target: str) -> Path:
    cfg, weights = resolve_role(model, "cfg"), resolve_role(model, "weights")
    inputs = {
        "cfg_sha256": verified_sha256(cfg),
        "weights_sha256": verified_sha256(weights),
        "converter": f"mapgate.darknet_onnx/{CONVERTER_VERSION}",
        # the converter's own source: a fix must rebuild cached ONNX even if nobody bumps the version
        "converter_source": [verified_sha256(Path(m.__file__)) for m in (darknet_onnx, darknet_cfg)],
        "input_size": list(model.input_size),
    }

    def _build(out: Path) -> dict[str, Any]:
        DarknetToOnnx(cfg, weights, input_size=model.input_size)(out)
        return {"source": {"cfg": str(cfg), "weights": str(weights)}}

    return cached_artifact(ctx.engines_dir, model.name, "darknet-onnx", inputs, _build, ".onnx")
