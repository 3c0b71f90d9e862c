"""Training loop overhead: the Ray Train job (1 worker) against a plain single-process loop.

    python -m bench.run_all bench_train_loop [--quick]
    python -m bench.bench_train_loop [--quick]

In one run, on the same toy store (pipeline.toy scenes preprocessed by jobs.preprocess),
the same model (crn-small, 64x128, K=4; crn-tiny in --quick), the same batch size, the same
loss (CRNLoss with a random-weight VGG-19: the weights do not change the work), the same
step function (jobs.train_loop.train_step) and the same torch threads:
- Ray: `jobs.train.run` with one CPU worker: Ray Data shard with per-epoch local
  shuffling, one-hot on the worker, a report (metrics to MLflow) every 10 steps; steps/s
  measured inside the loop after its warm-up steps, up to the last step.
- plain: the store's rows read once with pyarrow into memory, then the same steps in
  this process, timed the same way. It runs before and after the Ray job; their mean is
  the baseline, so load that drifts during the run hits both sides.
Start-up (Ray, workers, the data set's first blocks) and the final checkpoint are outside
both timings, and the timed steps lie inside the first epoch: the figure is what a long run
sees per step. A new epoch restarts the Ray Data shard (a second or two on 2 busy cores with
the data cached in the object store, `--cache-data`; a read of the store otherwise), which a
Cityscapes epoch of 2975 steps amortizes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from jobs.train_config import TrainConfig, resolve
from jobs.train_loop import WARMUP_STEPS, loss_network, train_step
from pipeline.store import decode_labels, decode_photos, label_column, open_store, photo_column

# More samples than steps: the timed steps stay inside the first epoch.
FULL = {"preset": "crn-small", "resolution": "64x128", "samples": 32, "steps": 24}
QUICK = {"preset": "crn-tiny", "resolution": "32x64", "samples": 16, "steps": 12}
BATCH = 1
GOAL = 0.95


def make_store(scratch: Path, samples: int, resolution: str) -> Path:
    from jobs.preprocess import main as preprocess
    from pipeline.toy import generate_toy_dataset

    height, width = map(int, resolution.split("x"))
    generate_toy_dataset(scratch / "toy", num_train=samples, num_val=0, seed=0, size=(2 * height, 2 * width))
    store = scratch / "store"
    code = preprocess(["--source", str(scratch / "toy"), "--out", str(store), "--resolutions", resolution,
                       "--splits", "train"])
    assert code == 0, "preprocessing the benchmark's toy data failed"
    return store


def plain_steps_per_s(config: TrainConfig, steps: int) -> float:
    """The baseline: the same steps in this process, data already in memory."""
    torch.set_num_threads(config.threads_per_worker)
    store = open_store(config.store)
    table = store.read_table("train", config.resolution)
    labels = torch.from_numpy(decode_labels(table.column(label_column(config.resolution)), config.resolution).copy())
    photos = torch.from_numpy(decode_photos(table.column(photo_column(config.resolution)), config.resolution).copy())
    torch.manual_seed(config.seed)
    model = CRN(make_config(config.preset, store.schema.num_classes, config.num_outputs)).train()
    loss_fn = CRNLoss(loss_network(config), LAYER_WEIGHTS[config.loss_weights])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = np.random.default_rng(config.seed).permutation(len(labels))
    warm = None
    for step in range(1, steps + 1):
        rows = [order[(step * BATCH + i) % len(order)] for i in range(BATCH)]
        onehot = one_hot(labels[rows].long(), model.config.num_classes)
        photo = photos[rows].permute(0, 3, 1, 2).float()
        train_step(model, loss_fn, optimizer, onehot, photo, config.precision)
        if step == WARMUP_STEPS:
            warm = time.perf_counter()
    return (steps - WARMUP_STEPS) / (time.perf_counter() - warm)


def run(quick: bool = False) -> list[dict]:
    from jobs import train
    from jobs.common import init_ray

    sizes = QUICK if quick else FULL
    threads = max(1, (os.cpu_count() or 2) // 2)  # the other half runs Ray Data, the controller, MLflow logging
    saved = {k: os.environ.get(k) for k in ("CRN_WORK_DIR", "MLFLOW_TRACKING_URI")}
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as folder:
        scratch = Path(folder)
        os.environ["CRN_WORK_DIR"] = str(scratch / "work")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        try:
            init_ray()
            store = make_store(scratch, sizes["samples"], sizes["resolution"])
            config = resolve(TrainConfig(
                store=str(store), preset=sizes["preset"], batch_size=BATCH, steps=sizes["steps"],
                vgg_weights="random", threads_per_worker=threads, checkpoint_every=sizes["steps"], log_every=10,
                image_every=0, experiment="bench-train-loop", run_name=f"bench-{time.time_ns()}",
            ))
            plain_before = plain_steps_per_s(config, sizes["steps"])
            ray_rate = train.run(config).final["steps_per_s"]
            plain_after = plain_steps_per_s(config, sizes["steps"])
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    plain_rate = (plain_before + plain_after) / 2
    setup = (f"{sizes['preset']} ({config.resolution}, K={config.num_outputs}), batch {BATCH}, "
             f"{sizes['samples']} toy samples, {threads} torch thread(s), "
             f"steps {WARMUP_STEPS + 1}..{sizes['steps']} timed")
    return [
        {"name": "train_ray_steps_per_s", "value": ray_rate, "unit": "steps/s", "goal": "n/a",
         "compared": f"Ray Train loop, 1 CPU worker, Ray Data shard, reports every 10 steps; {setup}"},
        {"name": "train_plain_steps_per_s", "value": plain_rate, "unit": "steps/s", "goal": "n/a",
         "compared": f"plain PyTorch loop in one process, data in memory (before {plain_before:.3f}, "
                     f"after {plain_after:.3f}); {setup}"},
        {"name": "train_ray_vs_plain", "value": ray_rate / plain_rate, "unit": "ratio", "goal": f">= {GOAL}",
         "compared": f"Ray Train loop vs plain loop steps/s, side by side; {setup}"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="crn-tiny, fewer steps")
    for figure in run(quick=parser.parse_args().quick):
        print(f"{figure['name']:28s} {figure['value']:10.4g} {figure['unit']:8s} {figure['goal']:8s} "
              f"{figure['compared']}")
    sys.exit(0)
