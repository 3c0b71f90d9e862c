"""What every job shares: its entry point's error handling, where work goes, Ray and MLflow set-up,
and how a worker process that runs the model hands out memory.

Jobs are thin: they parse a config and make one library call. This module holds the few
pieces of wiring that every stage of the pipeline needs the same way.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import UserError
from pipeline.fs import is_local

REPO_ROOT = Path(__file__).resolve().parent.parent

# glibc's malloc settings for the processes that run a network over and over on CPUs (CRN
# training workers, synthesis actors, evaluation's scoring actors), given to them in their
# environment so that they hold from the process's start, for every thread. PyTorch's CPU
# tensors come from malloc, and by default glibc serves large blocks (every one over 32 MiB;
# smaller ones until its adaptive threshold has risen) with an mmap of their own, unmaps them
# when they are freed, gives the top of its heap back once 128 KiB is free there, and gives
# each thread an arena of its own. So every training step or forward pass mapped its
# activations afresh and the kernel zero-filled them page by page. On the 2-core machine,
# in fresh processes: a crn-mid forward pass over 8 maps took about 760 thousand
# page faults and 2.2-3.5 s, against none after the first and 1.4-1.6 s with these settings; a
# crn-mid training step took about 190 thousand faults, 1.5-1.9 s against 1.4-1.6 s. Peak
# memory stays the same; the price is that a process keeps the memory it once held, which a
# worker running the same step again and again needs anyway. Ray runs the training loop and
# the synthesis actor's batches in threads of their own, hence one arena for all threads
# rather than mallopt() in the process. Measured, not assumed, for each kind of worker: the
# segmenter's training step (LR-ASPP, 8 images at 128x256, 2 cores) was slower with them
# (0.28-0.37 s against 0.24-0.25 s), so its workers go without.
CPU_WORKER_MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",  # every thread allocates from the one heap ...
    "MALLOC_MMAP_MAX_": "0",  # ... large blocks included ...
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),  # ... which keeps what is freed for reuse
}



def cpu_worker_runtime_env(use_gpu: bool) -> dict | None:
    """The Ray runtime environment of a process that runs a network over and over: CPU workers
    get `CPU_WORKER_MALLOC_ENV`, GPU workers (whose tensors live on the device) nothing."""
    return None if use_gpu else {"env_vars": dict(CPU_WORKER_MALLOC_ENV)}


# Ray and MLflow phone home by default; these machines (and many clusters) are offline.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class JobFailed(Exception):
    """A failure the job has explained in its own lines already (a training whose workers failed
    too often): `error: <message>` and exit code 1, no traceback."""


def entrypoint(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a job's `main(argv)` for the command line: what a failed job prints, and its log.

    Tests call the unwrapped `main` and see the exception; a person sees `error: <message>`
    and a non-zero exit, never a stack trace for their own mistake. A failed job first names
    the MLflow runs it started (pipeline.records.started_runs), with their URLs, so that what
    it recorded is one click away; the error line comes last, alone: Ray, if this job
    started it, is stopped before, so nothing of its comes after. An unexpected exception (a
    bug) keeps its traceback, above the run URLs.

    While `main` runs, the libraries' chatter goes to the job's log file,
    `<work dir>/logs/<job>-<time>.log` (pipeline.console.JobLog): its path is printed once,
    when the job starts Ray or first writes there.
    """

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        from pipeline import console

        console.begin_job(_job_name(main), _job_log_folder)
        if "pipeline.records" in sys.modules:
            sys.modules["pipeline.records"].forget_started_runs()
        try:
            return main(argv)
        except UserError as exc:
            return _failed(f"error: {exc}", 2)
        except JobFailed as exc:
            return _failed(f"error: {exc}", 1)
        except KeyboardInterrupt:
            return _failed("interrupted: re-run the same command to resume", 130)
        except Exception as exc:  # a bug: its traceback, then the runs, then the error line
            traceback.print_exc()
            message = (str(exc).strip().splitlines() or [""])[0]
            return _failed(f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}", 1)
        finally:
            console.end_job()

    return run


def _job_name(main: Callable) -> str:
    """The job's name in its log file's: the stem of the file that defines `main` (jobs/train.py: train)."""
    try:
        return Path(inspect.getsourcefile(main) or "job").stem
    except TypeError:
        return "job"


def _job_log_folder() -> Path:
    return work_dir() / "logs"


def _failed(line: str, code: int) -> int:
    """The end of a failed job's output: the MLflow runs it started, then `line`, last."""
    sys.stdout.flush()
    _stop_own_ray()
    records = sys.modules.get("pipeline.records")  # not imported: no run was started
    try:
        runs = records.describe_started_runs() if records is not None else []
    except Exception:  # naming the runs must not hide the error
        runs = []
    for text in runs:
        print(text, file=sys.stderr)
    print(line, file=sys.stderr, flush=True)
    return code


_ray_connected_here = False  # whether init_ray started (or connected to) Ray in this process


