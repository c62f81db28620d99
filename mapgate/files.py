"""Resolve a manifest FileRef to a verified local path.

Bundled files are checked against their sha256. URL files come from a mirror folder
(``--mirror DIR`` or ``MAPGATE_MIRROR``) for air-gapped labs, else from the download cache,
else are downloaded into it; every route checks the sha256 before the file is used.
"""

from __future__ import annotations

import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from mapgate.errors import ConfigError, DataError
from mapgate.fsutil import atomic_path, sha256_path
from mapgate.manifest import FileRef, ModelSpec

MIRROR_ENV = "MAPGATE_MIRROR"
CACHE_ENV = "MAPGATE_CACHE"

# sha256 of large files is costly (35 MB weights ~0.1 s); verify each (path, size, mtime) once.
_verified: dict[tuple[str, int, float], str] = {}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mapgate")


def verified_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _verified:
        _verified[key] = sha256_path(path)
    return _verified[key]


def _check(model: str, ref: FileRef, path: Path) -> Path:
    if ref.sha256 is None:
        return path
    actual = verified_sha256(path)
    if actual != ref.sha256:
        raise DataError(
            f"model {model!r}, file '{ref.role}' ({path}): sha256 mismatch: manifest says {ref.sha256}, "
            f"file has {actual}. The file is corrupt or a different version; replace it or fix the manifest."
        )
    return path


def resolve(model: ModelSpec | str, ref: FileRef, *, mirror: Path | None = None, cache_dir: Path | None = None,
            offline: bool | None = None) -> Path:
    """Return a local, sha256-verified path for ``ref``; raise naming the file or URL."""
    name = model.name if isinstance(model, ModelSpec) else model
    if ref.path is not None:
        if not ref.path.exists():
            raise DataError(f"model {name!r}, file '{ref.role}': {ref.path} does not exist")
        return _check(name, ref, ref.path)

    assert ref.url is not None  # manifest validation guarantees path xor url
    archive_name = ref.url.rstrip("/").rsplit("/", 1)[-1]
    mirror = mirror or (Path(os.environ[MIRROR_ENV]) if os.environ.get(MIRROR_ENV) else None)
    cache_dir = cache_dir or default_cache_dir()
    candidates = ([mirror / archive_name] if mirror else []) + [cache_dir / "downloads" / archive_name]
    archive = next((c for c in candidates if c.exists()), None)
    if archive is None:
        if offline if offline is not None else os.environ.get("MAPGATE_OFFLINE") == "1":
            raise DataError(
                f"model {name!r}, file '{ref.role}': {ref.url} is not in the mirror "
                f"({mirror or 'none set; use --mirror DIR or ' + MIRROR_ENV}) or the cache ({cache_dir}), "
                "and downloads are off. Put the file in a mirror folder."
            )
        archive = _download(name, ref, cache_dir / "downloads" / archive_name, mirror)
    if ref.member is None:
        return _check(name, ref, archive)
    return _check(name, ref, _extract(name, ref, archive, cache_dir))


def _download(name: str, ref: FileRef, dest: Path, mirror: Path | None) -> Path:
    try:
        with urllib.request.urlopen(ref.url, timeout=60) as resp, atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"model {name!r}, file '{ref.role}': cannot download {ref.url} ({exc}). "
            f"Offline? Put {dest.name} in a mirror folder and pass --mirror DIR (or set {MIRROR_ENV})"
            + (f"; mirror {mirror} has no such file" if mirror else "")
        ) from exc
    return dest


def _extract(name: str, ref: FileRef, archive: Path, cache_dir: Path) -> Path:
    assert ref.member is not None
    dest = cache_dir / "extracted" / verified_sha256(archive)[:16] / ref.member
    if dest.exists():
        return dest
    try:
        with tarfile.open(archive) as tar:
            src = tar.extractfile(ref.member)
            if src is None:
                raise KeyError(ref.member)
            with atomic_path(dest) as tmp:
                tmp.write_bytes(src.read())
    except (tarfile.TarError, KeyError) as exc:
        raise DataError(f"model {name!r}, file '{ref.role}': {archive} has no member {ref.member!r} ({exc})") from exc
    return dest


def missing_files(model: ModelSpec, mirror: Path | None = None, cache_dir: Path | None = None) -> list[str]:
    """Files of ``model`` not on this machine yet (bundled files absent, URLs neither mirrored nor cached)."""
    missing = []
    mirror = mirror or (Path(os.environ[MIRROR_ENV]) if os.environ.get(MIRROR_ENV) else None)
    cache_dir = cache_dir or default_cache_dir()
    for ref in [*model.files.values(), *model.prebuilt.values()]:
        if ref.path is not None:
            if not ref.path.exists():
                missing.append(f"{ref.role}: {ref.path} does not exist")
            continue
        name = (ref.url or "").rstrip("/").rsplit("/", 1)[-1]
        if not any(c.exists() for c in ([mirror / name] if mirror else []) + [cache_dir / "downloads" / name]):
            missing.append(f"{ref.role}: {ref.url} (not downloaded yet, not in a mirror)")
    return missing


def resolve_role(model: ModelSpec, role: str, **kw: object) -> Path:
    if role not in model.files:
        raise ConfigError(f"{model.manifest_path}: model {model.name!r} has no file '{role}' (field 'files.{role}')")
    return resolve(model, model.files[role], **kw)  # type: ignore[arg-type]
