"""Re-running a build (core/reruns.py): a new build of the original's project, base commit and
requirements, with its roles not marked live answered from the original's kept answers."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response, status

from api.deps import ClientDep, SettingsDep, WorkflowId
from api.routes.workflows import started
from api.schemas import BuildStarted, RerunBody, answers
from client.reruns import start_rerun
from core.reruns import PromptText, RerunChoices

router = APIRouter(prefix="/api/workflows", tags=["workflows"], responses=answers(400, 401, 503))
log = logging.getLogger("api")


@router.post(
    "/{workflow_id}/rerun", status_code=status.HTTP_201_CREATED, responses=answers(404, 409)
)
async def rerun_build(
    workflow_id: WorkflowId,
    body: RerunBody,
    client: ClientDep,
    settings: SettingsDep,
    response: Response,
) -> BuildStarted:
    """Re-run a build: the roles in `live` (and any given a model or a prompt) call their
    models; the others answer from the original's kept answers. Its edits, tests, checks and
    delivery run for real; it delivers to its own branch, never the project's. 404: no such
    build; 409: the build never opened a workspace to re-run from, or the build id is taken."""
    choices = RerunChoices(
        live=body.live,
        models=body.models,
        prompts={role: PromptText.of("api", text) for role, text in body.prompts.items()},
        live_after_divergence=body.live_after_divergence,
    )
    request, handle = await start_rerun(
        client, settings, workflow_id, choices, build_id=body.build_id, user_id=body.user_id
    )
    log.info("build %s started as a re-run of %s by %s", request.build_id, workflow_id,
             body.user_id)  # fmt: skip
    answer = started(handle, request, settings, response)
    answer.rerun_of = request.options.rerun.original if request.options.rerun else None
    return answer
