"""The evaluation job: how good are a CRN's images, measured as the field measures them.

    outcome = run(parse_evaluate_config(argv))           # what jobs/evaluate.py does

In order:
1. The plan, on the driver: the model (its weights' sha256, schema, resolution, K), the
   store split (with photos, the model's schema), the segmenter (its class order must be the
   schema's), the FID Inception weights (or the reason there is no FID), and the protocol id
   that hashes what makes scores comparable (pipeline.evaluation.protocol).
2. Synthesis of the split's label maps through the synthesis job, unless the output folder
   already holds every image of these weights (its job.json and manifest say so).
3. Scoring as a Ray Data job (pipeline.evaluation.scoring): PNGs read by CPU tasks, then an
   actor pool running the segmenter on the real photos and on every synthesized image, the
   per-class diversity of the K variants, and the Inception features; the driver sums the
   counts: mIoU, pixel accuracy and per-class IoU of synthesized images and of the real
   photos (the oracle), FID through torchmetrics, diversity (pipeline.evaluation.metrics).
4. One MLflow run: the protocol and config as params, the scores as metrics, the per-class
   table, a photo | synthesized | segmentation | label grid, evaluation.json. The model
   version (when the model is a registered one) gets the scores and the protocol id as tags
   (pipeline.registry.gate.record_evaluation) and, with `--promote`, goes through the gate.
5. `evaluations/<protocol id>.json` beside the synthesized images (the gallery lists it).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from crn.config import CRNConfig
from pipeline.data.schema import LabelSchema, check_schema_match
from pipeline.data.store import Store, open_store
from pipeline.errors import UserError, first_line
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.fid import fid_from_features, find_inception_weights
from pipeline.evaluation.metrics import diversity_score, segmentation_scores
from pipeline.evaluation.protocol import Protocol, file_sha256, sample_ids_digest
from pipeline.evaluation.segmenter import SegmenterFile, check_class_order, open_segmenter
from pipeline.fs import filesystem_for, join, read_bytes, write_bytes_atomically
from pipeline.records import log_model_input, start_job_run
from pipeline.runtime import CPU_WORKER_MALLOC_ENV, init_ray, setup_mlflow, work_dir

EVALUATION_FORMAT = "crn-evaluation/1"
EVALUATIONS_DIR = "evaluations"  # inside the synthesis output folder: <protocol id>.json


@dataclass
class EvaluationPlan:
    config: EvaluateConfig
    model_name: str | None  # registered name, when the model came from the registry
    model_version: str | None
    model_sha256: str
    model_config: CRNConfig
    schema: LabelSchema
    store: Store
    resolution: str
    sample_ids: list[str]
    segmenter: SegmenterFile
    fid_weights: Path | None
    fid_note: str  # why there is no FID ("" when there is)
    protocol: Protocol
    synthesized: str  # the synthesis output folder

    def describe(self) -> dict[str, Any]:
        from pipeline.options import to_dict

        return {**to_dict(self.config), "model.version": self.model_version or "", "model.sha256": self.model_sha256,
                "model.num_outputs": self.model_config.num_outputs, "segmenter.version": self.segmenter.version or "",
                "segmenter.sha256": self.segmenter.sha256, "fid.weights": str(self.fid_weights or ""),
                "fid.note": self.fid_note, "protocol.id": self.protocol.id,
                **{f"protocol.{k}": v for k, v in self.protocol.to_dict().items()}, "synthesized": self.synthesized}


def registered_name(uri: str) -> str | None:
    """`crn-toy` of models:/crn-toy/3 or models:/crn-toy@champion; None for other URIs."""
    if not uri.startswith("models:/"):
        return None
    return uri[len("models:/"):].split("@")[0].split("/")[0]


def make_plan(config: EvaluateConfig) -> EvaluationPlan:
    """Every check that needs no actor (module docstring, step 1)."""
    from pipeline.registry.models import resolve_checkpoint

    resolved = resolve_checkpoint(config.model)
    try:
        checkpoint_bytes = resolved.path.read_bytes()
        ckpt = load_checkpoint(checkpoint_bytes)
        model_config = model_from_checkpoint(ckpt).config
        schema = LabelSchema.from_dict(ckpt["label_schema"], where=f"model {config.model}")
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"model {config.model}: {first_line(exc)}") from None
    finally:
        resolved.cleanup()
    resolution = str(model_config.top_resolution)
    store = open_store(config.store)
    if not store.has_photos:
        raise UserError(f"store {config.store} has no photos: the real photos are the reference of every score")
    check_schema_match(schema.to_dict(), store.schema.to_dict(), f"store {config.store} vs model {config.model}")
    store.resolution(resolution)  # one-line error when the store lacks the model's resolution
    sample_ids = split_sample_ids(store, config.split)

    segmenter = open_segmenter(config.segmenter, config.segmenter_classes)
    check_class_order(segmenter, schema)
    try:
        fid_weights, fid_note = find_inception_weights(config.fid_weights)
    except ValueError as exc:
        raise UserError(f"--fid-weights: {exc}") from None
    if fid_weights is not None and len(sample_ids) < 2:
        fid_weights, fid_note = None, f"FID not computed: split '{config.split}' has {len(sample_ids)} sample (2 needed)"
    protocol = Protocol(
        segmenter_sha256=segmenter.sha256,
        schema_fingerprint=schema.fingerprint(),
        resolution=resolution,
        split=config.split,
        sample_ids_sha256=sample_ids_digest(sample_ids),
        num_samples=len(sample_ids),
        fid_weights_sha256=file_sha256(fid_weights) if fid_weights else None,
    )
    sha256 = hashlib.sha256(checkpoint_bytes).hexdigest()
    name = registered_name(config.model)
    synthesized = config.synthesized or str(
        work_dir() / "evaluations" / (f"{name}-v{resolved.version}" if name else f"model-{sha256[:12]}") / config.split)
    return EvaluationPlan(config, name, resolved.version, sha256, model_config, schema, store, resolution, sample_ids,
                          segmenter, fid_weights, fid_note, protocol, synthesized)


def split_sample_ids(store: Store, split: str) -> list[str]:
    import pyarrow.parquet as pq

    if split not in store.splits:
        raise UserError(f"store {store.uri} has no split '{split}' (it has {', '.join(store.splits)})")
    ids = []
    for path in store.files(split):
        ids += pq.read_table(path, columns=["sample_id"], filesystem=store.filesystem).column("sample_id").to_pylist()
    return sorted(ids)


# ---------------------------------------------------------------- synthesis (or reuse)


def synthesis_complete(plan: EvaluationPlan) -> bool:
    """True when the output folder holds all K images of every sample, made by these weights."""
    import pyarrow.parquet as pq

    from pipeline.synthesis.outputs import JOB_FILE, MANIFEST_FILE

    fs, root = filesystem_for(plan.synthesized)
    try:
        job = json.loads(read_bytes(fs, join(root, JOB_FILE)))
        manifest = pq.read_table(join(root, MANIFEST_FILE), columns=["sample_id", "variant"], filesystem=fs)
    except (OSError, ValueError):
        return False  # nothing there yet, or an interrupted run: the synthesis job finishes it
    if job.get("model_sha256") != plan.model_sha256 or job.get("resolution") != plan.resolution:
        return False  # the synthesis job says, in one line, that this folder holds another model's images
    have = set(zip(manifest.column("sample_id").to_pylist(), manifest.column("variant").to_pylist()))
    return all((s, k) in have for s in plan.sample_ids for k in range(plan.model_config.num_outputs))


def synthesize(plan: EvaluationPlan) -> bool:
    """Make the split's images through the synthesis job unless they are there; True if reused."""
    if synthesis_complete(plan):
        print(f"reusing the synthesized images in {plan.synthesized} (job.json names the same weights)")
        return True
    from pipeline.synthesis import job as synthesis_job
    from pipeline.synthesis.config import parse_synthesize_config

    synthesis_job.run(parse_synthesize_config([
        "--model", plan.config.model, "--store", plan.config.store, "--split", plan.config.split,
        "--output", plan.synthesized, "--experiment", plan.config.experiment,
    ]))
    return False


