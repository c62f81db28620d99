"""Which manifests a run reads, every model they declare (includes walked) and the data set they name.

The CLI, the pytest plugin, ``mapgate merge`` and the gate load manifests only through here, so
``include`` and ``[dataset]`` mean the same everywhere (mapgate.manifest parses one file; this
module walks files). A catalog's *roots* are the manifests a run was given: ``--models-file``
(or ``--mapgate-manifest``), else ``mapgate.toml`` in the working directory (the pytest rootdir),
else, in a source checkout only, mapgate's own demo manifest. The folder of the first root is
the run's *base*: the default ``engines/`` and ``reports/`` live there (the working directory
without a manifest), never inside the installed package, so the CLI reuses what pytest cached.

Includes are hostile input like model file paths: an include must stay inside the folder of
the root manifest that started the walk (checked lexically: a symlink placed there is the
owner's choice, the documented way out), must be a TOML file, and may not come back to a file
already on its own include chain (a cycle is an error naming the chain).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mapgate.dataset import DataSource
from mapgate.errors import ConfigError
from mapgate.backends import all_backends
from mapgate.manifest import DatasetFields, ManifestHeader, ModelSpec, Registry, parse_manifest
from mapgate.postprocess.family import all_families

MANIFEST_NAME = "mapgate.toml"
CHECKOUT = Path(__file__).resolve().parent.parent  # a source checkout's root; site-packages in a wheel install
DEMO_MANIFEST = CHECKOUT / "fixtures" / "models.toml"  # the bundled demo models: not package data
CHECKOUT_MANIFEST = CHECKOUT / MANIFEST_NAME  # mapgate's own gate, which includes DEMO_MANIFEST


def in_checkout() -> bool:
    """Whether mapgate runs from its source checkout (the demo manifest beside the package)."""
    return CHECKOUT_MANIFEST.is_file() and DEMO_MANIFEST.is_file() and (CHECKOUT / "pyproject.toml").is_file()


def cli_manifests(models_files: Sequence[Path], cwd: Path | None = None) -> list[Path]:
    """The root manifests of a CLI run: those named, else ./mapgate.toml, else the checkout's own."""
    if models_files:
        return [Path(p) for p in models_files]
    here = Path(cwd or Path.cwd()) / MANIFEST_NAME
    if here.exists() or here.is_symlink():  # a broken one is an error naming it, not a silent fallback
        return [here]
    if in_checkout():
        return [CHECKOUT_MANIFEST]
    raise ConfigError(f"no model manifest: {here} does not exist. Give one with --models-file FILE, or run in the "
                      f"folder holding your {MANIFEST_NAME}")


@dataclass(frozen=True)
class Catalog:
    """The models and data declarations of a run's root manifests."""

    roots: tuple[Path, ...]
    trees: dict[Path, dict[str, ModelSpec]]  # root -> its models and those of the files it includes
    headers: tuple[ManifestHeader, ...]  # every manifest read, in walk order
    models: dict[str, ModelSpec] = field(default_factory=dict)  # all roots' models, merged

    @property
    def base(self) -> Path:
        """Where this run's default engines/ and reports/ go: the first root manifest's folder."""
        return self.roots[0].parent if self.roots else Path.cwd()

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ConfigError(f"unknown model {name!r}; known models: {', '.join(self.models) or '(none)'} "
                              f"(from {', '.join(map(str, self.roots))})")
        return self.models[name]

    def data_source(self, *, coco_root: Path | None = None, images: Path | None = None,
                    annotations: Path | None = None, calib_images: Path | None = None,
                    label: str | None = None) -> DataSource:
        """The data set of this run: the options where given, else the manifests' ``[dataset]``, else
        the bundled val2017-mini and calib-val2017. The evaluation set (coco_root, images,
        annotations) is taken whole from one place: an option never mixes with the manifest's
        fields, and then the manifest's label (which names its own set) is not used either."""
        declared = dataset_of(self.headers)
        if coco_root is not None or images is not None or annotations is not None:
            where = ", ".join(f"--{k.replace('_', '-')}" for k, v in
                              (("coco_root", coco_root), ("images", images), ("annotations", annotations)) if v)
            evaluation = DataSource.declare(coco_root=coco_root, images=images, annotations=annotations, where=where)
            base_label = label
        else:
            fields, where = declared.get("evaluation", (DatasetFields(), ""))
            evaluation = DataSource.declare(coco_root=fields.coco_root, images=fields.images,
                                            annotations=fields.annotations, where=where)
            base_label = label or declared.get("label", (DatasetFields(), ""))[0].label
        calib = calib_images or declared.get("calib_images", (DatasetFields(), ""))[0].calib_images
        return DataSource(evaluation.images, evaluation.annotations, calib, base_label, evaluation.declared_in,
                          evaluation.coco_root)


