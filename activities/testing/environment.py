"""A project's own Python environment: what its tests run in, as its own CI would run them.

The invariant: a test run sees the project's code and what the project declares, and nothing
of the worker's. Its environment is a virtual environment of the worker's base interpreter
made without the system's or the worker's packages; its test runner is pytest installed into
it (the project's own pinned pytest where its install brings one, which replaces ours); the
project's own source comes first on its path (PYTHONPATH), before anything installed, so a
project named like a package the worker or the environment holds imports its own code.

How an environment is made is a `Plan`, read from the project (`plan`): its setup command
where it has one; otherwise what it declares (pyproject.toml with its test extra or `test`/
`dev` dependency group, setup.py and setup.cfg, requirements files); otherwise nothing but the
test runner. The plan's command runs in the sandbox in a checkout of its own with its git data
(a project versioned from its tags builds), the environment its only writable place, network
only where a person allows it (SANDBOX_SETUP_NETWORK).

Environments are cached, keyed by the interpreter, the plan and the content of the files that
declare dependencies (`key`): the second build of an unchanged project pays no setup, a build
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
import shlex
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.repository.gitcmd import git
from activities.sandbox.runs import Limits, RunResult, run_limited
from activities.testing import index_proxy

VENV_SECONDS = 60
DOWNLOAD_SECONDS = 300
LOCK_POLL_SECONDS = 0.5
FILE_BYTES = 4 * 1024 * 1024  # a dependency file larger than this is read this far
RUNNER = ("pytest",)  # what every environment gets before the project's own install
INSTALLER = ("pip",)  # and, where the project installs anything, the tool it installs with
# The files that say what a Python project depends on (at the repository's top level).
DEPENDENCY_FILES = (
    "pyproject.toml", "setup.py", "setup.cfg", "poetry.lock", "uv.lock", "pdm.lock",
    "Pipfile", "Pipfile.lock",
)  # fmt: skip
REQUIREMENTS = re.compile(r"^(?:requirements|[\w-]*requirements)[\w.-]*\.txt$")
TEST_NAMES = ("test", "tests", "testing", "dev")  # extras and dependency groups, in this order
MARKER = ".made.json"  # beside an environment, never in it: what made it
# The test runner's wheels, fetched once per machine (as pip's own cache is kept).
WHEELS = Path.home() / ".cache" / "q-assistant" / "wheels" / "runner"


@dataclass(frozen=True)
class Plan:
    """How a project's environment is made: `command` (run in the sandbox after the test
    runner is installed; "" installs nothing of the project's), where it comes from, and the
    files whose content keys the environment."""

    source: str
    command: str
    files: tuple[str, ...] = ()

    @property
    def installs(self) -> bool:
        return bool(self.command.strip())


@dataclass(frozen=True)
class Request:
    """What a test run asks of its environment: the project's (its own cache under `store`),
    its setup command ("": what it declares), and whether the making may use the network."""

    store: Path
    project: str
    setup_command: str = ""
    network: bool = False
    wheels: Path = WHEELS


@dataclass(frozen=True)
class Environment:
    root: Path
    key: str
    roots: tuple[str, ...] = ()  # the project's import roots, relative to its checkout

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def pythonpath(self, checkout: Path) -> str:
        """The project's own source in `checkout`, first on a run's path."""
        found = [r for r in self.roots if (checkout / r).is_dir()] if self.roots else []
        if not found and (checkout / "src").is_dir():
            found = ["src"]
        return os.pathsep.join(str(checkout / r) if r != "." else str(checkout) for r in found)


@dataclass(frozen=True)
class Made:
    """A run's environment: made now (`run`, with how long it took) or found made."""

    environment: Environment
    plan: Plan
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


# --- what a project declares ---------------------------------------------------------------


def dependency_files(repo: Path) -> tuple[str, ...]:
    """The files of `repo` that declare its dependencies (its top level, and requirements/)."""
    found = [name for name in DEPENDENCY_FILES if _is_file(repo, name)]
    with contextlib.suppress(OSError):
        found += sorted(p.name for p in repo.iterdir() if REQUIREMENTS.match(p.name))
    folder = repo / "requirements"
    if folder.is_dir() and not folder.is_symlink():
        found += sorted(f"requirements/{p.name}" for p in folder.glob("*.txt"))
    return tuple(name for name in found if _is_file(repo, name))


def _is_file(repo: Path, name: str) -> bool:
    try:
        return paths.exists_beneath(repo, name) and not (repo / name).is_symlink()
    except paths.PathRefused:
        return False


def _read(repo: Path, name: str) -> bytes:
    try:
        return paths.read_beneath(repo, name, FILE_BYTES) or b""
    except (paths.PathRefused, OSError):
        return b""


def _toml(repo: Path, name: str) -> dict[str, object]:
    try:
        return tomllib.loads(_read(repo, name).decode(errors="replace"))
    except tomllib.TOMLDecodeError:
        return {}


def _first_test_name(names: object) -> str | None:
    if not isinstance(names, dict):
        return None
    return next((n for n in TEST_NAMES if n in names), None)


