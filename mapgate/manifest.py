"""Models are data: the TOML manifest and its validated, typed view.

Every field a model needs (files and hashes, input size, preprocessing, class space,
decoder settings, thresholds, tolerances, prebuilt optimized files) lives in a manifest
entry; adding a model of a known family is one entry, no code. Validation happens at load
time and every error names the manifest file, the entry and the field.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's system Python)
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapgate.errors import ConfigError

DEFAULT_TOLERANCES = {"fp32": 0.1, "fp16": 0.5, "int8": 1.5}  # AP points
INT8_CALIBRATIONS = ("minmax", "percentile", "entropy")  # activation-range calibration of INT8 converters

FAMILIES = ("darknet_yolo", "yolox", "ssd", "od_api_detections")
FORMATS = {
    # format -> file roles it needs
    "darknet": ("cfg", "weights"),
    "tf_frozen": ("graph",),
    "tf_saved_model": ("saved_model",),
    "onnx": ("model",),
    "tflite": ("model",),
}
CLASS_SPACES = ("coco80", "coco90")
NMS_MODES = ("per_class", "agnostic", "none")
RESIZE_MODES = ("plain", "letterbox")


@dataclass(frozen=True)
class FileRef:
    """A model file: a path relative to the manifest, or a URL (optionally a tarball member)."""

    role: str
    sha256: str | None
    path: Path | None = None
    url: str | None = None
    member: str | None = None  # file inside a downloaded .tar.gz

    @property
    def display(self) -> str:
        return str(self.path) if self.path is not None else f"{self.url}{'#' + self.member if self.member else ''}"


@dataclass(frozen=True)
class Preprocess:
    resize: str = "plain"  # plain | letterbox
    letterbox_align: str = "center"  # center | topleft
    pad_value: float = 114.0
    color: str = "RGB"  # channel order fed to the network
    layout: str = "NCHW"  # NCHW | NHWC
    dtype: str = "float32"  # float32 | uint8
    scale: float = 1.0  # applied before mean/std: x * scale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Postprocess:
    class_space: str = "coco80"  # coco80: index into the 80 classes; coco90: index + class_offset = COCO id
    class_offset: int = 1
    score_threshold: float = 0.001
    nms_iou: float = 0.45
    nms: str = "per_class"
    multi_label: bool = True
    max_detections: int = 100
    pre_nms_top_k: int = 0  # 0 = keep all candidates above the score threshold
    decoder: dict[str, Any] = field(default_factory=dict)  # family-specific settings


@dataclass(frozen=True)
class ConvertOptions:
    """Converter hints: data, so a model needing them still needs no code."""

    # A tensor fed with the (already input_size) image cast to float32, bypassing an in-graph
    # resize loop (TF OD API's Preprocessor/map) that the TFLite converter cannot lower.
    resize_loop_output: str | None = None
    # Node-name prefixes kept in float by INT8 quantizers (e.g. box decoding: 8 bits cannot hold
    # normalised box corners to a pixel).
    int8_keep_float: tuple[str, ...] = ()
    # How INT8 activation ranges are calibrated, and per-channel weight scales (the repair's free options).
    int8_calibration: str = "minmax"
    int8_per_channel: bool = True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    format: str
    reference_backend: str
    files: dict[str, FileRef]
    input_size: tuple[int, int]  # (height, width)
    preprocess: Preprocess
    postprocess: Postprocess
    tolerances: dict[str, float]  # explicit per-model overrides of DEFAULT_TOLERANCES
    optimized: tuple[str, ...]  # BACKEND:PRECISION targets the gate runs by default
    prebuilt: dict[str, FileRef]  # BACKEND:PRECISION -> vendor file used instead of converting
    expected_verdicts: dict[str, str]  # BACKEND:PRECISION -> "pass" | "fail" (known-bad canaries)
    input_name: str | None = None
    output_names: tuple[str, ...] = ()
    convert: ConvertOptions = ConvertOptions()
    description: str = ""
    manifest_path: Path = Path()

    def tolerance(self, precision: str) -> float:
        return self.tolerances.get(precision, DEFAULT_TOLERANCES[precision])

    def file(self, role: str) -> FileRef:
        return self.files[role]


def load_manifest(path: str | Path) -> dict[str, ModelSpec]:
    """Parse and validate a manifest; returns models by name (manifest order)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model manifest {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"model manifest {path} is not valid TOML: {exc}") from exc
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"model manifest {path}: no [models.<name>] tables found")
    return {name: _parse_model(path, name, entry) for name, entry in models.items()}


