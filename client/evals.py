"""Evaluation suites from their files (`evals/*.yaml`, configs `--config A.yaml`), and a suite
run started as one EvalWorkflow (workflows/evals.py); shared by `starter.py eval` and the bench.

A suite file names its cases; a case's repository is a URL, or a path beside the suite file:
a git repository, or a plain folder that is made into one (under the data folder, by its
content, with fixed dates, so the same folder is the same commit on every machine). A case's
base may be a branch or tag: it is resolved to its commit when the run starts, and the run
carries the commit. Hidden test files are read from beside the suite file.

Suite and config files come from strangers. What they name is checked before it is used: a
repository, branch or base never reaches git as an option (refused when it starts with '-',
and given after `--end-of-options`); a file they name (hidden tests, prompts) lies in their
own folder, links resolved, and is read only up to its bound."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.repository.gitcmd import GitError, git, git_env
from client.builds import checked
from client.errors import BuildError
from core.attributes import of_project
from core.eval_build import MAX_HIDDEN_CHARS, HiddenTests, ModelChoices
from core.eval_suites import EvalCase, EvalConfig, EvalReport, EvalRun
from core.projects import check_branch, check_repository, is_url
from core.reruns import MAX_PROMPT_CHARS, PromptText
from core.settings import Settings
from workflows.evals import EvalWorkflow

SEED_DATE = "2026-01-01T00:00:00+00:00"  # a folder's commit is the same wherever it is made
MAX_FILE_BYTES = 1_000_000  # a suite or config file
COPY_SECONDS = 600  # a case's repository copied (a large one over the network)

EvalHandle = WorkflowHandle[EvalWorkflow, EvalReport]  # an evaluation run's


class SuiteError(ValueError):
    """A suite or config file that cannot be used, said with the file and the reason."""


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_bounded(path, MAX_FILE_BYTES, str(path)))
    except OSError as err:
        raise SuiteError(f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SuiteError(f"{path} is not YAML: {err}") from err
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a mapping is expected at the top")
    return data


def _bounded(path: Path, limit: int, what: str) -> str:
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise SuiteError(f"{what}: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{what}: {path} is not UTF-8 text") from err


def _text(folder: Path, name: object, what: str, limit: int) -> str:
    """The file `name` in `folder` (links resolved, it stays there), up to `limit` bytes."""
    inside = folder.resolve()
    path = (inside / str(name)).resolve()
    if not path.is_relative_to(inside):
        raise SuiteError(f"{what}: {name!r} is outside {inside}, where the files it names lie")
    try:
        return _bounded(path, limit, what)
    except OSError as err:
        raise SuiteError(f"{what}: cannot read {path}: {err.strerror}") from err


def _not_an_option(where: str, field: str, value: str) -> str:
    if value.startswith("-"):
        raise SuiteError(
            f"{where}: `{field}` must not start with '-' (git would read it as an option)"
        )
    return value


def load_config(path: Path) -> EvalConfig:
    """A config file: name, models and prompts (files beside it) per role, simulate, budget."""
    data = _yaml(path)
    prompts = {
        role: PromptText.of(
            Path(str(name)).name,
            _text(path.parent, name, f"{path}: prompt of {role}", MAX_PROMPT_CHARS * 4),
        )
        for role, name in (data.pop("prompts", None) or {}).items()
    }
    models = data.pop("models", None) or {}
    data.setdefault("name", path.stem)
    try:
        return EvalConfig(**data, choices=ModelChoices(models=models, prompts=prompts))
    except (ValidationError, TypeError) as err:
        raise SuiteError(f"{path}: {err}") from err


def load_suite(path: Path, settings: Settings) -> tuple[str, list[EvalCase], int]:
    """A suite file's name, its cases (repositories and bases resolved), and its parallelism."""
    data = _yaml(path)
    raw = data.get("cases")
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"{path}: `cases` lists the suite's cases")
    cases = []
    for index, case in enumerate(raw, 1):
        if not isinstance(case, dict):
            raise SuiteError(f"{path}: case {index} is not a mapping")
        cases.append(_case(path, dict(case), index, settings))
    parallel = data.get("parallel", 2)
    return str(data.get("name") or path.stem), cases, int(parallel)


def _case(suite: Path, case: dict[str, Any], index: int, settings: Settings) -> EvalCase:
    """A case with everything it names checked first, then its repository copied (or made from
    a folder) and its base resolved there."""
    where = f"{suite}: case {case.get('id', index)}"
    repository = _not_an_option(where, "repository", str(case.get("repository") or ""))
    if not repository:
        raise SuiteError(f"{where}: `repository` is missing")
    branch = str(case.get("branch", "main"))
    try:
        check_branch(branch)
    except ValueError as err:
        raise SuiteError(f"{where}: `branch`: {err}") from err
    base = _not_an_option(where, "base", str(case.get("base") or branch))
    try:
        if is_url(repository):
            check_repository(repository)
        hidden = case.pop("hidden_tests", None)
        if hidden is not None:
            files = {
                str(dest): _text(
                    suite.parent, source, f"{where}: hidden test {dest}", MAX_HIDDEN_CHARS
                )
                for dest, source in (hidden.get("files") or {}).items()
            }
            case["hidden"] = HiddenTests(files=files, **{
                k: v for k, v in hidden.items() if k != "files"
            })  # fmt: skip
    except (ValidationError, ValueError, TypeError, AttributeError) as err:
        raise SuiteError(f"{where}: {err}") from err
    if not is_url(repository):
        repository = str(_local(suite.parent / repository, branch, settings, where))
    if not repository.startswith(str(settings.data_dir / "evals")):
        repository = str(copied(repository, settings.data_dir / "evals", where))
    case["repository"], case["branch"] = repository, branch
    case["base"] = _commit(repository, base, where)
    try:
        return EvalCase(**case)
    except (ValidationError, TypeError) as err:
        raise SuiteError(f"{where}: {err}") from err


