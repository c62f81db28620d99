"""The one artifact cache: conversions, TensorRT engines and INT8 calibration tables, detections
and bootstrap results, all under the engines dir, all with the same key, layout and checks.

Layout (``<model>`` is the model name as a safe path component)::

    <root>/<model>/<kind>-<key16><suffix>             the artifact
    <root>/<model>/<kind>-<key16>.provenance.json     its key fields, size, sha256, where it came from
    <root>/<model>/.<kind>-<key16>.lock               build lock (kept on purpose, see fsutil.file_lock)
    <root>/<model>/<kind>-<key16>.failed.json         a conversion that failed for these inputs, remembered
    <root>/.tmp/tmp.<host>-<pid>-<rand>/              a build's private temp folder (e.g. ONNX Runtime's)

The key is :func:`cache_key` of a kind and a JSON mapping of everything that determines the
artifact: content hashes, versions, settings. Never paths: a copied engines dir, data set or
repository still hits (``Path`` values in key fields are refused).

An artifact is used only if its provenance parses, has the expected field types, names the same
kind, key and key fields, and records the file's exact size and sha256; and, if the caller gives
a ``load`` callback, that callback accepts it (it raises :class:`CorruptArtifact` otherwise).
Anything else is deleted and rebuilt, never silently reused. A build runs under the entry's
lock (two processes asking for the same key build once), writes a temporary ``.part`` file
that is fsync'ed and renamed into place, then the provenance: a run killed at any point leaves
either nothing or an entry the next run rejects. Leftover ``.part`` files and temp folders of
dead runs are removed by :func:`sweep` when a cache is next opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Generic, TypeVar

from mapgate import __version__ as MAPGATE_VERSION
from mapgate.errors import ConversionError, DataError, MapgateError, StorageError
from mapgate.failures import is_environment, third_party_message, traceback_lines
from mapgate.paths import safe_component
from mapgate.fsutil import (
    PART_SUFFIX,
    add_hash_memo_rows,
    atomic_path,
    content_sha256,
    fault_point,
    hash_memo_rows,
    file_lock,
    leftover_is_stale,
    private_tempdir,
    sha256_bytes,
    sha256_json,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

# Bump when the meaning of keys or the provenance layout changes: every old entry then misses.
KEY_SCHEMA = 2
PROVENANCE_SUFFIX = ".provenance.json"
FAILURE_SUFFIX = ".failed.json"
RETRY_ENV = "MAPGATE_RETRY_FAILED"  # =1: build again even where a failure is remembered
TMP_DIR = ".tmp"

T = TypeVar("T")


class CorruptArtifact(DataError):
    """Raised by ``load`` callbacks: the cached bytes passed their hash but cannot be used (an
    engine that does not deserialize, a detections file that is not a list). The cache deletes
    the entry and rebuilds."""


def cache_key(kind: str, fields: Mapping[str, Any]) -> str:
    """THE cache key: sha256 of the schema, the kind and the canonical JSON of ``fields``."""
    return sha256_json({"schema": KEY_SCHEMA, "kind": kind, "fields": canonical_fields(fields)})


def without_paths(obj: Any) -> Any:
    """``obj`` without the absolute paths of existing files (at any depth), for key fields: the
    content hashes beside them already say what the files are, and a key must not change when
    the engines dir, the data or the repository is copied elsewhere."""
    if isinstance(obj, Mapping):
        return {k: without_paths(v) for k, v in obj.items() if not _is_local_path(v)}
    if isinstance(obj, (list, tuple)):
        return [without_paths(v) for v in obj if not _is_local_path(v)]
    return obj


def _is_local_path(value: Any) -> bool:
    return isinstance(value, PurePath) or (isinstance(value, str) and os.path.isabs(value) and os.path.exists(value))


def canonical_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as plain JSON data (what the provenance records and is compared against)."""
    def refuse(obj: Any) -> Any:
        if isinstance(obj, PurePath):
            raise TypeError(f"a path ({obj}) in cache key fields: keys hold content hashes, never locations, "
                            "so a copied engines dir or data set still hits")
        if hasattr(obj, "tolist"):  # numpy scalars
            return obj.tolist()
        raise TypeError(f"cache key fields must be JSON data, got {type(obj).__name__}")

    return json.loads(json.dumps(dict(fields), sort_keys=True, default=refuse))


