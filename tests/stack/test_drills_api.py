"""The drills of the API under generated input and of an evaluation run whose worker is killed
(`python -m chaos --quick`)."""

from __future__ import annotations

import pytest

from tests.stack.test_drills import drills

pytestmark = pytest.mark.slow
HERE = ("schemathesis", "eval-kill-worker")


@pytest.mark.timeout(600)
def test_the_api_under_generated_input_and_a_killed_evaluation_worker():
    out = drills(*HERE)
    for name in HERE:
        assert f"VERDICT {name}: PASS" in out, out
