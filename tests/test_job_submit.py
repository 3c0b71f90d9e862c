"""A real `ray job submit` of jobs/train.py to a Ray head started by this test on 127.0.0.1.

    .venv/bin/python -m pytest tests/test_job_submit.py -q

The head runs as on a cluster: dashboard and job server on loopback ports picked here,
token authentication on (Ray 2.60's default for clusters). The token is handed to the
head, the job's driver and the CLI through `RAY_AUTH_TOKEN`, so nothing is read from or
written to ~/.ray. The CLI without the token is refused.

Teardown: `ray stop` would stop every Ray process on the machine (it matches processes by
name), including the session's instance and other people's. Instead the head is started
with `--block` in its own process group and stopped through that process (SIGTERM); what
is left after 10 s (a graceful stop takes half a minute), that is the processes naming
this head's temp dir and that process group, is killed by pid and group id.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import free_ports, pids_mentioning

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "test-job-submit"


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, test_environment):
    """A Ray head on 127.0.0.1 with its own ports and temp dir; yields (dashboard URL, env)."""
    temp_dir = Path("/tmp") / f"crn-head-{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay short
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager, *workers = \
        free_ports(9 + 24)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--num-cpus", "4", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
         "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
         "--worker-port-list", ",".join(map(str, workers)), "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode:
            assert head.poll() is None, "ray start --head exited early"
            assert time.time() < deadline, "the head's job server did not come up within 3 minutes"
            time.sleep(2)
        yield address, env
    finally:
        stop_head(head, temp_dir)


def stop_head(head: subprocess.Popen, temp_dir: Path) -> None:
    """Stop this head's cluster and nothing else (see the module docstring)."""
    head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass  # a graceful stop takes half a minute; the data is throw-away
    for pid in pids_mentioning(str(temp_dir)):  # Ray's processes name the head's temp dir
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # the process group `ray start` was started in
    except ProcessLookupError:
        pass
    head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_cli_without_the_token_is_refused(ray_head):
    address, env = ray_head
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["RAY_AUTH_TOKEN_PATH"] = "/nonexistent/token"  # and not ~/.ray/auth_token either
    refused = subprocess.run([RAY, "job", "list", "--address", address], env=no_token, capture_output=True, text=True)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]


def test_ray_job_submit_trains_and_registers(ray_head, toy_store, test_environment):
    address, env = ray_head
    # The job's MLflow artifacts go to the session's folder, not to ./mlruns in the repository.
    if MlflowClient().get_experiment_by_name(EXPERIMENT) is None:
        MlflowClient().create_experiment(EXPERIMENT, artifact_location=(test_environment / "mlartifacts").as_uri())
    run_name = f"submitted-{uuid.uuid4().hex[:8]}"
    job_id = f"crn-train-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--no-wait", "--",
         sys.executable, str(REPO / "jobs" / "train.py"), "--store", str(toy_store), "--preset", "crn-tiny",
         "--num-outputs", "2", "--vgg-weights", "random", "--threads-per-worker", "1", "--batch-size", "2",
         "--steps", "2", "--image-every", "0", "--run-name", run_name, "--experiment", EXPERIMENT],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert submit.returncode == 0, submit.stderr
    deadline, status = time.time() + 420, ""
    while time.time() < deadline:
        status = subprocess.run([RAY, "job", "status", "--address", address, job_id], env=env,
                                capture_output=True, text=True).stdout.lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True).stdout
    assert f"job '{job_id}' succeeded" in status, f"{status}\n{logs[-3000:]}"
    assert f"trained {run_name} to step 2" in logs

    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id],
                                      filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["crn.registered_version"]
