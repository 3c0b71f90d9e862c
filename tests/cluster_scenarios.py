"""Multi-node scenarios for tests/test_node_loss.py: a Ray cluster of several nodes on this
machine (`ray.cluster_utils.Cluster`: each node its own raylet, object store and resources),
a job run against it as a user runs one on a cluster, and a node removed while it works.

    python tests/cluster_scenarios.py serve      # one cluster, scenarios asked for on stdin
    python tests/cluster_scenarios.py train '{"argv": ["--store", "s3://...", ...], "log": "/tmp/x/train.log"}'

Runs in its own process: a Cluster is a Ray instance of its own, and a test process is already
connected to the session's. This process owns the cluster and never connects to it as a
driver; the job is a separate process (`python -m jobs.<job> ...` with `RAY_ADDRESS` set, what
`ray job submit` does too). The environment (S3 endpoint and credentials, MLflow store) is
inherited: the nodes' processes get it from here, the job from here too. The test asserts on
the scenario's result (JSON) and on what the job left in S3 and MLflow.

`serve` starts the cluster once and runs the scenarios that tests/test_node_loss.py asks
for, one JSON request a line on stdin, `RESULT <json>` a line on stdout (nothing else goes
there), all on that cluster: each scenario starts with 2 worker nodes (a node that the one
before removed is replaced first, as an autoscaler would) and sees only the actors and
tasks that it made. With a scenario's name and arguments instead, one scenario runs on a
cluster of its own and its result is the last line of stdout.

The cluster: a head with no CPUs (the drivers and Ray Train's controller live there, never
a worker: as a real cluster's head is often set up) and worker nodes with 3 logical CPUs
each on this machine's 2 cores (docs/stack-facts.md#ray-logical-cpus: logical CPUs are slots, not threads).
Everything listens on 127.0.0.1, and Ray's files go to a folder of this run's own
(`RAY_TMPDIR`), so the cluster never meets another Ray instance on the machine: Ray's own
processes that look for "the" cluster without an address (Ray Train's placement-group
cleaner, which warns about the other instances it sees) find this one's address file there.
Ray Train groups workers by IP address, so it counts all these nodes as one (node_rank 0,
local_world_size 2): the tests set the torch threads per worker themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# 3: a synthesis actor of 2 CPUs and a CPU for its reads and writes, but not two actors.
NODE_CPUS = 3
WORKER_NODES = 2
RESULT = "RESULT "
POLL_S = 0.2  # how often the watchers look; nothing here waits a fixed time for something to happen


class TestCluster:
    """A head (no CPUs) and `workers` worker nodes, all on 127.0.0.1."""

    def __init__(self, workers: int, node_cpus: int = NODE_CPUS):
        # Short: Ray's socket paths live under it and must stay under ~107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="crn-nodes-", dir="/tmp")
        os.environ["RAY_TMPDIR"] = self.tmp  # before Ray is imported: its address file and sessions go here
        # Every node, and the job's driver, on loopback: without it Ray replaces 127.0.0.1 by
        # the host's address for the servers, and a driver looks for its raylet there.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray.cluster_utils import Cluster

        self.node_cpus = node_cpus
        self.jobs: list[Job] = []
        self.seen_actors: set[str] = set()  # of the scenarios before: actors() leaves them out
        # Ports: 0 or None = free ones picked by Ray. The head's dashboard agent would take
        # a fixed default that another Ray instance here may hold; worker nodes get free ones.
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": 0, "dashboard_agent_listen_port": None})
        self.nodes: list = []  # the worker nodes up now
        for _ in range(workers):
            self.add()

    def add(self):
        # Each node its own temporary folder, as on its own machine: Ray Train's workers fetch a
        # checkpoint into tempfile's folder, and two on one folder race each other (one saw the
        # other's copy vanish: "Checkpoint directory ... does not exist").
        scratch = tempfile.mkdtemp(prefix="node-", dir=self.tmp)
        node = self.cluster.add_node(num_cpus=self.node_cpus, node_ip_address="127.0.0.1",
                                     env_vars={"TMPDIR": scratch})
        self.cluster.wait_for_nodes()
        self.nodes.append(node)
        return node

    def remove(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)  # a lost node: no goodbye
        self.nodes.remove(node)

    def begin(self, workers: int = WORKER_NODES) -> list:
        """Ready for the next scenario: `workers` worker nodes (a lost one replaced), the jobs
        and actors of the scenarios before out of sight. Returns the worker nodes."""
        self.end()
        while len(self.nodes) < workers:
            self.add()
        self.seen_actors |= {a["id"] for a in self.actors("")}
        return list(self.nodes)

    def end(self) -> None:
        """A scenario that failed half-way leaves no job running."""
        for job in self.jobs:
            job.stop()
        self.jobs.clear()

    def env(self) -> dict:
        """The job's environment: ours, and the cluster to attach to."""
        return {**os.environ, "RAY_ADDRESS": self.cluster.address, "PYTHONPATH": str(REPO)}

    def actors(self, class_name: str) -> list[dict]:
        """Every actor (alive or dead) whose class name contains `class_name`: node id, state."""
        table = self.cluster.global_state.actor_table(None)
        return [{"id": a["ActorID"], "node": a["Address"]["NodeID"], "state": a["State"], "restarts": a["NumRestarts"],
                 "class": a["ActorClassName"]}
                for a in table.values() if class_name in a["ActorClassName"] and a["ActorID"] not in self.seen_actors]

    def tasks(self, name: str) -> list[dict]:
        """Every attempt of the tasks whose name contains `name`: node id, state (Ray's state API)."""
        from ray.util.state import list_tasks

        found = list_tasks(address=f"http://{self.cluster.webui_url}", detail=True, limit=10_000, raise_on_missing_output=False)
        return [{"id": t.task_id, "attempt": t.attempt_number, "node": t.node_id, "state": t.state, "name": t.name}
                for t in found if name in t.name]

    def close(self) -> None:
        self.end()
        try:
            self.cluster.shutdown()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Job:
    """`python -m jobs.<name> argv...` against the cluster; output to a log file."""

    def __init__(self, cluster: TestCluster, name: str, argv: list[str], log: Path):
        self.log = log
        with open(log, "w") as handle:  # the job writes to its own copy of the descriptor
            self.process = subprocess.Popen([sys.executable, "-m", f"jobs.{name}", *argv], cwd=REPO,
                                            env=cluster.env(), stdout=handle, stderr=subprocess.STDOUT)
        cluster.jobs.append(self)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Timeline:
    """Seconds since the scenario started, by event: where a slow run spent its time."""

    def __init__(self):
        self.start, self.marks = time.monotonic(), {}

    def mark(self, event: str) -> None:
        self.marks[event] = round(time.monotonic() - self.start, 1)


