"""Serving benchmark: the HTTP service under a bounded load, against the bare forward pass at its batch size.

    python -m bench.run_all bench_serve          # with the other benchmarks' table
    python -m bench.bench_serve [--quick]        # this one alone

In one run, on this process's Ray (pipeline.runtime.init_ray, as jobs/serve.py starts it):
- a throwaway MLflow store with one seeded, untrained model registered twice (two seeds:
  versions 1 and 2), `@champion` on version 1;
- the service (pipeline.serving.app.deploy) on a port the OS picked free on 127.0.0.1: one
  CPU replica with every core as its torch threads, batches of B, following `@champion`
  every second;
- a load: a fixed number of requests, each a toy validation map as a colour PNG, from 2B
  client threads of this process on 127.0.0.1, each sending its next request as soon as its
  answer is in (so a batch is always waiting while one runs). It stops by itself when the
  last answer is in. Halfway through (after half the answers), `@champion` moves to the
  other version; the replica loads it and swaps it in between two batches;
- the bare forward pass over the same maps in padded batches of B, with the same torch
  threads, in a child process set up as a Ray CPU worker (bench_synthesize's, via
  bench.child: its allocator settings and Ray's worker niceness);
- taking turns: bare, load, bare, ..., load, bare, each load compared with the mean of the
  two bare turns beside it (bench_synthesize.paired_ratios: this 2-core machine shares its
  host, and a turn's speed moves with the host's load).
Figures:
- `serve_vs_forward` (goal >= 0.8): maps/s answered, from a load's first answer to its last,
  against the bare pass's maps/s; the median of the loads' ratios. Every map the service
  answers costs, besides its share of the pass: the PNG decoded and checked, its K images
  encoded, the trip through Serve's proxy, all on the same cores;
- `serve_p50_ms`, `serve_p99_ms`: each request from sent to answered, at the clients. With
  2B clients a request waits for the pass running when it arrives, then for its own:
  queueing by design of a closed loop that keeps the replica busy, not overhead;
- `serve_failed_requests` (goal == 0): answers other than 200, and requests that failed,
  across the alias moves; `serve_answers_after_move`: answers that named the version the
  alias moved to (the fewest of the loads).
Full: crn-mid (128x256, K=4), batches of 8, two loads of 192 requests, bare turns of 96 maps;
quick: crn-small (64x128), one load of 48, bare turns of 32.
"""
from __future__ import annotations

import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_synthesize import load_averages, make_store, paired_ratios, quiet, scratch_mlflow
from bench.child import ray_worker_niceness, run_child

FULL = {"preset": "crn-mid", "batch_size": 8, "requests": 192, "maps": 24, "bare_maps": 96, "turns": 2}
QUICK = {"preset": "crn-small", "batch_size": 8, "requests": 48, "maps": 16, "bare_maps": 32, "turns": 1}
GOAL = 0.8
NAME = "crn-bench-serve"
POLL_SECONDS = 1.0


def make_checkpoint(path: Path, preset: str, seed: int) -> Path:
    from crn.checkpoint import make_checkpoint as assemble
    from crn.checkpoint import save_checkpoint
    from crn.model import CRN
    from crn.presets import make_config
    from pipeline.data.schema import load_schema

    torch.manual_seed(seed)
    schema = load_schema("cityscapes")
    model = CRN(make_config(preset, schema.num_classes))
    save_checkpoint(path, assemble(model, optimizer=None, step=0, epoch=0, loss_weights=[1.0] * 6,
                                   label_schema=schema.to_dict()))
    return path


