"""File helpers: content hashes, atomic writes, locks (nothing half-written when a run is killed).

Everything here runs in folders other people can write to, so: files are created with
``O_EXCL``/``O_NOFOLLOW`` and the user's umask (never chmod'ed wider), a lock path that became a
symlink or hard link is refused instead of written through, and OS errors that mean "this
folder cannot take the file" (read-only, full disk, not a folder) become a
:class:`~mapgate.errors.StorageError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapgate.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
LOCK_TIMEOUT_ENV = "MAPGATE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 3600.0  # an INT8 TensorRT build on a Jetson Nano takes tens of minutes
FAULT_ENV = "MAPGATE_FAULT_PHASE"
PART_SUFFIX = ".part"
_HOST = socket.gethostname() or "localhost"
# Short host tag in temp names: a pid only says "dead" for files made on this host.
HOST_TAG = hashlib.sha256(_HOST.encode()).hexdigest()[:8]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_content_memo: dict[tuple[str, int, int, int, int], str] = {}
_memo_lock = threading.Lock()


def content_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, hashed once per process and remembered by (path, size, mtime_ns,
    inode, ctime_ns): rewriting a file in place, even to the same size, changes mtime/ctime and so
    re-hashes it. Raises OSError like ``open``."""
    p = os.fspath(path)
    st = os.stat(p)
    memo_key = (os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    with _memo_lock:
        found = _content_memo.get(memo_key)
    if found is None:
        found = sha256_file(p)
        with _memo_lock:
            _content_memo[memo_key] = found
    return found


def hash_memo_rows() -> list[list[Any]]:
    """The content-hash memo as JSON rows ``[path, size, mtime_ns, inode, ctime_ns, sha256]``."""
    with _memo_lock:
        return [[*k, v] for k, v in _content_memo.items()]


def add_hash_memo_rows(rows: Any) -> int:
    """Add rows from :func:`hash_memo_rows` (read back from disk) to the memo; rows of the wrong
    shape are ignored (a damaged index only costs re-hashing). Returns how many were taken."""
    taken = 0
    if not isinstance(rows, list):
        return 0
    with _memo_lock:
        for row in rows:
            if (isinstance(row, list) and len(row) == 6 and isinstance(row[0], str) and isinstance(row[5], str)
                    and len(row[5]) == 64 and all(type(v) is int for v in row[1:5])):
                _content_memo.setdefault((row[0], row[1], row[2], row[3], row[4]), row[5])
                taken += 1
    return taken


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




# ---- faults ----------------------------------------------------------------------------------
def fault_point(name: str) -> None:
    """Test hook: ``MAPGATE_FAULT_PHASE=<name>`` (or ``<name>@<n>``: at the n-th pass) makes the
    process SIGKILL itself here, so tests/test_fault.py can kill a run at a known point.

    Points: ``convert`` (per calibration batch of ONNX Runtime quantization, its temp folder
    alive), ``infer`` (per side: runner active, detections entry half-made), ``publish`` (per
    cache entry: artifact in place, provenance not yet), ``report`` (per side: detections.json
    written, metrics.json not). Unset, it costs one dict lookup.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or wanted.partition("@")[0] != name:
        return
    _fault_passes[name] = _fault_passes.get(name, 0) + 1
    if str(_fault_passes[name]) == (wanted.partition("@")[2] or "1"):
        os.kill(os.getpid(), signal.SIGKILL)


_fault_passes: dict[str, int] = {}


# ---- errors ----------------------------------------------------------------------------------
def storage_error(exc: OSError, path: str | os.PathLike[str], doing: str) -> StorageError:
    """A StorageError for an OSError while ``doing`` something to ``path``: what, why, fix."""
    why = exc.strerror or str(exc)
    fix = {errno.ENOSPC: "free some space or point --engines-dir/--out at another disk",
           errno.EDQUOT: "free some space (disk quota exceeded) or use another folder",
           errno.EROFS: "the file system is read-only; use a writable folder",
           errno.EACCES: "you may not write there; fix its permissions or use another folder",
           errno.EPERM: "you may not write there; fix its permissions or use another folder",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.ELOOP: "it is a symbolic link, which mapgate does not follow in its own folders; remove it",
           }.get(exc.errno or 0, "check the path")
    return StorageError(f"cannot {doing} {os.fspath(path)}: {why}; {fix}")


def ensure_dir(path: Path) -> Path:
    """``mkdir -p`` whose failures (a file in the way, read-only, full) name the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StorageError(f"cannot create folder {path}: a file of that name is in the way; "
                           "remove it or choose another folder") from exc
    except OSError as exc:
        raise storage_error(exc, path, "create folder") from exc
    return path


def _create_exclusive(path: Path) -> int:
    # 0o666 and the kernel applies the umask: files are exactly as private as the user asks.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def part_name(dest_name: str) -> str:
    """``.<name>.<host>-<pid>-<random>.part``: the sweeper can tell a dead writer's leftovers."""
    return f".{dest_name}.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{PART_SUFFIX}"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty temporary file next to ``dest``; it replaces ``dest`` only if the block succeeds.

    ``os.replace`` in the same directory is atomic, so concurrent writers (pytest-xdist workers)
    each publish a whole file and readers never see a partial one. A full disk or an unwritable
    folder, in here or in the block, is a StorageError naming ``dest``.
    """
    dest = Path(dest)
    ensure_dir(dest.parent)
    tmp_path = dest.parent / part_name(dest.name)
    try:
        os.close(_create_exclusive(tmp_path))
    except OSError as exc:
        raise storage_error(exc, dest, "write") from exc
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # disk full is disk full, whoever wrote
                raise storage_error(exc, dest, "write") from exc
            raise
        try:
            _fsync_file(tmp_path)
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise storage_error(exc, dest, "write") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _fsync_file(path: Path) -> None:
    # The bytes must be on disk before a rename (or a provenance file) says they are.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def write_json_atomic(dest: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=indent, default=_json_default) + "\n").encode())


INCOMPLETE = ".incomplete"


def mark_incomplete(folder: Path, what: str) -> Path:
    """Mark ``folder`` as being written (before its first file): a kill at any later point leaves
    the mark, and readers (``merge``, stored references) refuse the folder until
    :func:`mark_complete` removes it as the last step.

    A new folder appears with its mark already inside (built as a ``.part`` folder, then one rename),
    so no kill leaves it unmarked; an existing one gets the mark by an atomic write.
    """
    mark = f"{what} by pid {os.getpid()} did not finish\n".encode()
    if not os.path.lexists(folder):
        ensure_dir(folder.parent)
        _remove_dead_parts_of(folder)
        part = folder.parent / part_name(folder.name)
        try:
            os.mkdir(part)
            write_bytes_atomic(part / INCOMPLETE, mark)
            os.rename(part, folder)  # atomic; fails if another writer filled ``folder`` meanwhile
            return folder / INCOMPLETE
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise storage_error(exc, folder, "create folder") from exc
        finally:
            shutil.rmtree(part, ignore_errors=True)
    ensure_dir(folder)
    write_bytes_atomic(folder / INCOMPLETE, mark)
    return folder / INCOMPLETE


def _remove_dead_parts_of(folder: Path) -> None:
    # a run killed inside mark_incomplete leaves its .part folder beside ``folder`` (in a folder the user
    # chose for --out, which no sweep walks): the next run for the same folder removes exactly those
    for p in folder.parent.glob(f".{glob.escape(folder.name)}.*{PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink() and leftover_is_stale(p.name, p.lstat().st_mtime):
                shutil.rmtree(p)


def mark_complete(folder: Path) -> None:
    """Remove the mark of :func:`mark_incomplete` (one unlink: atomic)."""
    try:
        os.unlink(folder / INCOMPLETE)
    except FileNotFoundError:
        pass


def is_incomplete(folder: Path) -> bool:
    return os.path.lexists(folder / INCOMPLETE)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in metrics; JSON wants plain Python numbers.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ---- locks -----------------------------------------------------------------------------------
def lock_timeout_s(environ: dict[str, str] | None = None) -> float:
    """``MAPGATE_LOCK_TIMEOUT`` in seconds (0: fail at once if held), default one hour."""
    raw = (os.environ if environ is None else environ).get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{LOCK_TIMEOUT_ENV}={raw!r}: must be a number of seconds >= 0 (e.g. 600)")
    return value


def _open_lock(path: Path) -> int:
    ensure_dir(path.parent)
    try:
        # O_NOFOLLOW: a lock path replaced by a symlink fails here (ELOOP) instead of truncating its target.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise storage_error(exc, path, "open lock file") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise StorageError(f"lock file {path} is not a plain file of its own ({st.st_nlink} links); mapgate "
                           "writes its holder into it and will not write through a link; remove it and run again")
    return fd


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None, poll_s: float = 0.2,
              what: str = "this cache entry") -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if needed), released on exit or process death.

    ``timeout_s`` None: :func:`lock_timeout_s` (``MAPGATE_LOCK_TIMEOUT``). While waiting, a
    warning names the holder (pid, host, since) once a minute. The lock file is never deleted:
    unlinking a lock file other processes have open lets two of them hold "the" lock on
    different inodes. The kernel drops the lock of a killed holder, so a crashed worker never
    blocks anyone.
    """
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    fd = _open_lock(path)
    try:
        start = time.monotonic()
        next_note = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise storage_error(exc, path, "lock") from exc
            waited = time.monotonic() - start
            if waited >= timeout:
                raise StorageError(
                    f"gave up after {waited:.0f} s waiting for lock {path} ({_lock_holder(fd)}): another process "
                    f"is still building {what}. If it hung, stop it and run again; to wait longer set "
                    f"{LOCK_TIMEOUT_ENV}=SECONDS (now {timeout:g})")
            if waited >= next_note:
                log.warning("waiting for lock %s (%s); giving up after %g s (%s)", path, _lock_holder(fd), timeout,
                            LOCK_TIMEOUT_ENV)
                next_note = waited + 60
            time.sleep(min(poll_s, max(timeout - waited, 0.01)))
        try:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} host {_HOST} since {since}\n".encode(), 0)
        except OSError:
            pass  # the holder note is for people; a full disk must not stop the lock itself
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


