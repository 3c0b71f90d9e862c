"""Node loss on a Ray cluster of several nodes (on this machine): training, synthesis and
preprocessing with every file on S3, compared with runs that lost nothing.

    .venv/bin/python -m pytest tests/test_node_loss.py -q

The scenarios run in a process of their own (tests/cluster_scenarios.py serve), on one
`ray.cluster_utils.Cluster` that it starts for the module (a head without CPUs and 2 worker
nodes, each its own raylet; a node that a scenario removed is replaced before the next).
Each runs the job against it as a separate driver (`RAY_ADDRESS`, as on a real cluster),
removes a worker node when the job has made progress (seen in MLflow or S3, never after a
fixed sleep), and answers with what happened as JSON. This process holds the session's own
local Ray instance, which computes the references (a process connects to one Ray instance at
a time). Checkpoints, stores and images live on S3 (moto on 127.0.0.1): a lost node takes its
local disk with it. On the 2-core machine at load 1-4: training 91 s (its scenario 58 s, the
reference fit the rest), synthesis 47 s (scenario 35 s), preprocessing 10 s (scenario 9 s),
plus 12 s of set-up (the cluster, 6 s, comes up meanwhile); at load 5-11 training took 122 s.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from synth_models import make_test_checkpoint

from crn.checkpoint import load_checkpoint
from pipeline.fs import filesystem_for, read_bytes
from pipeline.registry.models import open_model
from pipeline.synthesis.config import parse_synthesize_config
from pipeline.synthesis.job import run as run_synthesis
from pipeline.training import job as train
from pipeline.training.config import parse_train_config
from pipeline.training.loop import CHECKPOINT_FILE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread", "module_experiment")]

SCENARIOS = Path(__file__).resolve().parent / "cluster_scenarios.py"
REPO = SCENARIOS.parent.parent
BUCKET = "test-bucket"
EXPERIMENT = "test-node-loss"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class ScenarioServer:
    """`tests/cluster_scenarios.py serve`: its cluster, started once, runs every scenario."""

    def __init__(self, log: Path):
        self.log = log
        self.process = None
        self.up = False  # the cluster said it is up

    def start(self) -> None:
        """Start the server: its cluster comes up while the tests prepare their data."""
        with open(self.log, "a") as handle:  # the server's own messages, Ray's among them
            self.process = subprocess.Popen([sys.executable, str(SCENARIOS), "serve"], cwd=REPO, text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=handle,
                                            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.up = False

    def answer(self, timeout: float) -> dict:
        """The server's next `RESULT` line; fails if it ends or says nothing for `timeout` s."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("RESULT "):
            self.stop(busy=True)  # silent or gone: the next scenario starts a new one
            pytest.fail(f"the scenario server {'ended' if ready else f'said nothing for {timeout} s'}: "
                        f"{line}\n{self.log.read_text(errors='replace')[-6000:]}")
        return json.loads(line[len("RESULT "):])

    def run(self, name: str, args: dict, timeout: float = 900) -> dict:
        """Run one scenario on the cluster; its JSON result."""
        if self.process is None:
            self.start()
        if not self.up:
            print("scenario cluster up in", self.answer(timeout)["ready"], "s")
            self.up = True
        self.process.stdin.write(json.dumps({"scenario": name, "args": args}) + "\n")
        self.process.stdin.flush()
        answer = self.answer(timeout)
        assert "error" not in answer, answer["error"]
        return answer["result"]

    def stop(self, busy: bool = False) -> None:
        """End the server, which shuts its cluster down: once stdin closes, or on SIGTERM when
        it is `busy` with a scenario that hangs."""
        if self.process is not None:
            self.process.stdin.close()
            if busy:
                self.process.terminate()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def scenarios(s3_endpoint, tmp_path_factory):
    """The scenario server, its cluster shared by every scenario of the module."""
    server = ScenarioServer(tmp_path_factory.mktemp("scenarios") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_store(toy_source, ray_session) -> str:
    """conftest's toy data set preprocessed into a store on S3: 8 train, 4 val samples at 32x64."""
    from jobs.preprocess import main as preprocess

    uri = f"s3://{BUCKET}/node-loss/{uuid.uuid4().hex[:8]}/store"
    assert preprocess(["--source", str(toy_source), "--out", uri, "--resolutions", "32x64"]) == 0
    return uri


# ---------------------------------------------------------------- training

STEPS, CHECKPOINT_EVERY = 8, 2


def train_argv(store: str, run_name: str, storage: str, *extra: str) -> list[str]:
    """crn-tiny (32x64, K=2, random VGG) on the 8 training samples: 2 ranks x batch 2, so
    2 steps per epoch; a checkpoint every 2 steps."""
    return ["--store", store, "--preset", "crn-tiny", "--num-outputs", "2", "--vgg-weights", "random",
            "--threads-per-worker", "1", "--num-workers", "2", "--batch-size", "2", "--steps", str(STEPS),
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", "1", "--image-every", "0", "--seed", "0",
            "--run-name", run_name, "--experiment", EXPERIMENT, "--storage-path", storage, *extra]


def loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "loss"))


