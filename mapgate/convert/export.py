"""``mapgate convert``: the exact ONNX an engine is built from, plus its build recipe as JSON.

Runs anywhere (no GPU, no TensorRT): the ONNX comes from the same cached converters the backends
use (:func:`mapgate.backends.tensorrt._onnx_for` for TensorRT, :func:`mapgate.convert.artifact_for`
for ONNX Runtime), and the recipe from the same pure functions that key the engine cache
(:func:`mapgate.backends.tensorrt.build_recipe`), so what is written is what would be built.
The JSON also holds an equivalent ``trtexec`` command line for building the engine on the device.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapgate.backends import tensorrt as trt_backend
from mapgate.backends.base import PRECISIONS, BuildContext
from mapgate.calibration import calibration_set_hash, quantization_images
from mapgate.convert import artifact_for, onnx_for
from mapgate.convert import ort_quant, trt_onnx
from mapgate.cpu import this_cpu
from mapgate.errors import ConfigError
from mapgate.files import verified_sha256
from mapgate.fsutil import write_bytes_atomic, write_json_atomic
from mapgate.manifest import ModelSpec
from mapgate.optional import version_of

TYPINGS = ("weak", "strong")
CONVERT_BACKENDS = {"tensorrt": PRECISIONS, "onnxruntime": ("fp32", "int8")}
RECIPE_SCHEMA = 1


@dataclass(frozen=True)
class ConvertTarget:
    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}"


def parse_opt(text: str) -> ConvertTarget:
    """``BACKEND:PRECISION`` for a backend that builds from an ONNX mapgate writes."""
    backend, sep, precision = text.partition(":")
    allowed = CONVERT_BACKENDS.get(backend)
    if not sep or allowed is None or precision not in allowed:
        choices = ", ".join(f"{b}:{p}" for b, ps in CONVERT_BACKENDS.items() for p in ps)
        raise ConfigError(f"--opt {text!r}: convert writes the ONNX of one of {choices}")
    return ConvertTarget(backend, precision)


def resolve_typing(asked: str | None, installed: str | None) -> str:
    """The TensorRT typing mode: the one asked, else the installed TensorRT's (:func:`select_mode`),
    else strong (TensorRT 11, what ``pip install tensorrt`` installs today, knows nothing else)."""
    if asked is not None:
        if asked not in TYPINGS:
            raise ConfigError(f"--trt-typing {asked!r}: give one of {', '.join(TYPINGS)}")
        return asked
    if installed is not None:
        return "strong" if trt_backend.select_mode(trt_backend.parse_version(installed)) == trt_backend.STRONG \
            else "weak"
    return "strong"


def check_typing_applies(target: ConvertTarget, asked: str | None) -> None:
    if asked is not None and target.backend != "tensorrt":
        raise ConfigError(f"--trt-typing {asked} applies to tensorrt targets only, not --opt {target.name}")


def check_out_dir(out: Path, force: bool) -> None:
    """--out is a folder; an existing non-empty one only with --force (files there may be replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} exists and is not empty; give --force to write into it, or another folder")


def trtexec_command(onnx_name: str, engine_name: str, precision: str, typing: str, input_name: str,
                    input_shape: Sequence[int], dynamic: bool, workspace_mb: int,
                    fp32_layers: Sequence[str] = ()) -> list[str]:
    """trtexec arguments building the engine mapgate's TensorRT backend builds (same flags)."""
    cmd = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}", "--noTF32",
           f"--memPoolSize=workspace:{workspace_mb}"]
    if dynamic:
        shape = "x".join(str(d) for d in input_shape)
        cmd += [f"--minShapes={input_name}:{shape}", f"--optShapes={input_name}:{shape}",
                f"--maxShapes={input_name}:{shape}"]
    if typing == "strong":
        return [*cmd, "--stronglyTyped"]
    if precision == "fp16":
        cmd.append("--fp16")
    if precision == "int8":
        cmd.append("--int8")  # the Q/DQ ONNX holds the scales: no --calib, no --fp16 (its float layers stay FP32)
    if fp32_layers and precision == "fp16":
        cmd += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers),
                "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    return cmd


