"""What waiting for Ray Train's controller costs a training that reports often: steps/s with
the controller polling the workers every 0.2 s (the project's setting, pipeline.trainer)
against Ray's default of every 2 s.

    python -m bench.run_all bench_train_reports [--quick]
    python -m bench.bench_train_reports [--quick]

A worker's `ray.train.report` waits until the controller has taken its previous report, and
the controller takes reports when it polls. So steps that reach a report faster than the
poll interval wait for the poll: the wait depends on the time between reports, not on the
steps between them. A GPU takes a step in a small fraction of the time a CPU does, so a
report every `--log-every 10` steps (the default) can come more often than every 2 s. The CPU
stand-in here takes reports close together: crn-tiny at 32x64 (a step of about 0.17 s on 2
cores), batch 1, a report every 2 steps; the same `pipeline.training.job.run` with one CPU
worker, Ray's interval and ours taking turns (Ray, ours, Ray, ours in the full run). The
figure is the ratio of the mean steps/s over the report windows after the first (which holds
the warm-up).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench.training_jobs import training_scratch, window_rates
from pipeline.trainer import POLL_INTERVAL_ENV, POLL_INTERVAL_S
from pipeline.training.config import TrainConfig, resolve

FULL = {"steps": 80, "rounds": 2}
QUICK = {"steps": 50, "rounds": 1}
RAY_DEFAULT_S = "2.0"  # ray.train.v2._internal.constants.DEFAULT_HEALTH_CHECK_INTERVAL_S
WINDOW = 2  # steps per report: about 0.35 s apart here
EXPERIMENT = "bench-train-reports"


def run(quick: bool = False) -> list[dict]:
    from pipeline.data.toy import make_toy_store
    from pipeline.training import job as train

    sizes = QUICK if quick else FULL
    threads = max(1, (os.cpu_count() or 2) // 2)
    rates: dict[str, list[float]] = {RAY_DEFAULT_S: [], POLL_INTERVAL_S: []}
    with training_scratch("bench-train-reports-", EXPERIMENT, (POLL_INTERVAL_ENV,)) as scratch:
        store = make_toy_store(scratch / "store", scratch / "toy", num_train=sizes["steps"] + 8, num_val=2,
                               size=(64, 128), resolutions="32x64")
        for _ in range(sizes["rounds"]):
            for interval in (RAY_DEFAULT_S, POLL_INTERVAL_S):
                os.environ[POLL_INTERVAL_ENV] = interval  # a value already set is what fit() keeps
                outcome = train.run(resolve(TrainConfig(
                    store=str(store), preset="crn-tiny", batch_size=1, steps=sizes["steps"],
                    vgg_weights="random", threads_per_worker=threads, checkpoint_every=sizes["steps"],
                    log_every=WINDOW, image_every=0, experiment=EXPERIMENT,
                    run_name=f"bench-{time.time_ns()}-{interval}"), "*", "torchvision"))
                rates[interval] += window_rates(outcome.run_id)[1:]
    ray_default, ours = float(np.mean(rates[RAY_DEFAULT_S])), float(np.mean(rates[POLL_INTERVAL_S]))
    setup = (f"crn-tiny (32x64), batch 1, {sizes['steps']} steps, a report every {WINDOW}, 1 CPU worker of "
             f"{threads} torch thread(s), {os.cpu_count()} cores; mean of the windows after the first, "
             f"{sizes['rounds']} job(s) each, taking turns")
    return [
        {"name": "train_steps_per_s_polled_every_2s", "value": ray_default, "unit": "steps/s", "goal": "n/a",
         "compared": f"Ray's default poll interval ({len(rates[RAY_DEFAULT_S])} windows); {setup}"},
        {"name": "train_steps_per_s_polled_every_0.2s", "value": ours, "unit": "steps/s", "goal": "n/a",
         "compared": f"the project's poll interval ({len(rates[POLL_INTERVAL_S])} windows); {setup}"},
        {"name": "train_poll_0.2s_vs_2s", "value": ours / ray_default, "unit": "ratio", "goal": ">= 1.2",
         "compared": f"steps/s polled every {POLL_INTERVAL_S} s / every {RAY_DEFAULT_S} s; {setup}"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one job each")
    for figure in run(quick=parser.parse_args().quick):
        print(f"{figure['name']:36s} {figure['value']:10.4g} {figure['unit']:8s} {figure['goal']:8s} "
              f"{figure['compared']}")
    sys.exit(0)