def final_checkpoint(run_id: str) -> dict:
    path = MlflowClient().get_run(run_id).data.tags["crn.final_checkpoint"]
    fs, root = filesystem_for(f"s3://{path}")
    return load_checkpoint(read_bytes(fs, f"{root}/{CHECKPOINT_FILE}"))


def test_training_survives_the_loss_of_a_node(scenarios, s3_store, ray_session, tmp_path):
    """2 workers on 2 nodes (STRICT_SPREAD). Once MLflow shows the step of the first
    checkpoint (so Ray Train has registered it), the node of one worker is removed; once
    Ray Train has seen the failure, a new node joins (a STRICT_SPREAD group of 2 needs 2
    nodes: a lost node is replaced, as an autoscaler or KubeRay does). The run resumes from
    its last checkpoint and ends as an uninterrupted run of the same command does."""
    run_name = unique("nodes")
    argv = train_argv(s3_store, run_name, f"s3://{BUCKET}/node-loss/checkpoints", "--placement-strategy",
                      "STRICT_SPREAD", "--max-failures", "1", "--model-name", "crn-node-loss")
    result = scenarios.run("train", {"argv": argv, "log": str(tmp_path / "train.log")})
    print("training scenario:", result["timeline"])
    assert result["exit_code"] == 0, result["output"]

    # Where the workers ran: one per node, then the surviving node and the replacement.
    nodes = result["worker_nodes"]
    first = {w["id"]: w["node"] for w in result["first_group"]}
    assert sorted(first.values()) == sorted(nodes[:2]) and result["lost_node"] == nodes[0]
    second = [w["node"] for w in result["workers"] if w["id"] not in first]
    assert sorted(second) == sorted([nodes[1], result["replacement_node"]])

    # Resumed from the last checkpoint Ray Train had when the node went: not from scratch.
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.tags["crn.worker_failures"] == "1"
    at_removal = result["steps_logged_at_removal"]
    assert max(at_removal) < STEPS, "the run had finished before the node was removed"
    last_checkpoint = max(s for s in at_removal if s % CHECKPOINT_EVERY == 0)
    resumed = int(run.data.tags["crn.resumed_from_step"])
    assert last_checkpoint <= resumed < STEPS and resumed % CHECKPOINT_EVERY == 0, (at_removal, resumed)
    assert loss_steps(result["run_id"]) == list(range(1, STEPS + 1))  # every step logged once
    assert run.data.tags["crn.final_checkpoint"].startswith(f"{BUCKET}/node-loss/checkpoints/{run_name}/")
    ours = final_checkpoint(result["run_id"])

    # The registered model is the final checkpoint's, and loads.
    loaded = open_model(f"models:/crn-node-loss/{run.data.tags['crn.registered_version']}")
    for key, value in loaded.build().state_dict().items():
        assert torch.equal(value, ours["model"][key]), key

    # An uninterrupted run of the same command on the session's one-node Ray (PACK).
    reference = train.run(parse_train_config(train_argv(s3_store, unique("whole"), f"s3://{BUCKET}/node-loss/checkpoints",
                                                        "--model-name", "crn-node-loss-reference")))
    with reference.checkpoint.as_directory() as folder:
        theirs = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    assert ours["step"] == theirs["step"] == reference.final["step"] == STEPS
    assert ours["epoch"] == theirs["epoch"]
    np.testing.assert_allclose(ours["loss_weights"], theirs["loss_weights"], rtol=1e-6)
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- synthesis


SYNTH_MAPS = 16


@pytest.fixture(scope="module")
def s3_labels(tmp_path_factory, s3_endpoint) -> str:
    """A folder of SYNTH_MAPS Cityscapes label-id maps (128x256) on S3, for synthesis."""
    import boto3

    from pipeline.data.toy import generate_toy_dataset

    source = tmp_path_factory.mktemp("synth-labels")
    generate_toy_dataset(source, num_train=SYNTH_MAPS, num_val=0, seed=3, size=(128, 256))
    prefix = f"node-loss/{uuid.uuid4().hex[:8]}/labels"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    paths = sorted(source.rglob("*_gtFine_labelIds.png"))
    for path in paths:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name.replace('_gtFine_labelIds', '')}", Body=path.read_bytes())
    assert len(paths) == SYNTH_MAPS
    return f"s3://{BUCKET}/{prefix}"


def s3_files(uri: str) -> dict[str, bytes]:
    """Every file under `uri`/images, by relative path."""
    import pyarrow.fs as pafs

    fs, root = filesystem_for(uri)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/images", recursive=True))
    return {i.path[len(root) + 1:]: read_bytes(fs, i.path) for i in infos if i.type == pafs.FileType.File}


