"""Errors a user can act on, and how they are printed: one line, no stack trace.

Every mistake in what a user asked for or gave us (a missing store, a schema mismatch, a
flag no run could use) is a `UserError` or a subclass; the jobs' entry points
(pipeline.runtime.entrypoint) print it as `error: <message>` and exit with code 2.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for or gave us: printed as one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): for one-line errors.

    Pyarrow, MLflow, boto3 and HTTP clients put pages of detail into their messages; the
    first line names the problem.
    """
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
