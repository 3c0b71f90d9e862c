"""infra/local/stack.sh: the real services start, take jobs, and stop, as docs/services.md says.

    .venv/bin/python -m pytest tests/test_local_stack.py -q

The stack runs on loopback ports picked here, in its own folder, so it never meets the
session's Ray instance or a stack someone already runs. Its head is a Ray cluster as on a
real one: token authentication on, a job server, an MLflow server and an S3 endpoint. With
the token from <stack>/env.sh, sourced as a user would, `ray job submit` preprocesses a toy
data set into the stack's S3 bucket, then trains on that store, with checkpoints on S3, and
registers the model in the stack's MLflow; the CLI without the token is refused; `stop`
leaves no process behind.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from processes import free_ports, pids_mentioning

from pipeline.data.toy import generate_toy_dataset
from pipeline.records import git_commit

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "infra" / "local" / "stack.sh"
RAY = REPO / ".venv" / "bin" / "ray"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    """A started stack: yields (env for the stack's commands, its folder, ports)."""
    folder = Path("/tmp") / f"crn-stack-{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay short
    ray_port, dashboard, mlflow, s3 = free_ports(4)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN")}
    # Ray's other ports (agents, client server, metrics) the script picks free itself: the
    # session's own Ray instance holds their defaults.
    env.update(STACK_DIR=str(folder), RAY_PORT=str(ray_port), DASHBOARD_PORT=str(dashboard),
               MLFLOW_PORT=str(mlflow), S3_PORT=str(s3), RAY_CPUS="4")
    ports = {"dashboard": dashboard, "mlflow": mlflow, "s3": s3}
    try:
        started = subprocess.run(["bash", str(STACK), "start"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield env, folder, ports
    finally:
        stopped = subprocess.run(["bash", str(STACK), "stop"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=300)
        left = pids_mentioning(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert "lost: the S3 bucket's objects" in stopped.stdout, stopped.stdout  # stop says what a restart loses
        assert not left, f"processes left after stop: {left}"


def in_stack_shell(env: dict, folder: Path, command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `command` in bash after `source <stack>/env.sh`, as docs/services.md tells a user to."""
    return subprocess.run(["bash", "-c", f"source {folder}/env.sh && {command}"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_status_reports_every_service_up(stack):
    env, _, ports = stack
    status = subprocess.run(["bash", str(STACK), "status"], env=env, capture_output=True, text=True, timeout=120)
    lines = status.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["S3", "up"], ["MLflow", "up"], ["Ray", "up"]], status.stdout
    token_file = stack[1] / "ray-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


@pytest.fixture(scope="module")
def submitted_store(stack, tmp_path_factory):
    """`ray job submit` of the preprocessing job into s3://crn/stack-store: (completed process, URI)."""
    env, folder, _ = stack
    source = tmp_path_factory.mktemp("stack-toy")
    generate_toy_dataset(source, num_train=4, num_val=0, seed=2, size=(64, 128))
    submitted = in_stack_shell(  # `python` on the head is the checkout's venv (stack.sh sets PATH)
        env, folder,
        f"{RAY} job submit --working-dir . -- python jobs/preprocess.py --source {source} "
        "--out s3://crn/stack-store --resolutions 16x32,32x64 --splits train",
    )
    return submitted, "s3://crn/stack-store"


def test_ray_job_submit_writes_the_store_to_the_stacks_s3(stack, submitted_store):
    _, _, ports = stack
    submitted, _ = submitted_store
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "wrote 4 samples (train 4) to s3://crn/stack-store" in submitted.stdout

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}",
                      aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="crn", Prefix="stack-store/")["Contents"]]
    assert "stack-store/manifest.json" in keys
    assert any(key.endswith(".parquet") for key in keys)


def test_ray_job_submit_trains_and_registers_in_the_stacks_mlflow(stack, submitted_store):
    env, folder, ports = stack
    submitted, store = submitted_store
    assert submitted.returncode == 0, "the preprocessing job failed (see the test before)"
    run_name = f"submitted-{uuid.uuid4().hex[:8]}"
    trained = in_stack_shell(
        env, folder,
        f"infra/submit.sh -- python jobs/train.py --store {store} --preset crn-tiny "
        "--num-outputs 2 --vgg-weights random --threads-per-worker 1 --batch-size 2 --steps 2 --image-every 0 "
        f"--storage-path s3://crn/checkpoints --run-name {run_name} --model-name crn-stack-test",
        timeout=600,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert f"trained {run_name} to step 2" in trained.stdout

    client = MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    version = client.get_model_version_by_alias("crn-stack-test", "candidate")
    run = client.get_run(version.run_id)
    assert run.info.run_name == run_name and run.info.status == "FINISHED"
    assert run.data.tags["crn.registered_version"] == str(version.version)
    # The commit comes from the submitting side (infra/submit.sh): the uploaded folder has no .git.
    assert run.data.tags["crn.git_commit"] == git_commit() != "unknown"


def test_the_job_server_refuses_a_client_without_the_token(stack):
    env, folder, ports = stack
    refused = in_stack_shell(
        env, folder,
        f"unset RAY_AUTH_TOKEN; RAY_AUTH_TOKEN_PATH=/nonexistent/token {RAY} job list", timeout=120,
    )
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]


def listening_sockets(pids: list[int]) -> set[str]:
    """"address:port" of every TCP socket in LISTEN state that one of `pids` holds (Linux /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        except OSError:
            continue  # a process that ended meanwhile
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add(f"{decode_address(address, width)}:{int(port, 16)}")
    return found


def decode_address(hex_address: str, width: int) -> str:
    """/proc/net/tcp's hex address: IPv4 in host (little-endian) order; IPv6 as four such words."""
    if width == 8:
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    if hex_address[:24] == "0000000000000000FFFF0000":  # ::ffff:a.b.c.d, an IPv4 address on an IPv6 socket
        return decode_address(hex_address[24:], 8)
    words = [hex_address[i:i + 8] for i in range(0, 32, 8)]
    groups = [f"{int(w[6:8] + w[4:6], 16):x}:{int(w[2:4] + w[0:2], 16):x}" for w in words]
    return "[" + ":".join(groups) + "]"


def test_every_service_listens_on_loopback_only(stack):
    _, folder, _ = stack
    sockets = listening_sockets(pids_mentioning(str(folder)))
    assert sockets, "found no listening socket of the stack's processes"
    exposed = sorted(s for s in sockets if not s.startswith(("127.0.0.1:", "[0:0:0:0:0:0:0:1]:")))
    assert not exposed, f"listening beyond loopback: {exposed} (all: {sorted(sockets)})"


def test_registered_artifacts_live_beside_the_registry(stack):
    """moto forgets the bucket on a restart; the registry must not point there. A version's
    files are in the stack's folder, beside mlflow.db, so a stop and start keeps both."""
    _, folder, ports = stack
    client = MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    version = client.get_model_version_by_alias("crn-stack-test", "candidate")
    checkpoints = list((folder / "mlartifacts").rglob("crn_checkpoint.pt"))
    assert checkpoints and all(path.stat().st_size > 0 for path in checkpoints), "no model files in the stack folder"
    assert client.get_run(version.run_id).info.artifact_uri.startswith("mlflow-artifacts:"), "not served by MLflow"
