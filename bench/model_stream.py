"""The model layer against a real model server, and what streaming costs a build's history.

    .venv/bin/python -m bench.model_stream            # needs make install-local-model
    .venv/bin/python -m bench.model_stream --calls 3
    .venv/bin/python -m bench.model_stream --quick    # no real model; checks the script works

1. Overhead: one role call through the pipeline (ModelClient.structured: streamed, the tokens
   counted, the output published, the answer validated and kept) against the same request sent
   straight to the server by the openai SDK, streamed and whole, in turn, against the real
   local server (llama-cpp-python, Gemma 3 270M; greedy, so each way gets the same answer).
   Aim: the pipeline within 5% and 50 ms of the straight streamed request. The streamed
   against the whole request shows what the server's streaming itself costs.
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
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.model import output_modes, streaming
from activities.model.llm import ModelClient
from activities.model.output_modes import Mode
from bench.figures import log
from client.builds import start_build
from core.attributes import KEYS
from core.build_io import BuildOptions, BuildRequest
from core.contracts import Failure
from core.role_io import DiscoveryOutput, RoleTask
from core.settings import RoleModel, Settings
from core.states import BuildState, Role
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from devtools import local_model
from devtools.devserver import temporal_binary
from devtools.processes import free_port
from serving.assembly import build_worker
from workflows.build import BuildWorkflow


def task() -> RoleTask:
    """The Q Assistant's discovery: a call the tiny local model answers in its schema."""
    return RoleTask(
        build_id=f"bench-{uuid.uuid4().hex[:8]}", project_id="bench", role=Role.Q_ASSISTANT,
        state=BuildState.DISCOVERY, attempt=1,
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
            # One request a call each way: an answer that is not the schema is timed, not
            # re-asked, so both sides time the same request and the same answer.
            "llm_schema_reasks": 0,
            "llm_timeout_seconds": 300,
        }
    )


