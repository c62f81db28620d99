"""Join shard runs (``--shard I/N``) into the run an unsharded gate would have made.

A shard run folder is what ``mapgate compare --shard I/N`` writes: ``RUN/<model>/<target>/``
with detections.json, metrics.json (its ``shard`` object: index, count, image ids, the
content identity of the whole set, the detections' sha256) and, for optimized targets,
comparison.json. Every file is hostile input: each check names the folder it failed on.

The union is evaluated from scratch on the whole set with the same code as an unsharded run:
detections of an image do not depend on which other images share its run, and the records
are put back in image-id order (a stable sort keeps each image's own order), so the stats,
the bootstrap CI (same resamples and seed) and the verdict are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mapgate.backends import parse_target
from mapgate.backends.base import PRECISIONS
from mapgate.bootstrap import per_image_results
from mapgate.catalog import Catalog, cli_manifests, load_catalog
from mapgate.dataset import DataSource
from mapgate.errors import ConfigError, ContractError, DataError
from mapgate.fsutil import INCOMPLETE, fault_point, is_incomplete, mark_complete, mark_incomplete, sha256_bytes, write_json_atomic
from mapgate.gate import DEFAULT_REPORTS, Gate, Side, contract_hash

# identity entries that name where a file was on the machine that ran the shard, not what ran
_LOCAL_KEYS = ("artifact", "stored")


@dataclass
class ShardSide:
    """One side (model on one target) of one shard, read and checked."""

    folder: Path  # RUN/<model>/<target>
    meta: dict[str, Any]
    detections: list[dict[str, Any]]
    comparison: dict[str, Any] | None

    @property
    def shard(self) -> dict[str, Any]:
        return self.meta["shard"]

    @property
    def key(self) -> tuple[str, str]:
        return self.meta["model"], f"{self.meta['backend']}:{self.meta['precision']}"


def _fail(where: Path, what: str) -> DataError:
    return DataError(f"shard {where}: {what}")


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _fail(path.parent, f"{path.name} is unreadable or not JSON ({exc})") from exc


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def read_side(folder: Path) -> ShardSide:
    """A shard side folder, with every field merge relies on type-checked."""
    for where in (folder, folder.parent.parent):
        if is_incomplete(where):
            raise _fail(where, f"marked incomplete ({INCOMPLETE}): the run that wrote it was killed or is still "
                               "running; re-run that shard")
    meta = _read_json(folder / "metrics.json")
    if not isinstance(meta, dict):
        raise _fail(folder, "metrics.json: top level must be an object")
    for key in ("model", "backend", "precision", "contract_hash", "mapgate_version"):
        if not isinstance(meta.get(key), str):
            raise _fail(folder, f"metrics.json: missing or non-string '{key}'")
    if meta["precision"] not in ("original", *PRECISIONS):
        raise _fail(folder, f"metrics.json: precision {meta['precision']!r} is none of original, {', '.join(PRECISIONS)}")
    for key in ("identity", "shard", "timings_ms_per_image"):
        if not isinstance(meta.get(key), dict):
            raise _fail(folder, f"metrics.json: missing or non-object '{key}'"
                        + (" (not a --shard run)" if key == "shard" else ""))
    shard = meta["shard"]
    index, count = shard.get("index"), shard.get("count")
    if not (_int_list([index, count]) and 1 <= index <= count):
        raise _fail(folder, f"metrics.json: shard index/count must be whole numbers with 1 <= I <= N, "
                            f"got {index!r}/{count!r}")
    if not _int_list(shard.get("image_ids")) or len(set(shard["image_ids"])) != len(shard["image_ids"]):
        raise _fail(folder, "metrics.json: shard.image_ids must be a list of distinct whole numbers")
    if not isinstance(shard.get("of"), dict) or not isinstance(shard.get("detections_sha256"), str):
        raise _fail(folder, "metrics.json: shard.of (object) and shard.detections_sha256 (string) are required")
    raw = (folder / "detections.json").read_bytes() if (folder / "detections.json").is_file() else None
    if raw is None:
        raise _fail(folder, "detections.json is missing")
    if sha256_bytes(raw) != shard["detections_sha256"]:
        raise _fail(folder, "detections.json does not match the sha256 its metrics.json records "
                            "(edited or truncated after the run)")
    try:
        detections = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _fail(folder, f"detections.json is not JSON ({exc})") from exc
    if not isinstance(detections, list) or not all(isinstance(d, dict) for d in detections):
        raise _fail(folder, "detections.json must be a list of COCO result objects")
    if not all(isinstance(d.get("image_id"), int) and not isinstance(d.get("image_id"), bool) for d in detections):
        raise _fail(folder, "detections.json: every record needs a whole-number image_id")
    own = set(shard["image_ids"])
    strays = {d["image_id"] for d in detections} - own
    if strays:
        raise _fail(folder, f"detections.json has records of image ids outside this shard: {sorted(map(str, strays))[:5]}")
    comparison = None
    if (folder / "comparison.json").is_file():
        comparison = _read_json(folder / "comparison.json")
        if not isinstance(comparison, dict) or not isinstance(comparison.get("ci"), dict) \
                or not isinstance(comparison.get("ref"), dict):
            raise _fail(folder, "comparison.json: not a mapgate comparison (no 'ci'/'ref' objects)")
    return ShardSide(folder, meta, detections, comparison)


def find_shards(dirs: Sequence[Path]) -> dict[Path, list[ShardSide]]:
    """Shard run folders under ``dirs``: run folder -> its sides (RUN/<model>/<target>/metrics.json)."""
    runs: dict[Path, list[ShardSide]] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"shard folder {d} does not exist")
        found = sorted(p for p in d.rglob("metrics.json") if p.is_file() and not p.is_symlink())
        if not found:
            raise DataError(f"shard folder {d}: no <model>/<target>/metrics.json inside (not a mapgate run folder)")
        for path in found:
            run = path.parent.parent.parent
            side = read_side(path.parent)
            sides = runs.setdefault(run, [])
            if path.parent not in {s.folder for s in sides}:
                sides.append(side)
    return runs


def _check_same(runs: dict[Path, list[ShardSide]]) -> tuple[list[Path], dict[str, Any]]:
    """All runs hold the same sides, of the same set, with distinct indexes 1..N; returns the runs
    in shard order and the set's identity."""
    by_index: dict[int, Path] = {}
    first_run, first = next(iter(runs.items()))
    keys = sorted(s.key for s in first)
    ident = first[0].shard["of"]
    count = first[0].shard["count"]
    for run, sides in runs.items():
        if sorted(s.key for s in sides) != keys:
            raise _fail(run, f"holds sides {sorted(s.key for s in sides)}, but {first_run} holds {keys}: every shard "
                             "must run the same models and targets")
        indexes = {(s.shard["index"], s.shard["count"]) for s in sides}
        ids = {tuple(s.shard["image_ids"]) for s in sides}
        if len(indexes) != 1 or len(ids) != 1:
            raise _fail(run, "its sides disagree about which shard this is (mixed runs in one folder?)")
        (index, n), = indexes
        if n != count:
            raise _fail(run, f"is shard {index}/{n}, but {first_run} is of {count} shards")
        if index in by_index:
            raise _fail(run, f"is shard {index}/{n}, like {by_index[index]}: the same shard given twice")
        by_index[index] = run
        for s in sides:
            if s.shard["of"] != ident:
                raise _fail(s.folder, f"ran on data set {s.shard['of']}, but {first[0].folder} on {ident}")
    missing = sorted(set(range(1, count + 1)) - set(by_index))
    if missing:
        raise DataError(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing (given: "
                        f"{', '.join(f'{i}/{count} in {r}' for i, r in sorted(by_index.items()))})")
    return [by_index[i] for i in sorted(by_index)], ident


def _portable(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k not in _LOCAL_KEYS}


def merge_shards(dirs: Sequence[Path], *, reports_dir: Path | None = None, catalog: Catalog | None = None,
                 data: DataSource | None = None) -> tuple[Any, list[Any]]:
    """Check, join, evaluate and gate shard runs; returns the Gate of the merged run and its verdicts.
    ``catalog``: the manifests the shards ran with (default: as the CLI finds them); ``data``: their
    data set (default: the catalog's [dataset], else the bundled val2017-mini)."""

    catalog = catalog if catalog is not None else load_catalog(cli_manifests(()))
    data = data if data is not None else catalog.data_source()

    runs = find_shards(dirs)
    order, ident = _check_same(runs)
    n_images = ident.get("n_images")
    if not isinstance(n_images, int) or n_images < 1:
        raise _fail(order[0], f"metrics.json: shard.of.n_images must be a positive whole number, got {n_images!r}")
    dataset = data.open(n_images)
    if dataset.content_identity() != ident:
        raise DataError(f"the shards ran on {ident}, but this data set ({dataset.label}) is {dataset.content_identity()}; "
                        "give the data set the shards used (--coco-root, --images/--annotations, --dataset-label)")
    models = catalog.models
    gate = Gate(models=models, dataset=dataset, reports_dir=reports_dir or catalog.base / DEFAULT_REPORTS,
                use_cache=False, progress=False)
    sides = {run: {s.key: s for s in runs[run]} for run in order}
    all_ids = list(dataset.image_ids)
    verdicts = []
    comparisons = {}
    for key in sorted(sides[order[0]]):
        parts = [sides[run][key] for run in order]
        if key[0] not in models:
            raise _fail(parts[0].folder, f"model {key[0]!r} is not in the manifest here; pass its --models-file")
        first = _check_comparisons(parts)
        if first is None:
            continue
        if key[1].endswith(":original") or (key[0], f"{first['ref']['target']}:original") not in sides[order[0]]:
            raise _fail(parts[0].folder, f"comparison.json compares against {first['ref']['target']!r}, which is "
                                         "not an optimized target with its reference side in every shard")
        parse_target(key[1])  # a known backend, before anything is written
        precision = key[1].partition(":")[2]
        if first.get("tolerance_source") != "command line" and first["tolerance"] != models[key[0]].tolerance(precision):
            raise ConfigError(f"shard {parts[0].folder}: gated with tolerance {first['tolerance']}, the manifest here "
                              f"says {models[key[0]].tolerance(precision)}; use the manifest the shards used")
        comparisons[key] = (first, parts[0].folder)
    if not comparisons:
        raise DataError(f"no comparison.json in the shards ({', '.join(map(str, order))}): merge gates `mapgate "
                        "compare --shard` runs")
    merged: list[Any] = []
    record: dict[str, Any] = {"shards": [{"index": i + 1, "folder": str(run)} for i, run in enumerate(order)],
                              "dataset": ident, "sides": {}}
    for key in sorted(sides[order[0]]):
        parts = [sides[run][key] for run in order]
        model_name = key[0]
        if model_name not in models:
            raise _fail(parts[0].folder, f"model {model_name!r} is not in the manifest here; pass its --models-file")
        for p in parts:
            if p.meta["contract_hash"] != contract_hash(models[model_name]):
                raise _fail(p.folder, f"contract hash {p.meta['contract_hash']} differs from model {model_name!r}'s "
                                      f"{contract_hash(models[model_name])} here (model files or pre/post-processing "
                                      "changed)")
            for field in ("contract_hash", "mapgate_version"):
                if p.meta[field] != parts[0].meta[field]:
                    raise _fail(p.folder, f"{field} {p.meta[field]!r} differs from {parts[0].folder}'s "
                                          f"{parts[0].meta[field]!r}")
            if _portable(p.meta["identity"]) != _portable(parts[0].meta["identity"]):
                raise _fail(p.folder, f"ran a different engine/model file than {parts[0].folder} "
                                      f"({_portable(p.meta['identity'])} vs {_portable(parts[0].meta['identity'])}); "
                                      "build it once and give every shard the same engines folder")
        seen: dict[int, Path] = {}
        for p in parts:
            for i in p.shard["image_ids"]:
                if i in seen:
                    raise _fail(p.folder, f"image id {i} is also in {seen[i]}: shards must be disjoint")
                seen[i] = p.folder
        if sorted(seen) != all_ids:
            extra, lost = sorted(set(seen) - set(all_ids)), sorted(set(all_ids) - set(seen))
            raise DataError(f"shards of {model_name} {key[1]} do not cover {dataset.label} exactly: "
                            f"{len(lost)} images missing (e.g. {lost[:5]}), {len(extra)} not in it (e.g. {extra[:5]})")
        # stable sort: the shards' own per-image record order is the unsharded run's
        detections = sorted((d for p in parts for d in p.detections), key=lambda d: int(d["image_id"]))
        try:
            per_image = per_image_results(gate.ground_truth, detections, all_ids, label=dataset.label)
        except (ContractError, TypeError, ValueError, KeyError) as exc:
            raise DataError(f"shards of {model_name} {key[1]} ({', '.join(str(p.folder) for p in parts)}): "
                            f"detections are not valid COCO results ({exc})") from exc
        for p in parts:
            _check_recorded_stats(gate, p)
        n_total = sum(len(p.shard["image_ids"]) for p in parts)
        try:  # the image-weighted mean of the shards' per-image timings
            timings = {stage: sum(float(p.meta["timings_ms_per_image"].get(stage, 0.0)) * len(p.shard["image_ids"])
                                  for p in parts) / n_total for stage in parts[0].meta["timings_ms_per_image"]}
        except (TypeError, ValueError) as exc:
            raise DataError(f"shards of {model_name} {key[1]}: timings_ms_per_image must hold numbers ({exc})") from exc
        backend, _, precision = key[1].partition(":")
        merged.append(Side(model_name, backend, None if precision == "original" else precision, detections,
                           per_image.metrics, timings, dict(parts[0].meta["identity"]), from_cache=True,
                           per_image=per_image))
        record["sides"][f"{model_name} {key[1]}"] = [p.shard["detections_sha256"] for p in parts]
    mark_incomplete(gate.run_dir, "mapgate merge")
    for side in merged:  # written only once every shard has passed every check
        gate.add_side(side)
    for key, (first, where) in comparisons.items():
        verdicts.append(_gate_union(gate, key, first, where))
    fault_point("merge")  # the comparisons written, the record of what was joined not yet
    write_json_atomic(gate.run_dir / "merge.json", record)
    gate.write_env()
    mark_complete(gate.run_dir)
    return gate, verdicts


def _check_recorded_stats(gate: Any, part: ShardSide) -> None:
    """The stats a shard recorded are those of its detections: a shard whose detections were edited
    together with their recorded sha256 still disagrees with its own evaluation."""
    recorded = part.meta.get("stats")
    if not isinstance(recorded, dict) or not recorded:
        raise _fail(part.folder, "metrics.json: missing or non-object 'stats'")
    try:
        own = per_image_results(gate.ground_truth, part.detections, part.shard["image_ids"]).metrics.stats
    except (ContractError, TypeError, ValueError, KeyError) as exc:
        raise _fail(part.folder, f"detections.json: not valid COCO results ({exc})") from exc
    for name, value in own.items():
        got = recorded.get(name)
        if not isinstance(got, (int, float)) or isinstance(got, bool) or abs(float(got) - float(value)) > 1e-9:
            raise _fail(part.folder, f"metrics.json: stats.{name} {got!r} is not what its detections.json "
                                     f"evaluates to ({float(value):.6f}); the shard's files were edited after the run")


def _check_comparisons(parts: list[ShardSide]) -> dict[str, Any] | None:
    """The shards' comparison.json agree on what the gate needs (checked before anything is written)."""
    comps = [p.comparison for p in parts]
    if all(c is None for c in comps):
        return None
    for p, c in zip(parts, comps):
        if c is None:
            having = next(q.folder for q, k in zip(parts, comps) if k is not None)
            raise _fail(p.folder, f"has no comparison.json, but {having} has one (a killed or partial shard run?)")
        for field in ("tolerance", "tolerance_source"):
            if c.get(field) != comps[0].get(field):
                raise _fail(p.folder, f"comparison.json {field} {c.get(field)!r} differs from {parts[0].folder}'s "
                                      f"{comps[0].get(field)!r}")
        if not isinstance(c.get("ci"), dict) or not isinstance(c.get("ref"), dict) or \
                [c["ci"].get("n_resamples"), c["ci"].get("seed"), c["ref"].get("target")] != \
                [comps[0]["ci"].get("n_resamples"), comps[0]["ci"].get("seed"), comps[0]["ref"].get("target")]:
            raise _fail(p.folder, "comparison.json: bootstrap resamples/seed or reference differ from the other shards'")
    first = comps[0]
    resamples, ref, seed = first["ci"].get("n_resamples"), first["ref"].get("target"), first["ci"].get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail(parts[0].folder, f"comparison.json: ci.seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(resamples, int) or resamples < 1 or not isinstance(ref, str) or ref.startswith("stored:"):
        raise _fail(parts[0].folder, "comparison.json: needs a positive ci.n_resamples and a reference backend "
                                     "(merging stored references is not supported)")
    tolerance = first.get("tolerance")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise _fail(parts[0].folder, f"comparison.json: tolerance must be a number >= 0, got {tolerance!r}")
    return first


def _gate_union(gate: Any, key: tuple[str, str], first: dict[str, Any], where: Path) -> Any:
    """compare() on the merged sides, with the shards' own tolerance, reference and bootstrap settings."""
    resamples, ref, tolerance = first["ci"]["n_resamples"], first["ref"]["target"], first["tolerance"]
    gate.bootstrap_resamples, gate.bootstrap_seed = resamples, first["ci"]["seed"]
    model_name, target = key
    gate.recorded_speed[key] = first.get("speed")  # timed by the shard runs, on their machine
    verdict = gate.compare(model_name, target, ref=ref,
                           tolerance=tolerance if first.get("tolerance_source") == "command line" else None)
    if verdict.tolerance != tolerance:
        raise ConfigError(f"shard {where}: gated with tolerance {tolerance}, the manifest here says "
                          f"{verdict.tolerance} ({verdict.tolerance_source}); use the manifest the shards used")
    return verdict


__all__ = ["find_shards", "merge_shards", "read_side"]
