"""infra/local/stack.sh: the real services start, take jobs, keep their data across a restart,
and stop, as README.md and docs/services.md say.

    .venv/bin/python -m pytest tests/test_local_stack.py -q

The stack runs on loopback ports picked here, in its own folder, so it never meets the
session's Ray instance or a stack someone already runs. Its head is a Ray cluster as on a
real one: token authentication on, a job server, MLflow on PostgreSQL, S3 (s3rver) and
Azure Blob Storage (Azurite). The README's stack sequence runs as written (the toy data, the
store in the bucket, training with checkpoints in the bucket, a segmenter, the evaluation
that promotes, synthesis), with the stack's folder in place of work/stack. Then two trainings
and an evaluation submitted together must lose no run and no metric; the CLI without the
token is refused; after a stop and a start the registered model still loads and the store is
still readable; `stop` leaves no process behind.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from processes import free_ports, pids_mentioning

from pipeline.records import git_commit

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "infra" / "local" / "stack.sh"
RAY = REPO / ".venv" / "bin" / "ray"
MODEL = "crn-toy-32x64"  # what the README's sequence registers
STORE = "s3://crn/toy-store"

pytestmark = pytest.mark.slow


def run_stack(env: dict, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(STACK), command], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=400)


@pytest.fixture(scope="module")
def stack():
    """A started stack: yields (env for the stack's commands, its folder, ports)."""
    folder = Path("/tmp") / f"crn-stack-{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay short
    ray_port, dashboard, mlflow, s3, azurite, postgres = free_ports(6)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN",
                          "RAY_API_SERVER_ADDRESS", "AZURE_STORAGE_CONNECTION_STRING")}
    # Ray's other ports (agents, client server, metrics) the script picks free itself: the
    # session's own Ray instance holds their defaults.
    env.update(STACK_DIR=str(folder), RAY_PORT=str(ray_port), DASHBOARD_PORT=str(dashboard),
               MLFLOW_PORT=str(mlflow), S3_PORT=str(s3), AZURITE_PORT=str(azurite), PG_PORT=str(postgres),
               RAY_CPUS="4")
    ports = {"dashboard": dashboard, "mlflow": mlflow, "s3": s3, "azurite": azurite, "postgres": postgres}
    try:
        started = run_stack(env, "start")
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield env, folder, ports
    finally:
        stopped = run_stack(env, "stop")
        left = pids_mentioning(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        # stop says what it waits for, before it waits
        assert stopped.stdout.startswith("stopping: waiting for"), stopped.stdout
        assert not left, f"processes left after stop: {left}"


def in_stack_shell(env: dict, folder: Path, command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `command` in bash after `source <stack>/env.sh`, as the README tells a user to."""
    return subprocess.run(["bash", "-c", f"source {folder}/env.sh && {command}"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def readme_stack_sequence() -> list[str]:
    """The commands of README.md's stack sequence (between its markers), continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- stack-sequence.*?-->\s*```bash\n(.*?)```\s*<!-- /stack-sequence -->", text, re.S)
    assert block, "README.md has no stack sequence between <!-- stack-sequence --> markers"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def readme_sequence(stack):
    """The README's sequence, run as written in one shell, but in the test's stack folder (for
    work/stack) and without its first line, `infra/local/stack.sh start`, which the stack
    fixture ran with the same environment."""
    env, folder, _ = stack
    lines = readme_stack_sequence()
    assert lines[0] == "infra/local/stack.sh start" and lines[1] == "source work/stack/env.sh", lines[:2]
    script = "\n".join(["set -e", *lines[1:]]).replace("$PWD/work/stack/", f"{folder}/").replace("work/stack/", f"{folder}/")
    return subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)


def test_status_reports_every_service_up(stack):
    env, folder, _ = stack
    status = run_stack(env, "status")
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["S3", "up"], ["Azurite", "up"], ["Postgres", "up"], ["MLflow", "up"], ["Ray", "up"]], status.stdout
    for secret in ("ray-token", "postgres-password"):
        assert oct((folder / secret).stat().st_mode & 0o777) == "0o600", secret


