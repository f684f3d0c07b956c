"""Writes a build's new events, handoffs and snapshot to SQL, two ways:

- `mirror_build`, the local activity the workflow runs when it waits or ends: retried by
  Temporal until the database answers, so nothing is lost;
- `carried`, the batch a role call carries (RoleTask.mirror), written by the call before its
  role works. One try: if the database does not answer, the role works anyway and the workflow
  sends the same events again with its next batch. Writes are idempotent, so a batch written
  twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.beat import beating
from core.contracts import MIRROR_BUILD, Failure
from core.mirror import MirrorBatch, MirrorReceipt
from db.crud import record_batch

log = logging.getLogger(__name__)


class MirrorActivities:
    """Holds the database engine; built once in serving/main.py."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, batch: MirrorBatch) -> MirrorReceipt:
        """One write (blocking: the database driver blocks). A refusal of its data is
        Failure.MIRROR_REFUSED, not retried: the same data would be refused again, without end."""
        try:
            return record_batch(self.engine, batch=batch)
        except (DataError, IntegrityError) as err:
            reason = str(err.orig or err).splitlines()[0][:500]
            log.error(
                "mirror refused the batch of %s up to event %d, not retried: %s",
                batch.snapshot.workflow_id, batch.snapshot.last_seq, reason,
            )  # fmt: skip
            raise ApplicationError(
                f"the database refused the mirror's data: {reason}",
                type=Failure.MIRROR_REFUSED,
                non_retryable=True,
            ) from err

    @activity.defn(name=MIRROR_BUILD.name)
    async def mirror_build(self, batch: MirrorBatch) -> MirrorReceipt:
        return await asyncio.to_thread(self.write, batch)

    async def carried(self, batch: MirrorBatch | None) -> int:
        """Write the batch a role call carries; the last event written, or 0 if none was."""
        if batch is None:
            return 0
        try:
            await beating(asyncio.to_thread(self.write, batch), "writing the mirror")
        except Exception as err:  # any failure: the workflow sends the batch again
            log.warning(
                "mirror not written (events %d-%d), the workflow will send them again: %s",
                batch.events[0].seq if batch.events else batch.snapshot.last_seq,
                batch.snapshot.last_seq,
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
            return 0
        return batch.snapshot.last_seq