@dataclass(frozen=True)
class Slot:
    """Where the artifact of one (model, kind, key) lives."""

    root: Path
    model: str
    kind: str
    fields: dict[str, Any]
    key: str
    suffix: str

    @property
    def stem(self) -> str:
        return f"{safe_component(self.kind, 'cache kind')}-{self.key[:16]}"

    @property
    def dir(self) -> Path:
        d = self.root / safe_component(self.model, "model name")
        if d.is_symlink():  # a planted link would put cache files (and reads of them) outside --engines-dir
            raise StorageError(f"engines folder {self.root}: {d.name} is a symbolic link (to {os.readlink(d)}), "
                               "not a folder; cache files stay inside the engines folder: remove the link")
        return d

    @property
    def path(self) -> Path:
        return self.dir / f"{self.stem}{self.suffix}"

    @property
    def provenance_path(self) -> Path:
        return self.dir / f"{self.stem}{PROVENANCE_SUFFIX}"

    @property
    def lock_path(self) -> Path:
        return self.dir / f".{self.stem}.lock"

    @property
    def failure_path(self) -> Path:
        """Where a build that failed for these inputs is remembered (see :func:`cached_artifact`)."""
        return self.dir / f"{self.stem}{FAILURE_SUFFIX}"


@dataclass(frozen=True)
class Found:
    """A verified cached file: its provenance and, when asked for, the very bytes that were hashed."""

    path: Path
    provenance: dict[str, Any]
    data: bytes | None


@dataclass
class Entry(Generic[T]):
    path: Path
    provenance: dict[str, Any]
    value: T  # what ``load`` returned; the path when there is no ``load``
    built: bool  # True: built in this call; False: reused
    reason: str  # why it was (re)built, or "cache hit"


# Provenance fields every entry has, with their JSON types (bool is not an int here).
_PROVENANCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": int, "kind": str, "model": str, "key": str, "key_fields": dict, "file": dict,
    "built_at": str, "build_seconds": (int, float), "mapgate_version": str,
}
_FILE_TYPES: dict[str, type] = {"name": str, "size": int, "sha256": str}


def provenance_problem(prov: Any) -> str:
    """What is wrong with a provenance record's shape ("" if nothing): missing fields, wrong types."""
    if not isinstance(prov, dict):
        return f"is a JSON {type(prov).__name__}, not an object"
    for where, record, types in (("", prov, _PROVENANCE_TYPES), ("file.", prov.get("file"), _FILE_TYPES)):
        if not isinstance(record, dict):
            return f"field 'file' is {type(record).__name__}, expected object"
        for name, expected in types.items():
            value = record.get(name)
            if name not in record:
                return f"has no field '{where}{name}'"
            if isinstance(value, bool) or not isinstance(value, expected):
                want = expected.__name__ if isinstance(expected, type) else "number"
                return f"field '{where}{name}' is {type(value).__name__}, expected {want}"
    return ""


