"""`ray job ...` typed without the stack's env.sh ends in one line that says what to do, not in
Ray's traceback (pipeline/ray_job_hint.py, installed into the venv by `make install`).

The case with the stack running (a token-protected job server) is in tests/test_local_stack.py.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from ray.exceptions import AuthenticationError

from pipeline.ray_job_hint import ENV_SH, hint

REPO = Path(__file__).resolve().parent.parent
RAY = REPO / ".venv" / "bin" / "ray"


def test_no_job_server_is_one_line():
    # A port held by a socket that does not listen refuses every connection, and nobody else
    # can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{held.getsockname()[1]}"
        refused = subprocess.run([str(RAY), "job", "submit", "--address", address, "--", "python", "-c", "pass"],
                                 capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()], refused.stderr
    assert refused.stderr.startswith(f"error: Failed to connect to Ray at address: {address}: start the stack")
    assert f"source {ENV_SH}" in refused.stderr


def test_each_authentication_failure_says_what_to_do():
    missing = hint(AuthenticationError("Authentication required: Unauthorized: Missing authentication token"))
    wrong = hint(AuthenticationError("Authentication failed: Forbidden: Invalid authentication token"))
    assert missing.startswith("error: the Ray job server asks for a token: run 'source ")
    assert wrong.startswith("error: the Ray job server refused the token it was given: run 'source ")
    assert ENV_SH.endswith("/work/stack/env.sh") and Path(ENV_SH).parent.parent.parent == REPO


def test_other_errors_and_other_processes_keep_their_reports():
    assert hint(ValueError("Failed to parse headers into JSON")) is None
    assert hint(ConnectionError("Connection reset by peer")) is None
    # The venv's Python imports the module at every start; outside `ray job` it changes nothing.
    hooked = subprocess.run([sys.executable, "-c", "import sys; print(sys.excepthook is sys.__excepthook__, "
                             "'pipeline.ray_job_hint' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert hooked.stdout.split() == ["True", "True"], hooked.stdout + hooked.stderr
