"""The refusals of client operations, each with a message a person can act on; the CLI prints
it, the API maps its kind to an HTTP status."""

from __future__ import annotations

from temporalio.service import RPCStatusCode

# RPC statuses that mean nobody answered in time (rather than "no").
NO_ANSWER = (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.CANCELLED)


class BuildError(Exception):
    """A refusal with a reason for a person."""


class BuildExists(BuildError):
    pass


class BuildNotFound(BuildError):
    pass


class BuildFinished(BuildError):
    pass


class CommandRefused(BuildError):
    """The workflow's validator said no; the message is its reason."""


class NoAnswer(BuildError):
    """Temporal or a worker did not answer in time."""
