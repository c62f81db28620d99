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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Protocol

from mapgate.decision import DEFAULT_TOLERANCES, PRECISIONS, resolve_tolerance  # noqa: F401 (DEFAULT_TOLERANCES: re-exported)
from mapgate.errors import ConfigError
from mapgate.paths import safe_component

VERDICTS = ("pass", "fail", "inconclusive")  # the non-inferiority test's outcomes (mapgate.compare)
INT8_CALIBRATIONS = ("minmax", "percentile", "entropy")  # activation-range calibration of INT8 converters
# Which op types carry Q/DQ: "conv" (convolutions only, TensorRT's legal explicit-quantization form) or
# "all" (every op type ONNX Runtime's quantize_static quantizes and its CPU engine fuses)
INT8_OPS = ("conv", "all")
INT8_ACTIVATION_TYPES = ("s8", "u8")  # signed symmetric (TensorRT) | unsigned asymmetric (ORT's U8S8 kernels)

REQUIRED: Any = ...  # a decoder Setting without a default must be given by the manifest


@dataclass(frozen=True)
class Setting:
    """One ``postprocess.decoder`` key a family declares: its TOML type (``list`` with ``item`` for
    arrays), default (``REQUIRED`` = none), allowed values, and one line saying what it is for."""

    kind: type
    default: Any = REQUIRED
    doc: str = ""
    item: type | None = None  # element type of a list
    choices: tuple[Any, ...] | None = None
    length: int | None = None  # exact list length, when fixed
    minimum: float | None = None  # smallest allowed number (for a list: of each entry)


class FamilyDecl(Protocol):
    """What parsing needs of a family's declaration (mapgate.postprocess.family.Family)."""

    @property
    def nms_in_graph(self) -> bool: ...

    @property
    def decoder(self) -> Mapping[str, Setting]: ...


@dataclass(frozen=True)
class Registry:
    """The backends and families found in the installed package: what a manifest may name.
    mapgate.catalog walks the registries and passes this in, so parsing imports none of them."""

    backends: frozenset[str]
    families: Mapping[str, FamilyDecl]


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
RESIZE_MODES = ("plain", "letterbox", "warp")
INTERPOLATIONS = ("linear", "area", "cubic", "nearest", "darknet")


@dataclass(frozen=True)
class FileRef:
    """A model file: a path relative to the manifest, or a URL (optionally a tarball member)."""

    role: str
    sha256: str | None
    path: Path | None = None
    url: str | None = None
    member: str | None = None  # file inside a downloaded .tar.gz
    archive_sha256: str | None = None  # of the downloaded .tar.gz itself, checked before it is opened

    @property
    def display(self) -> str:
        return str(self.path) if self.path is not None else f"{self.url}{'#' + self.member if self.member else ''}"


@dataclass(frozen=True)
class Preprocess:
    resize: str = "plain"  # plain | letterbox | warp (NanoDet's keep-ratio cv2.warpPerspective)
    letterbox_align: str = "center"  # center | topleft
    pad_value: float = 114.0
    color: str = "RGB"  # channel order fed to the network
    layout: str = "NCHW"  # NCHW | NHWC
    dtype: str = "float32"  # float32 | uint8
    scale: float = 1.0  # applied before mean/std: x * scale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # linear | area | cubic | nearest (OpenCV's INTER_*) | darknet (its own resize_image), as the authors' eval resizes
    interpolation: str = "linear"


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
    # Paddle's MultiClassNMS nms_top_k: each class's k best candidates go to its NMS (0 = all)
    pre_nms_top_k_per_class: int = 0
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
    # Data-free fixes before any layer goes back to float (mapgate/convert/dfq.py): cross-layer
    # equalization of consecutive convolutions, bias correction on the calibration images.
    int8_cle: bool = False
    int8_bias_correction: bool = False
    # The Q/DQ form: which op types are quantized, and the activation type (INT8_OPS, INT8_ACTIVATION_TYPES).
    int8_ops: str = "conv"
    int8_activation_type: str = "s8"


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
    expected_verdicts: dict[str, str]  # BACKEND:PRECISION -> one of VERDICTS (known-bad canaries expect "fail")
    input_name: str | None = None
    output_names: tuple[str, ...] = ()
    convert: ConvertOptions = ConvertOptions()
    description: str = ""
    manifest_path: Path = Path()
    # BACKEND:PRECISION -> the verdict expected instead on a CPU whose int8 dot product saturates (mapgate.cpu),
    # where onnxruntime:int8 runs 7-bit weights: the same recipe measures differently on the two kinds of CPU
    expected_verdicts_int8_saturating: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the name becomes a folder under engines/ and reports/: refused here, however the spec was made
        safe_component(self.name, "model name", str(self.manifest_path) if self.manifest_path != Path() else "")

    def tolerance(self, precision: str) -> float:
        return resolve_tolerance(precision, self.tolerances)[0]

    def expected_verdict(self, target: str, int8_saturates: bool) -> str:
        """The verdict the manifest expects for ``target`` on this kind of CPU (default "pass")."""
        if int8_saturates and target in self.expected_verdicts_int8_saturating:
            return self.expected_verdicts_int8_saturating[target]
        return self.expected_verdicts.get(target, "pass")



