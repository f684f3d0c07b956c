"""git's credential store, as the client that registers a project writes it: the token of an
http(s) repository URL is kept there, and the registration holds the URL without it. The
workers' git reads the same file (activities/repository/gitcmd.py `use_credentials`)."""

from __future__ import annotations

import fcntl
import os
import urllib.parse
import uuid
from pathlib import Path

from core.projects import split_credentials


def _same(url: str, other: str) -> bool:
    return urllib.parse.unquote(url) == urllib.parse.unquote(other)


def keep_credentials(store: Path, repository: str, url: str | None) -> str | None:
    """Keep `url` (https://user:token@host/path; None: nothing) as the credentials of
    `repository` (the same URL without them) in git's credential store `store`, a file only its
    owner reads; what it held for that repository before, to put back if need be."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(f".{store.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two registrations at once keep both
        lines = store.read_text().splitlines() if store.exists() else []
        # git's store writes a line back in its own spelling (`host%3aport`): compared unquoted
        mine = [line for line in lines if line and _same(split_credentials(line)[0], repository)]
        kept = [line for line in lines if line and line not in mine]
        new = store.with_name(f".{store.name}.{uuid.uuid4().hex}")
        with os.fdopen(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write("".join(f"{line}\n" for line in (*kept, *([url] if url else []))))
        os.replace(new, store)
    return mine[-1] if mine else None
