"""What a job prints: Ray's harmless notices kept off the console, the state API on the job's
own cluster even when other Ray instances run on the machine, the libraries' chatter in the
job's log file (pipeline.console); a failed job's runs before its error line, which comes last
(pipeline.runtime.entrypoint); summaries that claim only what was measured, and a grid at
the end of every training.

    .venv/bin/python -m pytest -q tests/test_console.py
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from ray._private.ray_logging import WorkerStandardStreamDispatcher

from pipeline import console
from pipeline.errors import UserError
from pipeline.runtime import JobFailed, entrypoint

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


# ---------------------------------------------------------------- the job's log and what a job prints


@pytest.fixture
def job_log(tmp_path):
    """A job log open in this process, as `entrypoint` opens one; the file's text, once written."""
    log = console.begin_job("test-console", lambda: tmp_path / "logs")
    yield log
    console.end_job()


def _log_text(log) -> str:
    return log.path.read_text() if log.path is not None else ""


def test_ray_data_info_goes_to_the_job_log_and_its_warnings_stay(job_log, monkeypatch, capsys):
    """The driver's Ray Data logging as init_ray sets it up: INFO lines (execution plans, logged
    progress) only in the log; a real warning still on the console; its notices about progress
    bars in the log only."""
    from ray.data._internal.logging import configure_logging

    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    try:
        console.use_ray_data_logging()
        executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
        executor.info("Execution plan of Dataset dataset_1: InputDataBuffer[Input] -> TaskPoolMapOperator[Map]")
        logging.getLogger("ray.data._internal.progress").warning(
            "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.")
        logging.getLogger("ray.data._internal.tensor_extensions.arrow").warning(
            "Failed to convert column 'label' into pyarrow array (ArrowConversionError)")
    finally:
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
        configure_logging()  # Ray Data's own configuration again, for the tests after this one
    err = capsys.readouterr().err
    assert "Execution plan" not in err and "Progress bars disabled" not in err
    assert "Failed to convert column 'label'" in err  # a real warning stays
    assert f"log: {job_log.path}" in err  # said once, with the first line written
    text = _log_text(job_log)
    assert "Execution plan of Dataset dataset_1" in text and "Progress bars disabled" in text
    assert "Failed to convert column" in text  # the log has every line


def test_workers_chatter_goes_from_their_stderr_into_the_job_log(job_log):
    received = []
    dispatcher = WorkerStandardStreamDispatcher()
    dispatcher.add_handler("ray_print_logs", received.append)
    console.filter_worker_lines(dispatcher)
    tagged = console.JOB_LOG_TAG + "Starting execution of Dataset train_1. Full logs are in /tmp/ray/x"
    dispatcher.emit({"pid": 7, "actor_name": "SplitCoordinator", "is_err": True,
                     "lines": [tagged, PREEMPTION_WATCHER_LINE, "step 10/40 (epoch 0) loss 54.4"]})
    assert [d["lines"] for d in received] == [["step 10/40 (epoch 0) loss 54.4"]]
    text = _log_text(job_log)
    assert "(SplitCoordinator pid=7) Starting execution of Dataset train_1." in text
    assert "PreemptionWatcher" in text  # harmless lines are kept, in the log