def _local(path: Path, branch: str, settings: Settings, where: str) -> Path:
    """A local repository as it is; a plain folder as a bare repository made from it."""
    path = path.resolve()
    if not path.is_dir():
        raise SuiteError(f"{where}: {path} is not a folder")
    if (path / ".git").exists() or (path / "HEAD").is_file():
        return path
    return seeded(path, branch, settings.data_dir / "evals")


def copied(repository: str, under: Path, where: str) -> Path:
    """A bare copy of `repository` under `under`, where the run's builds push their branches:
    an evaluation never writes into a case's repository. Made once per repository, and
    brought up to date with its branches and tags when a run starts again."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", repository.rstrip("/").rsplit("/", 1)[-1])
    digest = hashlib.sha256(repository.encode()).hexdigest()[:12]
    copy = under / f"{name.removesuffix('.git')[:40] or 'repository'}-{digest}.git"
    try:
        if (copy / "HEAD").is_file():
            refs = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            git(copy, "fetch", "-q", "--end-of-options", repository, *refs, timeout=COPY_SECONDS)
            return copy
        staging = under / f"{copy.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        under.mkdir(parents=True, exist_ok=True)
        git(
            None, "clone", "-q", "--bare", "--end-of-options", repository, str(staging), timeout=600
        )
        if copy.exists():  # made by another start meanwhile
            shutil.rmtree(staging)
        else:
            os.replace(staging, copy)
    except GitError as err:
        raise SuiteError(f"{where}: cannot copy {repository}: {err}") from err
    return copy


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(
        p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ):
        digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def seeded(folder: Path, branch: str, under: Path) -> Path:
    """`folder` as a bare repository of one commit under `under` (made once per content)."""
    remote = under / f"{folder.name}-{_digest(folder)}.git"
    if (remote / "HEAD").exists():
        return remote
    seed = under / f"{remote.name}.seed-{os.getpid()}"
    shutil.rmtree(seed, ignore_errors=True)
    shutil.copytree(folder, seed, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    dated = {**git_env(), "GIT_AUTHOR_DATE": SEED_DATE, "GIT_COMMITTER_DATE": SEED_DATE}
    message = f"{folder.name}: the evaluation's starting point"
    staging = under / f"{remote.name}.staging-{os.getpid()}"
    try:
        for args in (["init", "-q", "-b", branch], ["add", "-A"], ["commit", "-q", "-m", message]):
            subprocess.run(["git", "-C", str(seed), *args], env=dated, check=True,
                           capture_output=True)  # fmt: skip
        git(None, "clone", "-q", "--bare", str(seed), str(staging))
        if remote.exists():  # made by another start meanwhile: the same content
            shutil.rmtree(staging)
        else:
            os.replace(staging, remote)
    except subprocess.CalledProcessError as err:
        raise SuiteError(f"cannot make a repository of {folder}: {err.stderr.decode()}") from err
    finally:
        shutil.rmtree(seed, ignore_errors=True)
    return remote


def _commit(repository: str, base: str, where: str) -> str:
    """`base` (a commit, branch or tag) of `repository` as a full commit."""
    try:
        if is_url(repository):
            if len(base) == 40 and all(c in "0123456789abcdef" for c in base):
                return base  # a copy is local: this is for a suite a caller did not copy
            listed = git(None, "ls-remote", "--end-of-options", repository, base).split()
            if not listed:
                raise SuiteError(f"{where}: {repository} has no {base!r}")
            return listed[0]
        return git(
            Path(repository),
            "rev-parse",
            "--verify",
            "-q",
            "--end-of-options",
            f"{base}^{{commit}}",
        )
    except GitError as err:
        raise SuiteError(f"{where}: {base!r} is not a commit of {repository}: {err}") from err


def eval_run(
    settings: Settings,
    suite: Path,
    configs: list[Path],
    *,
    parallel: int | None = None,
    run_id: str | None = None,
    user_id: str = "cli",
    samples: int = 1,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
) -> EvalRun:
    """The run of `suite` under `configs` (each file once), ready to start."""
    name, cases, suite_parallel = load_suite(suite, settings)
    loaded = [load_config(path) for path in configs] or [EvalConfig(name="default")]
    try:
        return EvalRun(
            run_id=run_id or secrets.token_hex(4),
            suite=name,
            cases=cases,
            configs=loaded,
            parallel=parallel or suite_parallel,
            samples=samples,
            max_tokens=max_tokens,
            max_cost_usd=max_cost_usd,
            user_id=user_id,
            policy=settings.role_policy(),
        )
    except ValidationError as err:
        raise SuiteError(f"{suite}: {err}") from err


async def start_eval(client: Client, settings: Settings, run: EvalRun) -> EvalHandle:
    """Start the run; a run id whose child builds the mirror knows is refused (the children's
    ids are made from it)."""
    used = await checked(settings, f"{run.run_id}-", prefix=True)
    if used is not None:
        raise BuildError(f"evaluation run id {run.run_id} was used before ({used}); choose another")
    try:
        return await client.start_workflow(
            EvalWorkflow.run,
            run,
            id=run.workflow_id,
            task_queue=settings.temporal_task_queue,
            search_attributes=of_project(f"eval-{run.suite}"),
            static_summary=f"evaluation {run.suite}: {len(run.cases)} cases x "
            f"{len(run.configs)} configs",
        )
    except WorkflowAlreadyStartedError as err:
        raise BuildError(f"evaluation run {run.run_id} already exists") from err
