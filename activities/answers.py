"""Kept answers: a model's complete answer, kept before anything acts on it, so an activity
retried after the answer arrived (a failed commit, push or test start, a killed worker) uses
it instead of paying for it again.

An answer is keyed by build, role, the build's attempt of the phase, and a hash of the request
(model, format, schema, messages): the same question, asked again for the same attempt, gets
the same answer. The files live under ANSWERS_DIR (default `<DATA_DIR>/answers`), one folder
per build, and hold the answer and what it cost: no key, no header, no prompt (the prompts
carry repositories' code; their hash is enough to tell requests apart). Folders of builds not
written for ANSWER_RETENTION_DAYS are removed at worker start.

Blocking: the model client calls these through asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from activities import paths
from core.role_io import ModelUsage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    build_id: str
    role: str
    attempt: int
    request: str  # the request's hash

    @property
    def name(self) -> str:
        return f"{self.role}-{self.attempt}-{self.request[:32]}.json"


def request_hash(model: str, fmt: str, schema: str, messages: list[dict[str, str]]) -> str:
    text = json.dumps([model, fmt, schema, messages], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Kept:
    answer: dict[str, Any]
    usage: ModelUsage


class AnswerStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, build_id: str) -> Path:
        paths.check_name(build_id)  # one plain name: no way out of the store
        return self.root / build_id

    def get(self, key: Key) -> Kept | None:
        """The answer kept for `key`, or None (none kept, or one that cannot be read)."""
        try:
            data = paths.read_beneath(self._folder(key.build_id), key.name)
            if data is None:
                return None
            kept = json.loads(data)
            return Kept(kept["answer"], ModelUsage.model_validate(kept["usage"]))
        except (OSError, ValueError, KeyError) as err:
            log.warning("kept answer %s/%s not read: %s", key.build_id, key.name, err)
            return None

    def put(self, key: Key, answer: BaseModel, usage: ModelUsage) -> None:
        """Keep `answer` for `key` (written whole or not at all). A failure is logged, not
        raised: the answer is still used, it just cannot be reused."""
        record = {
            "build_id": key.build_id, "role": key.role, "attempt": key.attempt,
            "request_hash": key.request, "kept_at": time.time(),
            "answer": answer.model_dump(mode="json"), "usage": usage.model_dump(mode="json"),
        }  # fmt: skip
        try:
            folder = self._folder(key.build_id)
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f".{key.name}.{uuid.uuid4().hex[:8]}"
            part.write_text(json.dumps(record))
            os.replace(part, folder / key.name)
        except (OSError, ValueError) as err:
            log.warning("answer of %s/%s not kept: %s", key.build_id, key.name, err)

    def prune(self, days: float) -> int:
        """Remove the folders of builds none of whose answers is newer than `days`; how many."""
        if days <= 0 or not self.root.is_dir():
            return 0
        cutoff, removed = time.time() - days * 86_400, 0
        for folder in self.root.iterdir():
            if folder.is_dir() and not folder.is_symlink() and _newest(folder) < cutoff:
                shutil.rmtree(folder)
                removed += 1
        return removed


def _newest(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.iterdir()), default=folder.stat().st_mtime)