def test_synthesis_survives_the_loss_of_a_node(scenarios, s3_labels, ray_session, tmp_path):
    """A pool of 2 CPU actors of 2 threads, one per node, crn-mid (128x256, about half a
    second a map) over 16 label maps on S3, one map per batch, images to S3. Once both
    actors are alive and images arrive, one node is removed for good. The job (or its
    re-run, if it failed) ends with one image per (sample, variant), byte for byte those of
    an uninterrupted run on the session's one-node Ray (one actor there: 4 CPUs)."""
    model = make_test_checkpoint(tmp_path / "mid.pt", seed=5, preset="crn-mid")
    # Batch size and threads fix the pixels (pipeline.synthesis.outputs); the actor count does not.
    common = ["--model", str(model), "--labels", s3_labels, "--batch-size", "1", "--threads-per-actor", "2",
              "--seed", "7", "--experiment", EXPERIMENT]
    output = f"s3://{BUCKET}/node-loss/synth-{uuid.uuid4().hex[:8]}"
    result = scenarios.run("synthesize", {"argv": [*common, "--num-actors", "2", "--output", output],
                                          "log": str(tmp_path / "synth.log")})
    print("synthesis scenario:", result["timeline"], "exit codes", result["exit_codes"],
          "images at removal", len(result["images_at_removal"]))
    assert result["exit_codes"][-1] == 0, result["outputs"][-1]

    # The pool had one actor on each node. Ray Data restarted the lost one on the survivor
    # (once the other actor, its work done, had freed the room) to redo its batches.
    nodes = result["worker_nodes"]
    assert sorted(a["node"] for a in result["pool_at_removal"]) == sorted(nodes)
    [moved] = [a for a in result["pool_at_removal"] if a["node"] == result["lost_node"]]
    [after] = [a for a in result["actors"] if a["id"] == moved["id"]]
    [survivor] = [n for n in nodes if n != result["lost_node"]]
    assert after["restarts"] >= 1 and after["node"] == survivor, after
    assert 0 < len(result["images_at_removal"]) < SYNTH_MAPS * 2, "the node was not lost mid-job"

    reference = f"s3://{BUCKET}/node-loss/synth-reference-{uuid.uuid4().hex[:8]}"
    run_synthesis(parse_synthesize_config([*common, "--num-actors", "1", "--output", reference]))
    ours, theirs = s3_files(output), s3_files(reference)
    assert len(theirs) == SYNTH_MAPS * 2 and ours == theirs  # one image per (sample, variant), same bytes
    fs, root = filesystem_for(output)
    ref_fs, ref_root = filesystem_for(reference)
    with fs.open_input_file(f"{root}/manifest.parquet") as mine, ref_fs.open_input_file(f"{ref_root}/manifest.parquet") as ref:
        assert pq.read_table(mine).equals(pq.read_table(ref))


# ---------------------------------------------------------------- preprocessing


def test_preprocessing_on_two_nodes_makes_the_store_one_node_makes(scenarios, toy_source, s3_endpoint, ray_session,
                                                                   tmp_path):
    """The toy data set from S3 into a store on S3, 2 samples a part (so 6 parts, 6 tasks),
    once on a cluster of 2 nodes and once on the session's one-node Ray: the same manifest
    (but for its time and destination) and the same parts, byte for byte."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"node-loss/{uuid.uuid4().hex[:8]}"
    for path in sorted(toy_source.rglob("*.png")):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/toy/{path.relative_to(toy_source)}", Body=path.read_bytes())
    common = ["--source", f"s3://{BUCKET}/{prefix}/toy", "--resolutions", "8x16,32x64", "--rows-per-file", "2",
              "--experiment", EXPERIMENT]
    spread, single = f"s3://{BUCKET}/{prefix}/two-nodes", f"s3://{BUCKET}/{prefix}/one-node"
    result = scenarios.run("preprocess", {"argv": [*common, "--out", spread], "log": str(tmp_path / "preprocess.log")})
    print("preprocessing scenario:", result["timeline"])
    assert result["exit_code"] == 0, result["output"]
    finished = [t for t in result["tasks"] if t["state"] == "FINISHED"]
    assert len(finished) == 6 and {t["node"] for t in finished} == set(result["worker_nodes"]), result["tasks"]

    from jobs.preprocess import main as preprocess

    assert preprocess([*common, "--out", single]) == 0
    (fs, root), (_, single_root) = filesystem_for(spread), filesystem_for(single)
    ours = json.loads(read_bytes(fs, f"{root}/manifest.json"))
    theirs = json.loads(read_bytes(fs, f"{single_root}/manifest.json"))
    for manifest in (ours, theirs):
        del manifest["created_at"], manifest["config"]["out"]
    assert ours == theirs  # counts, class histograms, rejects, source fingerprint, the store's key
    parts = [part["path"] for split in ours["splits"].values() for part in split["files"]]
    assert len(parts) == 6
    for part in parts:
        assert read_bytes(fs, f"{root}/{part}") == read_bytes(fs, f"{single_root}/{part}"), part