# ---------------------------------------------------------------- scoring


def score(plan: EvaluationPlan):
    """The Ray Data job of pipeline.evaluation.scoring; returns its Totals."""
    import ray
    import ray.data

    from pipeline.evaluation.scoring import ScoringActor, Totals, attach_variants
    from pipeline.synthesis.job import check_pool_fits

    config, num_classes = plan.config, plan.schema.void_index
    check_pool_fits(config.num_actors, config.threads_per_actor)
    fs, root = filesystem_for(plan.synthesized)
    dataset = plan.store.dataset(config.split, plan.resolution)
    dataset = dataset.repartition(target_num_rows_per_block=config.batch_size).map_batches(
        attach_variants, fn_kwargs={"filesystem": fs, "root": root, "num_outputs": plan.model_config.num_outputs},
        batch_size=None, batch_format="numpy")
    dataset = dataset.map_batches(
        ScoringActor,
        fn_constructor_kwargs={"segmenter": ray.put(plan.segmenter.data), "num_classes": num_classes,
                               "num_threads": config.threads_per_actor, "batch_size": config.batch_size,
                               "fid_weights": ray.put(plan.fid_weights.read_bytes()) if plan.fid_weights else None},
        batch_size=config.batch_size, batch_format="numpy",
        # A fixed size, as synthesis: an autoscaling pool grows only within Ray Data's CPU share
        # for the stage, which one actor of several threads fills (pipeline.synthesis.job).
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_cpus=config.threads_per_actor,
        # As synthesis actors: the segmenter's forward passes reuse their memory instead of
        # mapping it afresh (pipeline.runtime.CPU_WORKER_MALLOC_ENV; 32 images at 128x256 on 2
        # cores: LR-ASPP 0.34-0.37 -> 0.19-0.20 s, DeepLabV3 0.40-0.48 -> 0.33-0.39 s).
        runtime_env={"env_vars": CPU_WORKER_MALLOC_ENV},
    )
    totals = Totals(num_classes)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        totals.add(batch)
    if sorted(totals.sample_ids) != plan.sample_ids:
        raise UserError(f"store {plan.config.store} split '{plan.config.split}': scored {len(totals.sample_ids)} "
                        f"samples, its files list {len(plan.sample_ids)}")
    return totals


