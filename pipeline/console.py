"""What a job prints: its own progress, results and real warnings. The libraries' chatter goes to
the job's log file, and Ray's harmless notices are kept off the console; one real misdirection is fixed.

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
  themselves. Kept off what workers send to the console (it goes to the job's log, and stays
  in Ray's log files).
  The same line about Ray Data's `MapWorker` actors is written by the driver's own C++ core
  worker straight to stderr, out of Python's reach; it stays (docs/services.md#what-a-job-prints).

The job's log file (`JobLog`, `<work dir>/logs/<job>-<time>.log`, its path printed once when
the job starts Ray or first writes to it) takes the libraries' chatter, from the driver and
from every worker:
- Ray Data's INFO lines (execution plans, "execution finished", progress logged every 10 s
  when the output is no terminal) in every process: its loggers get a configuration of ours
  (`RAY_DATA_LOGGING_CONFIG`, `use_ray_data_logging`) whose console handler passes warnings
  and errors only, less the notices that are about progress bars, and whose `JobLogHandler`
  takes INFO and up. Its DEBUG lines, the dumps of the whole DataContext among them, stay
  in Ray's session files (`ray-data.log`), as before.
- Ray Data's progress bars when the output is no terminal (`quiet_ray_data`): in a log
  file, bars redrawn with cursor-up escapes are noise; on a terminal they stay.
- `RayDeprecationWarning`s raised inside Ray's own code (Ray calling its own deprecated
  APIs), and MLflow's warnings about model signatures (`_is_library_chatter`). A
  deprecation warning pointing at our code stays on the console: it is ours to fix.
- MLflow's INFO lines about creating its database tables and about model signatures
  (`quiet_mlflow_chatter`).
A worker's chatter reaches the driver's log file the way its other output reaches the driver:
on its stderr, each line tagged with `JOB_LOG_TAG`; `filter_worker_lines` takes tagged lines
out of what the driver prints and writes them into the log.

All of this is installed by `pipeline.runtime.entrypoint` (the job log) and
`pipeline.runtime.init_ray`; none of it changes what a job computes. MLflow's per-run
chatter goes the same way (`quiet_mlflow_chatter`): the system-metrics monitor's start/stop
INFO lines and the artifact download progress bar of every registration.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
_RESOURCE_REQUEST_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
_HARMLESS_WORKER_LINES = (
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .* has constructor arguments in "
               r"the object store and max_restarts > 0"),
)
# A line a worker writes to its stderr for the driver's job log, not for the console.
JOB_LOG_TAG = "crn-job-log| "
# Ray Data's warnings that are about its progress display, not about the job: the log only.
_RAY_DATA_NOTICES = ("Progress bars disabled", "Progress bars for operators disabled", "Truncating long operator name",
                     "[dataset]: A new progress UI is available")
_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


# ---------------------------------------------------------------- the job's log file


class JobLog:
    """One job's log file: `<folder>/<name>-<start time>.log`, created and its path printed (on
    stderr) the first time it is needed; lines are appended as they come, from any thread."""

    def __init__(self, name: str, folder: Callable[[], Path]):
        self.name = name
        self.started = time.localtime()
        self.path: Path | None = None
        self._folder = folder
        self._file = None
        self._failed = False
        self._lock = threading.RLock()

    def open(self) -> Path | None:
        """Create the file and say where it is, once; None if it cannot be written."""
        with self._lock:
            if self._file is None and not self._failed:
                try:
                    folder = self._folder()
                    folder.mkdir(parents=True, exist_ok=True)
                    stem = f"{self.name}-{time.strftime('%Y%m%d-%H%M%S', self.started)}"
                    path, number = folder / f"{stem}.log", 1
                    while True:
                        try:
                            self._file = open(path, "x", encoding="utf-8", buffering=1)
                            break
                        except FileExistsError:  # the same job started in the same second
                            number += 1
                            path = folder / f"{stem}-{number}.log"
                    self.path = path
                    self._file.write(f"# {self.name}, started {time.strftime('%Y-%m-%d %H:%M:%S', self.started)}: "
                                     f"{' '.join(sys.argv)}\n")
                except OSError as exc:
                    self._failed = True
                    print(f"warning: cannot write the job's log ({exc}); Ray's and MLflow's messages stay on the "
                          "console", file=sys.stderr, flush=True)
                    return None
                print(f"log: {self.path} (Ray's and MLflow's messages)", file=sys.stderr, flush=True)
            return self.path

    def write(self, text: str) -> None:
        if self.open() is None:
            print(text, file=sys.stderr, flush=True)  # chatter on the console rather than lost
            return
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(text if text.endswith("\n") else text + "\n")
                except (OSError, ValueError):
                    pass  # a full disk must not stop the job over its log

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


_job: JobLog | None = None


def begin_job(name: str, folder: Callable[[], Path]) -> JobLog:
    """The driver's job log from now until `end_job` (pipeline.runtime.entrypoint); also sends
    the chatter among Python warnings there (`_show_warning`)."""
    global _job
    _job = JobLog(name, folder)
    _install_warning_hook()
    return _job


def end_job() -> None:
    global _job
    job, _job = _job, None
    if job is not None:
        job.close()


def current_job() -> JobLog | None:
    return _job


def to_job_log(text: str) -> None:
    """Chatter: into the job's log in the driver; from a worker, to the driver (its stderr, each
    line tagged, which `filter_worker_lines` puts into the log). A driver without a job log
    drops it (Ray's own files keep Ray Data's lines)."""
    job = _job
    if job is not None:
        job.write(text)
    elif _in_ray_worker():
        sys.stderr.write("".join(f"{JOB_LOG_TAG}{line}\n" for line in text.splitlines()))
        sys.stderr.flush()


def _in_ray_worker() -> bool:
    if "ray" not in sys.modules:
        return False
    try:
        from ray._private import worker

        return worker.global_worker.mode == worker.WORKER_MODE
    except Exception:
        return False


class JobLogHandler(logging.Handler):
    """A logging handler that writes into the job's log (`to_job_log`), in any process."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            to_job_log(self.format(record))
        except Exception:
            self.handleError(record)