async def overhead(settings: Settings, calls: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per call: through the pipeline (streamed), the same request straight to the
    server streamed, and whole; and how many of the pipeline's answers were the schema. Each
    round asks one task all three ways (the same prompt: greedy, the same answer), in turn,
    after one untimed request of one token that has the server evaluate the prompt: each
    timed request then finds it evaluated (llama.cpp keeps the last prompt), and times the
    same work."""
    client = ModelClient(settings)
    mode = Mode(settings.llm_output_mode)
    seconds: dict[str, list[float]] = {"pipeline": [], "streamed": [], "whole": []}
    valid = 0

    async def pipeline(asked: RoleTask) -> None:
        nonlocal valid
        started = time.monotonic()
        try:
            await client.structured(asked, DiscoveryOutput)
            valid += 1
        except ApplicationError as err:
            if err.type != Failure.MODEL_OUTPUT_INVALID:
                raise
        seconds["pipeline"].append(time.monotonic() - started)

    async def straight(asked: RoleTask, stream: bool) -> None:
        # A request as the pipeline sends it, straight through the SDK.
        call, _, choice = await client._prepared(asked, DiscoveryOutput)
        body = output_modes.request(mode, DiscoveryOutput, call.messages)
        extra: dict[str, Any] = (
            {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        )
        started = time.monotonic()
        answer = await client.client.chat.completions.create(
            model=choice.model, **body, **call.options, **extra
        )
        if stream:
            async for _ in answer:
                pass
        seconds["streamed" if stream else "whole"].append(time.monotonic() - started)

    async def streamed(asked: RoleTask) -> None:
        await straight(asked, True)

    async def whole(asked: RoleTask) -> None:
        await straight(asked, False)

    async def warm(asked: RoleTask) -> None:
        call, _, choice = await client._prepared(asked, DiscoveryOutput)
        body = output_modes.request(mode, DiscoveryOutput, call.messages)
        await client.client.chat.completions.create(
            model=choice.model, **body, **{**call.options, "max_tokens": 1}
        )

    order = [pipeline, streamed, whole]
    for index in range(calls):
        asked = task()
        await warm(asked)
        for one in order[index % 3 :] + order[: index % 3]:
            await one(asked)
    await client.close()
    return seconds, valid


async def history(
    settings: Settings, stream: bool, latency: float
) -> tuple[int, int, float | None]:
    """Events and bytes of one offline build's history, and (streaming) the seconds from its
    first token read to the first `status` that shows tokens."""
    url = f"sqlite:///{settings.data_dir / f'mirror-{stream}.db'}"
    upgrade(url)
    engine = make_engine(url)
    ours = settings.model_copy(update={
        "llm_stream": stream, "offline_model_latency_seconds": latency, "database_url": url,
        "temporal_task_queue": f"bench-{uuid.uuid4().hex[:6]}"})  # fmt: skip
    client = await connect(ours)
    llm = ModelClient(ours)
    first_token: list[float] = []
    text = streaming.Output.text

    def seen(self: streaming.Output, added: str) -> None:
        if added and not first_token:
            first_token.append(time.monotonic())
        text(self, added)

    request = BuildRequest(
        project_id=f"bench-{uuid.uuid4().hex[:6]}", build_id=f"b{uuid.uuid4().hex[:12]}",
        user_id="bench", requirements={"feature": "Dark mode", "priority": "high"},
        options=BuildOptions(policy=ours.role_policy()),
    )  # fmt: skip
    streaming.Output.text = seen  # type: ignore[method-assign]
    try:
        async with build_worker(client, ours, llm=llm, engine=engine):
            handle = await start_build(client, ours, request)
            result = asyncio.ensure_future(handle.result())
            shown = None
            while shown is None and stream and not result.done():  # or it ended unseen
                status = await handle.query(BuildWorkflow.status)
                shown = time.monotonic() if status.model_now else None
                await asyncio.sleep(0.01)
            await result
    finally:
        streaming.Output.text = text  # type: ignore[method-assign]
        await llm.close()
    events = (await handle.fetch_history()).events
    engine.dispose()
    delay = shown - first_token[0] if shown and first_token else None
    return len(events), sum(e.ByteSize() for e in events), delay


def compared(
    seconds: dict[str, list[float]], where: str, calls: int, in_ms: bool = False
) -> list[tuple[str, str, str, str]]:
    """Rows: the pipeline against the straight streamed request, and streamed against whole:
    the medians, and the median of each round's difference (one task asked each way)."""
    kinds = ("pipeline", "streamed", "whole")
    ours, streamed, whole = (statistics.median(seconds[k]) for k in kinds)

    def paired(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(seconds[a], seconds[b], strict=True))

    cost, streaming = paired("pipeline", "streamed"), paired("streamed", "whole")

    def shown(value: float) -> str:
        return f"{value * 1000:.1f} ms" if in_ms else f"{value:.2f} s"

    def spread(kind: str) -> str:  # what one run's noise is, beside the difference
        values = seconds[kind]
        return f", sd {shown(statistics.stdev(values))}" if len(values) > 1 else ""

    return [
        (
            f"role call, median of {calls} ({where})",
            f"{shown(ours)} (pipeline, streamed{spread('pipeline')})",
            f"{shown(streamed)} (straight to the server, streamed{spread('streamed')})",
            f"{cost * 1000:+.1f} ms, {cost / streamed:+.1%} (aim under 50 ms and 5%)",
        ),
        (
            f"  the server's streaming itself ({where})",
            f"{shown(streamed)} (straight, streamed)",
            f"{shown(whole)} (straight, whole{spread('whole')})",
            f"{streaming * 1000:+.1f} ms, {streaming / whole:+.1%}",
        ),
    ]


def print_rows(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'ours':<44} {'baseline, same run':<56} difference (median of rounds)")
    for measure, a, b, verdict in rows:
        print(f"{measure:<{width}}  {a:<44} {b:<56} {verdict}")


async def main(calls: int, quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="qao-bench-model-") as tmp:
        folder = Path(tmp)
        env_ = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_binary()), ui=False, search_attributes=KEYS
        )
        base = Settings(_env_file=None, data_dir=folder, openai_api_key=None,
                        temporal_address=env_.client.service_client.config.target_host)  # fmt: skip
        rows: list[tuple[str, str, str, str]] = []
        try:
            latency = 0.5 if quick else 1.0
            log(f"one offline build with streaming, one without ({latency} s per answer)")
            streamed = await history(base, True, latency)
            whole = await history(base, False, latency)
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
            offline = base.model_copy(update={"llm_output_mode": "json_schema"})
            log(f"the pipeline's own cost: {calls * 10} calls each way, the offline model at once")
            seconds, _ = await overhead(offline, calls * 10)
            rows.extend(compared(seconds, "offline, answering at once", calls * 10, in_ms=True))
            if not quick:
                log("starting the real local model (llama-cpp-python, Gemma 3 270M)")
                server_log = folder / "local-model.log"
                async with local_model.serving(folder, free_port(), server_log) as served:
                    log(f"{calls} role calls each way against it")
                    seconds, valid = await overhead(real_settings(base, served), calls)
                where = f"real local model, {valid} answers the schema"
                rows.extend(compared(seconds, where, calls))
        finally:
            await env_.shutdown()
    print_rows(rows)


if __name__ == "__main__":
    from core.exit import exit_now

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=9, help="role calls each way")
    parser.add_argument("--quick", action="store_true", help="offline rows only, half the latency")
    args = parser.parse_args()
    exit_now(lambda: asyncio.run(main(args.calls, args.quick)))
