"""Keep Ray's harmless notices off the console; fix the one that is a real misdirection.

What a job prints should be what matters: its own progress and results, and every real
warning or error. Ray 2.60 adds four things to every job's console that are not:

- "Token authentication is enabled for this Ray cluster": the default for a local instance,
  said on every start. Dropped; the opposite notice (authentication *disabled*) still shows.
- A PlacementGroupCleaner traceback, "Found multiple active Ray instances", whenever another
  Ray instance runs on the machine. Ray Train's cleaner asks the state API about its
  controller without an address, and the state API then looks for every GCS process on the
  machine. This is fixed, not hidden: `prepare_worker_process` runs in every worker
  process of our jobs (a runtime-env setup hook) and sets `RAY_ADDRESS` to the worker's own
  cluster, which is the first place the state API looks.
- "Failed to send resource request ... GetTimeoutError" with a 20-line traceback from Ray
  Train's controller when the machine is busy: a 5-second request to the autoscaling
  coordinator timed out and is retried. The timeout alone is dropped; any other failure of
  that request still shows, as its one line without the traceback.
- An E-level `core_worker.cc` line about the `PreemptionWatcher` actor having "constructor
  arguments in the object store and max_restarts > 0": Ray Data and Train create that actor
  themselves. Dropped from what workers send to the driver (it stays in Ray's log files).
  The same line about Ray Data's `MapWorker` actors is written by the driver's own C++ core
  worker straight to stderr, out of Python's reach; it stays (README, "What a job prints").

All of this is installed by `pipeline.runtime.init_ray`; none of it changes what a job computes.
MLflow's per-run chatter goes the same way (`quiet_mlflow_chatter`): the system-metrics
monitor's start/stop INFO lines and the artifact download progress bar of every registration.
"""
from __future__ import annotations

import logging
import os
import re

_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
_RESOURCE_REQUEST_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
_HARMLESS_WORKER_LINES = (
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .* has constructor arguments in "
               r"the object store and max_restarts > 0"),
)


class _DropTokenEnabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


class _ResourceRequestTimeoutAsNothing(logging.Filter):
    """A timed-out request is retried by Ray Train: drop it. Another failure: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ == "GetTimeoutError":
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_driver_notices() -> None:
    """In the driver, before `ray.init`: drop the token-enabled notice."""
    logger = logging.getLogger(_TOKEN_SETUP_LOGGER)
    if not any(isinstance(f, _DropTokenEnabledNotice) for f in logger.filters):
        logger.addFilter(_DropTokenEnabledNotice())


def quiet_mlflow_chatter() -> None:
    """MLflow's INFO lines about its system-metrics thread, and its progress bar for a
    one-file download: four lines and a bar per job that say nothing about the job."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


def prepare_worker_process() -> None:
    """Runs in every worker process of a job started through `init_ray` (Ray's
    `worker_process_setup_hook`): the state API and anything else that looks for "the" Ray
    instance finds this worker's own cluster, not every GCS on the machine; and Ray Train's
    retried resource-request timeouts stay off the console (see the module's docstring)."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logger = logging.getLogger(_RESOURCE_REQUEST_LOGGER)
    if not any(isinstance(f, _ResourceRequestTimeoutAsNothing) for f in logger.filters):
        logger.addFilter(_ResourceRequestTimeoutAsNothing())


def harmless(line: str) -> bool:
    """Whether a line a worker printed is one of the known harmless notices above."""
    return any(pattern.search(line) for pattern in _HARMLESS_WORKER_LINES)


def filter_worker_lines(dispatcher=None) -> None:
    """In the driver, after `ray.init`: drop harmless lines from what workers send to the
    console. Ray prints worker output through one named handler of its dispatcher; it is
    wrapped, not replaced, so Ray's own formatting (prefixes, deduplication) stays."""
    if dispatcher is None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [(name, _without_harmless(handler) if name == "ray_print_logs" else handler)
                               for name, handler in dispatcher.handlers]


def _without_harmless(handler):
    if getattr(handler, "drops_harmless_lines", False):
        return handler

    def handle(data: dict) -> None:
        lines = [line for line in data.get("lines", []) if not harmless(line)]
        if lines:
            handler({**data, "lines": lines})

    handle.drops_harmless_lines = True
    return handle