def test_rays_own_deprecations_and_mlflows_signature_warnings_go_to_the_log(job_log, monkeypatch):
    import mlflow
    import ray
    from ray.util.annotations import RayDeprecationWarning

    shown = []
    monkeypatch.setattr(console._show_warning, "previous", lambda *args: shown.append(str(args[0])))
    inside_ray = str(Path(ray.__file__).parent / "data" / "_internal" / "execution" / "interfaces" / "x.py")
    inside_mlflow = str(Path(mlflow.__file__).parent / "models" / "signature.py")
    console._show_warning(RayDeprecationWarning("`exclude_resources` is deprecated"), RayDeprecationWarning,
                          inside_ray, 436)
    console._show_warning(UserWarning("Failed to infer signature from type hint"), UserWarning, inside_mlflow, 406)
    console._show_warning(RayDeprecationWarning("our call of a deprecated API"), RayDeprecationWarning, __file__, 1)
    console._show_warning(UserWarning("a real warning of ours"), UserWarning, __file__, 2)
    assert shown == ["our call of a deprecated API", "a real warning of ours"]  # on the console, as before
    text = _log_text(job_log)
    assert "RayDeprecationWarning: `exclude_resources` is deprecated" in text
    assert "Failed to infer signature from type hint" in text

    # MLflow's logged signature lines and database set-up go to the log; its other warnings stay.
    console.quiet_mlflow_chatter()
    handlers = logging.getLogger("mlflow").handlers
    assert handlers and all(any(isinstance(f, console._MlflowChatterToJobLog) for f in h.filters) for h in handlers)
    handler = handlers[0]
    signature = logging.LogRecord("mlflow.pyfunc", logging.WARNING, __file__, 1,
                                  "Failed to infer model signature: Type hint cannot be used", None, None)
    tables = logging.LogRecord("mlflow.store.db.utils", logging.INFO, __file__, 1,
                               "Creating initial MLflow database tables...", None, None)
    other = logging.LogRecord("mlflow.pyfunc", logging.WARNING, __file__, 1, "something else", None, None)
    assert not handler.filter(signature) and not handler.filter(tables) and handler.filter(other)
    assert "Failed to infer model signature" in _log_text(job_log) and "database tables" in _log_text(job_log)


def _failing_job(exc: BaseException):
    def main(argv):
        from pipeline.records import start_job_run

        with start_job_run("test-console", description="a job that fails after starting its run") as active:
            main.run_id = active.info.run_id
            print("working")
            raise exc
    return main


@pytest.mark.parametrize("exc, code, error", [
    (UserError("the output is full"), 2, "error: the output is full"),
    (JobFailed("training failed; re-run the same command"), 1, "error: training failed; re-run the same command"),
    (RuntimeError("a bug\nwith more lines"), 1, "error: RuntimeError: a bug"),
])
def test_a_failed_job_names_its_mlflow_run_before_the_error_line_which_comes_last(capsys, exc, code, error):
    main = _failing_job(exc)
    assert entrypoint(main)([]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == error  # last, alone
    run_line = next(i for i, line in enumerate(err) if main.run_id in line)
    assert run_line == len(err) - 2, err  # right before the error line
    experiment = mlflow.get_experiment_by_name("test-console")
    assert f"#/experiments/{experiment.experiment_id}/runs/{main.run_id}" in err[run_line]
    assert ("Traceback" in "\n".join(err)) == isinstance(exc, RuntimeError)  # a bug keeps its traceback
    assert mlflow.get_run(main.run_id).info.status == "FAILED"


def test_a_job_that_succeeds_names_no_runs_from_an_earlier_failure(capsys):
    assert entrypoint(_failing_job(UserError("first")))([]) == 2
    capsys.readouterr()
    assert entrypoint(lambda argv: 0)([]) == 0
    assert capsys.readouterr().err == ""


def test_a_synthesis_of_one_batch_says_nothing_of_a_pace_after_it(toy_store, ray_session, tmp_path, capsys):
    from synth_models import make_test_checkpoint

    from pipeline.synthesis.config import parse_synthesize_config
    from pipeline.synthesis.job import Synthesized, pace, run

    checkpoint = make_test_checkpoint(tmp_path / "model.pt", seed=1)
    run(parse_synthesize_config(["--model", str(checkpoint), "--store", str(toy_store), "--split", "val",
                                 "--batch-size", "4", "--output", str(tmp_path / "out"), "--experiment", "test-console"]))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("synthesized ")]
    assert line.startswith("synthesized 8 images in ")  # 4 maps x K=2, one batch
    assert "after the first batch" not in line and "images/s, actors' start-up included; one batch)" in line
    # Nothing synthesized (everything done before): no pace at all.
    nothing = Synthesized(images={("a", 0)}, num_written=0, num_skipped=1, rejects=[], elapsed_s=3.0)
    assert pace(nothing, nothing.metrics()) == ""
    two = Synthesized(images=set(), num_written=16, num_skipped=0, rejects=[], elapsed_s=4.0, first_batch_s=3.0,
                      first_batch_images=8)
    assert pace(two, two.metrics()) == (" (4.00 images/s, actors' start-up included; 8.00 images/s after the first "
                                        "batch, which took 3.0 s)")


