"""The model layer against a real model server, and what streaming costs a build's history.

    .venv/bin/python -m bench.model_stream            # needs make install-local-model
    .venv/bin/python -m bench.model_stream --calls 3

1. Overhead: one role call through the pipeline (ModelClient.structured: streamed, the tokens
   counted, the output published, the answer validated and kept) against the same request sent
   straight to the server by the openai SDK (whole, no stream), alternating, against the real
   local server (llama-cpp-python, Gemma 3 270M). Aim: under 5% of the call and under 50 ms.
2. First token: the moment the pipeline's stream reads its first token against the moment the
   build's `status` query shows tokens, in a real build on a dev server. Aim: within 1 s.
3. History: one offline build with LLM_STREAM on and off (the offline model spreading each
   answer over a second, as a model writes), its history's events and bytes. Aim: under 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import output_modes, streaming
from activities.llm import ModelClient
from activities.output_modes import Mode
from core.attributes import KEYS
from core.role_io import PlanOutput, RoleTask
from core.settings import RoleModel, Settings
from core.states import BuildState, Role
from devtools import local_model
from devtools.devserver import temporal_binary
from devtools.processes import free_port
from workflows.build import BuildWorkflow


def task() -> RoleTask:
    return RoleTask(
        build_id=f"bench-{uuid.uuid4().hex[:8]}", project_id="bench", role=Role.Q_ASSISTANT,
        state=BuildState.PLANNING, attempt=1,
        requirements={"feature": "Dark mode", "priority": "high"},
    )  # fmt: skip


def real_settings(base: Settings, env: dict[str, str]) -> Settings:
    import json

    roles = {Role(r): RoleModel(**c) for r, c in json.loads(env["LLM_ROLES"]).items()}
    return base.model_copy(
        update={
            "openai_api_key": SecretStr(env["OPENAI_API_KEY"]),
            "openai_base_url": env["OPENAI_BASE_URL"],
            "llm_model": env["LLM_MODEL"],
            "llm_context_tokens": int(env["LLM_CONTEXT_TOKENS"]),
            # Greedy: the same request gives the same answer both ways, so the times compare.
            "llm_roles": {r: m.model_copy(update={"temperature": 0}) for r, m in roles.items()},
            "llm_output_mode": "tools",  # what auto finds there; no refused first request
            "llm_timeout_seconds": 300,
        }
    )


async def overhead(settings: Settings, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per call: through the pipeline, and the same request straight to the server."""
    client = ModelClient(settings)
    ours: list[float] = []
    direct: list[float] = []

    async def pipeline() -> None:
        started = time.monotonic()
        await client.structured(task(), PlanOutput)
        ours.append(time.monotonic() - started)

    async def straight() -> None:
        # A request as the pipeline sends it, straight through the SDK, whole.
        call, _, choice = await client._prepared(task(), PlanOutput)
        body = output_modes.request(Mode.TOOLS, PlanOutput, call.messages)
        started = time.monotonic()
        await client.client.chat.completions.create(model=choice.model, **body, **call.options)
        direct.append(time.monotonic() - started)

    for index in range(calls):  # alternating: the server's prompt cache favours neither
        for one in (pipeline, straight) if index % 2 == 0 else (straight, pipeline):
            await one()
    await client.close()
    return ours, direct


async def history(settings: Settings, stream: bool) -> tuple[int, int, float | None]:
    """Events and bytes of one offline build's history, and (streaming) the seconds from its
    first token read to the first `status` that shows tokens."""
    from db.engine import make_engine
    from db.migrate import upgrade
    from tests.helpers import make_request, running_worker, start

    url = f"sqlite:///{settings.data_dir / f'mirror-{stream}.db'}"
    upgrade(url)
    engine = make_engine(url)
    ours = settings.model_copy(update={
        "llm_stream": stream, "offline_model_latency_seconds": 1.0, "database_url": url,
        "temporal_task_queue": f"bench-{uuid.uuid4().hex[:6]}"})  # fmt: skip
    client = await Client.connect(settings.temporal_address, data_converter=_converter())
    first_token: list[float] = []
    text = streaming.Output.text

    def seen(self: streaming.Output, added: str) -> None:
        if added and not first_token:
            first_token.append(time.monotonic())
        text(self, added)

    streaming.Output.text = seen  # type: ignore[method-assign]
    try:
        async with running_worker(client, ours, engine):
            handle = await start(client, ours, make_request())
            shown = None
            while shown is None and stream:
                status = await handle.query(BuildWorkflow.status)
                shown = time.monotonic() if status.model_now else None
                await asyncio.sleep(0.01)
            await handle.result()
    finally:
        streaming.Output.text = text  # type: ignore[method-assign]
    events = (await handle.fetch_history()).events
    engine.dispose()
    delay = shown - first_token[0] if shown and first_token else None
    return len(events), sum(e.ByteSize() for e in events), delay


def _converter() -> Any:
    from temporalio.contrib.pydantic import pydantic_data_converter

    return pydantic_data_converter


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="qao-bench-model-") as tmp:
        folder = Path(tmp)
        env_ = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_binary()), ui=False, search_attributes=KEYS
        )
        base = Settings(_env_file=None, data_dir=folder, openai_api_key=None,
                        temporal_address=env_.client.service_client.config.target_host)  # fmt: skip
        rows: list[tuple[str, str, str, str]] = []
        try:
            streamed, whole = await history(base, True), await history(base, False)
            rows.append((
                "first token to `status`",
                f"{streamed[2]:.3f} s" if streamed[2] is not None else "never shown",
                "the activity reads it",
                "aim within 1 s",
            ))  # fmt: skip
            rows.append((
                "history of one build (events, bytes)",
                f"{streamed[0]} events, {streamed[1]:,} B",
                f"{whole[0]} events, {whole[1]:,} B (no streaming)",
                f"{streamed[0] / whole[0]:.2f}x events, {streamed[1] / whole[1]:.2f}x bytes "
                "(aim under 2x)",
            ))  # fmt: skip
            log = folder / "local-model.log"
            async with local_model.serving(folder, free_port(), log) as served:
                ours, direct = await overhead(real_settings(base, served), calls)
            mine, theirs = statistics.median(ours), statistics.median(direct)
            rows.append((
                f"role call, median of {calls}",
                f"{mine:.2f} s (pipeline, streamed)",
                f"{theirs:.2f} s (straight to the server)",
                f"{(mine - theirs) * 1000:+.0f} ms, {(mine - theirs) / theirs:+.1%} "
                "(aim under 50 ms and 5%)",
            ))  # fmt: skip
        finally:
            await env_.shutdown()
    width = max(len(r[0]) for r in rows)
    for measure, a, b, verdict in rows:
        print(f"{measure:<{width}}  {a:<34} {b:<44} {verdict}")


if __name__ == "__main__":
    from core.exit import exit_now

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5, help="role calls each way")
    args = parser.parse_args()
    exit_now(lambda: asyncio.run(main(args.calls)))