def read_toml(path: str | Path) -> dict[str, Any]:
    """A manifest's TOML table; a folder, a dangling link or a loop of links, non-UTF-8 bytes and bad
    TOML are errors naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"model manifest {path} is a folder; give the TOML file itself (e.g. {path}/models.toml)")
    if not path.is_file():
        if path.is_symlink():
            raise ConfigError(f"model manifest {path} is a symbolic link that leads nowhere (dangling, or a loop "
                              "of links); point it at the TOML file")
        raise ConfigError(f"model manifest {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"model manifest {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "TOML files must be UTF-8: re-save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"model manifest {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"model manifest {path} is not valid TOML: {exc}") from exc
    _reject_non_finite(path, data, "")
    return data


def parse_manifest(path: str | Path, registry: Registry) -> tuple["ManifestHeader", dict[str, ModelSpec]]:
    """One manifest file, read once: its header (includes, [dataset]) and its own models, whose
    backend and family names are checked against ``registry``."""
    path = Path(path)
    data = read_toml(path)
    header = _parse_header(path, data)
    models = data.get("models")
    if models is None and (header.include or header.dataset is not None):  # only includes others / names data
        return header, {}
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"model manifest {path}: no [models.<name>] tables found")
    return header, {name: _parse_model(path, name, entry, registry) for name, entry in models.items()}


DATASET_FIELDS = ("coco_root", "images", "annotations", "calib_images", "label")


@dataclass(frozen=True)
class DatasetFields:
    """A manifest's ``[dataset]`` table, paths resolved relative to the manifest (None: not given)."""

    coco_root: Path | None = None
    images: Path | None = None  # a folder of images
    annotations: Path | None = None  # their COCO instance annotation file
    calib_images: Path | None = None  # a folder of INT8 calibration images
    label: str | None = None  # the name reports print

    @property
    def names_evaluation_set(self) -> bool:
        return any(v is not None for v in (self.coco_root, self.images, self.annotations))


@dataclass(frozen=True)
class ManifestHeader:
    """A manifest's top-level settings besides its models: other manifests it includes and the
    data set it names, both as paths resolved relative to the manifest."""

    path: Path
    include: tuple[Path, ...] = ()
    dataset: DatasetFields | None = None

    @property
    def coco_root(self) -> Path | None:
        return self.dataset.coco_root if self.dataset is not None else None