def test_a_training_shorter_than_image_every_logs_a_grid_at_its_last_step(toy_store, ray_session):
    from mlflow.tracking import MlflowClient

    from pipeline.training import job as train
    from pipeline.training.config import parse_train_config

    name = f"console-{uuid.uuid4().hex[:8]}"
    outcome = train.run(parse_train_config([
        "--store", str(toy_store), "--preset", "crn-tiny", "--num-outputs", "2", "--vgg-weights", "random",
        "--threads-per-worker", "1", "--steps", "3", "--image-every", "500", "--run-name", name, "--model-name", name,
        "--experiment", "test-console"]))
    assert outcome.final["step"] == 3
    images = [a.path for a in MlflowClient().list_artifacts(outcome.run_id, "images")]
    assert images == ["images/step_00000003.png"]


# A job of Ray Data on its own Ray instance, its console read as a person would: a worker logs
# at INFO on `ray.data` and Ray warns of its own deprecation inside its code, as Ray Train's
# dataset manager does; a warning of ours stays.
WORKER_CHATTER = """
import json, logging, time, warnings, ray, ray.data
from pathlib import Path
from pipeline import console
from pipeline.runtime import init_ray

init_ray()

@ray.remote
def chatter():
    import ray.data  # as in any process that runs Ray Data: its loggers configured
    from ray.util.annotations import RayDeprecationWarning
    logging.getLogger("ray.data._internal.execution.streaming_executor").info("Execution plan of Dataset worker_1")
    warnings.warn_explicit("`ExecutionOptions.exclude_resources` is deprecated", RayDeprecationWarning,
                           filename=ray.__file__, lineno=1)
    warnings.warn_explicit("our own warning", UserWarning, filename="/somewhere/ours.py", lineno=1)
    print("a worker's own line")
    return 1

ray.get(chatter.remote())
rows = ray.data.range(40).map_batches(lambda b: b).take_all()
path = console.current_job().path
for _ in range(300):  # workers' lines reach the driver asynchronously
    if "worker_1" in path.read_text() and "exclude_resources" in path.read_text():
        break
    time.sleep(0.1)
time.sleep(1)
print("RESULT " + json.dumps({"rows": len(rows), "log": str(path)}))
"""


def test_a_ray_data_job_prints_its_own_lines_and_sends_ray_datas_to_its_log(ray_session, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DATA_LOGGING_CONFIG")}
    env.update(PYTHONPATH=str(REPO), CRN_WORK_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", WORKER_CHATTER], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    console_text = done.stdout + done.stderr
    for chatter in ("streaming_executor", "logging_progress", "Running Dataset", "Execution plan", "Data Context",
                    "execution finished", "Progress bars", "RayDeprecationWarning", "\x1b[A", "\r"):
        assert chatter not in console_text, (chatter, console_text)
    assert "a worker's own line" in done.stdout and "our own warning" in done.stderr  # ours stay
    (log_line,) = [line for line in done.stderr.splitlines() if line.startswith("log: ")]
    assert log_line.startswith(f"log: {result['log']} ") and result["rows"] == 40
    assert Path(result["log"]).parent == tmp_path / "logs"
    text = Path(result["log"]).read_text()
    assert "Execution plan of Dataset" in text and "execution finished" in text  # the driver's
    assert "Execution plan of Dataset worker_1" in text  # a worker's, through the driver
    assert "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated" in text
