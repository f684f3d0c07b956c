"""Evaluation cases mined from a repository's own history, SWE-bench style (`starter.py eval
mine REPO`): a commit that changes code and tests together is a case. Its base is the commit's
parent, its requirement the commit's message, its hidden tests the test files the commit added
or changed, as the commit has them.

A case is kept only once it was run: its hidden tests at the base (with the commit's test
files written in) and at the commit itself, each in the project's own environment and the
sandbox, as a build's tests run. Kept: at least one hidden test goes from failing (or not
collecting) to passing (`fail_to_pass`), and none fails at the commit. The rest are dropped,
each with its reason. The work happens in a copy of the repository under the data folder
(client/evals.copied); the repository itself is never written.

Writes `<out>/suite.yaml` and the hidden tests under `<out>/hidden/<case>/`, a suite that
`starter.py eval` runs as it is."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import yaml

from activities import paths
from activities.repository.gitcmd import GitError, git, git_bytes
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.results import cases
from activities.testing.sealed import TEST_MODULE
from activities.testing.testrun import run_command
from client.evals import SuiteError, copied
from core.eval_build import MAX_HIDDEN_CHARS
from core.settings import Settings

TEST_FILE = re.compile(r"(^|/)(tests?/.*\.py|test_[^/]*\.py|[^/]*_test\.py)$")
MAX_TRIES_PER_CASE = 5  # candidates run for each case asked for, at most


@dataclass
class Candidate:
    commit: str
    parent: str
    message: str
    tests: list[str]  # test files the commit added or changed
    code: list[str]  # other Python files it changed


@dataclass
class MinedCase:
    id: str
    candidate: Candidate
    files: dict[str, str]  # hidden test path -> text at the commit
    fail_to_pass: list[str]
    pass_to_pass: list[str]


@dataclass
class Mined:
    branch: str = "main"  # the repository's default branch, whose history was mined
    scanned: int = 0  # commits looked at
    candidates: int = 0  # of them, changing code and tests together
    kept: list[MinedCase] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # commit, why


def candidates(
    repo: Path, *, since: str | None, paths_filter: list[str], limit: int
) -> tuple[int, list[Candidate]]:
    """Commits of HEAD's history, newest first, that change code and tests together (and a
    path matching `paths_filter`, when given): how many were looked at, and the first `limit`."""
    args = ["log", "--no-merges", "--format=%H %P"]
    if since:
        args.append(f"--since={since}")
    listed = git(repo, *args, "--end-of-options", "HEAD", timeout=300).splitlines()
    found: list[Candidate] = []
    for line in listed:
        commit, *parents = line.split()
        if len(parents) != 1:
            continue  # the first commit: no base to start from
        changed = git(
            repo, "diff", "--name-status", "--no-renames", parents[0], commit
        ).splitlines()
        kept = [(s, p) for s, p in (row.split("\t", 1) for row in changed) if s in ("A", "M")]
        touched = [p for _, p in kept]
        if paths_filter and not any(fnmatch(p, g) for p in touched for g in paths_filter):
            continue
        tests = [p for p in touched if TEST_FILE.search(p)]
        code = [p for p in touched if p.endswith(".py") and not TEST_FILE.search(p)]
        if any(TEST_MODULE.match(p.rsplit("/", 1)[-1]) for p in tests) and code:
            message = git(repo, "log", "-1", "--format=%B", commit)
            found.append(Candidate(commit, parents[0], message, tests, code))
            if len(found) >= limit:
                break
    return len(listed), found


class Validator:
    """Runs a candidate's hidden tests at its base and at its commit, in checkouts of the
    repository's copy under `work`."""

    def __init__(self, settings: Settings, copy: Path, work: Path, project: str) -> None:
        self.settings, self.copy, self.work, self.project = settings, copy, work, project
        self.limits = Limits(settings.test_timeout_seconds, settings.test_memory_mb)

    async def passed_at(
        self, commit: str, files: dict[str, str], name: str
    ) -> tuple[set[str], str]:
        """The hidden tests that passed at `commit` (with `files` written in), and what the run
        said."""
        tree = self.work / name
        shutil.rmtree(tree, ignore_errors=True)
        await asyncio.to_thread(
            git, None, "clone", "-q", "--no-checkout", str(self.copy), str(tree)
        )
        await asyncio.to_thread(git, tree, "checkout", "-q", "--detach", commit)
        for path, text in files.items():
            await asyncio.to_thread(paths.write_beneath, tree, path, text.encode())
        request = environment.Request(
            store=self.settings.environments,
            project=self.project,
            network=self.settings.sandbox_setup_network,
            wheels=self.settings.runner_wheels,
        )
        command = _pytest_of(files)
        report = await run_command(
            tree, self.work / "runs", name, command, self.limits, None, request
        )
        found = await asyncio.to_thread(cases, Path(report.junit)) if report.junit else []
        await asyncio.to_thread(paths.remove_tree, tree)
        passed = {c.name for c in found if c.status == "passed"}
        return passed, report.summary if not report.setup_failed else f"setup: {report.summary}"

    async def validate(self, candidate: Candidate) -> MinedCase | str:
        """The case, or why it is dropped."""
        files = {}
        for path in candidate.tests:
            text = git_bytes(self.copy, "cat-file", "blob", f"{candidate.commit}:{path}")
            files[path] = text.decode("utf-8", errors="replace")
        if sum(len(t) for t in files.values()) > MAX_HIDDEN_CHARS:
            return f"its test files are larger than {MAX_HIDDEN_CHARS} characters"
        short = candidate.commit[:10]
        at_fix, said_fix = await self.passed_at(candidate.commit, files, f"{short}-fix")
        if not at_fix:
            return f"no hidden test passes at the commit itself ({said_fix})"
        at_base, _ = await self.passed_at(candidate.parent, files, f"{short}-base")
        fixed = sorted(at_fix - at_base)
        if not fixed:
            return "every hidden test that passes at the commit passes at its base already"
        # Every case of the hidden files at the commit passed? A failing one makes it noise.
        failing = _failing_at(self.work / "runs" / f"junit-{short}-fix.xml")
        if failing:
            return f"{len(failing)} hidden tests fail at the commit itself: {failing[0]}"
        return MinedCase(
            id=f"c{short[:9]}",
            candidate=candidate,
            files=files,
            fail_to_pass=fixed,
            pass_to_pass=sorted(at_fix & at_base),
        )


