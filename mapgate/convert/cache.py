"""Content-addressed artifact cache under ``engines/`` with a provenance JSON beside each file.

The key is a hash of everything that determines the artifact (source sha256, converter and
its version, options). A missing, mismatched or damaged artifact (size/sha256 differ from its
provenance) is rebuilt, never trusted. Builds write to a temporary file that is renamed into
place, under a lock file, so concurrent pytest-xdist workers build once and never see half a file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapgate import __version__
from mapgate.fsutil import atomic_path, file_lock, sha256_file, sha256_json, write_json_atomic


def cache_key(inputs: dict[str, Any]) -> str:
    return sha256_json({"mapgate_cache_format": 1, **inputs})


def provenance_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def read_provenance(artifact: Path) -> dict[str, Any] | None:
    """The provenance of a complete, undamaged artifact, else None (so the caller rebuilds)."""
    prov = provenance_path(artifact)
    if not artifact.exists() or not prov.exists():
        return None
    try:
        data = json.loads(prov.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("size") != artifact.stat().st_size or data.get("sha256") != sha256_file(artifact):
        return None
    return data


def cached_artifact(cache_dir: Path, model: str, kind: str, inputs: dict[str, Any],
                    build: Callable[[Path], dict[str, Any] | None], suffix: str) -> Path:
    """Return the artifact for ``inputs``, building it with ``build(tmp_path)`` if needed.

    ``build`` writes the artifact to the path it is given and may return extra provenance.
    """
    key = cache_key({"model": model, "kind": kind, **inputs})
    artifact = Path(cache_dir) / model / f"{kind}-{key[:16]}{suffix}"
    if read_provenance(artifact) is not None:
        return artifact
    with file_lock(artifact.with_name(artifact.name + ".lock")):
        if read_provenance(artifact) is not None:  # another worker built it while we waited
            return artifact
        started = time.time()
        with atomic_path(artifact) as tmp:
            extra = build(tmp) or {}
        provenance = {
            "model": model,
            "kind": kind,
            "key": key,
            "inputs": inputs,
            "mapgate_version": __version__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started, 3),
            "size": artifact.stat().st_size,
            "sha256": sha256_file(artifact),
            **extra,
        }
        write_json_atomic(provenance_path(artifact), provenance)
    return artifact