@dataclass
class Scores:
    metrics: dict[str, float | None]  # miou, pixel_accuracy, real_miou, real_pixel_accuracy, miou_ratio, fid, diversity
    per_class: list[dict]  # one row per class: name, IoU synthesized / real, label pixels, diversity
    fid_note: str


def summarize(plan: EvaluationPlan, totals) -> Scores:
    synthesized = segmentation_scores(totals.confusion_synthesized)
    real = segmentation_scores(totals.confusion_real)
    diversity, per_class_diversity = diversity_score(totals.diversity_sums, totals.diversity_counts)
    fid, note = None, plan.fid_note
    if plan.fid_weights is not None:
        fid = fid_from_features(np.concatenate(totals.features_real), np.concatenate(totals.features_synthesized))
    metrics = {
        "miou": synthesized.miou, "pixel_accuracy": synthesized.pixel_accuracy,
        "real_miou": real.miou, "real_pixel_accuracy": real.pixel_accuracy,
        "miou_ratio": synthesized.miou / real.miou if real.miou > 0 else None,
        "fid": fid, "diversity": diversity,
    }
    names = plan.schema.class_names[: plan.schema.void_index]
    per_class = [{"class": name, "iou_synthesized": synthesized.per_class_iou[c], "iou_real": real.per_class_iou[c],
                  "label_pixels": real.class_pixels[c], "diversity": per_class_diversity[c]}
                 for c, name in enumerate(names)]
    return Scores(metrics, per_class, note)


# ---------------------------------------------------------------- records


def evaluation_record(plan: EvaluationPlan, scores: Scores, run_id: str) -> dict:
    """What `evaluations/<protocol id>.json` and the run's evaluation.json hold."""
    return {
        "format": EVALUATION_FORMAT,
        "protocol_id": plan.protocol.id,
        "protocol": plan.protocol.to_dict(),
        "model": {"uri": plan.config.model, "name": plan.model_name, "version": plan.model_version,
                  "sha256": plan.model_sha256},
        "segmenter": {"uri": plan.segmenter.uri, "version": plan.segmenter.version, "sha256": plan.segmenter.sha256},
        "metrics": scores.metrics,
        "fid_note": scores.fid_note,
        "per_class": scores.per_class,
        "mlflow_run_id": run_id,
    }


