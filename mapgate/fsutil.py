"""File helpers: content hashes and atomic writes (nothing half-written when a run is killed)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import time
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapgate.errors import ConversionError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it; put it straight back


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a folder (a SavedModel): the hash of its sorted (relative path, file
    sha256) list, so it does not depend on file order or timestamps."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_json([[p.relative_to(path).as_posix(), sha256_file(p)] for p in files])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; it replaces ``dest`` only if the block succeeds.

    ``os.replace`` in the same directory is atomic, so concurrent writers (pytest-xdist
    workers) each publish a whole file and readers never see a partial one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; reports and engines are ordinary shared files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=indent, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in metrics; JSON wants plain Python numbers.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if needed), released on exit or process death.

    The lock file is never deleted: unlinking a lock file other processes have open lets two
    of them hold "the" lock on different inodes. The kernel drops the lock of a killed
    holder, so waiting without a timeout cannot deadlock on a crashed worker.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            waited = time.monotonic() - start
            if timeout_s is not None and waited > timeout_s:
                raise ConversionError(
                    f"waited {waited:.0f} s for the build lock {path} ({_lock_holder(fd)}); another process is "
                    "still building this engine. Wait for it, or if it hung, stop it and run again."
                )
            if not announced:
                log.info("waiting for %s (%s)", path, _lock_holder(fd))
                announced = True
            time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"held by {text}" if text else "holder unknown"