def register_two_versions(scratch: Path, preset: str, experiment: str) -> list[str]:
    import mlflow

    from pipeline.registry.models import log_and_register

    with quiet(), mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(experiment).experiment_id):
        return [log_and_register(make_checkpoint(scratch / f"v{seed}.pt", preset, seed), NAME,
                                 alias="champion" if seed == 0 else "candidate") for seed in (0, 1)]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Load:
    """`total` POSTs of `bodies` (in turn) from `clients` threads; calls `halfway()` once half are answered."""

    def __init__(self, port: int, bodies: list[bytes], total: int, clients: int, halfway=None):
        self.port, self.bodies, self.total, self.clients = port, bodies, total, clients
        self.halfway = halfway
        self.lock = threading.Lock()
        self.sent = 0
        self.results: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
        self.failures: list[str] = []

    def run(self) -> None:
        threads = [threading.Thread(target=self.client) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def next_body(self) -> bytes | None:
        with self.lock:
            if self.sent == self.total:
                return None
            self.sent += 1
            return self.bodies[self.sent % len(self.bodies)]

    def client(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        while (body := self.next_body()) is not None:
            began = time.perf_counter()
            try:
                connection.request("POST", "/synthesize", body=body, headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                status, version = response.status, response.getheader("X-Model-Version", "")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                continue
            with self.lock:
                self.results.append((began, time.perf_counter(), status, version))
                done = len(self.results)
            if done == self.total // 2 and self.halfway is not None:
                self.halfway()
        connection.close()


def bare_maps_per_s(checkpoint: Path, labels_file: Path, batch_size: int, threads: int, niceness: int,
                    maps: int) -> float:
    """The bare forward pass (bench_synthesize's child) over the maps, padded batches; maps/s
    after its first batch, as the load is timed after its warm-up."""
    seconds = run_child("bench.bench_synthesize", {"checkpoint": str(checkpoint), "labels": str(labels_file),
                                                   "batch_size": batch_size, "threads": threads,
                                                   "niceness": niceness})
    return (maps - batch_size) / sum(seconds[1:])


def run(quick: bool = False) -> list[dict]:
    from mlflow.tracking import MlflowClient
    from ray import serve

    from crn.presets import make_config
    from pipeline.data.schema import load_schema
    from pipeline.data.store import decode_labels, label_column, open_store
    from pipeline.runtime import init_ray
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig
    from pipeline.serving.plan import make_plan
    from pipeline.visualize import colorize, png_bytes, schema_palette

    settings = QUICK if quick else FULL
    preset, batch_size, total = settings["preset"], settings["batch_size"], settings["requests"]
    turns = settings["turns"]
    config = make_config(preset, 20)
    top = config.top_resolution
    threads = os.cpu_count() or 1
    clients = 2 * batch_size
    bare_maps = settings["bare_maps"]
    scratch = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    bare, runs, moves, loads = [], [], [], []  # maps/s per bare turn; each load's Load; (from, to) per load
    try:
        with scratch_mlflow(scratch) as experiment:
            init_ray(dashboard=True)  # as bench_synthesize starts it, for the benchmarks after this one
            niceness = ray_worker_niceness()
            versions = register_two_versions(scratch, preset, experiment)
            store = make_store(scratch, settings["maps"], top)
            labels = decode_labels(open_store(store).read_table("val", str(top)).column(label_column(str(top))),
                                   str(top))
            labels_file = scratch / "labels.npy"
            np.save(labels_file, np.concatenate([labels] * (bare_maps // len(labels) + 1))[:bare_maps])
            palette = schema_palette(load_schema("cityscapes"))
            bodies = [png_bytes(colorize(label, palette)) for label in labels]
            port = free_port()
            with quiet():
                deploy(make_plan(ServeConfig(model=f"models:/{NAME}@champion", port=port, poll_seconds=POLL_SECONDS,
                                             threads_per_replica=threads, max_batch_size=batch_size)))
            try:
                Load(port, bodies, 2 * batch_size, clients).run()  # warm-up: the replica's first passes
                # bare, load, bare, ..., load, bare: every load between two bare turns; the alias
                # moves halfway through each load, to the other version.
                for turn in range(turns):
                    loads.append(load_averages())
                    bare.append(bare_maps_per_s(scratch / "v0.pt", labels_file, batch_size, threads, niceness,
                                                bare_maps))
                    moves.append((versions[turn % 2], versions[(turn + 1) % 2]))
                    loads.append(load_averages())
                    runs.append(Load(port, bodies, total, clients, halfway=lambda to=moves[-1][1]: (
                        MlflowClient().set_registered_model_alias(NAME, "champion", to))))
                    runs[-1].run()
                loads.append(load_averages())
                bare.append(bare_maps_per_s(scratch / "v0.pt", labels_file, batch_size, threads, niceness, bare_maps))
            finally:
                with quiet():
                    serve.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return figures(runs, moves, bare, loads, preset, str(top), config.num_outputs, batch_size, threads, total,
                   clients, niceness, bare_maps)


def figures(runs: list[Load], moves: list[tuple[str, str]], bare: list[float], loads: list[str], preset: str,
            top: str, num_outputs: int, batch_size: int, threads: int, total: int, clients: int,
            niceness: int, bare_maps: int) -> list[dict]:
    served = []
    for load in runs:
        answered = sorted(load.results, key=lambda r: r[1])
        served.append((len(answered) - 1) / (answered[-1][1] - answered[0][1]))  # after the first answer
    ratios = paired_ratios(served, bare)
    results = [r for load in runs for r in load.results]
    ok = [r for r in results if r[2] == 200]
    failed = sum(len(load.failures) for load in runs) + len(results) - len(ok)
    latencies = np.asarray([(r[1] - r[0]) * 1000 for r in ok])
    after_moves = [sum(1 for r in load.results if r[2] == 200 and r[3] == to) for load, (_, to) in zip(runs, moves)]
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))

    def listed(values) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    what = (f"{preset} ({top}, K={num_outputs}), batches of {batch_size} (padded), 1 CPU replica with {threads} "
            f"torch threads, {len(runs)} loads of {total} requests from {clients} clients on 127.0.0.1 after a "
            f"warm-up of {2 * batch_size}, each between two bare turns; bare forward in a child process at Ray's "
            f"worker niceness ({niceness}) over {bare_maps} of the same maps; load averages (1/5/15 min) at each turn: "
            f"{'; '.join(loads)}")
    turns = (f"served maps/s {listed(served)}; bare {listed(bare)}; each load over the mean of the bare turns "
             f"beside it: {listed(ratios)}")
    print(f"bench_serve: served over bare {float(np.median(ratios)):.3f} (median of the pairs; {turns}); p50 "
          f"{p50:.0f} ms, p99 {p99:.0f} ms; {failed} failed of {len(results)}; answers by the new version after "
          f"each move: {after_moves}; {what}", file=sys.stderr)
    moved = ", ".join(f"v{a} -> v{b}" for a, b in moves)
    return [
        {"name": "serve_vs_forward", "value": float(np.median(ratios)), "unit": "x", "goal": f">= {GOAL}",
         "compared": f"maps/s answered over HTTP (from a load's first answer to its last, @champion moving halfway) "
                     f"vs the bare forward pass at the same batch size, the median of the loads' ratios to the bare "
                     f"turns beside them; {turns}; {what}"},
        {"name": "serve_p50_ms", "value": p50, "unit": "ms", "goal": "n/a",
         "compared": f"request sent to answer read, at the clients, median of {len(latencies)}; with {clients} "
                     f"clients a request waits for the pass that runs when it arrives, then for its own; {what}"},
        {"name": "serve_p99_ms", "value": p99, "unit": "ms", "goal": "n/a",
         "compared": f"the same, 99th percentile (the batches around the alias moves included); {what}"},
        {"name": "serve_failed_requests", "value": failed, "unit": "requests", "goal": "== 0",
         "compared": f"answers other than 200 and failed requests, of {len(results)}, across @champion moving "
                     f"halfway through each load ({moved}); {what}"},
        {"name": "serve_answers_after_move", "value": min(after_moves), "unit": "requests", "goal": "> 0",
         "compared": f"answers naming the version @champion moved to, the fewest of the loads ({after_moves}; the "
                     f"replica polls the alias every {POLL_SECONDS:g} s and loads the new version beside the "
                     f"batches); {what}"},
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']:26s} {figure['value']:10.3f} {figure['unit']:9s} goal {figure['goal']:8s} "
              f"{figure['compared']}")
