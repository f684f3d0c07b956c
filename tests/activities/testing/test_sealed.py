"""The hidden tests' verdict counts their own cases only (activities/testing/sealed.py)."""

from __future__ import annotations

from activities.testing.results import Case
from activities.testing.sealed import is_infrastructure, verdict

HIDDEN = ["tests/__init__.py", "tests/helpers.py", "tests/test_cache.py"]


def test_a_hidden_helper_or_package_file_needs_no_cases_of_its_own():
    found = [Case("tests.test_cache::test_get", "passed"), Case("other::test_x", "failure")]
    got = verdict(found, HIDDEN)
    assert got.passed and (got.run, got.failed) == (1, 0)  # the other module's failure: not ours


def test_a_hidden_module_that_ran_nothing_or_skipped_fails():
    assert verdict([], HIDDEN).summary == "no test of tests/test_cache.py ran"
    skipped = verdict([Case("tests.test_cache::test_get", "skipped")], HIDDEN)
    assert not skipped.passed and skipped.failed == 1
    # A module whose name begins like another's is not taken for it.
    other = verdict([Case("tests.test_cache_more::test_get", "passed")], HIDDEN)
    assert not other.passed


def test_what_counts_as_test_infrastructure():
    for path in ("conftest.py", "a/b/conftest.py", "pytest.ini", "setup.cfg", "x/sitecustomize.py",
                 "lib/evil.pth", "pyproject.toml"):  # fmt: skip
        assert is_infrastructure(path), path
    assert not is_infrastructure("src/app.py") and not is_infrastructure("tests/test_app.py")