def _parse_header(path: Path, data: dict[str, Any]) -> ManifestHeader:
    unknown = sorted(set(data) - {"models", "include", "dataset"})
    if unknown:
        raise ConfigError(f"model manifest {path}: top-level field {unknown[0]!r} is not known "
                          "(known: models, include, dataset)")
    include = data.get("include", [])
    if not isinstance(include, list) or not all(isinstance(i, str) and i.strip() and "\0" not in i for i in include):
        raise ConfigError(f"model manifest {path}: field 'include' must be a list of manifest paths, got {include!r}")
    includes = tuple(path.parent / i for i in include)
    if "dataset" not in data:
        return ManifestHeader(path, includes)
    table = data["dataset"]
    if not isinstance(table, dict):
        raise ConfigError(f"model manifest {path}: [dataset] must be a table ({', '.join(DATASET_FIELDS)}), "
                          f"got {table!r}")
    extra = sorted(set(table) - set(DATASET_FIELDS))
    if extra:
        raise ConfigError(f"model manifest {path}: field 'dataset.{extra[0]}' is not known (known: "
                          f"{', '.join(DATASET_FIELDS)}; paths are relative to the manifest)")
    values: dict[str, Any] = {}
    for key in DATASET_FIELDS:
        if key not in table:
            continue
        value = table[key]
        what = "a name" if key == "label" else ("a file path" if key == "annotations" else "a folder path")
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise ConfigError(f"model manifest {path}: field 'dataset.{key}' must be {what}, got {value!r}")
        if key == "label" and any(ord(c) < 32 for c in value):
            raise ConfigError(f"model manifest {path}: field 'dataset.label' must be one line of text, got {value!r}")
        values[key] = value if key == "label" else path.parent / value
    fields = DatasetFields(**values)
    if fields.coco_root is None and (fields.images is None) != (fields.annotations is None):
        given, missing = ("images", "annotations") if fields.images is not None else ("annotations", "images")
        raise ConfigError(f"model manifest {path}: field 'dataset.{missing}' is required with 'dataset.{given}': an "
                          "evaluation set is an image folder and its COCO annotation file (or give coco_root)")
    return ManifestHeader(path, includes, fields)