def _pytest_of(files: dict[str, str]) -> str:
    """pytest on the test modules of `files` (the rest are theirs: helpers, __init__.py)."""
    modules = sorted(p for p in files if TEST_MODULE.match(p.rsplit("/", 1)[-1]))
    return "python -m pytest -q " + " ".join(modules)


def _failing_at(junit: Path) -> list[str]:
    return [c.name for c in cases(junit) if c.status in ("failure", "error")]


async def mine(
    settings: Settings,
    repository: str,
    *,
    since: str | None = None,
    limit: int = 10,
    paths_filter: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> Mined:
    """Up to `limit` validated cases of `repository`'s history (see the module's text); a
    URL, or an absolute path."""
    copy = await asyncio.to_thread(copied, repository, settings.data_dir / "evals", repository)
    digest = hashlib.sha256(repository.encode()).hexdigest()[:12]
    work = settings.data_dir / "mining" / digest
    validator = Validator(settings, copy, work, f"mined-{digest}")
    tries = limit * MAX_TRIES_PER_CASE
    scanned, found = await asyncio.to_thread(
        candidates, copy, since=since, paths_filter=paths_filter or [], limit=tries
    )
    branch = await asyncio.to_thread(git, copy, "symbolic-ref", "--short", "HEAD")
    mined = Mined(branch=branch, scanned=scanned, candidates=len(found))
    say(f"{scanned} commits scanned, {len(found)} change code and tests together")
    for candidate in found:
        if len(mined.kept) >= limit:
            break
        try:
            outcome = await validator.validate(candidate)
        except (GitError, OSError, paths.PathRefused) as err:
            outcome = f"could not be run: {err}"
        if isinstance(outcome, str):
            mined.dropped.append((candidate.commit, outcome))
            say(f"  {candidate.commit[:10]} dropped: {outcome}")
        else:
            mined.kept.append(outcome)
            fixed = len(outcome.fail_to_pass)
            tests = f"{fixed} hidden test{'s' * (fixed != 1)}"
            say(f"  {candidate.commit[:10]} kept: {tests} failing at the base pass at the commit")
    return mined


def write_suite(mined: Mined, repository: str, out: Path, name: str) -> Path:
    """The mined cases as a suite `starter.py eval` runs: `out/suite.yaml`, and each case's
    hidden tests under `out/hidden/<case>/`."""
    if not mined.kept:
        raise SuiteError("no case was kept: nothing to write")
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for case in mined.kept:
        for path, text in case.files.items():
            paths.write_beneath(out, f"hidden/{case.id}/{path}", text.encode())
        listed.append(
            {
                "id": case.id,
                "repository": repository,
                "branch": mined.branch,
                "base": case.candidate.parent,
                "requirements": case.candidate.message.strip() or case.candidate.commit,
                "hidden_tests": {
                    "files": {p: f"hidden/{case.id}/{p}" for p in case.files},
                    "command": _pytest_of(case.files),
                    "fail_to_pass": case.fail_to_pass,
                    "pass_to_pass": case.pass_to_pass,
                },
            }
        )
    suite = out / "suite.yaml"
    text = yaml.safe_dump({"name": name, "parallel": 2, "cases": listed}, sort_keys=False)
    suite.write_text(text, encoding="utf-8")
    return suite
