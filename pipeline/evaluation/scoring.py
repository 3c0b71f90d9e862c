"""The Ray Data side of the evaluation: every metric updated where the images are, merged on the driver.

    ds = store.dataset(split, resolution, extra_labels)               # sample_id, label(s), photo
    ds = ds.map_batches(attach_variants, fn_kwargs=...)               # + the K synthesized PNGs
    ds = ds.map_batches(ScoringActor, compute=ActorPoolStrategy(...))  # one row per batch: its metrics
    scores = score(plan)                                              # merged over every batch

Each actor holds the segmenter and, with Inception weights, the Inception network; for each
batch it updates a fresh accumulator of every metric (pipeline.evaluation.metrics) and hands
them back pickled, one row per batch. Metrics that read the segmenter are updated once per
convention (its segmenter readings and labels); the others once. The images are read once
for all conventions. The driver merges; since every metric's state adds up over samples, any
number of actors and any batch split give the same totals.
"""
from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import torch

from crn.resolution import Resolution
from pipeline.data.store import label_column
from pipeline.errors import UserError
from pipeline.evaluation.metrics import Metric, MetricSettings, ScoringInputs, make_metrics
from pipeline.fs import filesystem_for
from pipeline.runtime import cpu_worker_runtime_env
from pipeline.synthesis.outputs import read_variants


@dataclass(frozen=True)
class ConventionSpec:
    """What an actor needs of one convention (pipeline.evaluation.plan.ScoredProtocol)."""

    segment_at: str | None  # "HxW" the images are enlarged to; None: as they are
    extra_scales: tuple[float, ...]
    labels: str  # batch column holding the labels at the scoring size, or "" to enlarge `label`
    scored_at: str


@dataclass
class Scores:
    """Every metric merged over the split: the shared ones, and the per-convention ones by protocol name."""

    shared: list[Metric]
    per_protocol: dict[str, list[Metric]]


def attach_variants(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, root: str,
                    num_outputs: int) -> dict[str, np.ndarray]:
    """Ray Data task: add `variants` uint8 [B, K, H, W, 3], read from the synthesis output folder."""
    return {**batch, "variants": read_variants(filesystem, root, batch["sample_id"], num_outputs)}