def plan(repo: Path, setup_command: str = "") -> Plan:
    """How the environment of the project checked out at `repo` is made (blocking)."""
    files = dependency_files(repo)
    if setup_command.strip():
        return Plan(f"the setup command `{setup_command}`", setup_command, files)
    steps: list[str] = []
    said: list[str] = []
    pyproject = _toml(repo, "pyproject.toml") if "pyproject.toml" in files else {}
    project = pyproject.get("project")
    project = project if isinstance(project, dict) else {}
    extras = project.get("optional-dependencies")
    extra = _first_test_name(extras)
    if "setup.cfg" in files and extra is None:
        extra = _setup_cfg_extra(repo)
    group = _first_test_name(pyproject.get("dependency-groups"))
    declares = (
        bool(project.get("dependencies"))
        or extra is not None
        or ("dependencies" in (project.get("dynamic") or []))
    )
    installable = "setup.py" in files or ("pyproject.toml" in files and "build-system" in pyproject)
    if installable and (declares or "setup.py" in files or not project):
        target = f".[{extra}]" if extra else "."
        steps.append(f"pip install -e {shlex.quote(target)}")
        said.append(f"{'setup.py' if 'setup.py' in files else 'pyproject.toml'}"
                    f"{f' with its [{extra}] extra' if extra else ''}")  # fmt: skip
    if group is not None:
        steps.append(f"pip install --group {shlex.quote(group)}")
        said.append(f"its dependency group {group!r}")
    requirements = [f for f in files if f.endswith(".txt") and _is_test_requirements(f)]
    for name in requirements:
        steps.append(f"pip install -r {shlex.quote(name)}")
    said += requirements
    if not steps:
        return Plan("nothing declared: pytest alone, the project's source on its path", "", files)
    return Plan(f"what the project declares ({', '.join(said)})", " && ".join(steps), files)


def _is_test_requirements(name: str) -> bool:
    """requirements.txt, and the requirements files named for tests or development."""
    base = name.rsplit("/", 1)[-1]
    return base == "requirements.txt" or any(word in base for word in ("test", "dev"))


def _setup_cfg_extra(repo: Path) -> str | None:
    import configparser

    parser = configparser.RawConfigParser()
    with contextlib.suppress(configparser.Error):
        parser.read_string(_read(repo, "setup.cfg").decode(errors="replace"))
    if not parser.has_section("options.extras_require"):
        return None
    return _first_test_name(dict(parser["options.extras_require"]))


def key(repo: Path, how: Plan, runner: tuple[str, ...]) -> str:
    """The environment's identity: the interpreter, the runner's wheels, the plan's command
    and the content of every file that declares a dependency."""
    digest = hashlib.sha256()
    interpreter = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    for part in (interpreter, sys.version, how.command, *runner):
        digest.update(part.encode() + b"\0")
    for name in how.files:
        digest.update(name.encode() + b"\0" + _read(repo, name) + b"\0")
    return digest.hexdigest()[:32]


# --- the test runner's wheels --------------------------------------------------------------


def runner_wheels(folder: Path) -> tuple[str, ...]:
    """The wheels of the test runner and the installer, fetched once into `folder` with the
    worker's own pip and its configuration (the worker's process, never a run's): their file
    names (blocking)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _flock(folder / ".lock"):
        have = _wheels(folder)
        if not all(any(w.startswith(f"{name}-") for w in have) for name in RUNNER + INSTALLER):
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                 "--dest", str(folder), *RUNNER, *INSTALLER],
                capture_output=True, text=True, timeout=DOWNLOAD_SECONDS, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                last = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise EnvironmentProblem(
                    "pip could not fetch pytest for the project's environment: " + " | ".join(last)
                )
            have = _wheels(folder)
    return have


def _wheels(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.glob("*.whl")))


class EnvironmentProblem(RuntimeError):
    """An environment could not be made by the worker itself (no command of the project's
    ran); the message says why."""


def _install_wheel(wheel: Path, site: Path, bin_dir: Path, python: Path) -> None:
    """A pure-Python wheel unpacked into `site`, with its console scripts in `bin_dir` (what
    pip would do for it, in a fraction of the time)."""
    with zipfile.ZipFile(wheel) as archive:
        scripts: list[tuple[str, str]] = []
        for info in archive.infolist():
            name = info.filename
            if name.endswith("/") or ".." in name.split("/") or name.startswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data") and len(parts) > 2:
                if parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            if name.endswith(".dist-info/entry_points.txt"):
                scripts += _console_scripts(target.read_text())
            if name.endswith(".dist-info/RECORD"):
                installer = target.with_name("INSTALLER")
                installer.write_text("qao\n")
    for script, entry in scripts:
        module, _, attr = entry.partition(":")
        head = attr.split(".")[0]
        path = bin_dir / script
        path.write_text(
            f"#!{python}\nimport sys\nfrom {module.strip()} import {head.strip()}\n"
            f"sys.exit({attr.strip()}())\n"
        )
        path.chmod(0o755)


def _console_scripts(text: str) -> list[tuple[str, str]]:
    import configparser

    parser = configparser.RawConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with contextlib.suppress(configparser.Error):
        parser.read_string(text)
    if not parser.has_section("console_scripts"):
        return []
    return [(name, entry) for name, entry in parser["console_scripts"].items() if entry]


def create(root: Path, wheels: Path, names: tuple[str, ...], installer: bool) -> None:
    """A fresh virtual environment at `root` of the worker's base interpreter, without the
    system's or the worker's packages, holding the test runner (and pip, if `installer`)
    from `wheels` (blocking)."""
    paths.remove_tree(root)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True, capture_output=True, timeout=VENV_SECONDS,
    )  # fmt: skip
    sites = sorted(root.glob("lib/python*/site-packages"))
    if not sites:
        raise EnvironmentProblem(f"venv made no site-packages under {root}")
    wanted = RUNNER + (INSTALLER if installer else ())
    for name in names:
        if name.endswith(".whl") and (installer or not name.startswith(INSTALLER[0] + "-")):
            _install_wheel(wheels / name, sites[0], root / "bin", root / "bin" / "python")
    missing = [w for w in wanted if not any(n.startswith(f"{w}-") for n in names)]
    if missing:
        raise EnvironmentProblem(f"no wheel of {', '.join(missing)} in {wheels}")


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


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    return Environment(root, key_, tuple(made.get("roots", ())))


def _folder_name(project: str) -> str:
    """A project's folder under the store (its id is a checked name; hashed if it is not)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", project):
        return f"project-{project}"
    return f"project-{hashlib.sha256(project.encode()).hexdigest()[:16]}"


