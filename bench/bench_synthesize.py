"""Synthesis benchmark: the whole Ray Data job against the bare forward pass, same batches.

    python -m bench.run_all bench_synthesize          # with the other benchmarks' table
    python -m bench.bench_synthesize [--quick]        # this one alone

In one run, over the same toy store (the val split of a few dozen Cityscapes-layout scenes
stored at the model's top resolution) and the same seeded, untrained model, taking turns,
every job between two bare passes (bare, job, bare, ..., job, bare). Each job is compared
with the mean of the two bare passes beside it, and a figure is the median of those ratios
(`paired_ratios`): this 2-core machine shares its host, whose load it cannot see, and a
turn's speed moves by 10-20% over minutes on both sides. Best against best read 0.80-0.93
over runs with three jobs, and 0.835 in a run with five where the host was quiet for the
first bare pass only (its pairs: 0.83-0.96).
- the job: the synthesis job end to end (pipeline.synthesis.job.run: Parquet reads and
  decoding, the forward passes, PNG encoding and atomic writes), one CPU actor with every
  core as its torch threads; Ray is started beforehand, as it is on a cluster. It times
  itself from the first batch requested: to the first batch back (the actor's start-up,
  a worker process importing torch and building the model, plus one batch) and on to the
  last one back;
- the bare forward pass (one-hot + network) over the same label maps in the same padded
  batches on the same number of torch threads, each batch timed, in a child process
  outside Ray set up as the job's CPU actor is (bench.child): the same allocator settings,
  and the niceness Ray gives its workers (15 by default), so that other work on the
  machine slows both sides alike (as in bench_train_loop).
Figures:
- `synth_vs_forward` (goal >= 0.9): the job's images/s after its first batch against the
  bare pass over the same batches (the second to the last). This is the pace a real job
  runs at: the start-up is a fixed cost of about 4 s beyond a bare first batch, about 4%
  of a crn-mid job over Cityscapes' 500 val maps and under 1% over its 2975 train maps.
- `synth_actor_forward_vs_bare`: where the rest goes, batch by batch (medians over a run's
  batches, which a disturbed batch does not move): the forward pass in the job's actor, as
  the job records it (forward_s_per_batch_median), against the bare one. The actor also
  encodes and writes the batch's PNGs (write_s_per_batch_median, about 4% of a batch), which
  the bare pass does not.
  What is left of the actor's forward pass is Ray's own processes on the same 2 cores:
  0.10-0.15 of a core during a job (the driver's Ray Data executor; Ray Data's stats,
  autoscaling and actor-location actors; idle workers; raylet, GCS, dashboard agent, each
  Python worker of them waking about 100 times a second for Ray's signal check), and each
  time they take a core from one of the actor's 2 torch threads the other waits at the next
  barrier.
- `synth_with_startup_vs_forward`: the same with the start-up included, over this
  benchmark's 96 maps, where that fixed cost still weighs about a tenth;
  `synth_first_batch_s` is the start-up plus one batch.
Full: crn-mid (top 128x256, K=4), 96 samples in 12 batches of 8 (about 30 s of forward
passes on 2 cores), five jobs and six bare passes; quick: crn-small (top 64x128), 32
samples, one job between two bare passes.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.child import lower_priority, ray_worker_niceness, run_child, serve_child

FULL = {"preset": "crn-mid", "samples": 96, "batch_size": 8, "jobs": 5}  # and one bare pass more
QUICK = {"preset": "crn-small", "samples": 32, "batch_size": 8, "jobs": 1}
GOAL = 0.9


def make_store(scratch: Path, samples: int, resolution: tuple[int, int]) -> Path:
    from pipeline.data.toy import make_toy_store

    with quiet():
        return make_toy_store(scratch / "store", scratch / "source", num_train=0, num_val=samples, size=resolution,
                              resolutions=f"{resolution[0]}x{resolution[1]}", splits="val")


def make_checkpoint(path: Path, preset: str) -> None:
    from crn.checkpoint import make_checkpoint as assemble
    from crn.checkpoint import save_checkpoint
    from crn.model import CRN
    from crn.presets import make_config
    from pipeline.data.schema import load_schema

    torch.manual_seed(0)
    schema = load_schema("cityscapes")
    model = CRN(make_config(preset, schema.num_classes))
    save_checkpoint(path, assemble(model, optimizer=None, step=0, epoch=0, loss_weights=[1.0] * 6,
                                   label_schema=schema.to_dict()))


def bare_batch_seconds(checkpoint: Path, labels_file: Path, batch_size: int, threads: int, niceness: int) -> list[float]:
    """The bare forward pass over the job's batches, in a child process set up as the job's CPU
    actor is (bench.child: allocator settings, Ray's worker niceness): seconds per batch."""
    return run_child("bench.bench_synthesize", {"checkpoint": str(checkpoint), "labels": str(labels_file),
                                                "batch_size": batch_size, "threads": threads, "niceness": niceness})


def bare_forward(checkpoint: str, labels: str, batch_size: int, threads: int, niceness: int) -> list[float]:
    """The child process of `bare_batch_seconds`: batches padded to `batch_size`, as the job pads them."""
    from crn.checkpoint import load_checkpoint, model_from_checkpoint
    from crn.labels import one_hot

    lower_priority(niceness)
    torch.set_num_threads(threads)
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    maps = np.load(labels)
    seconds = []
    with torch.inference_mode():
        for start in range(0, len(maps), batch_size):
            chunk = maps[start:start + batch_size]
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
            began = time.perf_counter()
            model(one_hot(torch.from_numpy(chunk).long(), model.config.num_classes))
            seconds.append(time.perf_counter() - began)
    return seconds


@contextlib.contextmanager
def quiet():
    """Keep the benchmark table readable: the jobs' own output goes nowhere."""
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.StringIO()
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def scratch_mlflow(scratch: Path):
    """A throwaway MLflow store (and artifact folder) for the job's runs."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.create_experiment("bench-synthesize", artifact_location=str(scratch / "mlruns"))
    try:
        yield "bench-synthesize"
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        # MLflow's own setting too: a caller that goes on using MLflow (a test session) must
        # not keep logging into the scratch store, which is deleted.
        mlflow.set_tracking_uri(saved)


def paired_ratios(job: list[float], bare: list[float]) -> list[float]:
    """Each job turn's speed over the mean of the bare turns just before and after it.

    The host's load drifts over minutes (other machines' work on the same cores, which this
    machine cannot see), so each job is compared with the bare passes that ran beside it,
    not with the best bare pass of the whole run, which may have had a quiet minute that no
    job got (best of 5 against best of 5 read 0.835 in a run whose pairs read 0.83-0.96)."""
    return [j / ((before + after) / 2) for j, before, after in zip(job, bare, bare[1:])]


def load_averages() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(quick: bool = False) -> list[dict]:
    from crn.presets import make_config
    from pipeline.data.store import decode_labels, label_column, open_store
    from pipeline.runtime import init_ray
    from pipeline.synthesis.config import parse_synthesize_config
    from pipeline.synthesis.job import run as synthesize

    settings = QUICK if quick else FULL
    preset, samples, batch_size = settings["preset"], settings["samples"], settings["batch_size"]
    config = make_config(preset, 20)
    top = config.top_resolution
    resolution = f"{top[0]}x{top[1]}"
    threads = os.cpu_count() or 1
    images = samples * config.num_outputs
    later_images = images - batch_size * config.num_outputs  # after the first batch
    scratch = Path(tempfile.mkdtemp(prefix="bench_synthesize_"))
    bare, jobs, loads = [], [], []  # bare: seconds per batch, per run; jobs: the jobs' metrics
    try:
        # Started before timing: on a cluster Ray is already up. With the dashboard, as
        # bench_preprocess starts it: bench.run_all runs bench_train_loop on this instance next.
        init_ray(dashboard=True)
        niceness = ray_worker_niceness()
        store = make_store(scratch, samples, top)
        checkpoint = scratch / "model.pt"
        make_checkpoint(checkpoint, preset)
        labels_file = scratch / "labels.npy"
        np.save(labels_file, decode_labels(open_store(store).read_table("val", resolution).column(label_column(resolution)),
                                           resolution))
        with scratch_mlflow(scratch) as experiment:
            # bare, job, bare, ..., job, bare: every job between two bare passes.
            loads.append(load_averages())
            bare.append(bare_batch_seconds(checkpoint, labels_file, batch_size, threads, niceness))
            for index in range(settings["jobs"]):
                argv = ["--model", str(checkpoint), "--store", str(store), "--split", "val", "--output",
                        str(scratch / f"out{index}"), "--batch-size", str(batch_size), "--num-actors", "1",
                        "--threads-per-actor", str(threads), "--experiment", experiment]
                loads.append(load_averages())
                with quiet():
                    jobs.append(synthesize(parse_synthesize_config(argv)).metrics)
                loads.append(load_averages())
                bare.append(bare_batch_seconds(checkpoint, labels_file, batch_size, threads, niceness))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    bare_later_runs = [later_images / sum(run[1:]) for run in bare]
    job_later_runs = [m["images_per_s_after_first_batch"] for m in jobs]
    later_ratios = paired_ratios(job_later_runs, bare_later_runs)
    all_ratios = paired_ratios([m["images_per_s"] for m in jobs], [images / sum(run) for run in bare])
    bare_later, job_later = max(bare_later_runs), max(job_later_runs)
    first_batch_s = min(m["first_batch_s"] for m in jobs)
    bare_first = min(run[0] for run in bare)
    # Batch by batch, medians: the actor's forward pass against the bare one (as speeds: the
    # inverse of seconds per batch), and its writes.
    forward_ratios = paired_ratios([1 / m["forward_s_per_batch_median"] for m in jobs],
                                   [1 / float(np.median(run[1:])) for run in bare])
    bare_batch = min(float(np.median(run[1:])) for run in bare)
    job_forward = min(m["forward_s_per_batch_median"] for m in jobs)
    job_write = min(m["write_s_per_batch_median"] for m in jobs)

    def listed(values) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    def median(values) -> float:
        return float(np.median(values))

    what = (f"{preset} ({resolution}, K={config.num_outputs}), {samples} label maps, batches of {batch_size}, "
            f"{threads} threads; bare forward in a child process at Ray's worker niceness ({niceness})")
    turns = (f"{len(jobs)} jobs, each between two of {len(bare)} bare passes (job images/s {listed(job_later_runs)}; "
             f"bare {listed(bare_later_runs)}; each job over the mean of the two beside it: {listed(later_ratios)}); "
             f"load averages (1/5/15 min) at each turn: {'; '.join(loads)}")
    batches = (f"a batch (medians, best of each side): forward pass {job_forward:.3f} s in the actor vs {bare_batch:.3f} s "
               f"bare, PNG encoding and writes {job_write:.3f} s")
    print(f"bench_synthesize: after the first batch, job over bare {median(later_ratios):.3f} (median of the pairs; "
          f"best job {job_later:.2f}, best bare {bare_later:.2f} images/s); with start-up {median(all_ratios):.3f}; "
          f"first batch {first_batch_s:.1f} s (bare {bare_first:.1f} s); {batches}; {turns}", file=sys.stderr)
    return [
        {"name": "synth_vs_forward", "value": median(later_ratios), "unit": "x", "goal": f">= {GOAL}",
         "compared": f"synthesis job (1 CPU actor) images/s after its first batch, as the job measures and logs it "
                     f"(images_per_s_after_first_batch), vs the bare forward pass over the same batches (2nd to last), "
                     f"the median of the jobs' ratios to the bare passes beside them; {turns}; {what}"},
        {"name": "synth_actor_forward_vs_bare", "value": median(forward_ratios), "unit": "x", "goal": "n/a",
         "compared": f"seconds per batch (medians over a run's batches): the bare forward pass vs the same pass in "
                     f"the job's actor (forward_s_per_batch_median: one-hot, network, uint8 pixels), which is where "
                     f"Ray's own processes cost the job, the median of the jobs' ratios to the bare passes beside them "
                     f"({listed(forward_ratios)}); besides it the actor spends {job_write:.3f} s per batch on PNG "
                     f"encoding and writes (write_s_per_batch_median), which the bare pass does not do; {what}"},
        {"name": "synth_with_startup_vs_forward", "value": median(all_ratios), "unit": "x", "goal": "n/a",
         "compared": f"the same with the actor's start-up included (the job's images_per_s, from the first batch "
                     f"requested) vs every bare batch ({listed(all_ratios)}); a fixed cost that this benchmark's "
                     f"{samples} maps do not amortise; {what}"},
        {"name": "synth_first_batch_s", "value": first_batch_s, "unit": "s", "goal": "n/a",
         "compared": f"the job from the first batch requested to the first one back (actor start-up, model build, "
                     f"one batch), best of {len(jobs)}; one bare batch: {bare_first:.2f} s; {what}"},
        {"name": "synth_job_images_per_s", "value": job_later, "unit": "images/s", "goal": "n/a",
         "compared": f"synthesis job after its first batch, best of {len(jobs)}; {what}"},
        {"name": "synth_forward_images_per_s", "value": bare_later, "unit": "images/s", "goal": "n/a",
         "compared": f"bare forward pass, the same batches, best of {len(bare)}; {what}"},
    ]


if __name__ == "__main__":
    serve_child(bare_forward)
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']:30s} {figure['value']:10.3f} {figure['unit']:9s} goal {figure['goal']:8s} "
              f"{figure['compared']}")