def test_the_readme_sequence_runs_on_the_stack(stack, readme_sequence):
    env, folder, ports = stack
    assert readme_sequence.returncode == 0, readme_sequence.stdout[-4000:] + readme_sequence.stderr[-4000:]
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", aws_access_key_id="S3RVER",
                      aws_secret_access_key="S3RVER", region_name="us-east-1")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="crn")["Contents"]]
    assert "toy-store/manifest.json" in keys and any(k.startswith("toy-store/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("checkpoints/") for k in keys), "no checkpoint in the bucket"
    assert any(k.startswith("synth/crn-toy-32x64/images/") for k in keys), "no synthesized image in the bucket"

    client = MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    champion = client.get_model_version_by_alias(MODEL, "champion")  # the evaluation promoted it
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["crn.registered_version"] == str(champion.version)
    # The commit comes from the submitting side (infra/submit.sh): the uploaded folder has no
    # .git. (HEAD may have moved on since: the checkout is someone's working copy.)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", run.data.tags["crn.git_commit"]), run.data.tags["crn.git_commit"]
    assert git_commit() != "unknown"
    # Registered files are served by MLflow from the stack's folder, which a restart keeps.
    checkpoints = list((folder / "mlartifacts").rglob("crn_checkpoint.pt"))
    assert checkpoints and all(path.stat().st_size > 0 for path in checkpoints), "no model files in the stack folder"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "not served by MLflow"


@pytest.mark.parametrize("submit", ["infra/submit.sh", "ray job submit"])
def test_submit_without_env_sh_says_to_source_it(stack, submit):
    """A new user's first try: the venv's bin on PATH, the stack running, env.sh not sourced."""
    env, _, ports = stack
    bare = {key: value for key, value in env.items() if not key.startswith("RAY_")}
    bare["PATH"] = f"{RAY.parent}:{bare['PATH']}"
    # The stack's job server is where a bare `ray job submit` looks (127.0.0.1:8265) when the
    # stack runs on its default ports; here it is on a port of the test's.
    address = f" --address http://127.0.0.1:{ports['dashboard']}" if submit == "ray job submit" else ""
    refused = subprocess.run(["bash", "-c", f"{submit}{address} -- python -c pass"], env=bare, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()], refused.stderr  # one line
    assert re.search(r"source \S*work/stack/env\.sh", refused.stderr), refused.stderr


def test_a_relative_output_of_a_submitted_job_is_refused(stack, readme_sequence):
    """The job runs in Ray's temporary copy of the checkout: work/... there vanishes with the job."""
    env, folder, _ = stack
    refused = in_stack_shell(env, folder, f"infra/submit.sh -- python jobs/synthesize.py --model {MODEL} "
                             f"--store {STORE} --split val --output work/synth")
    assert refused.returncode != 0
    assert "--output work/synth: this submitted job runs in Ray's temporary copy of the checkout" in refused.stdout + refused.stderr


def test_jobs_submitted_together_lose_no_run_and_no_metric(stack, readme_sequence):
    env, folder, ports = stack
    assert readme_sequence.returncode == 0, "the README's sequence failed (see the test before)"
    tag = uuid.uuid4().hex[:6]
    steps = 6
    commands = [
        *(f"infra/submit.sh -- python jobs/train.py --store {STORE} --preset crn-tiny --num-outputs 2 "
          f"--steps {steps} --batch-size 2 --vgg-weights random --storage-path s3://crn/checkpoints "
          f"--run-name together-{tag}-{i} --model-name crn-together-{tag}" for i in (1, 2)),
        f"infra/submit.sh -- python jobs/evaluate.py --model models:/{MODEL}@champion --store {STORE} "
        f"--segmenter models:/seg-toy-32x64@current --run-name together-{tag}-eval "
        f"--synthesized s3://crn/evaluations/together-{tag}",
    ]
    jobs = [subprocess.Popen(["bash", "-c", f"source {folder}/env.sh && {command}"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for command in commands]
    outputs = [job.communicate(timeout=900)[0] for job in jobs]
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output[-3000:]

    client = MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    runs = {run.info.run_name: run for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"attributes.run_name LIKE 'together-{tag}-%'")}
    assert sorted(runs) == [f"together-{tag}-1", f"together-{tag}-2", f"together-{tag}-eval"]
    assert all(run.info.status == "FINISHED" for run in runs.values())
    for name in (f"together-{tag}-1", f"together-{tag}-2"):  # MLflow gets every step of a training
        run = runs[name]
        assert "loss" in run.data.metrics
        for key in (key for key in run.data.metrics if not key.startswith("system/")):  # those tick with time
            history = client.get_metric_history(run.info.run_id, key)
            logged = sorted(m.step for m in history)
            assert logged == sorted(set(logged)) and set(logged) <= set(range(steps + 1)), (name, key, logged)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, steps + 1))
    # The evaluation logs each of its scores once (MLflow's system metrics come every few seconds).
    evaluation = runs[f"together-{tag}-eval"]
    scores = [key for key in evaluation.data.metrics if not key.startswith("system/")]
    assert scores, "the evaluation's scores are missing"
    for key in scores:
        assert len(client.get_metric_history(evaluation.info.run_id, key)) == 1, key


def test_the_job_server_refuses_a_client_without_the_token(stack):
    env, folder, ports = stack
    refused = in_stack_shell(
        env, folder,
        f"unset RAY_AUTH_TOKEN; RAY_AUTH_TOKEN_PATH=/nonexistent/token {RAY} job list", timeout=120,
    )
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]


