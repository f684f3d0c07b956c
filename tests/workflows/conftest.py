"""The fast tier of workflow tests: the real BuildWorkflow on a dev server whose workflows skip
time (per workflow, Temporal's time skipping), its activities faked by contract name
(tests/workflows/fakes.py). A build takes well under a second; a day's timer fires at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.attributes import KEYS
from devtools.devserver import temporal_binary
from tests.workflows.fakes import Fakes
from workflows.build import BuildWorkflow

# The dev server's switch for per-workflow time skipping (off by default).
TIME_SKIPPING = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]


@pytest.fixture(scope="session")
async def skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of this session's own whose workflows skip time while they only wait."""
    env = await WorkflowEnvironment.start_time_skipping_v2(
        search_attributes=KEYS,
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_binary()),
        dev_server_extra_args=TIME_SKIPPING,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@asynccontextmanager
async def faked_worker(client: Client, fakes: Fakes) -> AsyncIterator[str]:
    """A worker of BuildWorkflow on the fakes, on a task queue of its own; its name."""
    queue = f"fast-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[BuildWorkflow], activities=fakes.activities()
    ):
        yield queue
