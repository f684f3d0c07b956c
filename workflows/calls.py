"""Activity calls by contract: the name, the argument's type and the result's type come from
one `Contract` (core/contracts.py), so a call is typed by what it calls, never by hand."""

from __future__ import annotations

from typing import TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core.build_io import CallOptions
    from core.contracts import Contract

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


async def execute(
    contract: Contract[ArgT, ResultT], arg: ArgT, options: CallOptions, *, summary: str
) -> ResultT:
    """The activity of `contract`, called with `arg`; its result, typed by the contract."""
    result: ResultT = await workflow.execute_activity(
        contract.name,
        arg,
        result_type=contract.result,
        start_to_close_timeout=options.start_to_close,
        heartbeat_timeout=options.heartbeat,
        retry_policy=options.retry,
        summary=summary,
    )
    return result


async def execute_local(
    contract: Contract[ArgT, ResultT], arg: ArgT, options: CallOptions, *, summary: str
) -> ResultT:
    """The same as a local activity: run in the worker, no round trip to the server."""
    result: ResultT = await workflow.execute_local_activity(
        contract.name,
        arg,
        result_type=contract.result,
        start_to_close_timeout=options.start_to_close,
        retry_policy=options.retry,
        summary=summary,
    )
    return result
