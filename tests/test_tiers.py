"""The fast tier polices itself: tests/conftest.py fails a test over the limit that is not marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")


@pytest.fixture
def tiered(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("MAPGATE_FAST_LIMIT_S", raising=False)
    default = 'os.environ.get("MAPGATE_FAST_LIMIT_S", "2.0")'
    assert default in CONFTEST
    pytester.makeconftest(CONFTEST.replace(default, '"0.2"'))
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_probe="""
        import time
        import pytest

        def test_unmarked_and_slow():
            time.sleep(0.3)

        @pytest.mark.slow
        def test_marked_and_slow():
            time.sleep(0.3)

        def test_unmarked_and_fast():
            pass
    """)
    return pytester


def test_an_unmarked_test_over_the_limit_fails_and_says_how_to_fix_it(tiered: pytest.Pytester) -> None:
    result = tiered.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked_and_slow took 0.* s, over the fast tier's 0 s limit*mark it @pytest.mark.slow*"])


def test_the_slow_marker_is_what_lets_a_test_take_longer(tiered: pytest.Pytester) -> None:
    result = tiered.runpytest("-p", "no:cacheprovider", "-m", "slow")
    result.assert_outcomes(passed=1, deselected=2)
