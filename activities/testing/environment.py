"""A project's own Python environment: what its tests run in, as its own CI would run them.

The invariant: a test run sees the project's code and what the project declares, and nothing
of the worker's. Its environment is a virtual environment of the worker's base interpreter
made without the system's or the worker's packages; its test runner is pytest installed into
it (the project's own pinned pytest where its install brings one, which replaces ours); the
project's own source comes first on its path (PYTHONPATH), before anything installed, so a
project named like a package the worker or the environment holds imports its own code.

How an environment is made is a `Plan`, read from the project (activities/testing/
declared.py): its setup command where it has one; otherwise what it declares (pyproject.toml
with its test extra or `test`/`dev` dependency group, setup.py and setup.cfg, requirements
files); otherwise nothing but the test runner (activities/testing/runner.py). The plan's
command runs in the sandbox in a checkout of its own with its git data (a project versioned
from its tags builds), the environment its only writable place, network only where a person
allows it (SANDBOX_SETUP_NETWORK), and then through the worker's index proxy
(activities/testing/index_proxy.py).

Environments are cached, keyed by the interpreter, the plan and the content of the files that
declare dependencies (declared.key): the second build of an unchanged project pays no setup, a build
that changes those files gets a fresh one. One made by a project's own command belongs to that
project alone; one with nothing of a project's in it (the test runner alone) is shared. Test
runs use an environment read-only; only its making writes it. A lock per environment lets one
maker work while other builds wait for it, across worker processes.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.repository.gitcmd import git
from activities.repository.workspace import clone_at
from activities.sandbox.runs import Limits, RunResult, run_limited, source_path
from activities.testing import declared, generated, index_proxy, runner
from core.projects import PROJECT_ID_PATTERN

LOCK_POLL_SECONDS = 0.5
FILE_BYTES = 4 * 1024 * 1024  # a .pth file or editable finder larger than this is read this far
MARKER = ".made.json"  # beside an environment, never in it: what made it


@dataclass(frozen=True)
class Request:
    """What a test run asks of its environment: the project's (its own cache under `store`),
    its setup command ("": what it declares), and whether the making may use the network."""

    store: Path
    project: str
    setup_command: str = ""
    network: bool = False
    wheels: Path = runner.WHEELS
    # The project's own commit the build started from. An environment other builds share is
    # made from it, never from a build's own code; a build that changes what declares its
    # dependencies gets one of its own (`build`). None: the checkout is the project's own;
    # "": there is none, the environment is the build's own.
    base: str | None = None
    build: str = ""


@dataclass(frozen=True)
class Environment:
    root: Path
    key: str
    roots: tuple[str, ...] = ()  # the project's import roots, relative to its checkout
    generated: tuple[str, ...] = ()  # files its install wrote into the source (generated.py)

    @property
    def kept(self) -> Path:
        """Beside the environment: the files its install generated in the source."""
        return self.root.with_name(f"{self.root.name}.generated")

    def furnish(self, checkout: Path) -> None:
        """`checkout` given the files the install generated where it has none (blocking)."""
        generated.put(self.kept, self.generated, checkout)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def pythonpath(self, checkout: Path) -> str:
        """The project's own source in `checkout`, first on a run's path."""
        return source_path(checkout, self.roots)


@dataclass(frozen=True)
class Made:
    """A run's environment: made now (`run`, with how long it took) or found made."""

    environment: Environment
    plan: declared.Plan
    run: RunResult | None = None
    seconds: float = 0.0
    reused: bool = False
    problem: str = ""  # the environment could not be made, before any command ran (why)

    @property
    def ok(self) -> bool:
        return not self.problem and (self.run is None or self.run.ok)

    def describe(self) -> str:
        """One line for the test report, status and the score card."""
        what = f"environment {self.environment.key[:12]} from {self.plan.source}"
        if self.problem:
            return f"{what}: could not be made: {self.problem}"
        if self.reused:
            return f"{what}: reused (no setup ran)"
        if self.run is not None and self.run.timed_out:
            return (
                f"{what}: `{self.plan.command}` was killed at its time limit after "
                f"{self.run.seconds:.0f}s"
            )
        if self.run is not None and not self.run.ok:
            return (
                f"{what}: `{self.plan.command}` exited {self.run.returncode} in "
                f"{self.run.seconds:.1f}s"
            )
        return f"{what}: made in {self.seconds:.1f}s"