def _reject_non_finite(path: Path, value: Any, where: str) -> None:
    """TOML allows nan and inf; no manifest number means either (a nan scale makes both sides
    detect nothing and agree perfectly), so any of them anywhere is an error naming its key."""
    if isinstance(value, float) and not math.isfinite(value):
        model, _, fld = where.removeprefix("models.").partition(".")
        raise ConfigError(f"{path}: model {model!r}, field '{fld or where}': must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(path, v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(path, v, f"{where}[{i}]")


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
    archive_sha = f.get("archive_sha256", str, None)
    f.reject_unknown()
    if (rel is None) == (url is None):
        raise f.error("path", "give exactly one of 'path' (relative to the manifest) or 'url'")
    for key, digest in (("sha256", sha), ("archive_sha256", archive_sha)):
        if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise f.error(key, f"must be 64 lowercase hex digits, got {digest!r}")
    if url is not None:
        _check_url(f, url)
    if archive_sha is not None and member is None:
        raise f.error("archive_sha256", "only applies to a tarball 'member'")
    if rel is not None:
        _check_inside(f, rel)
    if url is not None and member is not None:
        # a tarball member is joined under the extraction folder: the same rules as any path part
        if member.startswith("/") or "\\" in member or any(p in ("", ".", "..") for p in member.split("/")):
            raise f.error("member", f"{member!r} must be a relative path inside the archive without '..'")
    if rel is not None and sha is None:
        raise f.error("sha256", "is required for bundled files (compute it with `sha256sum FILE`, or for a folder "
                                "such as a SavedModel: python -c \"from mapgate.fsutil import sha256_path; "
                                "print(sha256_path('DIR'))\")")
    # resolved: a folder symlinked beside the manifest names the same files (and cache entries) as the original
    return FileRef(role=role, sha256=sha, path=(entry.path.parent / rel).resolve() if rel else None, url=url,
                   member=member,
                   archive_sha256=archive_sha)


def _check_url(f: "_Entry", url: str) -> None:
    """Only web downloads (https; http is refused at download time unless MAPGATE_ALLOW_HTTP=1), and a
    last path component that is a safe file name: it names the file in the mirror and the cache."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise f.error("url", f"{url!r} is not an https:// URL (file://, ftp:// and other schemes are refused; "
                             "give a local file as 'path' relative to the manifest)")
    try:
        safe_component(parts.path.rstrip("/").rsplit("/", 1)[-1], "the URL's file name")
    except ConfigError as exc:
        raise f.error("url", f"{url!r}: {exc}") from None


def _check_inside(f: "_Entry", rel: str) -> None:
    """A bundled path must stay inside the manifest's folder (checked lexically: a symlink placed
    there is the owner's choice). A manifest from a pull request must not read ~/.ssh or /etc,
    and the message never shows the file's content."""
    base = os.path.normpath(f.path.parent.absolute())
    full = os.path.normpath(os.path.join(base, rel))
    if "\0" in rel or os.path.commonpath([base, full]) != base:
        raise f.error("path", f"{rel!r} points outside the manifest's folder {base}; model files must live in or "
                              "below the folder of their manifest (copy or symlink them there)")


def _target(entry: _Entry, fld: str, key: object) -> str:
    where = f"{fld}.{key}" if fld else str(key)
    if not isinstance(key, str):
        raise entry.error(fld or where, f"entries must be strings like BACKEND:PRECISION, got {key!r}")
    backend, sep, precision = key.partition(":")
    if not sep or not backend or precision not in PRECISIONS:
        raise entry.error(where, "keys must look like BACKEND:PRECISION with precision fp32, fp16 or int8")
    return key


def _parse_model(path: Path, name: str, table: Any, registry: Registry) -> ModelSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: model {name!r} must be a table")
    safe_component(name, "model name", f"{path}: [models.{name}]")
    e = _Entry(path, name, table)
    family = e.get("family", str, choices=tuple(registry.families))
    decl = registry.families[family]
    fmt = e.get("format", str, choices=tuple(FORMATS))
    reference = e.get("reference_backend", str)
    if reference not in registry.backends:
        raise e.error("reference_backend", f"unknown backend {reference!r}; known backends: "
                                           f"{', '.join(sorted(registry.backends))}")
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
        interpolation=pe.get("interpolation", str, "linear", INTERPOLATIONS),
    )
    pe.reject_unknown()
    if pre.interpolation == "darknet" and (pre.resize == "warp" or pre.dtype != "float32"):
        # darknet's resize has no warp form, and its float output is what darknet feeds, never rounded to uint8
        raise pe.error("interpolation", "\"darknet\" needs resize = \"plain\" or \"letterbox\" and dtype = "
                                        "\"float32\"")
    if not all(v > 0 for v in pre.std):
        raise pe.error("std", f"must be positive (pixels are divided by it), got {list(pre.std)}")

    output_names = tuple(_strings(e, "output_names"))
    qe = e.sub("postprocess")
    post = Postprocess(
        class_space=qe.get("class_space", str, "coco80", CLASS_SPACES),
        class_offset=qe.get("class_offset", int, 1),
        score_threshold=qe.get("score_threshold", float, 0.001),
        nms_iou=qe.get("nms_iou", float, 0.45),
        nms=qe.get("nms", str, ("none" if decl.nms_in_graph else "per_class"), NMS_MODES),
        multi_label=qe.get("multi_label", bool, True),
        max_detections=qe.get("max_detections", int, 100),
        pre_nms_top_k=qe.get("pre_nms_top_k", int, 0),
        pre_nms_top_k_per_class=qe.get("pre_nms_top_k_per_class", int, 0),
        decoder=_decoder(qe, family, decl, output_names),
    )
    qe.reject_unknown()
    _check_nms_site(qe, family, decl, post.nms)
    if not 0.0 <= post.score_threshold < 1.0:
        raise qe.error("score_threshold", f"must be in [0, 1), got {post.score_threshold}")
    if not 0.0 < post.nms_iou <= 1.0:
        raise qe.error("nms_iou", f"must be in (0, 1], got {post.nms_iou}")
    if post.max_detections < 1:
        raise qe.error("max_detections", "must be at least 1")
    for fld in ("pre_nms_top_k", "pre_nms_top_k_per_class"):
        if getattr(post, fld) < 0:
            raise qe.error(fld, "must be 0 (keep every candidate) or a positive count")

    te = e.sub("tolerance")
    # only explicit overrides are kept, so a verdict can say where its tolerance came from
    tolerances = {p: te.get(p, float) for p in PRECISIONS if p in te.table}
    te.reject_unknown()
    for precision, value in tolerances.items():
        if value < 0:
            raise te.error(precision, f"tolerances are AP points allowed to be lost and must be >= 0, got {value}")

    optimized = tuple(_target(e, "optimized", t) for t in e.get("optimized", list, []))
    pb = e.sub("prebuilt")
    prebuilt = {_target(pb, "", k): _parse_file(pb, k, pb.get(k, dict)) for k in list(pb.table)}
    ve = e.sub("expected_verdicts")
    expected = {_target(ve, "", k): ve.get(k, str, choices=VERDICTS) for k in list(ve.table)}
    vs = e.sub("expected_verdicts_int8_saturating")
    expected_saturating = {_target(vs, "", k): vs.get(k, str, choices=VERDICTS) for k in list(vs.table)}
    input_name = e.get("input_name", str, None)
    ce = e.sub("convert")
    convert = ConvertOptions(
        resize_loop_output=ce.get("resize_loop_output", str, None),
        int8_keep_float=tuple(_strings(ce, "int8_keep_float")),
        int8_calibration=ce.get("int8_calibration", str, "minmax", INT8_CALIBRATIONS),
        int8_per_channel=ce.get("int8_per_channel", bool, True),
        int8_cle=ce.get("int8_cle", bool, False),
        int8_bias_correction=ce.get("int8_bias_correction", bool, False),
        int8_ops=ce.get("int8_ops", str, "conv", INT8_OPS),
        int8_activation_type=ce.get("int8_activation_type", str, "s8", INT8_ACTIVATION_TYPES),
    )
    if "tensorrt:int8" in optimized:
        for field_name, legal in (("int8_ops", "conv"), ("int8_activation_type", "s8")):
            if getattr(convert, field_name) != legal:
                raise ce.error(field_name, f"{getattr(convert, field_name)!r} is not TensorRT's explicit-quantization "
                                           f"form, and tensorrt:int8 is gated: use {legal!r} (the default)")
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
        expected_verdicts_int8_saturating=expected_saturating,
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


