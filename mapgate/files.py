"""Resolve a manifest FileRef to a verified local path.

Bundled files are checked against their sha256. URL files come from a mirror folder
(``--mirror DIR`` or ``MAPGATE_MIRROR``) for air-gapped labs, else from the download cache,
else are downloaded into it; every route checks the sha256 before the file is used.

Downloads are https only (plain http when ``MAPGATE_ALLOW_HTTP=1``, redirects included), are
written to a temporary file that becomes the cache file only once its sha256 matches, and a
cached file that no longer matches is deleted, never kept. A tarball member is extracted into a
temporary folder with tarfile's ``data`` filter (no absolute names, ``..``, links or devices),
verified, then moved into the cache.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from mapgate.errors import ConfigError, DataError
from mapgate.fsutil import atomic_path, sha256_path
from mapgate.manifest import FileRef, ModelSpec

MIRROR_ENV = "MAPGATE_MIRROR"
CACHE_ENV = "MAPGATE_CACHE"
ALLOW_HTTP_ENV = "MAPGATE_ALLOW_HTTP"
DOWNLOAD_TIMEOUT_S = 60

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


def _check(model: str, ref: FileRef, path: Path, *, discard: bool = False) -> Path:
    """``path`` if its sha256 is the manifest's; else an error, deleting ``path`` first when it is
    mapgate's own cache copy (``discard``): a file that failed its check is never kept for later."""
    if ref.sha256 is None:
        return path
    actual = verified_sha256(path)
    if actual != ref.sha256:
        if discard:
            path.unlink(missing_ok=True)
        raise DataError(
            f"model {model!r}, file '{ref.role}' ({path}): sha256 mismatch: manifest says {ref.sha256}, "
            f"file has {actual}. The file is corrupt or a different version; replace it or fix the manifest."
            + (" The cached copy was deleted." if discard else "")
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
    archive_name = _file_name(ref.url)
    mirror = mirror or (Path(os.environ[MIRROR_ENV]) if os.environ.get(MIRROR_ENV) else None)
    cache_dir = cache_dir or default_cache_dir()
    cached = cache_dir / "downloads" / archive_name
    from_mirror = mirror is not None and (mirror / archive_name).is_file()
    archive = mirror / archive_name if from_mirror else (cached if cached.is_file() else None)  # type: ignore[operator]
    if archive is None:
        if offline if offline is not None else os.environ.get("MAPGATE_OFFLINE") == "1":
            raise DataError(
                f"model {name!r}, file '{ref.role}': {ref.url} is not in the mirror "
                f"({mirror or 'none set; use --mirror DIR or ' + MIRROR_ENV}) or the cache ({cache_dir}), "
                "and downloads are off. Put the file in a mirror folder."
            )
        archive = _download(name, ref, cached, mirror)
    if ref.member is None:
        return _check(name, ref, archive, discard=not from_mirror)
    if ref.archive_sha256 is not None:
        _check(name, FileRef(ref.role, ref.archive_sha256, url=ref.url), archive, discard=not from_mirror)
    return _extract(name, ref, archive, cache_dir)


def _file_name(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not downgrade https to http (or go to file://, ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        _allowed_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _allowed_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "https" or (scheme == "http" and os.environ.get(ALLOW_HTTP_ENV) == "1"):
        return
    hint = f" (plain http only with {ALLOW_HTTP_ENV}=1)" if scheme == "http" else ""
    raise DataError(f"refusing to download {url}: only https:// URLs are fetched{hint}. Put the file in a mirror "
                    "folder (--mirror DIR) instead")


def _download(name: str, ref: FileRef, dest: Path, mirror: Path | None) -> Path:
    """Fetch ``ref.url`` into ``dest`` (the user's umask applies); a hash mismatch leaves nothing behind."""
    assert ref.url is not None
    try:
        _allowed_scheme(ref.url)
    except DataError as exc:
        raise DataError(f"model {name!r}, file '{ref.role}': {exc}") from None
    opener = urllib.request.build_opener(_SchemeCheckingRedirects)
    try:
        with opener.open(ref.url, timeout=DOWNLOAD_TIMEOUT_S) as resp, atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            if ref.member is None and ref.sha256 is not None:
                _check(name, ref, tmp)  # raising here discards the temporary file: dest never appears
            elif ref.archive_sha256 is not None:
                _check(name, FileRef(ref.role, ref.archive_sha256, url=ref.url), tmp)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"model {name!r}, file '{ref.role}': cannot download {ref.url} ({exc}). "
            f"Offline? Put {dest.name} in a mirror folder and pass --mirror DIR (or set {MIRROR_ENV})"
            + (f"; mirror {mirror} has no such file" if mirror else "")
        ) from exc
    return dest


def _extract(name: str, ref: FileRef, archive: Path, cache_dir: Path) -> Path:
    """The member ``ref.member`` of ``archive``, extracted once into the cache and sha256-checked
    before it is published there."""
    assert ref.member is not None
    what = f"model {name!r}, file '{ref.role}': {archive}"
    dest = cache_dir / "extracted" / verified_sha256(archive)[:16] / ref.member
    if dest.is_file():
        return _check(name, ref, dest, discard=True)
    staging_root = cache_dir / "extracted"
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=staging_root) as staging:
        try:
            with tarfile.open(archive) as tar:
                member = tar.getmember(ref.member)
                if not member.isfile():
                    raise DataError(f"{what}: member {ref.member!r} is not a regular file (a link, folder or device); "
                                    "refusing to extract it")
                # the data filter refuses absolute names, '..', links and device files, and drops set-uid bits
                tar.extract(member, staging, filter="data")
        except KeyError as exc:
            raise DataError(f"{what} has no member {ref.member!r}") from exc
        except tarfile.FilterError as exc:
            raise DataError(f"{what}: member {ref.member!r} is unsafe to extract ({exc})") from exc
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{what} is not a readable tarball ({exc}); delete it and download again") from exc
        extracted = Path(staging) / ref.member
        _check(name, ref, extracted)  # a mismatch leaves nothing: the staging folder is removed
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(extracted, tmp)
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
        name = _file_name(ref.url or "")
        if not any(c.exists() for c in ([mirror / name] if mirror else []) + [cache_dir / "downloads" / name]):
            missing.append(f"{ref.role}: {ref.url} (not downloaded yet, not in a mirror)")
    return missing


def resolve_role(model: ModelSpec, role: str, **kw: object) -> Path:
    if role not in model.files:
        raise ConfigError(f"{model.manifest_path}: model {model.name!r} has no file '{role}' (field 'files.{role}')")
    return resolve(model, model.files[role], **kw)  # type: ignore[arg-type]
