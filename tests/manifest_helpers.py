"""Test manifests live in tmp_path; a manifest may only name files in or below its own folder, so
they reach the bundled fixtures through symlinks placed beside them."""

from __future__ import annotations

import hashlib
from pathlib import Path


def link_into(folder: Path, target: Path) -> str:
    """A path relative to ``folder`` that reaches ``target`` (through a symlink under ``folder/linked``)."""
    target = Path(target)
    try:
        return target.relative_to(folder).as_posix()
    except ValueError:
        pass
    link = folder / "linked" / hashlib.sha256(str(target.parent).encode()).hexdigest()[:12] / target.name
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return link.relative_to(folder).as_posix()
