"""Kept answers: a model's complete answer, kept before anything acts on it, so an activity
retried after the answer arrived (a failed commit, push or test start, a killed worker) uses
it instead of paying for it again.

An answer is keyed by build, role, the build's attempt of the phase, and a hash of the request
(model, format, schema, messages): the same question, asked again for the same attempt, gets
the same answer. It also records the state it was asked in, so a re-run (core/reruns.py) finds
the original's answer to each call by role, state and attempt (`recorded`), or by the request's
hash (`by_request`). Each holds the answer and what it cost: no key, no header, no prompt (the
prompts carry repositories' code; their hash is enough to tell requests apart). Where they
live is ANSWER_STORE:

- `files` (default): under ANSWERS_DIR (default `<DATA_DIR>/answers`), one folder per build:
  for workers that share a disk.
- `database`: the mirror's database (table `kept_answers`): for a fleet whose workers share
  none, so a retry on another machine finds the answer its first try was paid for.

A build's answers are removed at worker start once none is newer than ANSWER_RETENTION_DAYS.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from activities import paths
from core.feedback import ModelUsage
from core.settings import Settings
from db.engine import make_engine
from db.models import KeptAnswerRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    build_id: str
    role: str
    attempt: int
    request: str  # the request's hash
    state: str = ""  # the build state it was asked in (not part of the name: a retry's lookup)

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


class Answers(Protocol):
    """Where kept answers live: a get that never raises, a put that logs rather than raises
    (the answer is used all the same, it just cannot be reused), and a prune by age."""

    def get(self, key: Key) -> Kept | None: ...

    def put(self, key: Key, answer: BaseModel, usage: ModelUsage) -> None: ...

    def prune(self, days: float) -> int: ...

    def recorded(self, build_id: str, role: str, state: str, attempt: int) -> list[Kept]:
        """The answers `build_id` kept for `role`'s attempt `attempt` in `state` (and those of
        that attempt kept without a state), the latest first: the one its build acted on."""
        ...

    def by_request(self, build_id: str, request: str) -> Kept | None:
        """An answer `build_id` kept for the very request hashed `request`, any attempt."""
        ...

    def attempts(self, build_id: str, role: str, state: str) -> list[int]:
        """The attempts of `role` in `state` that `build_id` kept answers for, in order."""
        ...


def open_store(settings: Settings, engine: Engine | None = None) -> Answers:
    """The store ANSWER_STORE names (`engine`: the mirror's, where the caller has one)."""
    if settings.answer_store == "database":
        return DatabaseAnswers(engine or make_engine(settings.db_url()))
    return AnswerStore(settings.answers)


class AnswerStore:
    """Kept answers as files, one folder per build; the first kept for a key stays."""

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
            "state": key.state, "request_hash": key.request, "kept_at": time.time(),
            "answer": answer.model_dump(mode="json"), "usage": usage.model_dump(mode="json"),
        }  # fmt: skip
        try:
            folder = self._folder(key.build_id)
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f".{key.name}.{uuid.uuid4().hex[:8]}"
            part.write_text(json.dumps(record))
            try:  # the first answer kept for a key stays (a hard link never overwrites)
                os.link(part, folder / key.name)
            except FileExistsError:
                pass
            finally:
                part.unlink()
        except (OSError, ValueError) as err:
            log.warning("answer of %s/%s not kept: %s", key.build_id, key.name, err)

    def _records(self, build_id: str) -> list[dict[str, Any]]:
        """Every answer record `build_id` kept, oldest first (unreadable ones left out)."""
        try:
            folder = self._folder(build_id)
            names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
        except (OSError, ValueError):
            return []
        found = []
        for name in names:
            try:
                data = paths.read_beneath(folder, name)
                record = json.loads(data) if data is not None else None
            except (OSError, ValueError) as err:
                log.warning("kept answer %s/%s not read: %s", build_id, name, err)
                continue
            if isinstance(record, dict) and "answer" in record and "usage" in record:
                found.append(record)
        return sorted(found, key=lambda r: float(r.get("kept_at", 0)))

    def recorded(self, build_id: str, role: str, state: str, attempt: int) -> list[Kept]:
        matching = [
            r for r in self._records(build_id)
            if r.get("role") == role and r.get("attempt") == attempt
            and r.get("state") in (state, "", None)
        ]  # fmt: skip
        return [_kept(r["answer"], r["usage"]) for r in reversed(matching)]

    def attempts(self, build_id: str, role: str, state: str) -> list[int]:
        return sorted({
            int(r["attempt"]) for r in self._records(build_id)
            if r.get("role") == role and r.get("state") in (state, "", None)
            and isinstance(r.get("attempt"), int)
        })  # fmt: skip

    def by_request(self, build_id: str, request: str) -> Kept | None:
        for r in reversed(self._records(build_id)):
            if r.get("request_hash") == request:
                return _kept(r["answer"], r["usage"])
        return None

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


