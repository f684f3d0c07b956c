"""The workflow calls activities by the names of their contracts (core/contracts.py); the
worker registers implementations. Each contract has exactly one, with its name and types."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from temporalio import activity

from activities.model.llm import ModelClient
from core.contracts import CONTRACTS, ROLE_CALLS
from core.settings import Settings
from core.states import WORKING
from serving.assembly import activities


def registered() -> dict[str, Any]:
    """What the worker registers (serving/assembly.py), by activity name."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    implementations = activities(ModelClient(settings), create_engine("sqlite://"))
    definitions = [activity._Definition.must_from_callable(fn) for fn in implementations]
    return {str(d.name): d for d in definitions}


def test_every_contract_has_one_implementation_with_its_name_and_types():
    implementations = registered()
    assert set(implementations) == {c.name for c in CONTRACTS}
    for contract in CONTRACTS:
        found = implementations[contract.name]
        assert (found.arg_types, found.ret_type) == ([contract.arg], contract.result), contract


def test_every_working_state_has_a_role_call():
    assert set(ROLE_CALLS) == set(WORKING)