def load_manifests(paths: list[Path]) -> dict[str, ModelSpec]:
    """Merge several manifests; a name defined twice is an error naming both files."""
    merged: dict[str, ModelSpec] = {}
    for p in paths:
        for name, spec in load_manifest(p).items():
            if name in merged:
                raise ConfigError(
                    f"model {name!r} is defined in both {merged[name].manifest_path} and {p}; rename one entry"
                )
            merged[name] = spec
    return merged


class _Entry:
    """Typed field access for one manifest table; errors name file, entry and field."""

    def __init__(self, path: Path, name: str, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.name, self.table, self.prefix = path, name, table, prefix
        self.used: set[str] = set()

    def error(self, fld: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: model {self.name!r}, field '{self.prefix}{fld}': {msg}")

    def get(self, fld: str, typ: type | tuple[type, ...], default: Any = ..., choices: tuple | None = None) -> Any:
        self.used.add(fld)
        if fld not in self.table:
            if default is ...:
                raise self.error(fld, "is required")
            return default
        value = self.table[fld]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, float)):
            tname = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.error(fld, f"must be {tname}, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(fld, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value

    def sub(self, fld: str) -> "_Entry":
        table = self.get(fld, dict, {})
        return _Entry(self.path, self.name, table, f"{self.prefix}{fld}.")

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], f"is not a known field (known: {', '.join(sorted(self.used))})")


def _parse_file(entry: _Entry, role: str, value: Any) -> FileRef:
    if not isinstance(value, dict):
        raise entry.error(role, "must be a table with 'path' or 'url' and 'sha256'")
    f = _Entry(entry.path, entry.name, value, f"{entry.prefix}{role}.")
    rel = f.get("path", str, None)
    url = f.get("url", str, None)
    sha = f.get("sha256", str, None)
    member = f.get("member", str, None)
    f.reject_unknown()
    if (rel is None) == (url is None):
        raise f.error("path", "give exactly one of 'path' (relative to the manifest) or 'url'")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise f.error("sha256", f"must be 64 lowercase hex digits, got {sha!r}")
    if rel is not None and sha is None:
        raise f.error("sha256", "is required for bundled files (compute it with `sha256sum FILE`, or for a folder "
                                "such as a SavedModel: python -c \"from mapgate.fsutil import sha256_path; "
                                "print(sha256_path('DIR'))\")")
    return FileRef(role=role, sha256=sha, path=(entry.path.parent / rel) if rel else None, url=url, member=member)


def _target(entry: _Entry, fld: str, key: object) -> str:
    where = f"{fld}.{key}" if fld else str(key)
    if not isinstance(key, str):
        raise entry.error(fld or where, f"entries must be strings like BACKEND:PRECISION, got {key!r}")
    backend, sep, precision = key.partition(":")
    if not sep or not backend or precision not in DEFAULT_TOLERANCES:
        raise entry.error(where, "keys must look like BACKEND:PRECISION with precision fp32, fp16 or int8")
    return key


