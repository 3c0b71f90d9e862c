"""The Ray Data side of the evaluation: every metric updated where the images are, merged on the driver.

    ds = store.dataset(split, resolution)                             # sample_id, label, photo
    ds = ds.map_batches(attach_variants, fn_kwargs=...)               # + the K synthesized PNGs
    ds = ds.map_batches(ScoringActor, compute=ActorPoolStrategy(...))  # one row per batch: its metrics
    metrics = score(plan)                                             # merged over every batch

Each actor holds the segmenter and, with Inception weights, the Inception network; for each
batch it updates a fresh accumulator of every metric (pipeline.evaluation.metrics) and hands
them back pickled, one row per batch. The driver merges them; since every metric's state
adds up over samples, any number of actors and any batch split give the same totals.
"""
from __future__ import annotations

import pickle
import tempfile

import numpy as np
import pyarrow.fs as pafs
import torch

from pipeline.errors import UserError
from pipeline.evaluation.metrics import Metric, MetricSettings, ScoringInputs, make_metrics
from pipeline.fs import filesystem_for, join, read_bytes
from pipeline.runtime import cpu_worker_runtime_env
from pipeline.synthesis.outputs import decode_png, image_path


def attach_variants(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, root: str,
                    num_outputs: int) -> dict[str, np.ndarray]:
    """Ray Data task: add `variants` uint8 [B, K, H, W, 3], read from the synthesis output folder."""
    variants = [[decode_png(read_bytes(filesystem, join(root, image_path(str(sample_id), k)))) for k in range(num_outputs)]
                for sample_id in batch["sample_id"]]
    return {**batch, "variants": np.asarray(variants, dtype=np.uint8)}


class ScoringActor:
    """Callable class for `map_batches`: a batch of (label, photo, variants) -> one row holding
    its sample ids and every metric's accumulator for the batch (pickled)."""

    def __init__(self, segmenter, metric_kinds: list[type[Metric]], settings: MetricSettings, num_threads: int,
                 fid_weights, batch_size: int):
        """`segmenter`: a ray.ObjectRef to (or the) TorchScript bytes; `fid_weights`: one to the
        Inception weights file's bytes, or None (no FID). Bytes, not paths: the driver's files
        need not exist on the node an actor runs on."""
        import ray

        from pipeline.evaluation.metrics.fid import InceptionFeatures
        from pipeline.segmenter.file import Segmenter

        segmenter, fid_weights = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (segmenter, fid_weights))
        torch.set_num_threads(num_threads)
        self.segmenter = Segmenter(segmenter, settings.num_scored_classes)
        self.inception = None
        if fid_weights is not None:
            with tempfile.NamedTemporaryFile(suffix=".pth") as handle:  # torch-fidelity reads weights from a file
                handle.write(fid_weights)
                handle.flush()
                self.inception = InceptionFeatures(handle.name)
        self.metric_kinds, self.settings, self.batch_size = metric_kinds, settings, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample_ids = [str(s) for s in batch["sample_id"]]
        inputs = ScoringInputs(
            batch["label"], batch["photo"], batch["variants"], sample_ids,
            segment=lambda images: self.segmenter.predict(images, self.batch_size),
            features=None if self.inception is None else lambda images: self.inception(images, self.batch_size))
        metrics = make_metrics(self.metric_kinds, self.settings)
        for metric in metrics:
            metric.update(inputs)
        return {"sample_ids": np.asarray(["\n".join(sample_ids)], dtype=object),
                "metrics": np.asarray([pickle.dumps(metrics)], dtype=object)}


def score(plan) -> list[Metric]:
    """Run the scoring job over the plan's split (pipeline.evaluation.plan.EvaluationPlan) and
    return every metric merged over all its samples."""
    import ray
    import ray.data

    from pipeline.synthesis.job import check_pool_fits

    config = plan.config
    check_pool_fits(config.num_actors, config.threads_per_actor)
    fs, root = filesystem_for(plan.synthesized)
    dataset = plan.store.dataset(config.split, plan.resolution)
    dataset = dataset.repartition(target_num_rows_per_block=config.batch_size).map_batches(
        attach_variants, fn_kwargs={"filesystem": fs, "root": root, "num_outputs": plan.model.config.num_outputs},
        batch_size=None, batch_format="numpy")
    dataset = dataset.map_batches(
        ScoringActor,
        fn_constructor_kwargs={"segmenter": ray.put(plan.segmenter.data), "metric_kinds": plan.metric_kinds,
                               "settings": plan.metric_settings,
                               "num_threads": config.threads_per_actor, "batch_size": config.batch_size,
                               "fid_weights": ray.put(plan.fid_weights.read_bytes()) if plan.fid_weights else None},
        batch_size=config.batch_size, batch_format="numpy",
        # A fixed size, as synthesis: an autoscaling pool grows only within Ray Data's CPU share
        # for the stage, which one actor of several threads fills (pipeline.synthesis.job).
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_cpus=config.threads_per_actor,
        # The segmenter's forward passes reuse their memory, as synthesis actors' do.
        runtime_env=cpu_worker_runtime_env(use_gpu=False),
    )
    totals, scored = make_metrics(plan.metric_kinds, plan.metric_settings), []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for ids, state in zip(batch["sample_ids"], batch["metrics"]):
            scored += str(ids).split("\n")
            for total, part in zip(totals, pickle.loads(state)):
                total.merge(part)
    if sorted(scored) != plan.sample_ids:
        raise UserError(f"store {config.store} split '{config.split}': scored {len(scored)} samples, its files list "
                        f"{len(plan.sample_ids)}")
    return totals
