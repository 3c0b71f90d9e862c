"""What scoring beside training costs the training: steps/s with and without `--eval-every`.

    python -m bench.run_all bench_train_eval [--quick]
    python -m bench.bench_train_eval [--quick]

In one run, on the same toy store (train and val splits), the same model, batch, threads and
step count: `pipeline.training.job.run` with one CPU worker, once without scores and once
with `--eval-every` (a checkpoint every `--checkpoint-every` steps, each scored on
`--eval-samples` validation samples by a palette segmenter in a task of `--eval-cpus 1`),
taking turns (without, with, without, with in the full run). The figure is the ratio of
the mean steps/s over the report windows after the first (warm-up): the mean, not the best
window, since the scoring slows only the windows it overlaps. On this 2-core machine the
worker's torch thread and the scoring task's share the cores with Ray and MLflow, so the
ratio is what a machine without spare cores pays; on a node whose CPUs are not all given
to the workers the task takes idle cores instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.training_jobs import training_scratch, window_rates
from pipeline.training.config import TrainConfig, resolve

FULL = {"preset": "crn-small", "resolution": "64x128", "samples": 80, "val": 8, "steps": 80, "every": 20,
        "rounds": 2}
QUICK = {"preset": "crn-tiny", "resolution": "32x64", "samples": 64, "val": 4, "steps": 60, "every": 20,
         "rounds": 1}
WINDOW = 10  # steps per report window
EXPERIMENT = "bench-train-eval"


class PaletteSegmenter(torch.nn.Module):
    """Reads a colour-coded map back (the nearest schema colour): a segmenter that costs little."""

    def __init__(self, palette: np.ndarray):
        super().__init__()
        self.register_buffer("palette", torch.from_numpy(palette.astype(np.float32) / 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -((images[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(dim=2)


def write_segmenter(store: Path, path: Path) -> Path:
    from pipeline.data.store import open_store
    from pipeline.segmenter.file import save_torchscript
    from pipeline.visualize import schema_palette

    schema = open_store(store).schema
    classes = schema.void_index
    return save_torchscript(PaletteSegmenter(schema_palette(schema)[:classes]), schema.class_names[:classes], path)


def run(quick: bool = False) -> list[dict]:
    import mlflow

    from pipeline.data.toy import make_toy_store
    from pipeline.training import job as train

    sizes = QUICK if quick else FULL
    threads = max(1, (os.cpu_count() or 2) // 2)
    with training_scratch("bench-train-eval-", EXPERIMENT) as scratch:
        height, width = map(int, sizes["resolution"].split("x"))
        store = make_toy_store(scratch / "store", scratch / "toy", num_train=sizes["samples"],
                               num_val=sizes["val"], size=(2 * height, 2 * width),
                               resolutions=sizes["resolution"])
        segmenter = write_segmenter(store, scratch / "palette.pt")

        def job_config(scored: bool) -> TrainConfig:
            scores = dict(eval_every=sizes["every"], eval_segmenter=str(segmenter), eval_samples=sizes["val"],
                          eval_cpus=1.0) if scored else {}
            return resolve(TrainConfig(
                store=str(store), preset=sizes["preset"], batch_size=1, steps=sizes["steps"],
                vgg_weights="random", threads_per_worker=threads, checkpoint_every=sizes["every"],
                log_every=WINDOW, image_every=0, experiment=EXPERIMENT,
                run_name=f"bench-{time.time_ns()}-{int(scored)}", **scores), "*", "torchvision")

        rates: dict[bool, list[float]] = {False: [], True: []}
        scored_steps = 0
        for _ in range(sizes["rounds"]):
            for scored in (False, True):
                outcome = train.run(job_config(scored))
                rates[scored] += window_rates(outcome.run_id)[1:]
                if scored:
                    scored_steps += len(mlflow.MlflowClient().get_metric_history(outcome.run_id, "eval.miou"))
    off, on = float(np.mean(rates[False])), float(np.mean(rates[True]))
    setup = (f"{sizes['preset']} ({sizes['resolution']}), batch 1, {sizes['steps']} steps, 1 CPU worker of "
             f"{threads} torch thread(s), {os.cpu_count()} cores; scores every {sizes['every']} steps on "
             f"{sizes['val']} val samples, --eval-cpus 1 ({scored_steps} scored); mean of {WINDOW}-step windows "
             f"after the first, {sizes['rounds']} job(s) each, taking turns")
    return [
        {"name": "train_steps_per_s_without_scores", "value": off, "unit": "steps/s", "goal": "n/a",
         "compared": f"no --eval-every ({len(rates[False])} windows, best {max(rates[False]):.3f}); {setup}"},
        {"name": "train_steps_per_s_with_scores", "value": on, "unit": "steps/s", "goal": "n/a",
         "compared": f"--eval-every {sizes['every']} ({len(rates[True])} windows, best {max(rates[True]):.3f}); {setup}"},
        {"name": "train_with_vs_without_scores", "value": on / off, "unit": "ratio", "goal": "n/a",
         "compared": f"steps/s with scores beside the worker / without; {setup}"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="crn-tiny, fewer steps")
    for figure in run(quick=parser.parse_args().quick):
        print(f"{figure['name']:34s} {figure['value']:10.4g} {figure['unit']:8s} {figure['goal']:8s} "
              f"{figure['compared']}")
    sys.exit(0)