# --- the project's own source on the path --------------------------------------------------

_MAPPING = re.compile(r"^MAPPING\s*(?::[^=\n]*)?=\s*(\{.*?\})\s*$", re.S | re.M)


def editable_roots(root: Path, source: Path) -> tuple[str, ...]:
    """Where an editable install put the project's import roots, relative to the checkout it
    was made from (`.pth` lines, setuptools' editable finders); read without following a link
    the install could have planted (blocking)."""
    found: set[str] = set()
    for site in root.glob("lib/python*/site-packages"):
        if site.is_symlink():
            continue
        for entry in site.iterdir():
            name = entry.name
            if not (name.endswith(".pth") or (name.startswith("__editable__") and
                                              name.endswith("_finder.py"))):  # fmt: skip
                continue
            try:
                text = (paths.read_beneath(site, name, FILE_BYTES) or b"").decode(errors="replace")
            except (paths.PathRefused, OSError):
                continue
            candidates = (
                [line.strip() for line in text.splitlines()] if name.endswith(".pth") else []
            )
            if match := _MAPPING.search(text):
                with contextlib.suppress(ValueError, SyntaxError):
                    mapping = ast.literal_eval(match.group(1))
                    candidates += [str(Path(p).parent) for p in mapping.values()]
            for line in candidates:
                if not line or line.startswith(("#", "import")):
                    continue
                path = Path(os.path.normpath(line))
                if path == source or path.is_relative_to(source):
                    found.add(str(path.relative_to(source)) or ".")
    return tuple(sorted(found))


# --- making and finding an environment -----------------------------------------------------


@contextlib.asynccontextmanager
async def _locked(path: Path, beat: Callable[[str], None] | None) -> AsyncIterator[None]:
    """The lock at `path`, waited for without blocking the loop (another build, perhaps in
    another worker process, may be making the same environment)."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if beat is not None:
                    beat(f"waiting {time.monotonic() - started:.0f}s for the environment "
                         "another build is making")  # fmt: skip
                await asyncio.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


def _marker(root: Path) -> Path:
    return root.with_name(f".{root.name}{MARKER}")


def _found(root: Path, key_: str) -> Environment | None:
    marker = _marker(root)
    if not marker.is_file() or not root.is_dir():
        return None
    try:
        made = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return Environment(root, key_, tuple(made.get("roots", ())), tuple(made.get("generated", ())))


def _folder_name(project: str) -> str:
    """A project's folder under the store (its id is a checked name; hashed if it is not)."""
    if re.fullmatch(PROJECT_ID_PATTERN, project):
        return f"project-{project}"
    return f"project-{hashlib.sha256(project.encode()).hexdigest()[:16]}"


def where(request: Request, key_: str, how: declared.Plan, shared: bool) -> Path:
    """An environment's folder: the shared runner's when nothing of the project's goes into
    it; the project's, shared by its builds, when the project's own code makes it; else the
    build's own."""
    if not how.installs:
        return request.store / "runner" / key_
    owner = request.store / _folder_name(request.project)
    if not shared:
        owner = owner / f"build-{hashlib.sha256(request.build.encode()).hexdigest()[:16]}"
    return owner / key_


def made_from(repo: Path, request: Request) -> tuple[str, bool]:
    """The commit the environment of the checkout at `repo` is made from, and whether other
    builds share it: the project's base, shared, when the build changed none of the files
    that declare dependencies (the checkout's own commit when it is the project's own: no
    base); else the checkout's commit, the build's own (blocking)."""
    head = git(repo, "rev-parse", "HEAD")
    if request.base is None or request.base == head:
        return head, True
    if not request.base:  # "": no commit of the project's to make it from
        return head, False
    changed = git(repo, "diff", "--name-only", "-z", request.base, head).split("\0")
    if any(declared.declares(name) for name in changed if name):
        return head, False
    return request.base, True


