"""Where releases go. A release target is a small protocol (release, verify, restore); the
default keeps releases in a local folder, one folder per release, and a `current` link that
is switched atomically."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from activities.sandbox.runs import Limits, RunResult, run_limited, source_path


@dataclass(frozen=True)
class Release:
    project_id: str
    version: str
    path: Path
    previous: str | None  # the version `current` pointed to before this release


class ReleaseTarget(Protocol):
    def stage(self, project_id: str, version: str, files: Path) -> Release:
        """Put the files where they can be checked as `version`; nothing is current yet."""
        ...

    def publish(self, release: Release) -> Release:
        """Make a staged release `version` and current; the published release."""
        ...

    def release(self, project_id: str, version: str, files: Path) -> Release:
        """Publish the files as `version` and make it current."""
        ...

    async def verify(
        self,
        release: Release,
        command: str,
        limits: Limits,
        venv: Path | None = None,
        roots: tuple[str, ...] = (),
    ) -> RunResult:
        """Prove the release works (the smoke check), with the project's environment (`venv`,
        its import roots `roots` in the release first on the path)."""
        ...

    def restore(self, project_id: str, version: str | None) -> str | None:
        """Make `version` current again (None: no release is current); what is current now."""
        ...

    def current(self, project_id: str) -> str | None: ...


class LocalReleases:
    """releases/<project>/<version>/ folders and a releases/<project>/current symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _project(self, project_id: str) -> Path:
        return self.root / project_id

    def current(self, project_id: str) -> str | None:
        link = self._project(project_id) / "current"
        return os.readlink(link) if link.is_symlink() else None

    def _switch(self, project_id: str, version: str | None) -> None:
        folder = self._project(project_id)
        link = folder / "current"
        if version is None:
            link.unlink(missing_ok=True)
            return
        temporary = folder / f".current-{uuid.uuid4().hex[:8]}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(version)  # relative: the folder can move
        os.replace(temporary, link)  # atomic: readers see the old or the new release

    def release(self, project_id: str, version: str, files: Path) -> Release:
        return self.publish(self.stage(project_id, version, files))

    def stage(self, project_id: str, version: str, files: Path) -> Release:
        """The files in a folder of their own beside the releases (two builds may stage the
        same version number at once; only the one that claims it publishes)."""
        folder = self._project(project_id)
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".staged-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(files, staged, symlinks=True)
        return Release(project_id, version, staged, self.current(project_id))

    def publish(self, release: Release) -> Release:
        folder = self._project(release.project_id)
        target = folder / release.version
        marker = folder / f".{release.version}.previous"
        previous = self.current(release.project_id)
        if previous == release.version:  # an activity retry after the switch: what was before
            previous = marker.read_text() or None if marker.exists() else None
        if target.exists():
            shutil.rmtree(target)
        os.rename(release.path, target)
        marker.write_text(previous or "")
        self._switch(release.project_id, release.version)
        return Release(release.project_id, release.version, target, previous)

    async def verify(
        self,
        release: Release,
        command: str,
        limits: Limits,
        venv: Path | None = None,
        roots: tuple[str, ...] = (),
    ) -> RunResult:
        argv = shlex.split(command) if command.strip() else _import_all(release.path)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = str(venv / "bin" / "python") if venv else sys.executable
        path = source_path(release.path, roots) if venv else ""
        # Read-only: what the smoke check runs is what is released, and it cannot change it.
        return await run_limited(
            argv,
            cwd=release.path,
            limits=limits,
            scratch=self.root / ".scratch",
            readonly=[venv] if venv else [],
            venv=venv,
            write_cwd=False,
            env={"PYTHONPATH": path} if path else None,
        )

    def restore(self, project_id: str, version: str | None) -> str | None:
        self._switch(project_id, version)
        return self.current(project_id)


def _import_all(folder: Path) -> list[str]:
    modules = sorted(p.stem for p in folder.glob("*.py"))
    imports = "; ".join(f"import {m}" for m in modules) or "pass"
    return ["python", "-c", imports]  # the project's environment's interpreter, where it has one
