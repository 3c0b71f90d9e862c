"""Synthesize photographs for a whole set of label maps with Ray Data; record it in MLflow.

    ray job submit -- python jobs/synthesize.py --model models:/crn-cityscapes-256x512@champion \\
        --store s3://bucket/cityscapes --split val --output s3://bucket/synth/val --use-gpu --precision bf16
    python jobs/synthesize.py --model work/checkpoint.pt --labels my_label_maps/ --output work/synth
    python -m jobs.synthesize ... --dry-run            # print the resolved configuration

In order:
1. On the driver, before any actor starts: the model is resolved once (a registry alias to
   its version, jobs/model_registry.py) and its checkpoint read; the input is opened (a
   store split at the model's top resolution, or a folder of label maps validated like
   preprocessing does, jobs/synthesis_input.py); the input's label schema must equal the
   model's (pipeline.schema.check_schema_match); the output folder must be new or hold
   images of the same model (jobs/synthesis_output.py). Each problem is a one-line error.
2. One MLflow run: the config as params, the model URI and version as tags.
3. Ray Data streams the samples not yet done (those with every variant on disk are skipped:
   resume), in blocks of one batch, through `map_batches` over an actor pool
   (jobs/synthesis_actor.py): each actor builds the model once from the checkpoint bytes
   in the object store and returns uint8 images; one GPU per actor with --use-gpu, else CPU
   actors with a fixed torch thread count. CPU tasks then encode and write one PNG per
   (sample, variant), atomically (jobs.synthesis_output.write_images).
4. The manifest (one row per image in the folder) and rejects are written atomically; the
   run gets images/s and counts as metrics, and the manifest, rejects and an HTML gallery
   (label | variants | photograph) as artifacts. Ray Data shows progress while it runs.

Pixels are a deterministic function of (label map, model weights, variant) and of the
forward pass settings that the output folder pins (precision, batch size, CPU threads;
jobs/synthesis_output.py): the CRN has no noise input. `--seed` is recorded with every
image for provenance and changes nothing else.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # `python jobs/synthesize.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from crn.config import CRNConfig, resolution_name
from jobs.common import UserError, entrypoint, init_ray, setup_mlflow
from jobs.model_registry import resolve_checkpoint
from jobs.synthesis_input import SynthesisInput, open_label_folder, open_store_split
from jobs.synthesis_output import (
    GALLERY_FILE,
    MANIFEST_FILE,
    REJECTS_FILE,
    OutputIdentity,
    claim_output,
    decode_png,
    image_path,
    list_existing,
    manifest_table,
    write_images,
    write_manifest,
    write_rejects,
)
from pipeline.fs import filesystem_for, join, read_bytes, write_bytes_atomically
from pipeline.resolution import parse_resolution
from pipeline.schema import LabelSchema, SchemaError, check_schema_match, load_schema
from pipeline.sources import LABEL_TYPES

PRECISIONS = ("fp32", "bf16")
DEFAULT_ALIAS = "champion"
# A registered model name alone ("crn-cityscapes-256x512") means its champion.
_BARE_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class SynthesizeConfig:
    # --- what to synthesize ---
    model: str  # models:/<name>@<alias>, models:/<name>/<version>, runs:/..., a checkpoint path, or a bare registered name (= @champion)
    output: str  # folder or s3://bucket/prefix for images, manifest and rejects
    store: str = ""  # preprocessed store (folder or s3://) to read a split of ...
    split: str = "val"  # ... this split
    labels: str = ""  # ... or a folder of label maps alone (no photographs needed)
    label_type: str = "ids"  # label maps in the folder: "ids" (one channel) or "color" (RGB)
    schema: str = "cityscapes"  # label schema of the folder's maps (built-in name or JSON path)
    resolution: str = "auto"  # HxW; auto = the model's top resolution (the only one it takes)
    limit: int = 0  # synthesize at most this many samples in this run (0 = all); a re-run does the rest
    # --- compute ---
    batch_size: int = 8  # label maps per forward pass
    num_actors: int = 0  # actors in the pool (upper bound); 0 = one per GPU with --use-gpu, else 1
    use_gpu: bool = False  # one GPU per actor
    threads_per_actor: int = 0  # torch threads per CPU actor (and the CPUs it reserves); 0 = cores / actors
    precision: str = "fp32"  # bf16 = bfloat16 autocast on GPUs
    # --- provenance and tracking ---
    seed: int = 0  # recorded with every image; the CRN draws no random numbers
    gallery_samples: int = 8  # rows in the HTML gallery
    experiment: str = "crn-synthesize"  # MLflow experiment
    run_name: str = ""  # MLflow run name ("" = MLflow's)
    dry_run: bool = False  # print the resolved configuration and exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/synthesize.py",
        description="Turn label maps into photographs with a trained CRN (Ray Data actor pool); track it in MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = SynthesizeConfig(model="", output="")
    p.add_argument("--model", required=True,
                   help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model, a checkpoint file "
                        "(local or s3://), or a registered model name alone (= models:/<name>@champion)")
    p.add_argument("--output", required=True, help="output folder or s3://bucket/prefix; re-running into it resumes")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", default=d.store, help="preprocessed store (folder or s3://) to read a split of")
    source.add_argument("--labels", default=d.labels, help="folder (or s3:// prefix) of label map PNGs, no photos needed")
    p.add_argument("--split", default=d.split, help="store split to synthesize")
    p.add_argument("--label-type", default=d.label_type, choices=LABEL_TYPES,
                   help="--labels maps hold schema ids (one channel) or colours (RGB)")
    p.add_argument("--schema", default=d.schema, help="label schema of --labels maps: built-in name or JSON file")
    p.add_argument("--resolution", default=d.resolution, help="HxW; auto = the model's top resolution (must equal it)")
    p.add_argument("--limit", type=int, default=d.limit,
                   help="synthesize at most this many samples now (0 = all); re-running does the rest")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="label maps per forward pass")
    p.add_argument("--num-actors", type=int, default=d.num_actors,
                   help="most actors in the pool; 0 = one per GPU in the cluster with --use-gpu, else 1")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--threads-per-actor", type=int, default=d.threads_per_actor,
                   help="torch threads (and logical CPUs) per CPU actor; 0 = this machine's cores / actors")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="bf16 = bfloat16 autocast (GPU only)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="recorded in the manifest for provenance; the CRN has no noise input, so pixels do not depend on it")
    p.add_argument("--gallery-samples", type=int, default=d.gallery_samples, help="samples shown in the HTML gallery")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    p.add_argument("--run-name", default=d.run_name, help="MLflow run name (default: MLflow's)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    return p


def config_from_argv(argv: Sequence[str] | None) -> SynthesizeConfig:
    args = build_parser().parse_args(argv)
    config = SynthesizeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SynthesizeConfig)})
    for name in ("batch_size", "gallery_samples"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    for name in ("limit", "num_actors", "threads_per_actor"):
        if getattr(config, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(config, name)}")
    if config.precision == "bf16" and not config.use_gpu:
        raise UserError("--precision bf16 needs --use-gpu (bfloat16 autocast is for GPUs)")
    return resolve(config)


def resolve(config: SynthesizeConfig) -> SynthesizeConfig:
    """Make the config explicit: the model URI spelled out, local paths absolute, counts filled in."""
    resolved = dataclasses.replace(config, model=model_uri(config.model))
    for name in ("output", "store", "labels"):
        value = getattr(resolved, name)
        if value and "://" not in value:  # Ray workers run in other working directories
            setattr(resolved, name, str(Path(value).expanduser().resolve()))
    if "://" not in resolved.model and not resolved.model.startswith(("models:/", "runs:/")):
        resolved.model = str(Path(resolved.model).expanduser().resolve())
    if resolved.num_actors == 0 and not resolved.use_gpu:
        resolved.num_actors = 1  # with --use-gpu: the cluster's GPU count, known once Ray is up
    if resolved.threads_per_actor == 0 and not resolved.use_gpu:
        resolved.threads_per_actor = max(1, (os.cpu_count() or 1) // resolved.num_actors)
    return resolved


def model_uri(text: str) -> str:
    """A bare registered model name means its champion; anything else is taken as given."""
    if _BARE_MODEL_NAME.match(text) and not text.endswith(_CHECKPOINT_SUFFIXES) and not Path(text).exists():
        return f"models:/{text}@{DEFAULT_ALIAS}"
    return text


# ---------------------------------------------------------------- the plan (driver-side checks)


@dataclass
class SynthesisPlan:
    config: SynthesizeConfig
    checkpoint_bytes: bytes
    model_config: CRNConfig
    schema: LabelSchema
    identity: OutputIdentity
    input: SynthesisInput

    def describe(self) -> dict[str, Any]:
        """The resolved configuration: printed by --dry-run and logged as MLflow params."""
        return {
            **dataclasses.asdict(self.config),
            "model.version": self.identity.model_version or "",
            "model.sha256": self.identity.model_sha256,
            "model.widths": list(self.model_config.widths),
            "model.num_outputs": self.model_config.num_outputs,
            "data.input": self.input.description,
            "data.schema": self.schema.name,
            "data.resolution": self.identity.resolution,
        }


def make_plan(config: SynthesizeConfig) -> SynthesisPlan:
    """Every check that needs no actor: model, input, schema, resolution."""
    import torch

    from crn.checkpoint import load_checkpoint, model_from_checkpoint

    resolved = resolve_checkpoint(config.model)
    try:
        checkpoint_bytes = resolved.path.read_bytes()
        # Built once here too, so that a checkpoint that does not fit its own config fails
        # now, in one line, rather than in every actor.
        ckpt = load_checkpoint(resolved.path)
        model_config = model_from_checkpoint(ckpt).config
        model_schema = LabelSchema.from_dict(ckpt["label_schema"], where=f"model {config.model}")
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        raise UserError(f"model {config.model}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        resolved.cleanup()
    del ckpt  # the driver needs the description only; actors build the model

    top = model_config.top_resolution
    try:
        if config.resolution != "auto" and parse_resolution(config.resolution) != top:
            raise UserError(f"model {config.model} makes {resolution_name(top)} images; --resolution {config.resolution} differs")
        input_schema = None if config.store else load_schema(config.schema)
    except SchemaError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # a resolution not written HxW
        raise UserError(f"--resolution: {exc}") from None
    config = dataclasses.replace(config, resolution=resolution_name(top))
    if config.store:
        source = open_store_split(config.store, config.split, top)
    else:
        source = open_label_folder(config.labels, input_schema, config.label_type, top)
    check_schema_match(model_schema.to_dict(), source.schema.to_dict(), f"{source.description} vs model {config.model}")

    identity = OutputIdentity(
        model_uri=config.model,
        model_version=resolved.version,
        model_sha256=hashlib.sha256(checkpoint_bytes).hexdigest(),
        schema_name=model_schema.name,
        schema_fingerprint=model_schema.fingerprint(),
        resolution=resolution_name(top),
        num_outputs=model_config.num_outputs,
        precision=config.precision,
        seed=config.seed,
        device="cuda" if config.use_gpu else "cpu",
        batch_size=config.batch_size,
        threads_per_actor=0 if config.use_gpu else config.threads_per_actor,
        torch_version=torch.__version__,
    )
    return SynthesisPlan(config, checkpoint_bytes, model_config, model_schema, identity, source)


# ---------------------------------------------------------------- the job


@dataclass
class Synthesized:
    """What one pass of the actor pool left in the output folder."""

    images: set[tuple[str, int]]  # every (sample id, variant) on disk: earlier runs' and this one's
    num_written: int  # images this run wrote
    num_skipped: int  # samples complete before this run started
    rejects: list[dict]  # {"path", "reason"}
    elapsed_s: float  # from the first batch requested to the last one back
    ready_s: float  # until the first actor could take a batch: worker start, imports, model build
    forward_s: float  # in the forward pass, summed over actors
    write_s: float  # encoding and writing PNGs, summed over tasks

    def metrics(self) -> dict[str, float]:
        """What the MLflow run records (and the benchmark reads)."""
        return {
            "images_per_s": self.num_written / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            # The same once an actor is up: what a long job approaches.
            "images_per_s_after_ready": self.num_written / max(self.elapsed_s - self.ready_s, 1e-9),
            "num_images": self.num_written,
            "num_images_total": len(self.images),
            "num_rejects": len(self.rejects),
            "num_skipped": self.num_skipped,
            "elapsed_s": self.elapsed_s,
            "actor_ready_s": self.ready_s,
            "forward_s": self.forward_s,
            "write_s": self.write_s,
        }


def _drop_samples(batch: dict[str, np.ndarray], skip: set[str]) -> dict[str, np.ndarray]:
    keep = np.asarray([str(s) not in skip for s in batch["sample_id"]], dtype=bool)
    return {name: column[keep] for name, column in batch.items()}


def synthesize(plan: SynthesisPlan, fs, root: str) -> Synthesized:
    """Run the actor pool over the samples whose images are not all on disk yet."""
    import ray
    import ray.data

    from jobs.synthesis_actor import SynthesisActor

    config, num_outputs = plan.config, plan.model_config.num_outputs
    existing = list_existing(fs, root, num_outputs)
    for leftover in existing.temp_files:  # half-written files of an interrupted local run
        fs.delete_file(leftover)
    complete = {s for s, variants in existing.variants.items() if len(variants) == num_outputs}
    partial = {s: sorted(v) for s, v in existing.variants.items() if len(v) < num_outputs}

    dataset = plan.input.build_dataset()
    if complete:
        dataset = dataset.map_batches(_drop_samples, fn_kwargs={"skip": complete}, batch_format="numpy")
    if config.limit:
        dataset = dataset.limit(config.limit)
    num_actors = config.num_actors or max(1, int(ray.cluster_resources().get("GPU", 0)))
    # Blocks of one batch each: a store part can hold thousands of rows, and one block goes
    # to one actor task, so without this a single actor would get the whole part, and its
    # results (and the progress bar) would only come back at the end.
    dataset = dataset.select_columns(["sample_id", "label", "source", "reject"])
    dataset = dataset.repartition(target_num_rows_per_block=config.batch_size).map_batches(
        SynthesisActor,
        fn_constructor_kwargs={
            # Put once by the driver; every actor reads the same bytes from the object store.
            "checkpoint": ray.put(plan.checkpoint_bytes),
            "device": "cuda" if config.use_gpu else "cpu",
            "bf16": config.precision == "bf16",
            "batch_size": config.batch_size,
            "num_threads": config.threads_per_actor,
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=num_actors),
        num_gpus=1 if config.use_gpu else 0,
        num_cpus=1 if config.use_gpu else config.threads_per_actor,
    )
    # PNG encoding and writing: CPU tasks beside the actors, as many as there are free CPUs.
    dataset = dataset.map_batches(
        write_images,
        fn_kwargs={"filesystem": fs, "output_root": root, "existing_variants": partial},
        batch_size=None,
        batch_format="numpy",
        num_cpus=1,
    )
    images = {(s, v) for s, variants in existing.variants.items() for v in variants}
    rejects = list(plan.input.rejects)
    written, forward_s, write_s, first_ready = 0, 0.0, 0.0, float("inf")
    start, start_wall = time.perf_counter(), time.time()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        if len(batch["sample_id"]):
            first_ready = min(first_ready, float(batch["ready_at"].min()))
            forward_s += float(batch["forward_s"].sum())
            write_s += float(batch["write_s"].sum())
        for sample_id, variant, source, reason in zip(batch["sample_id"], batch["variant"], batch["source"], batch["reject"]):
            if variant < 0:
                rejects.append({"path": str(source), "reason": str(reason)})
            else:
                images.add((str(sample_id), int(variant)))
                written += 1
    elapsed = time.perf_counter() - start
    ready = min(max(first_ready - start_wall, 0.0), elapsed)  # wall clocks: the actors' and ours
    return Synthesized(images, written, len(complete), rejects, elapsed, ready, forward_s, write_s)


# ---------------------------------------------------------------- gallery and tracking


def gallery_samples(plan: SynthesisPlan, fs, root: str, images: set[tuple[str, int]]):
    """The first `--gallery-samples` input samples that have all their images, ready to draw."""
    from jobs.gallery import GallerySample

    num_outputs = plan.model_config.num_outputs
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

    from jobs.gallery import gallery_html
    from jobs.visualize import schema_palette

    mlflow.log_metrics(result.metrics())
    identity = plan.identity
    page = gallery_html(
        gallery_samples(plan, fs, root, result.images),
        schema_palette(plan.schema),
        title=f"{identity.model_uri} on {plan.input.description}",
        details={
            "model": f"{identity.model_uri} (version {identity.model_version or '-'}, sha256 {identity.model_sha256[:12]})",
            "schema": identity.schema_name,
            "resolution": identity.resolution,
            "output": plan.config.output,
            "images": str(len(result.images)),
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


@dataclass
class SynthesisOutcome:
    run_id: str
    num_written: int
    num_images: int  # rows in the manifest
    num_skipped: int
    rejects: list[dict]
    manifest_uri: str
    metrics: dict[str, float]  # as logged to MLflow


def run(config: SynthesizeConfig) -> SynthesisOutcome | None:
    """The whole job for a parsed config; None for a dry run."""
    plan = make_plan(config)
    if config.dry_run:
        print(json.dumps(plan.describe(), indent=1))
        return None
    try:
        fs, root = filesystem_for(config.output)
        claim_output(fs, root, config.output, plan.identity)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write to output {config.output}: {str(exc).strip().splitlines()[0]}") from None
    init_ray()

    import mlflow

    setup_mlflow(config.experiment)
    with mlflow.start_run(run_name=config.run_name or None) as active:
        mlflow.log_params(plan.describe())
        mlflow.set_tags({
            "crn.model_uri": plan.identity.model_uri,
            "crn.model_version": plan.identity.model_version or "",
            "crn.model_sha256": plan.identity.model_sha256,
            "crn.output": config.output,
        })
        result = synthesize(plan, fs, root)
        manifest = write_manifest(fs, root, manifest_table(result.images, plan.identity))
        rejects = write_rejects(fs, root, result.rejects)
        log_to_mlflow(plan, fs, root, result, manifest, rejects)
    for reject in sorted(result.rejects, key=lambda r: r["path"]):
        print(f"rejected {reject['path']}: {reject['reason']}")
    manifest_uri = f"{config.output.rstrip('/')}/{MANIFEST_FILE}"
    metrics = result.metrics()
    print(f"synthesized {result.num_written} images in {result.elapsed_s:.1f} s ({metrics['images_per_s']:.2f} images/s; "
          f"first actor ready after {result.ready_s:.1f} s, then {metrics['images_per_s_after_ready']:.2f} images/s; "
          f"forward {result.forward_s:.1f} s, PNG+write {result.write_s:.1f} s); "
          f"{result.num_skipped} samples already done; {len(result.rejects)} rejected; "
          f"{manifest_uri} lists {len(result.images)} images; MLflow run {active.info.run_id}")
    if not result.images:
        raise UserError(f"no images: every label map of {plan.input.description} was rejected (see {REJECTS_FILE})")
    return SynthesisOutcome(active.info.run_id, result.num_written, len(result.images), result.num_skipped,
                            result.rejects, manifest_uri, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    run(config_from_argv(argv))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(main)(sys.argv[1:]))
