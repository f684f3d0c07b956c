"""The mirror activity: writes a build's new events, handoffs and snapshot to SQL."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine
from temporalio import activity

from core.models import MirrorBatch, MirrorReceipt
from db.crud import record_batch


class MirrorActivities:
    """Holds the database engine; built once in worker.py."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name="mirror_build")
    async def mirror_build(self, batch: MirrorBatch) -> MirrorReceipt:
        # The database driver blocks; keep it off the worker's event loop.
        return await asyncio.to_thread(record_batch, self.engine, batch=batch)