def photos_as_variants(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task for the oracle: each photo is its label map's one "synthesized" image."""
    return {**batch, "variants": batch["photo"][:, None]}


def enlarge_labels(labels: np.ndarray, size: str) -> np.ndarray:
    """uint8 [B, h, w] -> [B, H, W] by nearest neighbour (a label map has no in-between classes)."""
    height, width = Resolution.parse(size, crn_size=False)
    enlarged = torch.nn.functional.interpolate(torch.from_numpy(labels)[:, None].float(), size=(height, width),
                                               mode="nearest-exact")
    return enlarged[:, 0].to(torch.uint8).numpy()


class ScoringActor:
    """Callable class for `map_batches`: a batch of (labels, photo, variants) -> one row holding
    its sample ids and every metric's accumulator for the batch (pickled)."""

    def __init__(self, segmenter, metric_kinds: list[type[Metric]], settings: MetricSettings,
                 conventions: dict[str, ConventionSpec], num_threads: int, fid_weights, batch_size: int):
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
            with tempfile.NamedTemporaryFile(suffix=".pth") as handle:  # the FID libraries read weights from a file
                handle.write(fid_weights)
                handle.flush()
                self.inception = InceptionFeatures(handle.name, settings.fid_backend)
        self.metric_kinds, self.settings, self.batch_size = metric_kinds, settings, batch_size
        self.conventions = conventions

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample_ids = [str(s) for s in batch["sample_id"]]
        features = None if self.inception is None else lambda images: self.inception(images, self.batch_size)
        shared = ScoringInputs(batch["label"], batch["photo"], batch["variants"], sample_ids,
                               segment=lambda images: self.segmenter.predict(images, self.batch_size),
                               features=features)
        shared_metrics = self._updated([kind for kind in self.metric_kinds if not kind.per_convention], shared)
        per_protocol = {}
        for name, spec in self.conventions.items():
            labels = batch[spec.labels] if spec.labels else enlarge_labels(batch["label"], spec.scored_at)
            inputs = ScoringInputs(labels, batch["photo"], batch["variants"], sample_ids, features=features,
                                   segment=lambda images, spec=spec: self.segmenter.predict(
                                       images, self.batch_size, size=spec.segment_at, extra_scales=spec.extra_scales))
            per_protocol[name] = self._updated([kind for kind in self.metric_kinds if kind.per_convention], inputs)
        return {"sample_ids": np.asarray(["\n".join(sample_ids)], dtype=object),
                "metrics": np.asarray([pickle.dumps(Scores(shared_metrics, per_protocol))], dtype=object)}

    def _updated(self, kinds: list[type[Metric]], inputs: ScoringInputs) -> list[Metric]:
        metrics = make_metrics(kinds, self.settings)
        for metric in metrics:
            metric.update(inputs)
        return metrics


def convention_specs(plan) -> dict[str, ConventionSpec]:
    """The plan's conventions as the actors apply them (pipeline.evaluation.plan.EvaluationPlan)."""
    specs = {}
    for scored in plan.protocols:
        if scored.scored_at == plan.resolution:
            labels = "label"
        else:
            labels = label_column(scored.scored_at) if scored.labels_from_store else ""
        specs[scored.name] = ConventionSpec(scored.convention.segment_at, scored.convention.extra_scales, labels,
                                            scored.scored_at)
    return specs


def score(plan) -> Scores:
    """Run the scoring job over the plan's split (pipeline.evaluation.plan.EvaluationPlan) and
    return every metric merged over all its samples."""
    import ray
    import ray.data

    from pipeline.synthesis.job import check_pool_fits

    config = plan.config
    check_pool_fits(config.num_actors, config.threads_per_actor)
    dataset = plan.store.dataset(config.split, plan.resolution, extra_labels=plan.extra_label_resolutions())
    if len(plan.sample_ids) < plan.store.count(config.split):  # a subset (pipeline.evaluation.plan.make_plan)
        dataset = dataset.map_batches(keep_samples, fn_kwargs={"keep": plan.sample_ids}, batch_format="numpy")
    dataset = dataset.repartition(target_num_rows_per_block=config.batch_size)
    if plan.model is None:
        dataset = dataset.map_batches(photos_as_variants, batch_size=None, batch_format="numpy")
    else:
        fs, root = filesystem_for(plan.synthesized)
        dataset = dataset.map_batches(
            attach_variants, fn_kwargs={"filesystem": fs, "root": root, "num_outputs": plan.num_outputs},
            batch_size=None, batch_format="numpy")
    specs = convention_specs(plan)
    dataset = dataset.map_batches(
        ScoringActor,
        fn_constructor_kwargs={"segmenter": ray.put(plan.segmenter.data), "metric_kinds": plan.metric_kinds,
                               "settings": plan.metric_settings, "conventions": specs,
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
    return merged(plan, dataset.iter_batches(batch_size=None, batch_format="numpy"))


def merged(plan, rows) -> Scores:
    """The scoring actors' output rows (batches of `sample_ids`, `metrics`) merged into one
    `Scores`; every sample of the plan must have been scored, once."""
    totals = Scores(make_metrics([k for k in plan.metric_kinds if not k.per_convention], plan.metric_settings),
                    {scored.name: make_metrics([k for k in plan.metric_kinds if k.per_convention],
                                               plan.metric_settings) for scored in plan.protocols})
    scored = []
    for batch in rows:
        for ids, state in zip(batch["sample_ids"], batch["metrics"]):
            scored += str(ids).split("\n")
            part: Scores = pickle.loads(state)
            for total, metric in zip(totals.shared, part.shared):
                total.merge(metric)
            for name, metrics in part.per_protocol.items():
                for total, metric in zip(totals.per_protocol[name], metrics):
                    total.merge(metric)
    if sorted(scored) != plan.sample_ids:
        raise UserError(f"store {plan.config.store} split '{plan.config.split}': scored {len(scored)} samples, "
                        f"the plan has {len(plan.sample_ids)}")
    return totals


def score_here(plan, variants: dict[str, np.ndarray], num_threads: int,
               rows: dict[str, np.ndarray] | None = None) -> Scores:
    """`score(plan)` in this process, without Ray Data: for a caller that already holds the
    images (`variants`: sample id -> uint8 [K, H, W, 3]) and owns its CPUs, such as a
    training's scoring task (pipeline.training.scores). The same actor class, batches of
    the same size and the same merge, so the same numbers as `score`. `rows`: the plan's
    `subset_rows`, if the caller has read them already."""
    config = plan.config
    fid_weights = plan.fid_weights.read_bytes() if plan.fid_weights else None
    actor = ScoringActor(plan.segmenter.data, plan.metric_kinds, plan.metric_settings, convention_specs(plan),
                         num_threads, fid_weights, config.batch_size)
    rows = subset_rows(plan) if rows is None else rows
    outputs = []
    for start in range(0, len(plan.sample_ids), config.batch_size):
        batch = {key: column[start : start + config.batch_size] for key, column in rows.items()}
        batch["variants"] = np.stack([variants[str(s)] for s in batch["sample_id"]])
        outputs.append(actor(batch))
    return merged(plan, outputs)


def subset_rows(plan) -> dict[str, np.ndarray]:
    """The plan's samples as the store's dataset gives them (sample_id, label, photo and the
    extra label sizes), read with plain pyarrow, in sample id order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.data.store import decode_batch, decode_labels

    def table_at(resolution: str) -> pa.Table:
        table = plan.store.read_table(plan.config.split, resolution)
        table = table.filter(pc.is_in(table.column("sample_id"), value_set=pa.array(plan.sample_ids, pa.string())))
        return table.sort_by("sample_id")

    rows = decode_batch(table_at(plan.resolution), plan.resolution, with_photos=True)
    for extra in plan.extra_label_resolutions():
        rows[label_column(extra)] = decode_labels(table_at(extra).column(label_column(extra)), extra).copy()
    return rows


def keep_samples(batch: dict[str, np.ndarray], keep: list[str]) -> dict[str, np.ndarray]:
    """Ray Data task: only the rows of the samples in `keep` (an evaluation of a subset)."""
    mask = np.isin(batch["sample_id"].astype(str), keep)
    return {key: column[mask] for key, column in batch.items()}
