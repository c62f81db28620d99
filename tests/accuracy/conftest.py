"""Model-on-data tests: each runs bundled models over val2017-mini (206 images). They are the slow
tier (`make test`, not `make check`), marked here once for the whole folder."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a conftest's collection hook sees the whole session's items: mark only this folder's
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