def _stop_own_ray() -> None:
    """Disconnect from (and stop, when local) the Ray instance that init_ray started, so that its
    last worker lines come before a failed job's error line, not after. A Ray that someone
    else started in this process (a test session's) is left alone."""
    if not _ray_connected_here:
        return
    import ray

    if ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:
            pass


def work_dir() -> Path:
    """Where local outputs go by default: `$CRN_WORK_DIR`, else `<repo>/work` (absolute).

    A job submitted with `ray job submit --working-dir` runs in Ray's uploaded copy of the
    checkout, which Ray deletes with the job: there `<repo>/work` would vanish, so the default
    becomes `~/crn-work` on the node that runs the driver (the local stack's head sets
    `CRN_WORK_DIR` to the checkout's own work folder instead).
    """
    default = Path.home() / "crn-work" if uploaded_copy(REPO_ROOT) else REPO_ROOT / "work"
    path = Path(os.environ.get("CRN_WORK_DIR", default)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def uploaded_copy(path: Path | str) -> Path | None:
    """The folder of Ray's uploaded copy of a job's working dir that `path` lies in, or None.

    `ray job submit --working-dir .` unpacks the checkout into
    `<ray temp>/.../runtime_resources/working_dir_files/_ray_pkg_<hash>/` and starts the job
    there; the folder goes when the job's runtime environment does.
    """
    path = Path(path).expanduser().absolute()
    for folder in (path, *path.parents):
        if folder.name.startswith("_ray_pkg_") or folder.parent.name == "working_dir_files":
            return folder
    return None


def lasting_output(location: str, flag: str) -> str:
    """An output location as the job will write it: URIs unchanged, local paths absolute; a
    local path inside the uploaded copy of a submitted job's working dir (a relative path, in
    such a job) is refused, since what is written there is deleted with the job.

    Every job's output flags, and the defaults derived from `work_dir()`, go through here.
    """
    if not location or not is_local(location):
        return location
    path = Path(location).expanduser().resolve()
    copy = uploaded_copy(path)
    if copy is not None:
        raise UserError(f"{flag} {location}: this submitted job runs in Ray's temporary copy of the checkout "
                        f"({copy}), deleted with the job; pass an absolute path or an s3:// URI "
                        f"(e.g. {flag} s3://crn/{Path(location).name or 'output'})")
    return str(path)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set (a server on a cluster), else a SQLite file in the work dir.

    The path is absolute because Ray workers run in their own working directories.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{work_dir() / 'mlflow.db'}"


def use_tracking_store() -> str:
    """Point MLflow (tracking, and so the registry) at `tracking_uri()`; returns the URI.

    Every MLflow use goes through here or `setup_mlflow`: MLflow's own default is a SQLite
    file in whatever folder the process started in.
    """
    import mlflow

    from pipeline.console import quiet_mlflow_chatter

    quiet_mlflow_chatter()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # the registry follows the tracking store unless told otherwise
    return uri


def setup_mlflow(experiment: str) -> str:
    """Point MLflow at `tracking_uri()` and select (creating if needed) `experiment`."""
    import mlflow

    uri = use_tracking_store()
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
        # A SQLite store's default artifact root is ./mlruns in whatever the working directory
        # happens to be; keep artifacts beside the database instead (absolute, so Ray workers
        # and later runs from other folders find them). A server chooses its own.
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment
        try:
            mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another process: set_experiment below finds it
    mlflow.set_experiment(experiment)
    return uri


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Connect to Ray: the cluster named by `RAY_ADDRESS` (or a `ray job submit` driver), else
    a local instance.

    Locally we give Ray more logical CPUs than the machine has cores: on 2 cores, training
    workers that take every CPU starve the Ray Data tasks that feed them and the job hangs
    (docs/stack-facts.md#ray-logical-cpus). Logical CPUs are scheduling slots, not threads.
    """
    import ray

    from pipeline import console

    global _ray_connected_here
    if ray.is_initialized():
        return
    console.quiet_driver_notices()
    # The libraries' chatter goes to the job's log; its path is said now, as Ray starts. A
    # driver that did not come through `entrypoint` gets one all the same (pipeline.console).
    if console.current_job() is None:
        console.begin_job(Path(sys.argv[0]).stem or "python", _job_log_folder)
    console.current_job().open()
    console.quiet_ray_data(interactive=sys.stdout.isatty() and sys.stderr.isatty())
    # Every worker process of the job runs the setup hook (pipeline.console says why).
    runtime_env = {"worker_process_setup_hook": console.prepare_worker_process}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, runtime_env=runtime_env)
        _ray_connected_here = True
        console.filter_worker_lines()
        return
    if num_cpus is None:
        num_cpus = max(4, 2 * len(os.sched_getaffinity(0)))
    # The local instance's processes inherit this environment. Ray Train gives a worker group
    # 60 s to start; on a busy laptop importing torch in each worker can take longer.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    # address="local": a new instance of our own, even when a `ray start` head (the local
    # stack, someone else's) runs on this machine; ray.init() alone would join that one.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             log_to_driver=True, runtime_env=runtime_env)
    _ray_connected_here = True
    console.filter_worker_lines()