def _diff(old: Any, new: Mapping[str, Any]) -> str:
    """Which key fields changed, for the rebuild message."""
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(changed) if changed else "its key differs"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ArtifactCache:
    """The cache under one engines dir. Cheap to create; the first one per root sweeps leftovers."""

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout_s: float | None = None) -> None:
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s  # None: MAPGATE_LOCK_TIMEOUT, default one hour
        sweep(self.root)

    def slot(self, model: str, kind: str, fields: Mapping[str, Any], suffix: str) -> Slot:
        canonical = canonical_fields(fields)
        return Slot(self.root, model, kind, canonical, cache_key(kind, canonical), suffix)

    # ---- checks ----------------------------------------------------------------------------
    def verify(self, slot: Slot, *, read: bool = False) -> tuple[Found | None, str]:
        """(Found, "") for a valid entry, else (None, why not). Nothing is deleted. ``read``: return
        the file's bytes, hashed in memory, so a concurrent replace cannot slip between check and use."""
        path, prov_path, what = slot.path, slot.provenance_path, slot.kind
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None, f"no cached {what}"
        except OSError as exc:
            return None, f"cached {path.name} cannot be read ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return None, f"cached {path.name} is not a plain file"
        try:
            prov = json.loads(prov_path.read_bytes())
        except FileNotFoundError:
            return None, f"{path.name} has no provenance file {prov_path.name}"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, f"provenance {prov_path.name} is not valid JSON ({exc})"
        except OSError as exc:
            return None, f"provenance {prov_path.name} cannot be read ({exc.strerror})"
        problem = provenance_problem(prov)
        if problem:
            return None, f"provenance {prov_path.name} {problem} (damaged)"
        if (prov["schema"], prov["kind"], prov["key"]) != (KEY_SCHEMA, slot.kind, slot.key) \
                or prov["key_fields"] != slot.fields:
            return None, f"stale provenance {prov_path.name}: {_diff(prov['key_fields'], slot.fields)}"
        recorded = prov["file"]
        if recorded["name"] != path.name or st.st_size != recorded["size"]:
            return None, (f"{path.name} is truncated or altered: {st.st_size} bytes on disk, provenance "
                          f"says {recorded['size']} bytes of {recorded['name']}")
        try:
            data = path.read_bytes() if read else None
            digest = sha256_bytes(data) if data is not None else content_sha256(path)
        except OSError as exc:
            return None, f"cached {path.name} cannot be read ({exc.strerror})"
        if digest != recorded["sha256"]:
            return None, f"{path.name} sha256 differs from its provenance (corrupt or replaced)"
        return Found(path, prov, data), ""

    def check(self, slot: Slot) -> tuple[bool, str]:
        found, reason = self.verify(slot)
        return found is not None, reason or "cache hit"

    def cached_provenance(self, slot: Slot) -> dict[str, Any] | None:
        """The provenance of a valid entry, else None (nothing is deleted, nothing built)."""
        found, _ = self.verify(slot)
        return None if found is None else found.provenance

    # ---- building --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, slot: Slot) -> Iterator[None]:
        with file_lock(slot.lock_path, self.lock_timeout_s, what=f"{slot.kind} of model {slot.model!r}"):
            yield

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[Path]:
        """A private temp folder under the engines dir, also used by ``tempfile`` inside (see
        :func:`mapgate.fsutil.private_tempdir`); removed on exit, swept if the run is killed."""
        with private_tempdir(self.root / TMP_DIR) as path:
            yield path

    def discard(self, slot: Slot, reason: str = "") -> None:
        if reason and (slot.path.exists() or slot.provenance_path.exists()):
            log.warning("discarding cached %s %s: %s", slot.kind, slot.path, reason)
        for p in (slot.provenance_path, slot.path):  # provenance first: an orphan artifact is never trusted
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def publish_bytes(self, slot: Slot, data: bytes, extra: Mapping[str, Any] | None = None,
                      build_seconds: float = 0.0) -> dict[str, Any]:
        """Write ``data`` as the artifact of ``slot`` and its provenance (call under :meth:`lock`)."""
        write_bytes_atomic(slot.path, data)
        prov = self._provenance(slot, extra or {}, build_seconds, len(data), sha256_bytes(data))
        self._write_provenance(slot, prov)
        return prov

    @staticmethod
    def _write_provenance(slot: Slot, prov: dict[str, Any]) -> None:
        # Always after the artifact is in place: a provenance file vouches only for bytes already there.
        fault_point("publish")
        write_json_atomic(slot.provenance_path, prov)

    @staticmethod
    def _provenance(slot: Slot, extra: Mapping[str, Any], seconds: float, size: int, sha256: str) -> dict[str, Any]:
        clash = set(extra) & set(_PROVENANCE_TYPES)
        if clash:
            raise ValueError(f"provenance extras may not replace the cache's own fields {sorted(clash)}")
        return {
            "schema": KEY_SCHEMA, "kind": slot.kind, "model": slot.model, "key": slot.key, "key_fields": slot.fields,
            "file": {"name": slot.path.name, "size": size, "sha256": sha256},
            "built_at": _now(), "build_seconds": round(seconds, 3), "mapgate_version": MAPGATE_VERSION,
            **extra,
        }

    def get_or_build(self, slot: Slot, build: Callable[[Path], Mapping[str, Any] | None],
                     load: Callable[[bytes, dict[str, Any]], T] | None = None, *, hint: str = "") -> Entry[Any]:
        """The entry for ``slot``: reused if valid, else built by ``build(tmp_path)``.

        ``build`` writes the artifact to the (existing, empty) path it is given and may return extra
        provenance fields. ``load(bytes, provenance)`` turns a verified file into the value returned
        and raises :class:`CorruptArtifact` when it cannot (the entry is then rebuilt; a fresh build
        that does not load is an error and is not cached). Without ``load`` the value is the path.
        ``hint`` is added to the error when a fresh build is empty or does not load.
        """
        found, reason = self.verify(slot, read=load is not None)
        if found is not None:  # fast path without the lock: many workers reading one valid entry
            hit = self._use(slot, found, load)
            if isinstance(hit, Entry):
                return hit
            reason = hit
        with self.lock(slot):
            found, again = self.verify(slot, read=load is not None)  # another process may have built it
            if found is not None:
                hit = self._use(slot, found, load)
                if isinstance(hit, Entry):
                    return hit
                again = hit
            reason = again or reason
            self.discard(slot, reason)
            log.info("building %s for model %s (%s)", slot.kind, slot.model, reason)
            started = time.monotonic()
            value: Any = slot.path
            with atomic_path(slot.path) as tmp:
                extra = dict(build(tmp) or {})
                seconds = time.monotonic() - started
                data = tmp.read_bytes() if load is not None else None
                size = len(data) if data is not None else tmp.stat().st_size
                if size == 0:
                    raise ConversionError(f"building {slot.kind} for model {slot.model!r} produced no bytes; "
                                          f"nothing was cached. {hint}".strip())
                digest = sha256_bytes(data) if data is not None else content_sha256(tmp)
                prov = self._provenance(slot, extra, seconds, size, digest)
                if load is not None and data is not None:
                    try:
                        value = load(data, prov)
                    except CorruptArtifact as exc:
                        raise ConversionError(f"the {slot.kind} just built for model {slot.model!r} does not load "
                                              f"({exc}); it was not cached. {hint}".strip()) from exc
            self._write_provenance(slot, prov)
            return Entry(slot.path, prov, value, built=True, reason=reason)

    # ---- failures remembered ------------------------------------------------------------------
    def remembered_failure(self, slot: Slot) -> dict[str, Any] | None:
        """The failure recorded for exactly this slot's key fields, else None (an unreadable or
        foreign record is not trusted: the build is simply tried again)."""
        try:
            record = json.loads(slot.failure_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("message"), str) \
                or (record.get("schema"), record.get("kind"), record.get("key")) != (KEY_SCHEMA, slot.kind, slot.key) \
                or record.get("key_fields") != slot.fields:
            return None
        record.setdefault("failed_at", "an earlier run")
        return record

    def remember_failure(self, slot: Slot, message: str, exc: BaseException) -> None:
        """Record that building ``slot`` failed with ``message`` (and the traceback), atomically."""
        write_json_atomic(slot.failure_path, {
            "schema": KEY_SCHEMA, "kind": slot.kind, "model": slot.model, "key": slot.key, "key_fields": slot.fields,
            "message": message, "failed_at": _now(), "mapgate_version": MAPGATE_VERSION,
            "traceback": traceback_lines(exc)})

    @staticmethod
    def _use(slot: Slot, found: Found, load: Callable[[bytes, dict[str, Any]], Any] | None) -> Entry[Any] | str:
        if load is None:
            return Entry(found.path, found.provenance, found.path, built=False, reason="cache hit")
        try:
            value = load(found.data or b"", found.provenance)
        except CorruptArtifact as exc:
            return f"cached {found.path.name} does not load ({exc})"
        return Entry(found.path, found.provenance, value, built=False, reason="cache hit")