async def prepare(
    repo: Path,
    request: Request,
    *,
    limits: Limits,
    scratch: Path,
    beat: Callable[[str], None] | None = None,
) -> Made:
    """The environment for the project checked out at `repo`: found in the cache, or made
    now (the runner by the worker, then the plan's command in the sandbox, in a checkout of
    its own). `scratch` is the worker's folder for the run's own (activities/sandbox/runs.py)."""
    how = await asyncio.to_thread(declared.plan, repo, request.setup_command)
    try:
        wheels = await asyncio.to_thread(runner.runner_wheels, request.wheels)
    except (runner.EnvironmentProblem, OSError, subprocess.SubprocessError) as err:
        broken = Environment(request.store / "unmade", "-" * 12)
        return Made(broken, how, problem=str(err))
    key_ = await asyncio.to_thread(declared.key, repo, how, wheels)
    # Only a command of the project's makes an environment that needs a commit to come from.
    commit, shared = (
        await asyncio.to_thread(made_from, repo, request) if how.installs else ("", True)
    )
    root = where(request, key_, how, shared)
    async with _locked(root.with_name(f".{key_}.lock"), beat):
        if (found := await asyncio.to_thread(_found, root, key_)) is not None:
            return Made(found, how, reused=True)
        started = time.monotonic()
        try:
            await asyncio.to_thread(runner.create, root, request.wheels, wheels, how.installs)
        except (runner.EnvironmentProblem, OSError, subprocess.SubprocessError) as err:
            await asyncio.to_thread(paths.remove_tree, root)
            return Made(Environment(root, key_), how, problem=str(err))
        roots: tuple[str, ...] = ()
        made_files: tuple[str, ...] = ()
        run = None
        if how.installs:
            source = root.with_name(f"{key_}.source")
            try:
                await asyncio.to_thread(paths.remove_tree, source)
                await asyncio.to_thread(clone_at, repo, source, commit)
                run = await _install(source, root, how, request, limits, scratch, beat)
                if run.ok:
                    roots = await asyncio.to_thread(editable_roots, root, source)
                    kept = Environment(root, key_).kept
                    made_files = await asyncio.to_thread(generated.keep, source, kept)
            finally:
                await asyncio.to_thread(paths.remove_tree, source)
            if not run.ok:
                await asyncio.to_thread(paths.remove_tree, root)
                return Made(Environment(root, key_), how, run, time.monotonic() - started)
        seconds = time.monotonic() - started
        made = {"roots": roots, "generated": made_files, "source": how.source,
                "command": how.command, "seconds": seconds}  # fmt: skip
        await asyncio.to_thread(_marker(root).write_text, json.dumps(made))
    return Made(Environment(root, key_, roots, made_files), how, run, seconds)


async def _install(
    source: Path,
    root: Path,
    how: declared.Plan,
    request: Request,
    limits: Limits,
    scratch: Path,
    beat: Callable[[str], None] | None,
) -> RunResult:
    """The plan's command in the sandbox, in `source`, writing only it and the environment;
    with network, its package index is the worker's proxy (activities/testing/index_proxy.py)
    and nothing of the worker's pip configuration reaches it."""
    variables = dict(index_proxy.OFFLINE)
    ports: tuple[int, ...] = ()
    if request.network:
        serving = await asyncio.to_thread(index_proxy.running)
        variables = index_proxy.sandbox_variables(serving.url)
        ports = (serving.port,)
    build = request.wheels / "build"
    variables["PIP_FIND_LINKS"] = str(build)  # the common build backends, without an index
    return await run_limited(
        ["/bin/sh", "-c", how.command],
        cwd=source,
        limits=limits,
        scratch=scratch,
        beat=(lambda detail: beat(f"making the environment: {detail}")) if beat else None,
        writable=[root],
        readonly=[build],
        network=request.network,
        venv=root,
        env=variables,
        ports=ports,
    )