def wait_for(what: str, condition: Callable[[], object], job: Job, timeout: float = 300,
             state: Callable[[], object] = lambda: None):
    """Poll `condition` until it is true; fail if the job ends first or `timeout` passes (a
    hang), saying what `state()` shows then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not job.running():
            raise RuntimeError(f"the job ended (exit {job.process.returncode}) before {what}; state: {state()}\n"
                               f"{job.output()[-4000:]}")
        time.sleep(POLL_S)
    raise TimeoutError(f"no {what} after {timeout} s; state: {state()}\n{job.output()[-4000:]}")


# ---------------------------------------------------------------- training


def mlflow_run_of(tracking_uri: str, experiment: str, run_name: str):
    """The MLflow run of the Ray Train run `run_name` (tag crn.ray_run ends with it), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                  filter_string=f"tags.`crn.ray_run` LIKE '%/{run_name}'")
    except MlflowException:  # SQLite busy with the job's writes: look again
        return None
    return MlflowClient(tracking_uri).get_run(runs[0].info.run_id) if runs else None


def logged_steps(tracking_uri: str, run_id: str) -> list[int]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "loss"))
    except MlflowException:  # SQLite busy with the job's writes: look again
        return []


def train(cluster: TestCluster, args: dict) -> dict:
    """Training, 2 workers on 2 nodes (STRICT_SPREAD); the node of one removed once the run
    has logged the step of its first checkpoint, and a new node added once Ray Train has
    seen the failure (as an autoscaler or KubeRay replaces a lost node).

    args: argv (the job's flags, with --run-name, --experiment, --checkpoint-every),
    log (a file for the job's output).
    """
    import mlflow

    argv = args["argv"]
    run_name, experiment = argv[argv.index("--run-name") + 1], argv[argv.index("--experiment") + 1]
    first_checkpoint = int(argv[argv.index("--checkpoint-every") + 1])
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(tracking_uri)

    timeline = Timeline()
    nodes = cluster.begin()
    timeline.mark("2 worker nodes")
    try:
        job = Job(cluster, "train", argv, Path(args["log"]))
        run = wait_for("an MLflow run", lambda: mlflow_run_of(tracking_uri, experiment, run_name), job)
        # The callback logs a step after Ray Train has registered that report's checkpoint.
        wait_for(f"step {first_checkpoint} in MLflow", lambda: first_checkpoint in logged_steps(tracking_uri, run.info.run_id), job)
        timeline.mark("checkpoint logged")
        first_group = cluster.actors("RayTrainWorker")
        lost = nodes[0]
        cluster.remove(lost)
        timeline.mark("node removed")
        steps_at_removal = logged_steps(tracking_uri, run.info.run_id)
        wait_for("Ray Train noticing the lost node",
                 lambda: mlflow_run_of(tracking_uri, experiment, run_name).data.tags.get("crn.worker_failures"), job)
        timeline.mark("failure seen")
        replacement = cluster.add()
        timeline.mark("replacement added")
        code = job.wait(timeout=600)
        timeline.mark("job done")
        return {
            "timeline": timeline.marks,
            "exit_code": code, "output": job.output()[-6000:], "run_id": run.info.run_id,
            "worker_nodes": [node.node_id for node in nodes] + [replacement.node_id],
            "lost_node": lost.node_id, "replacement_node": replacement.node_id,
            "first_group": first_group, "workers": cluster.actors("RayTrainWorker"),
            "steps_logged_at_removal": steps_at_removal,
        }
    finally:
        cluster.end()