def cached_artifact(cache_dir: Path, model: str, kind: str, inputs: Mapping[str, Any],
                    build: Callable[[Path], Mapping[str, Any] | None], suffix: str) -> Path:
    """The file for ``inputs`` (a conversion), built by ``build(tmp_path)`` if needed.

    The build runs in :meth:`ArtifactCache.tempdir`: converters' own temp files (ONNX Runtime's
    ``ort.quant.*`` folders, TensorFlow's) land under the engines dir, where they are removed on
    exit and swept after a kill, since none of those libraries takes a folder argument.

    A build that fails inside a third-party library is a one-line :class:`ConversionError` (model,
    step, library, its message) naming ``<kind>-<key16>.failed.json``, which holds the traceback.
    That record is the failure remembered: the same inputs raise it again at once, without
    converting; changed inputs (another key) build, and so does ``MAPGATE_RETRY_FAILED=1`` or
    deleting the file. Environment failures (a missing package, no memory, a full disk, Ctrl-C)
    are not remembered."""
    cache = ArtifactCache(cache_dir)
    slot = cache.slot(model, kind, inputs, suffix)
    remembered = cache.remembered_failure(slot)
    if remembered is not None and os.environ.get(RETRY_ENV, "") != "1":
        raise ConversionError(f"{remembered['message']} (remembered from the build of {remembered['failed_at']}: "
                              f"not retried until the model's files or conversion settings change; "
                              f"delete {slot.failure_path} or set {RETRY_ENV}=1 to retry)")

    def build_in_tempdir(tmp: Path) -> Mapping[str, Any] | None:
        with cache.tempdir():
            return build(tmp)

    try:
        path = cache.get_or_build(slot, build_in_tempdir).path
    except Exception as exc:
        if is_environment(exc) or (isinstance(exc, MapgateError) and not isinstance(exc, ConversionError)):
            raise  # not these inputs' fault, or already a mapgate error naming its file or field
        message = f"{third_party_message(model, f'conversion {kind}', exc)} [traceback: {slot.failure_path}]"
        with contextlib.suppress(OSError, MapgateError):  # a read-only engines dir only costs the memory
            cache.remember_failure(slot, message, exc)
        raise ConversionError(message) from exc
    if remembered is not None:  # built after all (MAPGATE_RETRY_FAILED=1): the failure is history
        with contextlib.suppress(FileNotFoundError):
            slot.failure_path.unlink()
    return path