# ---------------------------------------------------------------- Ray Data


class RayDataConsoleFilter(logging.Filter):
    """On Ray Data's console handler: its notices about its progress display stay off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "hide", False):  # Ray Data's own console filter (HiddenRecordFilter)
            return False
        return not record.getMessage().startswith(_RAY_DATA_NOTICES)


def ray_data_logging_config() -> dict:
    """Ray Data's logging configuration (ray.data._internal.logging.DEFAULT_CONFIG) with the
    console at WARNING less `_RAY_DATA_NOTICES`, and INFO and up into the job's log."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
        "filters": {"console_filter": {"()": f"{__name__}.RayDataConsoleFilter"}},
        "handlers": {
            "file": {"class": "ray.data._internal.logging.SessionFileHandler", "formatter": "ray",
                     "filename": "ray-data.log"},
            "job_log": {"class": f"{__name__}.JobLogHandler", "formatter": "ray", "level": "INFO"},
            "console": {"class": "ray._private.log.PlainRayHandler", "formatter": "ray", "level": "WARNING",
                        "filters": ["console_filter"]},
        },
        "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file", "job_log", "console"], "propagate": False}},
    }


def use_ray_data_logging() -> None:
    """Point Ray Data at `ray_data_logging_config` in this process (and the processes it
    starts), unless `RAY_DATA_LOGGING_CONFIG` names another configuration already. Ray Data
    reads that file whenever it configures its loggers: on import, and in a worker for
    every dataset it runs a task of."""
    import yaml

    text = yaml.safe_dump(ray_data_logging_config())
    path = Path(tempfile.gettempdir()) / f"crn-ray-data-logging-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    current = os.environ.get("RAY_DATA_LOGGING_CONFIG")
    if current and not Path(current).name.startswith("crn-ray-data-logging-"):
        return  # someone's own configuration
    if not path.exists():
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(path)
    if "ray.data" in sys.modules:  # configured on import already: again, with ours
        from ray.data._internal.logging import configure_logging

        configure_logging()


def quiet_ray_data(interactive: bool) -> None:
    """In the driver, before any dataset: Ray Data's logging as `use_ray_data_logging` says;
    its progress bars only on a terminal. Datasets take the driver's DataContext with them to
    the processes that run them (Ray Train's dataset manager and split coordinators too)."""
    use_ray_data_logging()
    from ray.data import DataContext

    if not interactive:
        DataContext.get_current().enable_progress_bars = False


