"""One request to a model endpoint, and what its failures mean: streamed (or whole where
the endpoint refuses streaming), the answer's message and finish reason, and each way a
request fails turned into an ApplicationError of its kind: retried by Temporal where asking
again can help (after Retry-After), not retried where it cannot, with a message a person can
act on."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import openai
from temporalio.exceptions import ApplicationError

from activities.model import streaming
from core.contracts import Failure

log = logging.getLogger(__name__)

# Status codes where asking again cannot help (bad request, bad key, no access, unknown model).
NON_RETRYABLE_STATUS = {400, 401, 403, 404, 422}
MAX_RETRY_AFTER_SECONDS = 300.0

STATUS_HINTS = {
    401: "OPENAI_API_KEY rejected by the endpoint",
    403: "the API key has no access to this model or endpoint",
    404: "model or endpoint not found (check LLM_MODEL / OPENAI_BASE_URL)",
}

# Endpoints that refused a streamed request: asked whole for the worker's life.
unstreamed: set[str] = set()
_STREAM_WORDS = re.compile(r"stream", re.I)


def refuses_streaming(err: openai.APIStatusError) -> bool:
    """Whether an error answer to a streamed request refuses the streaming itself."""
    return err.status_code in (400, 422, 500, 501) and bool(
        _STREAM_WORDS.search(f"{err.message} {err.body}")
    )


async def ask(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    out: streaming.Output,
    label: str,
    *,
    stream: bool,
    stall_seconds: float,
) -> tuple[Any, str | None]:
    """One request's answer message and finish reason: streamed, unless the endpoint
    refused streaming before (then asked whole). A stream that stalls or is cut fails the
    attempt as a timeout or an outage (Temporal retries it); what it had received counts
    as spent (`out`)."""
    endpoint, model = str(client.base_url), request["model"]
    out.request(label, streaming.tokens_of(json.dumps(request["messages"])))
    try:
        if stream and endpoint not in unstreamed:
            try:
                answer = await streaming.read_stream(
                    client, request, stall_seconds=stall_seconds, output=out
                )
            except openai.APIStatusError as err:
                if not refuses_streaming(err):
                    raise
                unstreamed.add(endpoint)
                log.warning(
                    "%s at %s refuses streaming (HTTP %d: %s); asking whole from now on",
                    *(model, endpoint, err.status_code, err.message),
                )
            else:
                out.finished(answer.spend(out.prompt_estimate))
                return answer.message(), answer.finish(request.get("max_tokens"))
        answer = streaming.Accumulator()
        out.reading(answer)
        out.text(answer.take(await client.chat.completions.create(**request)))
        out.finished(answer.spend(out.prompt_estimate))
        return answer.message(), answer.finish(request.get("max_tokens"))
    except openai.APIStatusError:
        out.cut()
        raise
    except streaming.Stalled as err:
        out.cut()
        raise ApplicationError(f"model {model}: {err}", type=Failure.MODEL_TIMEOUT) from err
    except streaming.Unfinished as err:  # as a cut connection: asked again
        out.cut()
        raise ApplicationError(f"model {model}: {err}", type=Failure.MODEL_UNREACHABLE) from err
    except (openai.APIError, httpx2.HTTPError) as err:  # timeouts, cut connections
        out.cut()
        kind = (
            Failure.MODEL_TIMEOUT
            if isinstance(err, openai.APITimeoutError | httpx2.TimeoutException)
            else Failure.MODEL_UNREACHABLE
        )
        raise ApplicationError(
            f"model {model} did not answer ({type(err).__name__}: {err})", type=kind
        ) from err


def too_long(err: openai.APIStatusError, model: str, size: int) -> ApplicationError:
    return ApplicationError(
        f"model {model} refused the prompt as too long even with the task cut to {size} "
        f"characters (HTTP {err.status_code}: {err.message}); set its context window "
        "(LLM_CONTEXT_TOKENS, or context_tokens in LLM_ROLES) or use a model with a larger one",
        type=Failure.MODEL_CONTEXT_EXCEEDED,
        non_retryable=True,
    )


def classify(err: openai.APIStatusError, model: str) -> ApplicationError:
    """Non-retryable for requests a retry cannot fix; otherwise retryable, after Retry-After."""
    status = err.status_code
    if status in NON_RETRYABLE_STATUS:
        hint = STATUS_HINTS.get(status, "the endpoint refused the request")
        return ApplicationError(
            f"{hint} (HTTP {status}, model {model}): {err.message}",
            type=Failure.MODEL_REQUEST_REJECTED,
            non_retryable=True,
        )
    wait = retry_after(err.response.headers.get("retry-after"))
    kind = Failure.MODEL_RATE_LIMITED if status == 429 else Failure.MODEL_UNAVAILABLE
    return ApplicationError(
        f"model {model} answered HTTP {status}: {err.message}"
        + (f"; retrying after {wait:.0f}s as asked" if wait else ""),
        type=kind,
        next_retry_delay=timedelta(seconds=wait) if wait else None,
    )


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) or None