# ---------------------------------------------------------------- synthesis


def images_in(output: str) -> list[str]:
    """The PNG files under <output>/images (relative paths)."""
    import pyarrow.fs as pafs

    from pipeline.fs import filesystem_for

    fs, root = filesystem_for(output)
    selector = pafs.FileSelector(f"{root}/images", recursive=True, allow_not_found=True)
    return sorted(info.path[len(root) + 1:] for info in fs.get_file_info(selector)
                  if info.type == pafs.FileType.File and info.path.endswith(".png"))


def synthesize(cluster: TestCluster, args: dict) -> dict:
    """Synthesis with a pool of 2 actors of 2 CPUs on 2 nodes of 3 CPUs: one actor per node
    (a node has no room for two), a CPU each for the reads and writes. Once both actors are
    alive and images are arriving, the node of one is removed, for good: the survivor has
    no room to restart the lost actor, so the job must finish on the one left. If the job
    fails, it is re-run once (the same command resumes), and the result says so.

    args: argv (the job's flags, with --output), log.
    """
    argv = args["argv"]
    output = argv[argv.index("--output") + 1]
    timeline = Timeline()
    nodes = cluster.begin()
    timeline.mark("2 worker nodes")
    try:
        job = Job(cluster, "synthesize", argv, Path(args["log"]))

        def working_on_two_nodes():
            alive = [a for a in cluster.actors("SynthesisActor") if a["state"] == "ALIVE"]
            return alive if len({a["node"] for a in alive}) == 2 and images_in(output) else None

        pool = wait_for("synthesis actors alive on 2 nodes, and images", working_on_two_nodes, job,
                        state=lambda: {"nodes": [n.node_id for n in nodes], "actors": cluster.actors("SynthesisActor")})
        timeline.mark("actors alive, images arriving")
        lost = nodes[0]
        cluster.remove(lost)
        timeline.mark("node removed")
        at_removal = images_in(output)
        exit_codes = [job.wait(timeout=600)]
        timeline.mark("job done")
        outputs = [job.output()[-6000:]]
        if exit_codes[0] != 0:  # the same command again: it resumes
            job = Job(cluster, "synthesize", argv, Path(args["log"] + ".rerun"))
            exit_codes.append(job.wait(timeout=600))
            outputs.append(job.output()[-6000:])
            timeline.mark("re-run done")
        return {
            "timeline": timeline.marks, "exit_codes": exit_codes, "outputs": outputs,
            "worker_nodes": [node.node_id for node in nodes], "lost_node": lost.node_id, "pool_at_removal": pool,
            "actors": cluster.actors("SynthesisActor"), "images_at_removal": at_removal,
        }
    finally:
        cluster.end()


# ---------------------------------------------------------------- preprocessing


def preprocess(cluster: TestCluster, args: dict) -> dict:
    """Preprocessing on 2 nodes: the shards' tasks spread over both (Ray Data's SPREAD).
    args: argv (the job's flags), log."""
    timeline = Timeline()
    nodes = cluster.begin()
    timeline.mark("2 worker nodes")
    try:  # the tasks of an earlier run on this cluster, if any (its dashboard may not answer yet)
        before = {t["id"] for t in cluster.tasks("build_shard")}
    except Exception:
        before = set()
    try:
        job = Job(cluster, "preprocess", args["argv"], Path(args["log"]))
        code = job.wait(timeout=600)
        timeline.mark("job done")
        return {"timeline": timeline.marks, "exit_code": code, "output": job.output()[-6000:],
                "worker_nodes": [node.node_id for node in nodes],
                "tasks": [t for t in cluster.tasks("build_shard") if t["id"] not in before]}
    finally:
        cluster.end()


SCENARIOS = {"train": train, "synthesize": synthesize, "preprocess": preprocess}


def serve() -> int:
    """One cluster for every scenario asked for on stdin ({"scenario": name, "args": {...}} a
    line); `RESULT {"result": ...}` or `RESULT {"error": traceback}` a line on stdout. Ends,
    and shuts the cluster down, when stdin closes."""
    import signal
    import traceback

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still shut the cluster down (finally below)
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever else prints goes to stderr
    sys.stdout = sys.stderr
    started = time.monotonic()
    cluster = TestCluster(workers=WORKER_NODES)
    try:
        results.write(RESULT + json.dumps({"ready": round(time.monotonic() - started, 1)}) + "\n")
        results.flush()
        for line in sys.stdin:
            request = json.loads(line)
            try:
                answer = {"result": SCENARIOS[request["scenario"]](cluster, request["args"])}
            except Exception:  # the test shows it; the cluster serves the next scenario
                answer = {"error": traceback.format_exc()}
            results.write(RESULT + json.dumps(answer) + "\n")
            results.flush()
    finally:
        cluster.close()
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "serve":
        return serve()
    name, args = argv[0], json.loads(argv[1])
    cluster = TestCluster(workers=WORKER_NODES)
    try:
        result = SCENARIOS[name](cluster, args)
    finally:
        cluster.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
