"""Re-running a build (core/reruns.py), shared by `starter.py rerun` and the API: the
original's request and base commit are read from its Temporal history (what it was started
with, what its workspace opened on), and a new build is started from them."""

from __future__ import annotations

import secrets

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError

from client import builds
from client.errors import BuildError
from core.build_io import BuildRequest, Simulation
from core.contracts import OPEN_WORKSPACE
from core.reruns import Rerun, RerunChoices
from core.settings import Settings


class RerunRefused(BuildError):
    """The original cannot be re-run (it never opened a workspace to start from)."""


async def original_of(client: Client, build: str) -> tuple[BuildRequest, str]:
    """The request `build` was started with, and the commit its workspace opened on."""
    handle = builds.handle_for(client, build)
    try:
        return await _read(client, handle)
    except RPCError as err:
        raise builds.refusal(handle.id, err) from err


async def _read(client: Client, handle: builds.BuildHandle) -> tuple[BuildRequest, str]:
    request: BuildRequest | None = None
    opening: int | None = None
    convert = client.data_converter
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            request = (await convert.decode(payloads, [BuildRequest]))[0]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name == OPEN_WORKSPACE.name:
                opening = event.event_id
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id == opening and request is not None:
                opened = (await convert.decode(done.result.payloads, [OPEN_WORKSPACE.result]))[0]
                return request, opened.base
    name = request.build_id if request else handle.id
    raise RerunRefused(
        f"build {name} never opened its project's workspace (it ended before, or started "
        "before builds had repositories): there is no base commit to re-run from"
    )


def rerun_request(
    settings: Settings,
    original: BuildRequest,
    base: str,
    choices: RerunChoices,
    *,
    build_id: str | None = None,
    user_id: str,
    simulate: list[Simulation] | None = None,
) -> BuildRequest:
    """A new build of `original`'s project, base commit, requirements and choices (gates,
    retries, budget, simulations: `simulate`, for the offline model's live roles, in place
    of the original's), recorded as its re-run; timeouts from today's settings."""
    rerun = Rerun(original=original.build_id, base=base, **dict(choices))
    update: dict[str, object] = {"rerun": rerun, "policy": settings.role_policy()}
    if simulate is not None:
        update["simulate"] = simulate
    options = original.options.model_copy(update=update)
    return BuildRequest(
        project_id=original.project_id,
        build_id=build_id or secrets.token_hex(4),
        user_id=user_id,
        requirements=original.requirements,
        options=options,
        project=original.project,
    )


async def start_rerun(
    client: Client,
    settings: Settings,
    build: str,
    choices: RerunChoices,
    *,
    build_id: str | None = None,
    user_id: str,
    simulate: list[Simulation] | None = None,
) -> tuple[BuildRequest, builds.BuildHandle]:
    """Start a re-run of `build`: its request, and its handle."""
    original, base = await original_of(client, build)
    request = rerun_request(
        settings, original, base, choices, build_id=build_id, user_id=user_id, simulate=simulate
    )
    return request, await builds.start_build(client, settings, request)
