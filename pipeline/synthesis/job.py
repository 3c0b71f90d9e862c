"""The synthesis job: label maps -> photographs for a whole data set, with Ray Data; one MLflow run.

    outcome = run(parse_synthesize_config(argv))        # what jobs/synthesize.py does

In order:
1. The plan (pipeline.synthesis.plan): model, input, schema and output checks on the driver.
   The output folder must be new or hold images of the same model (pipeline.synthesis.outputs).
2. One MLflow run: the config as params, the model URI and version as tags.
3. Ray Data streams the samples not yet done (those with every variant on disk are skipped:
   resume), in blocks of one batch, through `map_batches` over an actor pool
   (pipeline.synthesis.actor): each actor builds the model once from the checkpoint bytes
   in the object store; one GPU per actor with --use-gpu, else CPU actors with a fixed
   torch thread count. One PNG per (sample, variant) is encoded and written atomically
   (pipeline.synthesis.outputs.write_images): by the CPU actor itself between its forward
   passes, or by CPU tasks beside GPU actors.
4. The manifest (one row per image in the folder) and rejects are written atomically; the
   run gets images/s, counts and the actors' seconds per batch (forward pass, PNG writes)
   as metrics, and the manifest, rejects and an HTML gallery
   (label | variants | photograph) as artifacts. Ray Data shows progress while it runs.

Pixels are a deterministic function of (label map, model weights, variant) and of the
forward pass settings that the output folder pins (precision, batch size, CPU threads;
pipeline.synthesis.outputs): the CRN has no noise input. `--seed` is recorded with every
image for provenance and changes nothing else.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fs import filesystem_for, join, read_bytes, write_bytes_atomically
from pipeline.records import log_model_input, start_job_run
from pipeline.registry.models import ModelRef
from pipeline.runtime import cpu_worker_runtime_env, init_ray
from pipeline.synthesis.actor import SynthesisActor
from pipeline.synthesis.config import SynthesizeConfig
from pipeline.synthesis.gallery import GallerySample, evaluation_details, gallery_html
from pipeline.synthesis.outputs import (
    GALLERY_FILE,
    JOB_FILE,
    MANIFEST_FILE,
    REJECTS_FILE,
    batch_timings,
    claim_output,
    decode_png,
    image_path,
    list_existing,
    manifest_table,
    write_images,
    write_manifest,
    write_rejects,
)
from pipeline.synthesis.plan import SynthesisPlan, make_plan
from pipeline.visualize import schema_palette


@dataclass
class Synthesized:
    """What one pass of the actor pool left in the output folder."""

    images: set[tuple[str, int]]  # every (sample id, variant) on disk: earlier runs' and this one's
    num_written: int  # images this run wrote
    num_skipped: int  # samples complete before this run started
    rejects: list[dict]  # {"path", "reason"}
    elapsed_s: float  # from the first batch requested to the last one back, actors' start-up included
    # From the first batch requested to the first one back: the actors' start-up (worker
    # processes, imports, model build) and one batch. A fixed cost, whatever the data set's size.
    first_batch_s: float = 0.0
    first_batch_images: int = 0  # images written by the first batch back
    # Seconds per batch in the actors: the forward pass (one-hot, network, uint8 pixels) and
    # the PNG encoding and writing, one value per batch, in the order they came back.
    forward_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """What the MLflow run records."""
        later_images, later_s = self.num_written - self.first_batch_images, self.elapsed_s - self.first_batch_s
        # Medians: the first batch of each actor (its warm-up) and a batch slowed by other
        # work on the machine do not move them; what every batch pays does.
        per_batch = {f"{name}_per_batch_median": float(np.median(values))
                     for name, values in (("forward_s", self.forward_s), ("write_s", self.write_s)) if values}
        return {
            "images_per_s": self.num_written / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            # The pace once the actors are up: what a data set of thousands of maps runs at.
            "images_per_s_after_first_batch": later_images / later_s if later_images > 0 and later_s > 0 else 0.0,
            "num_images": self.num_written,
            "num_images_total": len(self.images),
            "num_rejects": len(self.rejects),
            "num_skipped": self.num_skipped,
            "elapsed_s": self.elapsed_s,
            "first_batch_s": self.first_batch_s,
            "num_batches": len(self.write_s),
            **per_batch,
        }


def _drop_samples(batch, skip: list[str]):
    """The batch (a pyarrow table, so its tensor columns keep their type, even when every row
    goes) without the samples in `skip`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return batch.filter(pc.invert(pc.is_in(batch.column("sample_id"), value_set=pa.array(skip, pa.string()))))


