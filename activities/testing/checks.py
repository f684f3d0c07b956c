"""The Verification Overseer's static checks of a workspace (byte-compile, ruff), and the
comparison with the build's base that keeps only the problems the build introduced."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from activities import paths
from activities.beat import in_thread
from activities.repository.workspace import Workspace
from activities.sandbox.runs import Limits, run_limited

OUTPUT_CHARS = 1500


async def static_checks(repo: Path, scratch: Path, limits: Limits) -> dict[str, str]:
    """Byte-compile and `ruff check` of `repo`: per check, "ok" or the problems. The byte code
    goes to a new folder in `scratch` (`-X pycache_prefix`), not into the repository, and is
    removed after."""
    checks: dict[str, str] = {}
    byte_code = await asyncio.to_thread(paths.fresh, scratch, "pycache-")
    try:
        compiled = await run_limited(
            [sys.executable, "-X", f"pycache_prefix={byte_code}", "-m", "compileall", "-q", "."],
            cwd=repo,
            limits=limits,
            scratch=scratch,
            writable=[byte_code],
        )
    finally:
        await asyncio.to_thread(paths.remove_tree, byte_code)
    checks["byte-compile"] = "ok" if compiled.ok else _tail(compiled.output)
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        checks["ruff"] = "ok"  # not installed in this image: nothing to report
        return checks
    linted = await run_limited(
        [str(ruff), "check", "--isolated", "--no-cache", "--output-format", "concise", "."],
        cwd=repo,
        limits=limits,
        scratch=scratch,
    )
    checks["ruff"] = "ok" if linted.ok else _tail(linted.output)
    return checks


async def introduced_since(
    ws: Workspace, base: str, checks: dict[str, str], limits: Limits
) -> dict[str, str]:
    """`checks` with the problems that the same checks find on `base` taken out."""
    tree = await in_thread("worktree", ws.add_worktree, base, "checks")
    try:
        before = await static_checks(tree, ws.runs, limits)
    finally:
        await in_thread("worktree", ws.drop_worktree, tree)
    return {name: introduced(out, before.get(name, "ok")) for name, out in checks.items()}


def introduced(now: str, before: str) -> str:
    """The problems of a check's output that were not there before ("ok" if none): lines
    compared without their line and column numbers, which the build's edits move."""
    if now == "ok":
        return "ok"
    seen = {_position.sub(":", line) for line in before.splitlines()}
    new = [
        line
        for line in now.splitlines()
        if _diagnostic.match(line) and _position.sub(":", line) not in seen
    ]
    return "\n".join(new) if new else "ok"


_position = re.compile(r":\d+:\d+:|, line \d+")
_diagnostic = re.compile(r"^(\S+:\d+:\d+: |\*\*\* |\s*File )")


def _tail(text: str, limit: int = OUTPUT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