# ---- leftovers of killed runs ----------------------------------------------------------------
STALE_AGE_S = 24 * 3600.0  # leftovers from another host (or a reused pid) go after a day


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def leftover_is_stale(name: str, mtime: float, now: float | None = None) -> bool:
    """Whether a ``<...>.<host>-<pid>-<rand>[.part]`` leftover belongs to a writer that is gone."""
    now = time.time() if now is None else now
    if now - mtime > STALE_AGE_S:
        return True
    stem = name[: -len(PART_SUFFIX)] if name.endswith(PART_SUFFIX) else name
    tag = stem.rsplit(".", 1)[-1].split("-")
    if len(tag) != 3 or tag[0] != HOST_TAG or not tag[1].isdigit():
        return False
    return int(tag[1]) != os.getpid() and not pid_alive(int(tag[1]))


@contextlib.contextmanager
def private_tempdir(parent: Path) -> Iterator[Path]:
    """A temporary folder under ``parent`` that libraries' ``tempfile`` calls also use.

    ONNX Runtime's quantizer makes ``ort.quant.*`` folders with ``tempfile`` and no way to say
    where; pointing ``tempfile.tempdir`` here keeps them under the engines dir, where a killed
    run's leftovers are swept by :func:`mapgate.cache.sweep` (named ``<host>-<pid>-<rand>``).
    """
    ensure_dir(parent)
    path = parent / f"tmp.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise storage_error(exc, path, "create folder") from exc
    with _tempdir_lock:
        previous, tempfile.tempdir = tempfile.tempdir, str(path)
        try:
            yield path
        finally:
            tempfile.tempdir = previous
            _rmtree(path)
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty: another build may be using its own folder in there


_tempdir_lock = threading.RLock()  # re-entrant: a conversion may run inside another build


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
