"""The suite's own guard: a test that leaves a thread running fails (tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support import REPO

CONFTEST = REPO / "tests" / "conftest.py"


def test_a_leaked_thread_fails_its_test_and_an_ending_one_does_not(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the conftest imports tests.support
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import threading, time

        def test_leaks():
            threading.Thread(target=time.sleep, args=(30,), name="leaky", daemon=True).start()

        def test_ends_within_the_grace():
            threading.Thread(target=time.sleep, args=(0.3,), name="ending", daemon=True).start()

        def test_joins():
            t = threading.Thread(target=time.sleep, args=(0.01,))
            t.start()
            t.join()
        """
    )
    # In a subprocess: the leaked thread must not outlive the run inside this test.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.re_match_lines([r".*Failed: the test left 1 thread\(s\) running: \['leaky'\]"])
    result.stdout.re_match_lines([r"ERROR .*::test_leaks\b"])