def where(request: Request, key_: str, how: Plan) -> Path:
    """An environment's folder: the project's own when the project's command makes it, the
    shared runner's when nothing of the project's goes into it."""
    owner = _folder_name(request.project) if how.installs else "runner"
    return request.store / owner / key_


def clone(repo: Path, destination: Path) -> Path:
    """A checkout of `repo`'s checked-out commit at `destination` with its git data and tags
    (a local clone: objects hard-linked), where a setup command may write (blocking)."""
    paths.remove_tree(destination)
    commit = git(repo, "rev-parse", "HEAD")
    git(None, "clone", "-q", "--no-checkout", str(repo), str(destination))
    git(destination, "checkout", "-q", "--detach", commit)
    return destination


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
    how = await asyncio.to_thread(plan, repo, request.setup_command)
    try:
        wheels = await asyncio.to_thread(runner_wheels, request.wheels)
    except (EnvironmentProblem, OSError, subprocess.SubprocessError) as err:
        broken = Environment(request.store / "unmade", "-" * 12)
        return Made(broken, how, problem=str(err))
    key_ = await asyncio.to_thread(key, repo, how, wheels)
    root = where(request, key_, how)
    async with _locked(root.with_name(f".{key_}.lock"), beat):
        if (found := await asyncio.to_thread(_found, root, key_)) is not None:
            return Made(found, how, reused=True)
        started = time.monotonic()
        try:
            await asyncio.to_thread(create, root, request.wheels, wheels, how.installs)
        except (EnvironmentProblem, OSError, subprocess.SubprocessError) as err:
            await asyncio.to_thread(paths.remove_tree, root)
            return Made(Environment(root, key_), how, problem=str(err))
        roots: tuple[str, ...] = ()
        run = None
        if how.installs:
            source = root.with_name(f"{key_}.source")
            try:
                await asyncio.to_thread(clone, repo, source)
                run = await _install(source, root, how, request, limits, scratch, beat)
                if run.ok:
                    roots = await asyncio.to_thread(editable_roots, root, source)
            finally:
                await asyncio.to_thread(paths.remove_tree, source)
            if not run.ok:
                await asyncio.to_thread(paths.remove_tree, root)
                return Made(Environment(root, key_), how, run, time.monotonic() - started)
        seconds = time.monotonic() - started
        made = {"roots": roots, "source": how.source, "command": how.command, "seconds": seconds}
        await asyncio.to_thread(_marker(root).write_text, json.dumps(made))
    return Made(Environment(root, key_, roots), how, run, seconds)


async def _install(
    source: Path,
    root: Path,
    how: Plan,
    request: Request,
    limits: Limits,
    scratch: Path,
    beat: Callable[[str], None] | None,
) -> RunResult:
    """The plan's command in the sandbox, in `source`, writing only it and the environment;
    with network, its package index is the worker's proxy (activities/testing/index_proxy.py)
    and nothing of the worker's pip configuration reaches it."""
    variables, ports = index_proxy.OFFLINE, ()
    if request.network:
        serving = await asyncio.to_thread(index_proxy.running)
        variables, ports = index_proxy.sandbox_variables(serving.url), (serving.port,)
    return await run_limited(
        ["/bin/sh", "-c", how.command],
        cwd=source,
        limits=limits,
        scratch=scratch,
        beat=(lambda detail: beat(f"making the environment: {detail}")) if beat else None,
        writable=[root],
        network=request.network,
        venv=root,
        env=variables,
        ports=ports,
    )