def dataset_of(headers: Sequence[ManifestHeader]) -> dict[str, tuple[DatasetFields, str]]:
    """The one data declaration of a set of manifests, by part ('evaluation', 'calib_images',
    'label') -> (the fields, 'manifest X [dataset]'); manifests naming different ones are an error."""
    found: dict[str, tuple[DatasetFields, str, object]] = {}
    for h in headers:
        d = h.dataset
        if d is None:
            continue
        where = f"{h.path} [dataset]"
        parts = {"evaluation": (_key(d.coco_root), _key(d.images), _key(d.annotations))
                 if d.names_evaluation_set else None,
                 "calib_images": _key(d.calib_images) if d.calib_images is not None else None,
                 "label": d.label}
        for part, key in parts.items():
            if key is None:
                continue
            if part in found and found[part][2] != key:
                raise ConfigError(f"manifests name different data sets ({part}): {found[part][1]} and {where}; "
                                  "keep one [dataset], or override it on the command line (--coco-root, --images/"
                                  "--annotations, --calib-dir, --dataset-label)")
            found.setdefault(part, (d, where, key))
    return {part: (d, where) for part, (d, where, _) in found.items()}


def _key(path: Path | None) -> str | None:
    return os.path.realpath(path) if path is not None else None


def load_catalog(roots: Sequence[Path]) -> Catalog:
    """Read every root manifest and the files it includes; models merged across roots (a name
    declared by two different files is an error naming both)."""
    trees: dict[Path, dict[str, ModelSpec]] = {}
    headers: list[ManifestHeader] = []
    merged: dict[str, ModelSpec] = {}
    for root in roots:
        models, read = walk(Path(root))
        trees[Path(root)] = models
        headers.extend(read)
        for name, spec in models.items():
            add_model(merged, name, spec)
    return Catalog(tuple(Path(r) for r in roots), trees, tuple(headers), merged)


def load_models(manifest_files: Sequence[Path] = ()) -> dict[str, ModelSpec]:
    """The models a CLI run sees: ``manifest_files`` (includes walked), else the default manifest."""
    return load_catalog(cli_manifests(manifest_files)).models


def registry() -> Registry:
    """The backend and family names a manifest may use: those found in the installed package
    (each walk is cached by its registry; this only repackages them)."""
    return Registry(backends=frozenset(all_backends()),
                    families=MappingProxyType({name: decl for name, (decl, _) in all_families().items()}))


def load_manifest(path: str | Path) -> dict[str, ModelSpec]:
    """One manifest's own models (not those of the files it includes), validated against the registries."""
    return parse_manifest(path, registry())[1]


def walk(root: Path) -> tuple[dict[str, ModelSpec], list[ManifestHeader]]:
    """One root manifest and everything it includes, depth first in include order."""
    repository = os.path.normpath(root.parent.absolute())
    models: dict[str, ModelSpec] = {}
    headers: list[ManifestHeader] = []
    done: set[str] = set()

    def visit(path: Path, chain: tuple[Path, ...]) -> None:
        ident = os.path.realpath(path)
        if ident in done:  # reached again through another branch (a diamond): already read
            return
        header, own = parse_manifest(path, registry())
        done.add(ident)
        headers.append(header)
        for name, spec in own.items():
            add_model(models, name, spec)
        for target in header.include:
            _check_include(path, target, repository, (*chain, path))
            visit(target, (*chain, path))

    visit(root, ())
    return models, headers


def _check_include(parent: Path, target: Path, repository: str, chain: tuple[Path, ...]) -> None:
    where = f"{parent}: field 'include'"
    try:  # the include as written: pathlib joins lexically, so the text is recovered exactly
        rel = str(target.relative_to(parent.parent))
    except ValueError:  # an absolute path elsewhere
        rel = str(target)
    full = os.path.normpath(target.absolute())
    if os.path.commonpath([repository, full]) != repository:
        raise ConfigError(f"{where}: {rel!r} points outside the repository {repository}; included manifests must "
                          "live in or below the folder of the root manifest (copy or symlink them there)")
    ident = os.path.realpath(target)
    on_chain = [p for p in chain if os.path.realpath(p) == ident]
    if on_chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(on_chain[0]):], target))
        raise ConfigError(f"{where}: {rel!r} is already on this include chain ({cycle}): an include cycle; "
                          "remove one of the includes")
    if target.is_dir():
        raise ConfigError(f"{where}: {rel!r} is a folder; include the TOML file itself (e.g. {rel}/models.toml)")
    if not target.is_file():
        hint = " (a symbolic link that leads nowhere, or a loop of links)" if target.is_symlink() else ""
        raise ConfigError(f"{where}: {target} does not exist{hint}")


def add_model(models: dict[str, ModelSpec], name: str, spec: ModelSpec) -> None:
    """Add ``spec``; the same entry reached twice is fine, two files declaring one name are not."""
    if name in models and os.path.realpath(models[name].manifest_path) != os.path.realpath(spec.manifest_path):
        raise ConfigError(f"model {name!r} is defined in both {models[name].manifest_path} and "
                          f"{spec.manifest_path}; rename one entry")
    models[name] = spec
