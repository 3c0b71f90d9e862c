"""One line, instead of Ray's traceback, when a `ray job ...` command typed by hand cannot use
the local stack's job server.

Ray 2.60's `ray job` commands send a token only when RAY_AUTH_MODE=token is in their
environment: no file and no setting of the head turns that on, so `ray job submit` typed
without `source work/stack/env.sh` meets the stack's token-protected job server and ends in
Ray's AuthenticationError traceback (about 50 lines), or, with no stack running, in a
ConnectionError traceback (over 100). Neither says what to do here. `make install` writes a
.pth file into the project's virtual environment that imports this module at every start of
its Python; it acts only in a `ray job` process, and only on those two errors, which it turns
into one line saying to source env.sh. Any other error keeps Ray's own report.
"""
from __future__ import annotations

import os
import sys

# os.path rather than pathlib: this runs at every start of the environment's Python.
ENV_SH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "work", "stack", "env.sh")
CLUSTER_NOTE = "for another cluster set RAY_ADDRESS, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"


def hint(error: BaseException) -> str | None:
    """The line that replaces `error`'s traceback, or None to leave it to Ray."""
    kind = type(error)
    if (kind.__module__, kind.__name__) == ("ray.exceptions", "AuthenticationError"):
        refused = "refused the token it was given" if "failed" in str(error).split(":")[0].lower() \
            else "asks for a token"
        return f"error: the Ray job server {refused}: run 'source {ENV_SH}' first ({CLUSTER_NOTE})"
    if isinstance(error, ConnectionError) and str(error).startswith("Failed to connect to Ray"):
        return (f"error: {str(error).rstrip('.')}: start the stack (infra/local/stack.sh start) and run "
                f"'source {ENV_SH}' ({CLUSTER_NOTE})")
    return None


def is_ray_job_command(argv: list[str]) -> bool:
    return len(argv) > 1 and os.path.basename(argv[0]) == "ray" and argv[1] == "job"


def _report(kind, error, traceback):
    line = hint(error)
    if line is None:
        sys.__excepthook__(kind, error, traceback)
    else:
        print(line, file=sys.stderr)


if is_ray_job_command(getattr(sys, "argv", [])):
    sys.excepthook = _report
