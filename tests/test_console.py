"""What a job prints: Ray's harmless notices kept off the console, the state API on the job's
own cluster even when other Ray instances run on the machine (pipeline.console)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ray._private.ray_logging import WorkerStandardStreamDispatcher

from pipeline import console

REPO = Path(__file__).resolve().parent.parent

# Copied from a training job's console (Ray 2.60), with its ids.
PREEMPTION_WATCHER_LINE = (
    "[2026-12-02 07:38:55,963 E 5106 5149] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: '54cf209a20480b49cd603c1601000000' has constructor arguments in the object store and max_restarts > 0. "
    "If the arguments are passed by reference, their lifetime is tied to the actor."
)

# A job that starts its own Ray instance through init_ray while the test session's instance
# runs (so the machine has at least two), and asks the state API from inside a task, as Ray
# Train's PlacementGroupCleaner does: with no address.
STATE_API_FROM_A_TASK = """
import json, ray
from pipeline.runtime import init_ray

init_ray(dashboard=True)

@ray.remote
def ask_state_api():
    import os
    from ray.util.state import list_nodes
    return {"nodes": len(list_nodes()), "ray_address": os.environ.get("RAY_ADDRESS")}

print("RESULT " + json.dumps({**ray.get(ask_state_api.remote()), "gcs": ray.get_runtime_context().gcs_address}))
"""


def test_a_task_finds_its_own_cluster_beside_another_instance(ray_session, tmp_path):
    assert ray_session.is_initialized()  # the session's instance: the machine has two at least
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), CRN_WORK_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", STATE_API_FROM_A_TASK], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["nodes"] == 1
    assert result["ray_address"] == result["gcs"]  # the job's own GCS, set by the setup hook
    assert "Found multiple active Ray instances" not in done.stderr
    assert "Token authentication is enabled" not in done.stderr
    assert "Started a local Ray instance" in done.stderr  # Ray's own useful lines still show


def test_harmless_worker_lines_are_dropped_and_others_kept():
    received = []
    dispatcher = WorkerStandardStreamDispatcher()
    dispatcher.add_handler("ray_print_logs", received.append)
    dispatcher.add_handler("other", lambda data: received.append(("other", data)))
    console.filter_worker_lines(dispatcher)
    console.filter_worker_lines(dispatcher)  # twice: still one wrapper

    other_error = "[2026-12-02 07:38:55,963 E 5106 5149] core_worker.cc:1000: Failed to connect to the raylet."
    dispatcher.emit({"pid": 1, "is_err": True, "lines": [PREEMPTION_WATCHER_LINE, other_error, "step 10/30"]})
    dispatcher.emit({"pid": 1, "is_err": True, "lines": [PREEMPTION_WATCHER_LINE]})

    printed = [d for d in received if not isinstance(d, tuple)]
    assert [d["lines"] for d in printed] == [[other_error, "step 10/30"]]  # the second batch printed nothing
    assert [d["lines"] for k, d in (x for x in received if isinstance(x, tuple))] == [
        [PREEMPTION_WATCHER_LINE, other_error, "step 10/30"], [PREEMPTION_WATCHER_LINE]]  # other handlers see all


def _record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord("x", logging.WARNING, __file__, 1, message, None,
                             (type(exc), exc, None) if exc is not None else None)


def test_token_notice_dropped_and_its_opposite_kept():
    console.quiet_driver_notices()
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert not logger.filter(_record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=..."))
    assert logger.filter(_record("Token authentication is disabled for this Ray cluster. Anyone with network ..."))


def test_resource_request_timeout_dropped_other_failures_one_line():
    from ray.exceptions import GetTimeoutError

    keep = console._ResourceRequestTimeoutAsNothing()
    assert not keep.filter(_record("Failed to send resource request", GetTimeoutError("Get timed out")))
    other = _record("Failed to send resource request", RuntimeError("coordinator gone"))
    assert keep.filter(other)
    assert other.exc_info is None  # the message stays, the 20-line traceback goes


def test_mlflow_chatter_off_once_the_tracking_store_is_chosen(monkeypatch):
    from pipeline.runtime import use_tracking_store

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    use_tracking_store()  # the session's store (conftest)
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert logging.getLogger("mlflow.system_metrics").getEffectiveLevel() == logging.WARNING