def log_run(plan: EvaluationPlan, scores: Scores, record: dict) -> None:
    """Params, metrics, the per-class table, the grid and evaluation.json into the active run."""
    import mlflow

    from pipeline.evaluation.report import grid_png

    mlflow.log_params({key: str(value)[:500] for key, value in plan.describe().items()})
    mlflow.log_metrics({key: value for key, value in scores.metrics.items() if value is not None})
    mlflow.set_tags({"crn.model_uri": plan.config.model, "crn.model_version": plan.model_version or "",
                     "crn.protocol_id": plan.protocol.id, "crn.fid_note": scores.fid_note})
    mlflow.log_table({key: [row[key] for row in scores.per_class] for key in scores.per_class[0]}, "per_class_iou.json")
    with tempfile.TemporaryDirectory(prefix="crn-evaluate-") as folder:
        Path(folder, "grid.png").write_bytes(grid_png(plan, plan.sample_ids[: plan.config.grid_samples]))
        Path(folder, "evaluation.json").write_text(json.dumps(record, indent=1))
        mlflow.log_artifacts(folder)


@dataclass
class EvaluationOutcome:
    run_id: str
    protocol_id: str
    metrics: dict[str, float | None]
    fid_note: str
    synthesized: str  # the folder holding the images that were scored
    reused_images: bool
    record_uri: str  # evaluations/<protocol id>.json
    gate: Any  # pipeline.registry.gate.GateDecision with --promote, else None


def run(config: EvaluateConfig) -> EvaluationOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/evaluate.py)."""
    plan = make_plan(config)
    if config.promote and not (plan.model_name and plan.model_version):
        raise UserError(f"--promote needs a registered model (models:/<name>/<version> or @alias), not {config.model}")
    init_ray()
    setup_mlflow(config.experiment)
    reused = synthesize(plan)

    description = (f"Evaluation of {config.model} on the {config.split} split of {config.store} "
                   f"({plan.resolution}), protocol {plan.protocol.id}.")
    with start_job_run(config.experiment, description=description, run_name=config.run_name or None) as active:
        log_model_input(plan.model_name, plan.model_version)
        scores = summarize(plan, score(plan))
        record = evaluation_record(plan, scores, active.info.run_id)
        log_run(plan, scores, record)
    fs, root = filesystem_for(plan.synthesized)
    record_path = join(root, EVALUATIONS_DIR, f"{plan.protocol.id}.json")
    write_bytes_atomically(fs, record_path, (json.dumps(record, indent=1) + "\n").encode())

    decision = None
    if plan.model_name and plan.model_version:
        from pipeline.registry import gate

        gate.record_evaluation(plan.model_name, plan.model_version, plan.protocol.id, scores.metrics, active.info.run_id)
        if config.promote:
            decision = gate.promote_if_better(plan.model_name, plan.model_version, plan.protocol.id)
    print_scores(plan, scores, active.info.run_id, decision)
    return EvaluationOutcome(active.info.run_id, plan.protocol.id, scores.metrics, scores.fid_note, plan.synthesized,
                             reused, f"{plan.synthesized.rstrip('/')}/{EVALUATIONS_DIR}/{plan.protocol.id}.json", decision)


def print_scores(plan: EvaluationPlan, scores: Scores, run_id: str, decision) -> None:
    m = scores.metrics
    ratio = "n/a" if m["miou_ratio"] is None else f"{m['miou_ratio']:.3f}"
    fid = f"{m['fid']:.2f}" if m["fid"] is not None else scores.fid_note
    print(f"evaluated {plan.config.model} on {plan.config.split} ({len(plan.sample_ids)} samples x "
          f"{plan.model_config.num_outputs} variants, {plan.resolution}), protocol {plan.protocol.id}:\n"
          f"  mIoU {m['miou']:.3f} (real photos {m['real_miou']:.3f}, ratio {ratio}), pixel accuracy "
          f"{m['pixel_accuracy']:.3f} (real {m['real_pixel_accuracy']:.3f}), diversity {m['diversity']:.4f}\n"
          f"  FID: {fid}\n  MLflow run {run_id}")
    if decision is not None:
        print(f"  gate: {decision.reason}")

