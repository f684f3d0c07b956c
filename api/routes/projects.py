"""Projects: register a repository, change it, list and show the registrations."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from api.deps import ClientDep, SettingsDep
from api.schemas import answers
from client import projects
from core.projects import PROJECT_ID_PATTERN, ProjectConfig, ProjectView, outside_roots, redact

router = APIRouter(prefix="/api/projects", tags=["projects"], responses=answers(400, 401, 503))
log = logging.getLogger("api")

ProjectId = Annotated[
    str, Path(pattern=PROJECT_ID_PATTERN, description="Project id: letters, digits, . _ -")
]


@router.put("/{project_id}", responses=answers(403, 413, 422))
async def put_project(
    project_id: ProjectId, body: ProjectConfig, client: ClientDep, settings: SettingsDep
) -> ProjectView:
    """Register or change a project. git must be able to read the repository and its branch;
    if it cannot, 422 with git's reason, and nothing is stored. A repository outside
    PROJECT_REPOSITORY_ROOTS (when set) is refused with 403."""
    if why := outside_roots(body.repository, settings.repository_roots):
        raise HTTPException(status.HTTP_403_FORBIDDEN, why)
    view = await projects.put_project(client, settings, project_id, body)
    log.info("project %s registered: %s (%s)", project_id, redact(body.repository), body.branch)
    return view.shown()


@router.get("")
async def list_projects(client: ClientDep) -> list[ProjectView]:
    """Every registered project, by id (greenfield ones too, once they have had a build)."""
    return [view.shown() for view in await projects.list_projects(client)]


@router.get("/{project_id}", responses=answers(404))
async def get_project(project_id: ProjectId, client: ClientDep) -> ProjectView:
    return (await projects.get_project(client, project_id)).shown()