def test_a_missing_bucket_is_not_called_a_missing_store(stack):
    env, folder, ports = stack
    probed = in_stack_shell(env, folder, "python -c \"from pipeline.data.store import open_store; open_store('s3://nobucket/store')\"")
    assert f"s3://nobucket/store: there is no bucket nobucket at http://127.0.0.1:{ports['s3']}" in probed.stderr, probed.stderr[-2000:]
    probed = in_stack_shell(env, folder, "python -c \"from pipeline.data.store import open_store; open_store('s3://crn/nostore')\"")
    assert "no store at s3://crn/nostore" in probed.stderr, probed.stderr[-2000:]


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


def with_children(pids: list[int]) -> list[int]:
    """`pids` and their child processes (MLflow's web server is a child without the folder in its command line)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(set(pids) | set(children))


def test_every_service_listens_on_loopback_only(stack):
    _, folder, ports = stack
    sockets = listening_sockets(with_children(pids_mentioning(str(folder))))
    for name in ("postgres", "s3", "azurite", "mlflow", "dashboard"):  # each is found, so each is checked
        assert f"127.0.0.1:{ports[name]}" in sockets, f"{name} is not listening on 127.0.0.1:{ports[name]}: {sorted(sockets)}"
    exposed = sorted(s for s in sockets if not s.startswith(("127.0.0.1:", "[0:0:0:0:0:0:0:1]:")))
    assert not exposed, f"listening beyond loopback: {exposed} (all: {sorted(sockets)})"


def test_a_restart_keeps_the_registry_and_the_bucket(stack, readme_sequence):
    """Last in the module: it stops and starts the stack. The model registered before the stop
    loads from the restarted MLflow (on PostgreSQL), and the store is read from the restarted S3."""
    env, folder, _ = stack
    assert readme_sequence.returncode == 0, "the README's sequence failed (see the test before)"
    stopped = run_stack(env, "stop")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    started = run_stack(env, "start")
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    probe = (f"from pipeline.registry.models import open_model; from pipeline.data.store import open_store; "
             f"print(open_model('models:/{MODEL}@champion').build().__class__.__name__, open_store('{STORE}').uri)")
    loaded = in_stack_shell(env, folder, f'python -c "{probe}"')
    assert loaded.returncode == 0, loaded.stdout[-2000:] + loaded.stderr[-2000:]
    assert loaded.stdout.split()[-1] == STORE, loaded.stdout[-2000:]