# ---- content hashes of inputs, remembered across runs ----------------------------------------
HASH_INDEX = ".content-hashes.json"
MAX_REMEMBERED = 200_000  # ~30 MB of JSON at most; full val2017 is 5,000 rows


@contextlib.contextmanager
def remembered_hashes(root: Path) -> Iterator[None]:
    """Inside, :func:`mapgate.fsutil.content_sha256` also knows the hashes earlier runs stored in
    ``<root>/.content-hashes.json`` (by path, size, mtime, inode, ctime), and new ones are stored on
    exit: full val2017's 5,000 images are hashed once, not at every run. Best effort: a damaged or
    unwritable index only costs re-hashing."""
    path = Path(root) / HASH_INDEX
    try:
        add_hash_memo_rows(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        pass
    before = len(hash_memo_rows())
    yield
    rows = hash_memo_rows()
    if len(rows) != before:
        with contextlib.suppress(OSError, MapgateError):
            write_json_atomic(path, rows[-MAX_REMEMBERED:], indent=None)


# ---- leftovers of killed runs ----------------------------------------------------------------
_swept: set[str] = set()


def sweep(root: Path, max_depth: int = 4) -> int:
    """Remove ``.part`` files and build temp folders that dead runs (this host: pid gone; any host:
    older than a day) left under ``root`` (engines dir: ``<model>/``, ``.tmp/``; reports:
    ``<run>/<model>/<side>/``); once per process and root. Returns how many were removed."""
    marker = os.path.abspath(root)
    if marker in _swept:
        return 0
    _swept.add(marker)
    removed = 0
    candidates: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if here.name == TMP_DIR and depth == 1:
            candidates += [here / d for d in dirnames if d.startswith("tmp.")]
            dirnames.clear()
            continue
        candidates += [here / f for f in filenames if f.startswith(".") and f.endswith(PART_SUFFIX)]
        candidates += [here / d for d in dirnames if d.startswith(".") and d.endswith(PART_SUFFIX)]  # run folders
        if depth >= max_depth:
            dirnames.clear()
    for p in candidates:
        try:
            st = os.lstat(p)
            if not leftover_is_stale(p.name, st.st_mtime):
                continue
            if stat.S_ISDIR(st.st_mode):
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            removed += 1
            log.info("removed %s left by a killed run", p)
        except OSError:
            continue  # read-only folder, or another process removed it first
    with contextlib.suppress(OSError):
        (root / TMP_DIR).rmdir()  # only when empty
    return removed
