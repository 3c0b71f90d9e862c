"""The evaluation job: how good are a generator's images, measured as the field measures them.

    outcome = run(parse_evaluate_config(argv))           # what jobs/evaluate.py does

In order:
1. The plan (pipeline.evaluation.plan), on the driver: the model opened once, the store
   split, the segmenter, the FID weights, the protocol id.
2. Synthesis of the split's label maps through the synthesis job, handed the same opened
   model, unless the output folder already holds every image of these weights
   (pipeline.synthesis.outputs.images_complete).
3. Scoring as a Ray Data job (pipeline.evaluation.scoring): every metric of
   pipeline.evaluation.metrics updated in an actor pool, merged on the driver.
4. One MLflow run: the protocol and config as params, every metric's values, the per-class
   table, a photo | synthesized | segmentation | label grid and evaluation.json. The model
   version (when the model is a registered one) gets the scores and the protocol id as tags
   (pipeline.registry.gate.record_evaluation) and, with `--promote`, goes through the gate.
5. `evaluations/<protocol id>.json` beside the synthesized images (pipeline.evaluation.records;
   the gallery lists it).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.metrics import MetricResult, compute_all
from pipeline.evaluation.plan import EvaluationPlan, make_plan
from pipeline.evaluation.records import evaluation_record, write_record
from pipeline.evaluation.report import grid_png, summary_text
from pipeline.evaluation.scoring import score
from pipeline.records import log_model_input, start_job_run
from pipeline.runtime import init_ray, setup_mlflow
from pipeline.synthesis.outputs import images_complete


def synthesize(plan: EvaluationPlan) -> bool:
    """Make the split's images through the synthesis job unless they are there; True if reused."""
    if images_complete(plan.synthesized, plan.model.sha256, plan.resolution, plan.sample_ids,
                       plan.model.config.num_outputs):
        print(f"reusing the synthesized images in {plan.synthesized} (job.json names the same weights)")
        return True
    from pipeline.synthesis import job as synthesis_job
    from pipeline.synthesis.config import SynthesizeConfig

    synthesis_job.run(SynthesizeConfig(model=plan.model.pinned_uri, output=plan.synthesized, store=plan.config.store,
                                       split=plan.config.split, experiment=plan.config.experiment), model=plan.model)
    return False


def log_run(plan: EvaluationPlan, result: MetricResult, record: dict) -> None:
    """Params, metrics, the per-class table, the grid and evaluation.json into the active run."""
    import mlflow

    mlflow.log_params({key: str(value)[:500] for key, value in plan.describe().items()})
    mlflow.log_metrics({key: value for key, value in result.values.items() if value is not None})
    mlflow.set_tags({"crn.model_uri": plan.config.model, "crn.model_version": plan.model.version or "",
                     "crn.protocol_id": plan.protocol.id,
                     **{f"crn.note.{name}": note for name, note in record["notes"].items()}})
    rows = record["per_class"]
    mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, "per_class.json")
    with tempfile.TemporaryDirectory(prefix="crn-evaluate-") as folder:
        Path(folder, "grid.png").write_bytes(grid_png(plan, plan.sample_ids[: plan.config.grid_samples]))
        Path(folder, "evaluation.json").write_text(json.dumps(record, indent=1))
        mlflow.log_artifacts(folder)


@dataclass
class EvaluationOutcome:
    run_id: str
    protocol_id: str
    model_uri: str  # the version scored: models:/<name>/<version>, or the file given
    metrics: dict[str, float | None]  # every metric's values
    notes: dict[str, str]  # metric name -> why it has no value
    synthesized: str  # the folder holding the images that were scored
    reused_images: bool
    record_uri: str  # evaluations/<protocol id>.json
    gate: Any  # pipeline.registry.gate.GateDecision with --promote, else None


def run(config: EvaluateConfig) -> EvaluationOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/evaluate.py)."""
    plan = make_plan(config)
    config, model = plan.config, plan.model
    if config.promote and not (model.name and model.version):
        raise UserError(f"--promote needs a registered model (models:/<name>/<version> or @alias), not {config.model}")
    init_ray()
    setup_mlflow(config.experiment)
    reused = synthesize(plan)

    description = (f"Evaluation of {model.pinned_uri} on the {config.split} split of {config.store} "
                   f"({plan.resolution}), protocol {plan.protocol.id}.")
    with start_job_run(config.experiment, description=description, run_name=config.run_name or None) as active:
        log_model_input(model.name, model.version)
        result = compute_all(score(plan))
        record = evaluation_record(plan, result, active.info.run_id)
        log_run(plan, result, record)
    record_uri = write_record(plan.synthesized, record)

    decision = None
    if model.name and model.version:
        from pipeline.registry import gate

        gate.record_evaluation(model.name, model.version, plan.protocol.id, result.values, active.info.run_id)
        if config.promote:
            decision = gate.promote_if_better(model.name, model.version, plan.protocol.id)
    print(summary_text(plan, result, active.info.run_id, decision))
    return EvaluationOutcome(active.info.run_id, plan.protocol.id, model.pinned_uri, result.values, record["notes"],
                             plan.synthesized, reused, record_uri, decision)
