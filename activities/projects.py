"""The project registry's activities: ask git whether a repository can be built from, and make
the repository of a greenfield project."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.beat import in_thread
from activities.gitcmd import GitError, create_bare, remote_head
from core.contracts import CHECK_REPOSITORY, CREATE_REPOSITORY
from core.projects import (
    NewRepository,
    NewRepositoryMade,
    ProjectConfig,
    RepositoryCheck,
    RepositoryChecked,
)
from core.settings import Settings


def greenfield(settings: Settings, project_id: str) -> ProjectConfig:
    """The configuration of a project nobody registered: a bare repository under PROJECTS_DIR."""
    return ProjectConfig(repository=str(settings.projects / f"{project_id}.git"))


class ProjectActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name=CHECK_REPOSITORY.name)
    async def check_repository(self, check: RepositoryCheck) -> RepositoryChecked:
        """The branch's head; a repository git cannot read or a missing branch is refused
        with git's reason (not retried: registration answers a person at once)."""
        config = check.config
        try:
            head = await in_thread("git ls-remote", remote_head, config.repository, config.branch)
        except GitError as err:
            raise ApplicationError(
                f"cannot use {config.repository!r} (branch {config.branch!r}): {err.reason}",
                type="RepositoryRefused",
                non_retryable=True,
            ) from err
        return RepositoryChecked(head=head)

    @activity.defn(name=CREATE_REPOSITORY.name)
    async def create_repository(self, new: NewRepository) -> NewRepositoryMade:
        config = greenfield(self.settings, new.project_id)
        path = self.settings.projects / f"{new.project_id}.git"
        head = await in_thread("git init --bare", create_bare, path, config.branch)
        return NewRepositoryMade(repository=config.repository, head=head)