def actor_pool_size(config: SynthesizeConfig) -> int:
    """The pool's actor count (`--num-actors`, else one per GPU with --use-gpu), once the
    cluster is known to hold them (`check_pool_fits`)."""
    import ray

    num_actors = config.num_actors or max(1, int(ray.cluster_resources().get("GPU", 0.0)))
    check_pool_fits(num_actors, 1 if config.use_gpu else config.threads_per_actor, 1 if config.use_gpu else 0)
    return num_actors


def check_pool_fits(num_actors: int, cpus_per_actor: int, gpus_per_actor: int = 0) -> None:
    """A fixed-size actor pool must fit in the cluster and still leave a CPU for the reads and
    writes beside it: a pool that takes every CPU starves the tasks that feed it, and the job
    hangs. Also used by the evaluation's scoring pool."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_actor and gpus < num_actors * gpus_per_actor:
        raise UserError(f"{num_actors} actor(s) with --use-gpu need {num_actors * gpus_per_actor} GPU(s); the Ray "
                        f"cluster has {gpus:g}")
    needed = num_actors * cpus_per_actor + 1
    if needed > cpus:
        raise UserError(f"{num_actors} actor(s) x {cpus_per_actor} CPU and 1 CPU for reading and writing need "
                        f"{needed} CPUs; the Ray cluster has {cpus:g} (lower --num-actors or --threads-per-actor)")


def synthesize(plan: SynthesisPlan, fs, root: str, num_actors: int) -> Synthesized:
    """Run the actor pool over the samples whose images are not all on disk yet."""
    import ray
    import ray.data

    config, num_outputs = plan.config, plan.model.config.num_outputs
    existing = list_existing(fs, root, num_outputs)
    for leftover in existing.temp_files:  # half-written files of an interrupted local run
        fs.delete_file(leftover)
    complete = {s for s, variants in existing.variants.items() if len(variants) == num_outputs}
    partial = {s: sorted(v) for s, v in existing.variants.items() if len(v) < num_outputs}

    dataset = plan.input.build_dataset()
    if complete:
        dataset = dataset.map_batches(_drop_samples, fn_kwargs={"skip": sorted(complete)}, batch_format="pyarrow")
    if config.limit:
        dataset = dataset.limit(config.limit)
    # Blocks of one batch each: a store part can hold thousands of rows, and one block goes
    # to one actor task, so without this a single actor would get the whole part, and its
    # results (and the progress bar) would only come back at the end.
    dataset = dataset.select_columns(["sample_id", "label", "source", "reject"])
    output = {"filesystem": fs, "output_root": root, "existing_variants": partial}
    dataset = dataset.repartition(target_num_rows_per_block=config.batch_size).map_batches(
        SynthesisActor,
        fn_constructor_kwargs={
            # Put once by the driver; every actor reads the same bytes from the object store.
            "model": ray.put(plan.model),
            "device": "cuda" if config.use_gpu else "cpu",
            "bf16": config.precision == "bf16",
            "batch_size": config.batch_size,
            "num_threads": config.threads_per_actor,
            # CPU actors write their own images, between forward passes (pipeline.synthesis.actor).
            "output": None if config.use_gpu else output,
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        # A pool of exactly `num_actors`, all started at once (actor_pool_size checked they
        # fit). An autoscaling pool (from 1 up to num_actors) grows only within Ray Data's
        # share of the CPUs for this stage, which one actor of several threads already
        # fills: `--num-actors 2` of 2 threads on 6 CPUs ran every batch on one actor, the
        # other never started (found by tests/test_node_loss.py). An actor lost with its
        # node is restarted by Ray Data, its batches retried, wherever the cluster has room.
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if config.use_gpu else 0,
        num_cpus=1 if config.use_gpu else config.threads_per_actor,
        # A CPU actor's forward passes reuse their memory instead of mapping it afresh each
        # time (pipeline.runtime.CPU_WORKER_MALLOC_ENV).
        runtime_env=cpu_worker_runtime_env(config.use_gpu),
    )
    if config.use_gpu:
        # PNG encoding and writing: CPU tasks beside the GPU actors, as many as there are free CPUs.
        dataset = dataset.map_batches(write_images, fn_kwargs=output, batch_size=None, batch_format="numpy", num_cpus=1)
    images = {(s, v) for s, variants in existing.variants.items() for v in variants}
    rejects = list(plan.input.rejects)
    written = 0
    first_batch_s, first_batch_images = 0.0, 0
    forward_s, write_s = [], []
    start = time.perf_counter()
    # No prefetching: with it, Ray Data hands a block on only once the next one is done, so
    # every batch (and the progress shown) would come back one batch late.
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for sample_id, variant, source, reason in zip(batch["sample_id"], batch["variant"], batch["source"], batch["reject"]):
            if variant < 0:
                rejects.append({"path": str(source), "reason": str(reason)})
            else:
                images.add((str(sample_id), int(variant)))
                written += 1
        forward_s += batch_timings(batch["forward_s"])
        write_s += batch_timings(batch["write_s"])
        if not first_batch_s:
            first_batch_s, first_batch_images = time.perf_counter() - start, written
    return Synthesized(images, written, len(complete), rejects, time.perf_counter() - start, first_batch_s,
                       first_batch_images, forward_s, write_s)


# ---------------------------------------------------------------- gallery and tracking


def gallery_samples(plan: SynthesisPlan, fs, root: str, images: set[tuple[str, int]]):
    """The first `--gallery-samples` input samples that have all their images, ready to draw."""

    num_outputs = plan.model.config.num_outputs
    samples = []
    for row in plan.input.preview(plan.config.gallery_samples):
        sample_id = str(row["sample_id"])
        if any((sample_id, k) not in images for k in range(num_outputs)):
            continue
        variants = [decode_png(read_bytes(fs, join(root, image_path(sample_id, k)))) for k in range(num_outputs)]
        photo = row.get("photo")
        samples.append(GallerySample(sample_id, np.asarray(row["label"]), variants, None if photo is None else np.asarray(photo)))
    return sorted(samples, key=lambda s: s.sample_id)


def log_to_mlflow(plan: SynthesisPlan, fs, root: str, result: Synthesized, manifest: bytes, rejects: bytes) -> None:
    import mlflow


    mlflow.log_metrics(result.metrics())
    identity = plan.identity
    page = gallery_html(
        gallery_samples(plan, fs, root, result.images),
        schema_palette(plan.model.schema),
        title=f"{identity.model_uri} on {plan.input.description}",
        details={
            "model": f"{identity.model_uri} (version {identity.model_version or '-'}, sha256 {identity.model_sha256[:12]})",
            "schema": identity.schema_name,
            "resolution": identity.resolution,
            "output": plan.config.output,
            "images": str(len(result.images)),
            **evaluation_details(fs, root),
        },
    )
    # Beside the images too, so a person can open it without the MLflow UI.
    write_bytes_atomically(fs, f"{root}/{GALLERY_FILE}", page.encode())
    with tempfile.TemporaryDirectory(prefix="crn-synth-") as folder:
        Path(folder, GALLERY_FILE).write_text(page)
        Path(folder, MANIFEST_FILE).write_bytes(manifest)
        Path(folder, REJECTS_FILE).write_bytes(rejects)
        mlflow.log_artifacts(folder)


# ---------------------------------------------------------------- entry point


def batch_times(metrics: dict[str, float]) -> str:
    """Where a batch's time goes in the actors, for the summary line; empty before any batch."""
    if "forward_s_per_batch_median" not in metrics:
        return ""
    return (f"; a batch took {metrics['forward_s_per_batch_median']:.2f} s in the network and "
            f"{metrics['write_s_per_batch_median']:.2f} s to encode and write (medians)")


