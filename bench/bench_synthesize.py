"""Synthesis benchmark: the whole Ray Data job against the bare forward pass, same batches.

    python -m bench.run_all bench_synthesize          # with the other benchmarks' table
    python -m bench.bench_synthesize [--quick]        # this one alone

In one run, over the same toy store (the val split of a few dozen Cityscapes-layout scenes
stored at the model's top resolution) and the same seeded, untrained model:
- the job: the synthesis job end to end as it measures itself (images/s from the first
  batch requested to the last one back: actor start-up and model build, Parquet reads and
  decoding, the forward passes, PNG encoding and atomic writes), one CPU actor with every
  core as its torch threads; Ray is started beforehand, as it is on a cluster. Its pace
  once the actor is up is read from outside, off the written files' modification times
  (images after the first batch / time from the first batch's files to the last file);
- the baseline: in this process, the model's forward pass alone (one-hot + network) over
  the same label maps in the same padded batches on the same number of torch threads; the
  faster of a pass before and one after the job.
The goal: the job keeps 90% of the bare forward pass's images/s (`synth_vs_forward`).
Full: crn-mid (top 128x256, K=4), 96 samples (about a minute of forward passes on 2 cores, so
that the fixed cost of starting an actor is amortised as in a real job); quick: crn-small
(top 64x128), 16 samples.
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

FULL = {"preset": "crn-mid", "samples": 96, "batch_size": 8}
QUICK = {"preset": "crn-small", "samples": 16, "batch_size": 8}


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


def forward_images_per_s(checkpoint: Path, labels: np.ndarray, batch_size: int, threads: int) -> float:
    """The bare forward pass over the job's batches (padded to `batch_size`, as the job does)."""
    from crn.checkpoint import load_checkpoint, model_from_checkpoint
    from crn.labels import one_hot

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    batches = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        batches.append(torch.from_numpy(chunk).long())
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            for batch in batches:
                model(one_hot(batch, model.config.num_classes))
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved)
    return len(labels) * model.config.num_outputs / seconds


def images_per_s_after_first_batch(images: Path, first_batch: int) -> float:
    """The job's pace once its actor is up, from outside: the images written after the first
    batch's, over the time from the first batch's last file to the last file (mtimes)."""
    times = sorted(path.stat().st_mtime for path in images.rglob("*.png"))
    if len(times) <= first_batch:
        return float("nan")
    return (len(times) - first_batch) / max(times[-1] - times[first_batch - 1], 1e-9)


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
    """A throwaway MLflow store (and artifact folder) for the job's run."""
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


def run(quick: bool = False) -> list[dict]:
    from crn.presets import make_config
    from pipeline.data.store import decode_labels, label_column, open_store
    from pipeline.runtime import init_ray
    from pipeline.synthesis.config import parse_synthesize_config
    from pipeline.synthesis.job import run as synthesize

    settings = QUICK if quick else FULL
    preset, samples, batch_size = settings["preset"], settings["samples"], settings["batch_size"]
    top = make_config(preset, 20).top_resolution
    resolution = f"{top[0]}x{top[1]}"
    threads = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="bench_synthesize_"))
    try:
        init_ray()  # started before timing: on a cluster Ray is already up
        store = make_store(scratch, samples, top)
        checkpoint = scratch / "model.pt"
        make_checkpoint(checkpoint, preset)
        labels = decode_labels(open_store(store).read_table("val", resolution).column(label_column(resolution)), resolution)

        before = forward_images_per_s(checkpoint, labels, batch_size, threads)
        with scratch_mlflow(scratch) as experiment:
            argv = ["--model", str(checkpoint), "--store", str(store), "--split", "val", "--output",
                    str(scratch / "out"), "--batch-size", str(batch_size), "--num-actors", "1",
                    "--threads-per-actor", str(threads), "--experiment", experiment]
            start = time.perf_counter()
            with quiet():
                outcome = synthesize(parse_synthesize_config(argv))
            wall = time.perf_counter() - start
        first_batch = batch_size * make_config(preset, 20).num_outputs  # images
        after_ready = images_per_s_after_first_batch(scratch / "out" / "images", first_batch)
        after = forward_images_per_s(checkpoint, labels, batch_size, threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    forward = max(before, after)
    metrics = outcome.metrics
    images = outcome.num_images
    print(f"bench_synthesize: job {metrics['elapsed_s']:.1f} s ({after_ready:.2f} images/s after its first "
          f"batch); bare forward {images / forward:.1f} s (before {images / before:.1f} s, after "
          f"{images / after:.1f} s)",
          file=sys.stderr)
    what = f"{preset} ({resolution}, K={images // samples}), {samples} label maps, batches of {batch_size}, {threads} threads"
    return [
        {"name": "synth_job_images_per_s", "value": metrics["images_per_s"], "unit": "images/s", "goal": "n/a",
         "compared": f"synthesis job end to end (1 CPU actor), {what}"},
        {"name": "synth_forward_images_per_s", "value": forward, "unit": "images/s", "goal": "n/a",
         "compared": f"bare forward pass in one process, same batches, {what}"},
        {"name": "synth_vs_forward", "value": metrics["images_per_s"] / forward, "unit": "x", "goal": ">= 0.9",
         "compared": f"job images/s vs bare forward images/s, side by side, {what}"},
        {"name": "synth_after_ready_vs_forward", "value": after_ready / forward, "unit": "x",
         "goal": "n/a", "compared": f"job images/s after its first batch's files were written (no actor start-up; read off "
                                 f"the files' mtimes) vs bare forward, {what}"},
        {"name": "synth_job_wall_images_per_s", "value": images / wall, "unit": "images/s", "goal": "n/a",
         "compared": f"the same job timed around run(): plus driver checks, MLflow, manifest and gallery, {what}"},
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']:28s} {figure['value']:10.3f} {figure['unit']:9s} goal {figure['goal']:8s} "
              f"{figure['compared']}")