# --- families: each family's decoder settings come from its declaration in mapgate/postprocess/ ---------------

def _decoder(qe: _Entry, family: str, decl: FamilyDecl, outputs: tuple[str, ...]) -> dict[str, Any]:
    """``postprocess.decoder`` checked against the family's declared settings, defaults filled in."""
    declared = decl.decoder
    de = qe.sub("decoder")
    required = [k for k, s in declared.items() if s.default is REQUIRED]
    missing = [k for k in required if k not in de.table]
    if missing:  # the required settings name network outputs: a family that does not fit fails here
        raise de.error(missing[0], f"is required: family {family!r} reads the network outputs named by decoder keys "
                                   f"{', '.join(required)} (missing: {', '.join(missing)})"
                                   + (f"; this model's output_names are {list(outputs)}" if outputs else "")
                                   + ". Is 'family' right for this model?")
    out: dict[str, Any] = {}
    for key, s in declared.items():
        value = de.get(key, s.kind, s.default, None if s.kind is list else s.choices)
        if s.kind is list and value is not None and value is not REQUIRED:
            item = s.item or object
            allowed = (int, float) if item is float else item  # TOML writes 8.0 as 8 just as often
            ok = all(isinstance(v, allowed) and (item is bool or not isinstance(v, bool)) for v in value)
            if not ok or (s.length is not None and len(value) != s.length):
                size = f"{s.length} " if s.length is not None else ""
                raise de.error(key, f"must be a list of {size}{item.__name__} values, got {value!r}")
            if s.choices is not None and any(v not in s.choices for v in value):
                raise de.error(key, f"entries must be among {', '.join(map(str, s.choices))}; got {value!r}")
            value = [float(v) for v in value] if item is float else list(value)
        numbers = value if isinstance(value, list) else [value]
        if s.minimum is not None and any(isinstance(v, (int, float)) and v < s.minimum for v in numbers):
            raise de.error(key, f"must be at least {s.minimum:g}, got {value!r}")
        out[key] = value
    if de.table and not declared:
        raise de.error(next(iter(de.table)), f"family {family!r} takes no decoder settings")
    de.reject_unknown()
    return out


def _check_nms_site(qe: _Entry, family: str, decl: FamilyDecl, nms: str) -> None:
    if decl.nms_in_graph and nms != "none":
        raise qe.error("nms", f"family {family!r} takes detections after the graph's own NMS: set nms = \"none\" "
                              f"(got {nms!r}); mapgate only thresholds and caps them")
