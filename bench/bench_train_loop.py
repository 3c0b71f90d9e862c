"""Training loop overhead: the Ray Train job (1 worker) against a plain single-process loop.

    python -m bench.run_all bench_train_loop [--quick]
    python -m bench.bench_train_loop [--quick]

In one run, on the same toy store (pipeline.data.toy.make_toy_store),
the same model (crn-small, 64x128, K=4; crn-tiny in --quick), the same batch size, the same
loss (CRNLoss with a random-weight VGG-19: the weights do not change the work), the same
step function (pipeline.training.loop.train_step) and the same torch threads:
- Ray: `pipeline.training.job.run` with one CPU worker: rows of each epoch's permutation read
  by index from the store (pipeline.data.rows, the next batch in a background thread),
  one-hot on the worker, a report every 10 steps (its per-step losses go to MLflow). The
  loop's own steps/s per report window (MLflow metric `steps_per_s`) are the measurements.
- plain: the store's rows read once with pyarrow into memory, then the same steps in a child
  process set up as the CPU training worker is (bench.child: its allocator settings), timed
  over the same 10-step windows. Plain runs and Ray jobs take turns (plain,
  Ray, plain, Ray, plain), and both sides get the same number of measured windows.
Each side's figure is its best window after the first (which holds the warm-up): on a
small machine shared with other jobs, the best window is the one least disturbed, on both
sides alike. For the same reason the plain loop runs at the niceness Ray gives its workers
(15 by default), so other jobs slow both sides alike. The means are printed beside them. Start-up (Ray, workers, the data set's first
blocks) is outside every window, and all steps lie inside the first epoch: the figure is
what a long run sees per step. A new epoch only draws a new permutation; rows whose row
groups are not in the worker's cache (`--row-cache-mb`) are decoded again (bench_data_order).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.child import lower_priority, ray_worker_niceness, run_child, serve_child
from bench.training_jobs import training_scratch, window_rates
from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.options import from_dict, to_dict
from pipeline.training.config import TrainConfig, resolve
from pipeline.training.loop import loss_network, place_loss_network, train_step

# More samples than steps: every timed step lies inside the first epoch.
# Each Ray job runs `steps`: (steps / WINDOW - 1) measured windows. Plain loops and Ray jobs
# take turns (plain, Ray, plain, ...: one plain run more than Ray runs), and the plain runs
# share out as many measured windows as the Ray runs have, so that neither side has more
# chances at a lucky window. More samples than steps: every step inside the first epoch.
FULL = {"preset": "crn-small", "resolution": "64x128", "samples": 80, "steps": 70, "ray_runs": 2}
QUICK = {"preset": "crn-tiny", "resolution": "32x64", "samples": 56, "steps": 50, "ray_runs": 1}
WINDOW = 10  # steps per measurement window = the Ray job's report interval
BATCH = 1
GOAL = 0.95
EXPERIMENT = "bench-train-loop"


def make_store(scratch: Path, samples: int, resolution: str) -> Path:
    from pipeline.data.toy import make_toy_store

    height, width = map(int, resolution.split("x"))
    return make_toy_store(scratch / "store", scratch / "toy", num_train=samples, num_val=0,
                          size=(2 * height, 2 * width), resolutions=resolution, splits="train")


def plain_window_rates(config: TrainConfig, steps: int) -> list[float]:
    """The baseline: the same steps in this process, data already in memory; steps/s per window."""
    torch.set_num_threads(config.threads_per_worker)
    store = open_store(config.store)
    table = store.read_table("train", config.resolution)
    labels = torch.from_numpy(decode_labels(table.column(label_column(config.resolution)), config.resolution).copy())
    photos = torch.from_numpy(decode_photos(table.column(photo_column(config.resolution)), config.resolution).copy())
    torch.manual_seed(config.seed)
    model = CRN(make_config(config.preset, store.schema.num_classes, config.num_outputs)).train()
    # The loss network placed as the worker places it (channels_last on a CPU).
    loss_fn = CRNLoss(place_loss_network(loss_network(config), torch.device("cpu")), LAYER_WEIGHTS[config.loss_weights])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = np.random.default_rng(config.seed).permutation(len(labels))
    rates, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        rows = [order[((step - 1) * BATCH + i) % len(order)] for i in range(BATCH)]
        onehot = one_hot(labels[rows].long(), model.config.num_classes)
        photo = photos[rows].permute(0, 3, 1, 2).float()
        train_step(model, loss_fn, optimizer, onehot, photo, config.precision)
        if step % WINDOW == 0:
            now = time.perf_counter()
            rates.append(WINDOW / (now - start))
            start = now
    return rates


def plain_rates(config: dict, steps: int, niceness: int) -> list[float]:
    """The child process of the plain runs: `plain_window_rates` at Ray's worker niceness."""
    lower_priority(niceness)
    return plain_window_rates(from_dict(TrainConfig, config), steps)


