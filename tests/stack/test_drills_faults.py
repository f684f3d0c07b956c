"""The fault drills of the mirror's database and the model (`python -m chaos --quick`): on
SQLite, and the database's outage on PostgreSQL too."""

from __future__ import annotations

import pytest

from tests.stack.test_drills import drills

pytestmark = pytest.mark.slow
HERE = ("db-outage", "model-faults")


@pytest.mark.timeout(600)
def test_a_database_outage_and_model_faults_lose_nothing_on_sqlite():
    out = drills(*HERE)
    for name in HERE:
        assert f"VERDICT {name}: PASS" in out, out
    assert "0 lost, 0 duplicated, 0 unknown" in out and ": exact" in out, out


@pytest.mark.timeout(300)
def test_the_mirror_survives_a_postgresql_outage():
    out = drills("db-outage", "--database", "postgresql")
    assert "VERDICT db-outage: PASS" in out and "postgresql outage" in out, out