def _parse_model(path: Path, name: str, table: Any) -> ModelSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: model {name!r} must be a table")
    e = _Entry(path, name, table)
    family = e.get("family", str, choices=FAMILIES)
    fmt = e.get("format", str, choices=tuple(FORMATS))
    reference = e.get("reference_backend", str)
    description = e.get("description", str, "")
    size = e.get("input_size", list)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise e.error("input_size", f"must be [height, width] in pixels, got {size!r}")

    files_e = e.sub("files")
    files = {role: _parse_file(files_e, role, files_e.get(role, dict)) for role in list(files_e.table)}
    missing = [r for r in FORMATS[fmt] if r not in files]
    if missing:
        raise files_e.error(missing[0], f"format {fmt!r} needs files: {', '.join(FORMATS[fmt])}")

    pe = e.sub("preprocess")
    pre = Preprocess(
        resize=pe.get("resize", str, "plain", RESIZE_MODES),
        letterbox_align=pe.get("letterbox_align", str, "center", ("center", "topleft")),
        pad_value=pe.get("pad_value", float, 114.0),
        color=pe.get("color", str, "RGB", ("RGB", "BGR")),
        layout=pe.get("layout", str, "NCHW", ("NCHW", "NHWC")),
        dtype=pe.get("dtype", str, "float32", ("float32", "uint8")),
        scale=pe.get("scale", float, 1.0),
        mean=tuple(_floats(pe, "mean", 3, [0.0, 0.0, 0.0])),
        std=tuple(_floats(pe, "std", 3, [1.0, 1.0, 1.0])),
    )
    pe.reject_unknown()

    qe = e.sub("postprocess")
    post = Postprocess(
        class_space=qe.get("class_space", str, "coco80", CLASS_SPACES),
        class_offset=qe.get("class_offset", int, 1),
        score_threshold=qe.get("score_threshold", float, 0.001),
        nms_iou=qe.get("nms_iou", float, 0.45),
        nms=qe.get("nms", str, "per_class", NMS_MODES),
        multi_label=qe.get("multi_label", bool, True),
        max_detections=qe.get("max_detections", int, 100),
        pre_nms_top_k=qe.get("pre_nms_top_k", int, 0),
        decoder=dict(qe.get("decoder", dict, {})),
    )
    qe.reject_unknown()
    if not 0.0 <= post.score_threshold < 1.0:
        raise qe.error("score_threshold", f"must be in [0, 1), got {post.score_threshold}")
    if not 0.0 < post.nms_iou <= 1.0:
        raise qe.error("nms_iou", f"must be in (0, 1], got {post.nms_iou}")
    if post.max_detections < 1:
        raise qe.error("max_detections", "must be at least 1")

    te = e.sub("tolerance")
    # only explicit overrides are kept, so a verdict can say where its tolerance came from
    tolerances = {p: te.get(p, float) for p in DEFAULT_TOLERANCES if p in te.table}
    te.reject_unknown()
    for precision, value in tolerances.items():
        if value < 0:
            raise te.error(precision, f"tolerances are AP points allowed to be lost and must be >= 0, got {value}")

    optimized = tuple(_target(e, "optimized", t) for t in e.get("optimized", list, []))
    pb = e.sub("prebuilt")
    prebuilt = {_target(pb, "", k): _parse_file(pb, k, pb.get(k, dict)) for k in list(pb.table)}
    ve = e.sub("expected_verdicts")
    expected = {_target(ve, "", k): ve.get(k, str, choices=("pass", "fail")) for k in list(ve.table)}
    input_name = e.get("input_name", str, None)
    output_names = tuple(_strings(e, "output_names"))
    ce = e.sub("convert")
    convert = ConvertOptions(
        resize_loop_output=ce.get("resize_loop_output", str, None),
        int8_keep_float=tuple(_strings(ce, "int8_keep_float")),
        int8_calibration=ce.get("int8_calibration", str, "minmax", INT8_CALIBRATIONS),
        int8_per_channel=ce.get("int8_per_channel", bool, True),
    )
    ce.reject_unknown()
    e.reject_unknown()
    return ModelSpec(
        name=name,
        family=family,
        format=fmt,
        reference_backend=reference,
        files=files,
        input_size=(size[0], size[1]),
        preprocess=pre,
        postprocess=post,
        tolerances=tolerances,
        optimized=optimized,
        prebuilt=prebuilt,
        expected_verdicts=expected,
        input_name=input_name,
        output_names=output_names,
        convert=convert,
        description=description,
        manifest_path=path,
    )


def _strings(e: _Entry, fld: str) -> list[str]:
    values = e.get(fld, list, [])
    if not all(isinstance(v, str) for v in values):
        raise e.error(fld, f"must be a list of strings, got {values!r}")
    return values


def _floats(e: _Entry, fld: str, n: int, default: list[float]) -> list[float]:
    values = e.get(fld, list, default)
    if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise e.error(fld, f"must be a list of {n} numbers, got {values!r}")
    return [float(v) for v in values]
