"""Fixtures of the hostile-input tests; helpers live in hostile_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_helpers import Sandbox, make_sandbox


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """tmp_path snapshotted; the CLI's default reports/, engines/ and download cache point into tmp_path/out."""
    return make_sandbox(tmp_path, monkeypatch)