def _kept(answer: dict[str, Any], usage: dict[str, Any]) -> Kept:
    return Kept(answer, ModelUsage.model_validate(usage))


def _newest(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.iterdir()), default=folder.stat().st_mtime)


class DatabaseAnswers:
    """Kept answers as rows of the mirror's database: one per key, the first kept wins (the
    same request of the same attempt has one answer)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, key: Key) -> Kept | None:
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        query = select(row.answer, row.usage).where(
            row.workflow_id == key.build_id,
            row.role == key.role,
            row.attempt == key.attempt,
            row.request_hash == key.request,
        )
        try:
            with self.engine.connect() as conn:
                found = conn.execute(query).first()
            return (
                None
                if found is None
                else Kept(found.answer, ModelUsage.model_validate(found.usage))
            )
        except (SQLAlchemyError, ValueError) as err:
            log.warning("kept answer %s/%s not read: %s", key.build_id, key.name, err)
            return None

    def put(self, key: Key, answer: BaseModel, usage: ModelUsage) -> None:
        values = {
            "workflow_id": key.build_id, "role": key.role, "attempt": key.attempt,
            "state": key.state, "request_hash": key.request, "kept_at": datetime.now(UTC),
            "answer": answer.model_dump(mode="json"), "usage": usage.model_dump(mode="json"),
        }  # fmt: skip
        table = KeptAnswerRow.__table__  # type: ignore[attr-defined]
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(table).values(values).on_conflict_do_nothing()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert)
        except SQLAlchemyError as err:
            log.warning("answer of %s/%s not kept: %s", key.build_id, key.name, err)

    def recorded(self, build_id: str, role: str, state: str, attempt: int) -> list[Kept]:
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        query = (
            select(row.answer, row.usage)
            .where(
                row.workflow_id == build_id,
                row.role == role,
                row.attempt == attempt,
                (row.state == state) | (row.state == "") | row.state.is_(None),
            )
            .order_by(row.kept_at.desc(), row.id.desc())
        )
        return self._read(query, build_id)

    def attempts(self, build_id: str, role: str, state: str) -> list[int]:
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        query = (
            select(row.attempt)
            .where(
                row.workflow_id == build_id,
                row.role == role,
                (row.state == state) | (row.state == "") | row.state.is_(None),
            )
            .distinct()
            .order_by(row.attempt)
        )
        try:
            with self.engine.connect() as conn:
                return [int(a) for (a,) in conn.execute(query)]
        except SQLAlchemyError as err:
            log.warning("kept answers of %s not read: %s", build_id, err)
            return []

    def by_request(self, build_id: str, request: str) -> Kept | None:
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        query = (
            select(row.answer, row.usage)
            .where(row.workflow_id == build_id, row.request_hash == request)
            .order_by(row.kept_at.desc(), row.id.desc())
            .limit(1)
        )
        found = self._read(query, build_id)
        return found[0] if found else None

    def _read(self, query: Any, build_id: str) -> list[Kept]:
        try:
            with self.engine.connect() as conn:
                return [_kept(r.answer, r.usage) for r in conn.execute(query)]
        except (SQLAlchemyError, ValueError) as err:
            log.warning("kept answers of %s not read: %s", build_id, err)
            return []

    def prune(self, days: float) -> int:
        if days <= 0:
            return 0
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        cutoff = datetime.now(UTC) - timedelta(days=days)
        old = (
            select(row.workflow_id).group_by(row.workflow_id).having(func.max(row.kept_at) < cutoff)
        )
        with self.engine.begin() as conn:
            builds = list(conn.execute(old).scalars())
            if builds:
                conn.execute(delete(KeptAnswerRow.__table__).where(row.workflow_id.in_(builds)))  # type: ignore[attr-defined]
        return len(builds)