def pace(result: Synthesized, metrics: dict[str, float]) -> str:
    """The images/s of the summary line, as far as they were measured: none without images, and
    the pace after the first batch only when later batches brought images."""
    if result.num_written == 0 or result.elapsed_s <= 0:
        return ""
    text = f" ({metrics['images_per_s']:.2f} images/s, actors' start-up included"
    if result.num_written > result.first_batch_images and result.elapsed_s > result.first_batch_s:
        text += (f"; {metrics['images_per_s_after_first_batch']:.2f} images/s after the first batch, which took "
                 f"{result.first_batch_s:.1f} s")
    else:
        text += "; one batch"
    return text + ")"


@dataclass
class SynthesisOutcome:
    run_id: str
    num_written: int
    num_images: int  # rows in the manifest
    num_skipped: int
    rejects: list[dict]
    manifest_uri: str
    metrics: dict[str, float]  # as logged to MLflow


def run(config: SynthesizeConfig, model: ModelRef | None = None) -> SynthesisOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/synthesize.py).

    `model`: the generator already opened by the caller (pipeline.registry.models.open_model),
    so that a stage that runs this one synthesizes exactly the version it opened."""
    plan = make_plan(config, model)
    config = plan.config
    init_ray()
    num_actors = actor_pool_size(config)  # before the output is claimed: job.json pins the threads
    try:
        fs, root = filesystem_for(config.output)
        claim_output(fs, root, config.output, plan.identity, {"larger_inputs": plan.input.larger, "label_maps_read_as": plan.input.label_types})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write to output {config.output}: {str(exc).strip().splitlines()[0]}") from None
    if plan.input.larger:
        sizes = ", ".join(f"{count} of {size}" for size, count in plan.input.larger.items())
        print(f"note: {sum(plan.input.larger.values())} label maps are larger than the model's "
              f"{plan.identity.resolution}: each is downsampled to it by nearest neighbour ({sizes}; "
              f"recorded in {JOB_FILE})")

    import mlflow

    description = (f"{plan.identity.model_uri} (version {plan.identity.model_version or '-'}) on "
                   f"{plan.input.description} -> {config.output}")
    with start_job_run(config.experiment, description=description, run_name=config.run_name or None) as active:
        mlflow.log_params(plan.describe())
        log_model_input(plan.model.name, plan.model.version)
        mlflow.set_tags({
            "crn.model_uri": plan.identity.model_uri,
            "crn.model_version": plan.identity.model_version or "",
            "crn.model_sha256": plan.identity.model_sha256,
            "crn.output": config.output,
        })
        result = synthesize(plan, fs, root, num_actors)
        manifest = write_manifest(fs, root, manifest_table(result.images, plan.identity))
        rejects = write_rejects(fs, root, result.rejects)
        log_to_mlflow(plan, fs, root, result, manifest, rejects)
    for reject in sorted(result.rejects, key=lambda r: r["path"]):
        print(f"rejected {reject['path']}: {reject['reason']}")
    manifest_uri = f"{config.output.rstrip('/')}/{MANIFEST_FILE}"
    metrics = result.metrics()
    print(f"synthesized {result.num_written} images in {result.elapsed_s:.1f} s{pace(result, metrics)}"
          f"{batch_times(metrics)}; {result.num_skipped} samples already done; {len(result.rejects)} rejected; "
          f"{manifest_uri} lists {len(result.images)} images; MLflow run {active.info.run_id}")
    if not result.images:
        raise UserError(f"no images: every label map of {plan.input.description} was rejected (see {REJECTS_FILE})")
    return SynthesisOutcome(active.info.run_id, result.num_written, len(result.images), result.num_skipped,
                            result.rejects, manifest_uri, metrics)