def run(quick: bool = False) -> list[dict]:
    from pipeline.training import job as train

    sizes = QUICK if quick else FULL
    threads = max(1, (os.cpu_count() or 2) // 2)  # the other half runs Ray Data, the controller, MLflow logging
    with training_scratch("bench-train-loop-", EXPERIMENT) as scratch:
        store = make_store(scratch, sizes["samples"], sizes["resolution"])

        def job_config(index: int) -> TrainConfig:
            return resolve(TrainConfig(
                store=str(store), preset=sizes["preset"], batch_size=BATCH, steps=sizes["steps"],
                vgg_weights="random", threads_per_worker=threads, checkpoint_every=sizes["steps"],
                log_every=WINDOW, image_every=0, experiment=EXPERIMENT, run_name=f"bench-{time.time_ns()}-{index}",
            ), "*", "torchvision")  # random VGG weights: torchvision's input convention

        config = job_config(0)
        ray_runs = sizes["ray_runs"]
        measured = sizes["steps"] // WINDOW - 1  # per Ray run; the first window is warm-up
        plain_steps = WINDOW * (ray_runs * measured // (ray_runs + 1) + 1)
        plain, ray_rates = [], []
        niceness = ray_worker_niceness()
        for index in range(ray_runs + 1):
            plain += run_child("bench.bench_train_loop", {"config": to_dict(config), "steps": plain_steps,
                                                          "niceness": niceness})[1:]
            if index < ray_runs:
                ray_rates += window_rates(train.run(job_config(index)).run_id)[1:]
    setup = (f"{sizes['preset']} ({config.resolution}, K={config.num_outputs}), batch {BATCH}, {sizes['samples']} toy "
             f"samples, {threads} torch thread(s), best {WINDOW}-step window of steps {WINDOW + 1}..{sizes['steps']}")
    return [
        {"name": "train_ray_steps_per_s", "value": max(ray_rates), "unit": "steps/s", "goal": "n/a",
         "compared": f"Ray Train loop, 1 CPU worker, rows read by index, report every {WINDOW} steps, {sizes['ray_runs']} job(s) "
                     f"({len(ray_rates)} windows, mean {np.mean(ray_rates):.3f}); {setup}"},
        {"name": "train_plain_steps_per_s", "value": max(plain), "unit": "steps/s", "goal": "n/a",
         "compared": f"plain PyTorch loop in a child process set up as the worker, data in memory, taking turns with the Ray jobs "
                     f"({len(plain)} windows, mean {np.mean(plain):.3f}); {setup}"},
        {"name": "train_ray_vs_plain", "value": max(ray_rates) / max(plain), "unit": "ratio", "goal": f">= {GOAL}",
         "compared": f"Ray Train loop vs plain loop steps/s, side by side (ratio of means "
                     f"{np.mean(ray_rates) / np.mean(plain):.3f}); {setup}"},
    ]


if __name__ == "__main__":
    serve_child(plain_rates)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="crn-tiny, fewer steps")
    for figure in run(quick=parser.parse_args().quick):
        print(f"{figure['name']:28s} {figure['value']:10.4g} {figure['unit']:8s} {figure['goal']:8s} "
              f"{figure['compared']}")
    sys.exit(0)
