"""git as a subprocess, with none of the user's or the system's configuration, and the
repository operations that need no workspace: check a remote, make a new bare repository.

Blocking: activities call these through asyncio.to_thread (activities/beat.in_thread).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

from core.projects import redact

GIT_TIMEOUT_SECONDS = 60
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree object
IDENTITY = {
    "GIT_AUTHOR_NAME": "Q Assistant Orchestration",
    "GIT_AUTHOR_EMAIL": "builds@q-assistant.invalid",
    "GIT_COMMITTER_NAME": "Q Assistant Orchestration",
    "GIT_COMMITTER_EMAIL": "builds@q-assistant.invalid",
}

# Set for every git command, above the repository's own configuration (a repository a run or a
# model could write to must not choose a program git runs): no hooks, no fsmonitor daemon.
FORCED_CONFIG = (("core.fsmonitor", "false"), ("core.hooksPath", os.devnull))


# git sees none of the user's or the system's configuration (hooks, signing, templates), and
# never asks a question on a terminal. SSH keys and agents still work (SSH_AUTH_SOCK, HOME).
def _forced(config: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`config` as git takes it from the environment, above every configuration file."""
    return {
        "GIT_CONFIG_COUNT": str(len(config)),
        **{f"GIT_CONFIG_KEY_{n}": key for n, (key, _) in enumerate(config)},
        **{f"GIT_CONFIG_VALUE_{n}": value for n, (_, value) in enumerate(config)},
    }


GIT_ENV = {
    **_forced(FORCED_CONFIG),
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/nonexistent"),
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    **IDENTITY,
    **({"SSH_AUTH_SOCK": os.environ["SSH_AUTH_SOCK"]} if "SSH_AUTH_SOCK" in os.environ else {}),
}


# git's credential store for the repositories' http(s) tokens, once the process names one
# (`use_credentials`): git asks it for a remote's user and token, per URL path.
_credentials: list[Path] = []


def use_credentials(store: Path) -> None:
    """git, in this process, reads the credentials of http(s) remotes from `store`."""
    _credentials[:] = [store]


def git_env() -> dict[str, str]:
    """GIT_ENV, with the credential store when the process has one."""
    if not _credentials:
        return GIT_ENV
    helper = f"store --file={shlex.quote(str(_credentials[0]))}"
    config = (*FORCED_CONFIG, ("credential.helper", helper), ("credential.useHttpPath", "true"))
    return {**GIT_ENV, **_forced(config)}


class GitError(RuntimeError):
    """A git command that failed; the message is git's own reason."""

    def __init__(self, args: tuple[str, ...], reason: str, returncode: int) -> None:
        reason = redact(reason)  # git names the URL it failed on, with any token in it
        super().__init__(redact(f"git {' '.join(args)} failed: {reason}"))
        self.reason = reason
        self.returncode = returncode


def git(cwd: Path | None, *args: str, timeout: float = GIT_TIMEOUT_SECONDS) -> str:
    """Run git in `cwd` (None: no repository) and return its output; GitError if it fails."""
    return git_bytes(cwd, *args, timeout=timeout).decode(errors="replace").strip()


def git_bytes(
    cwd: Path | None, *args: str, stdin: bytes | None = None, timeout: float = GIT_TIMEOUT_SECONDS
) -> bytes:
    """git with bytes in and out (patches and blobs keep their exact bytes)."""
    command = ["git", *(["-C", str(cwd)] if cwd is not None else []), *args]
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, timeout=timeout, env=git_env(), check=False
        )
    except subprocess.TimeoutExpired as err:
        raise GitError(args, f"no answer within {timeout:g}s", -1) from err
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).decode(errors="replace")
        raise GitError(args, said or f"exit {done.returncode}", done.returncode)
    return done.stdout


def remote_head(url: str, branch: str) -> str:
    """The commit of `branch` in the repository at `url`; GitError with git's reason if the
    repository cannot be read or has no such branch."""
    try:
        out = git(None, "ls-remote", "--exit-code", "--heads", url, f"refs/heads/{branch}")
    except GitError as err:
        if err.returncode == 2:  # --exit-code: the repository answered, without that branch
            raise GitError(("ls-remote",), f"{url} has no branch {branch!r}", 2) from err
        raise
    return out.split()[0]


def create_bare(path: Path, branch: str) -> str:
    """A bare repository at `path` whose `branch` holds one empty commit; the head commit.

    Made complete in a staging folder and renamed into place, so a worker killed halfway
    leaves no repository without a branch; an existing repository is left as it is."""
    if (path / "HEAD").exists():
        return git(path, "rev-parse", f"refs/heads/{branch}")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        git(None, "init", "-q", "--bare", "-b", branch, str(staging))
        commit = git(staging, "commit-tree", EMPTY_TREE, "-m", "project created")
        git(staging, "update-ref", f"refs/heads/{branch}", commit)
        try:
            os.rename(staging, path)
        except OSError:
            if not (path / "HEAD").exists():  # not another attempt that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return git(path, "rev-parse", f"refs/heads/{branch}")