# ---------------------------------------------------------------- warnings


def _inside(filename: str, package: str) -> bool:
    module = sys.modules.get(package)
    if module is None or not getattr(module, "__file__", None):
        return False
    return os.path.abspath(filename).startswith(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)


def _is_library_chatter(message, category: type, filename: str) -> bool:
    """A deprecation Ray raises in its own code, or MLflow's word on model signatures."""
    if category.__name__ == "RayDeprecationWarning" and _inside(filename, "ray"):
        return True
    return "signature" in str(message).lower() and (
        _inside(filename, "mlflow") or category.__module__.startswith("mlflow"))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if (_job is not None or _in_ray_worker()) and _is_library_chatter(message, category, filename):
        to_job_log(f"{filename}:{lineno}: {category.__name__}: {message}")
        return
    _show_warning.previous(message, category, filename, lineno, file, line)


def _install_warning_hook() -> None:
    if getattr(warnings.showwarning, "keeps_library_chatter_off", False):
        return
    _show_warning.previous = warnings.showwarning
    _show_warning.keeps_library_chatter_off = True
    warnings.showwarning = _show_warning


# ---------------------------------------------------------------- Ray's notices


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


class _MlflowChatterToJobLog(logging.Filter):
    """On MLflow's console handler, while a job log is open: its database set-up lines and its
    word on model signatures go to the log instead."""

    formatter = logging.Formatter(_LOG_FORMAT)

    def filter(self, record: logging.LogRecord) -> bool:
        if _job is None:
            return True
        if record.name.startswith("mlflow.store.db") or "signature" in record.getMessage().lower():
            to_job_log(self.formatter.format(record))
            return False
        return True


def quiet_mlflow_chatter() -> None:
    """MLflow's INFO lines about its system-metrics thread, and its progress bar for a
    one-file download: four lines and a bar per job that say nothing about the job; while a
    job log is open, its database set-up and model-signature lines go there."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    for handler in logging.getLogger("mlflow").handlers:
        if not any(isinstance(f, _MlflowChatterToJobLog) for f in handler.filters):
            handler.addFilter(_MlflowChatterToJobLog())


def prepare_worker_process() -> None:
    """Runs in every worker process of a job started through `init_ray` (Ray's
    `worker_process_setup_hook`): the state API and anything else that looks for "the" Ray
    instance finds this worker's own cluster, not every GCS on the machine; Ray Train's
    retried resource-request timeouts stay off the console; Ray Data's INFO lines and Ray's
    own deprecation warnings go to the job's log (see the module's docstring)."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logger = logging.getLogger(_RESOURCE_REQUEST_LOGGER)
    if not any(isinstance(f, _ResourceRequestTimeoutAsNothing) for f in logger.filters):
        logger.addFilter(_ResourceRequestTimeoutAsNothing())
    use_ray_data_logging()
    _install_warning_hook()


def harmless(line: str) -> bool:
    """Whether a line a worker printed is one of the known harmless notices above."""
    return any(pattern.search(line) for pattern in _HARMLESS_WORKER_LINES)


def filter_worker_lines(dispatcher=None) -> None:
    """In the driver, after `ray.init`: take harmless lines and chatter (`JOB_LOG_TAG`) out of
    what workers send to the console, into the job's log. Ray prints worker output through one
    named handler of its dispatcher; it is wrapped, not replaced, so Ray's own formatting
    (prefixes, deduplication) stays."""
    if dispatcher is None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [(name, _without_harmless(handler) if name == "ray_print_logs" else handler)
                               for name, handler in dispatcher.handlers]


def _without_harmless(handler):
    if getattr(handler, "drops_harmless_lines", False):
        return handler

    def handle(data: dict) -> None:
        printed, logged = [], []
        for line in data.get("lines", []):
            if line.startswith(JOB_LOG_TAG):
                logged.append(line[len(JOB_LOG_TAG):])
            elif harmless(line):
                logged.append(line)
            else:
                printed.append(line)
        if logged and _job is not None:
            who = data.get("actor_name") or data.get("task_name") or ""
            prefix = f"({who} pid={data.get('pid')}) " if who else f"(pid={data.get('pid')}) "
            to_job_log("\n".join(prefix + line for line in logged))
        if printed:
            handler({**data, "lines": printed})

    handle.drops_harmless_lines = True
    return handle