def _onnx_input(path: Path) -> tuple[str, list[int], bool, dict[str, str]]:
    """(input name, shape with -1 dynamic, dynamic?, {graph input/output: element type name})."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    types = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
             for v in [*proto.graph.input, *proto.graph.output]}
    return inp.name, dims, any(d < 0 for d in dims), types


def _calibration_record(ctx: BuildContext) -> dict[str, Any]:
    # the images the Q/DQ quantizer reads, in its order (every INT8 target builds from its file)
    images = quantization_images(ctx.calib_images, ctx.max_calib_images)
    return {"images": [p.name for p in images], "count": len(images), "set_sha256": calibration_set_hash(images)}


def recipe(model: ModelSpec, target: ConvertTarget, typing: str, onnx_path: Path, onnx_name: str,
           ctx: BuildContext, workspace_mb: int) -> dict[str, Any]:
    """The build recipe of ``target`` from ``onnx_path`` (already made), as the JSON ``convert`` writes."""
    input_name, dims, dynamic, types = _onnx_input(onnx_path)
    shape = list(trt_backend.input_shape_for(model))
    record: dict[str, Any] = {
        "schema": RECIPE_SCHEMA, "model": model.name, "manifest": str(model.manifest_path), "target": target.name,
        "onnx": onnx_name, "onnx_sha256": verified_sha256(onnx_path), "input": {"name": input_name, "shape": shape,
                                                                               "onnx_shape": dims},
        "io_types": types, "mapgate": version_of("mapgate"),
    }
    int8 = target.precision == "int8"
    if target.backend == "onnxruntime":
        record["qdq"] = ({"settings": ort_quant.SETTINGS, "extra_options": ort_quant.EXTRA_OPTIONS,
                          **ort_quant.recipe_of(model), "reduce_range": this_cpu().saturates,
                          "reduce_range_why": this_cpu().reason} if int8 else None)
        record["calibration"] = _calibration_record(ctx) if int8 else None
        return record
    mode = trt_backend.STRONG if typing == "strong" else trt_backend.WEAK
    pinned = trt_backend.fp32_nodes(model, onnx_path)[0] if trt_backend.pins_layers(target.precision, mode) else []
    engine_name = Path(onnx_name).with_suffix(".engine").name
    record.update({
        "typing": typing, "recipe": trt_backend.build_recipe(target.precision, mode, pinned),
        "fp32_layers": pinned, "workspace_mb": workspace_mb,
        "qdq": ({"settings": ort_quant.SETTINGS, "extra_options": ort_quant.EXTRA_OPTIONS, **ort_quant.recipe_of(model),
                 "reduce_range": False} if int8 else None),
        "calibration": ({**_calibration_record(ctx), "algorithm": trt_backend.EXPLICIT_QDQ} if int8 else None),
        "trtexec": trtexec_command(onnx_name, engine_name, target.precision, typing, input_name, shape, dynamic,
                                   workspace_mb, pinned),
        "trtexec_note": ("--layerPrecisions names the ONNX nodes, as TensorRT's parser names their layers; mapgate "
                         "also pins the extra layers a node is lowered to (matched by output tensor), which trtexec "
                         "cannot address by name" if pinned else None),
    })
    if target.precision == "fp16" and mode == trt_backend.STRONG:
        import onnx

        source = onnx.load(str(onnx_for(model, ctx)), load_external_data=False)
        record["fp16"] = {"converter": trt_onnx.fp16_converter(), "keep_io_types": True,
                          "kept_float_nodes": trt_onnx.keep_float_nodes(source, model.convert.int8_keep_float)}
    return record


def _source_onnx(model: ModelSpec, target: ConvertTarget, typing: str, ctx: BuildContext) -> Path:
    if target.backend == "tensorrt":
        mode = trt_backend.STRONG if typing == "strong" else trt_backend.WEAK
        return trt_backend._onnx_for(model, ctx, target.precision, mode)
    return Path(artifact_for(model, "onnxruntime:int8", ctx) if target.precision == "int8" else onnx_for(model, ctx))


def export(model: ModelSpec, target: ConvertTarget, typing: str, out: Path, ctx: BuildContext,
           workspace_mb: int | None = None) -> tuple[Path, Path]:
    """Write ``out/<model>.<backend>-<precision>[-<typing>].onnx`` and its ``.json`` recipe (each
    atomically); returns both paths. ``ctx.engines_dir`` is where conversions are cached."""
    ws = trt_backend.resolve_workspace_mb(workspace_mb)
    source = _source_onnx(model, target, typing, ctx)
    stem = f"{model.name}.{target.backend}-{target.precision}" + (f"-{typing}" if target.backend == "tensorrt" else "")
    onnx_dest, json_dest = out / f"{stem}.onnx", out / f"{stem}.json"
    record = recipe(model, target, typing, source, onnx_dest.name, ctx, ws)
    out.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as f:
        write_bytes_atomic(onnx_dest, f.read())
    write_json_atomic(json_dest, record)
    return onnx_dest, json_dest


def private_cache(out: Path) -> Path:
    """A conversion cache folder inside ``out`` (removed by :func:`remove_tree`): convert writes nowhere else."""
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".mapgate-convert-", dir=out))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
