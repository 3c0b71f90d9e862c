"""The evaluation job: how good are a generator's images, measured as the field measures them.

    outcome = run(parse_evaluate_config(argv))           # what jobs/evaluate.py does

In order:
1. The plan (pipeline.evaluation.plan), on the driver: the model opened once, the store
   split, the segmenter, the FID weights, one protocol id per named convention.
2. Synthesis of the split's label maps through the synthesis job, handed the same opened
   model, unless the output folder already holds every image of these weights
   (pipeline.synthesis.outputs.images_complete). With `--oracle` the real photos stand in.
3. Scoring as a Ray Data job (pipeline.evaluation.scoring): every metric of
   pipeline.evaluation.metrics updated in an actor pool, the segmenter's once per
   convention, merged on the driver.
4. One MLflow run: the protocols and config as params; the segmentation scores of each
   convention as `<convention>/<metric>`, the others (FID, diversity) once; the per-class
   tables, a photo | synthesized | segmentation | label grid and one record per protocol.
   The model version (when the model is a registered one) gets each protocol's scores as
   tags (pipeline.registry.gate.record_evaluation) and, with `--promote`, goes through the
   gate under the first protocol.
5. `evaluations/<protocol id>.json` beside the synthesized images, one per protocol
   (pipeline.evaluation.records; the gallery lists them).
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
from pipeline.evaluation.records import EVALUATIONS_DIR, evaluation_record, write_record
from pipeline.evaluation.report import grid_png, summary_text
from pipeline.evaluation.scoring import Scores, score
from pipeline.records import log_model_input, start_job_run
from pipeline.runtime import init_ray, setup_mlflow
from pipeline.synthesis.outputs import images_complete


def synthesize(plan: EvaluationPlan) -> bool:
    """Make the split's images through the synthesis job unless they are there; True if reused."""
    if images_complete(plan.synthesized, plan.model.sha256, plan.resolution, plan.sample_ids, plan.num_outputs):
        print(f"reusing the synthesized images in {plan.synthesized} (job.json names the same weights)")
        return True
    from pipeline.synthesis import job as synthesis_job
    from pipeline.synthesis.config import SynthesizeConfig

    synthesis_job.run(SynthesizeConfig(model=plan.model.pinned_uri, output=plan.synthesized, store=plan.config.store,
                                       split=plan.config.split, experiment=plan.config.experiment), model=plan.model)
    return False


def results(plan: EvaluationPlan, scores: Scores) -> tuple[dict[str, MetricResult], set[str]]:
    """Each protocol's result, by convention name (its own segmentation scores and the shared
    ones), and the names of the values that differ by convention."""
    shared = compute_all(scores.shared)
    out, own_names = {}, set()
    for scored in plan.protocols:
        own = compute_all(scores.per_protocol[scored.name])
        own_names |= set(own.values)
        out[scored.name] = MetricResult(values={**own.values, **shared.values},
                                        per_class={**own.per_class, **shared.per_class},
                                        notes={**own.notes, **shared.notes})
    return out, own_names


def log_run(plan: EvaluationPlan, outcomes: dict[str, MetricResult], per_convention: set[str],
            records: dict[str, dict]) -> None:
    """Params, metrics, the per-class tables, the grid and the records into the active run:
    values that differ by convention as `<convention>/<name>`, the others once by name."""
    import mlflow

    metrics = {}
    for name, result in outcomes.items():
        for key, value in result.values.items():
            if value is not None:
                metrics[f"{name}/{key}" if key in per_convention else key] = value
    mlflow.log_params({key: str(value)[:500] for key, value in plan.describe().items()})
    mlflow.log_metrics(metrics)
    primary = records[plan.primary.name]
    mlflow.set_tags({"crn.model_uri": plan.config.model or "oracle",
                     "crn.model_version": (plan.model and plan.model.version) or "",
                     "crn.protocol_id": plan.primary.protocol.id,
                     **{f"crn.protocol_id.{s.name}": s.protocol.id for s in plan.protocols},
                     **{f"crn.note.{name}": note for name, note in primary["notes"].items()}})
    for name, record in records.items():
        rows = record["per_class"]
        mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, f"per_class/{name}.json")
    with tempfile.TemporaryDirectory(prefix="crn-evaluate-") as folder:
        Path(folder, "grid.png").write_bytes(grid_png(plan, plan.sample_ids[: plan.config.grid_samples]))
        Path(folder, EVALUATIONS_DIR).mkdir()
        for record in records.values():
            Path(folder, EVALUATIONS_DIR, f"{record['protocol_id']}.json").write_text(json.dumps(record, indent=1))
        mlflow.log_artifacts(folder)


@dataclass
class ProtocolOutcome:
    name: str  # the convention
    protocol_id: str
    metrics: dict[str, float | None]  # every metric's values under this protocol
    notes: dict[str, str]  # metric name -> why it has no value
    record_uri: str  # evaluations/<protocol id>.json beside the images ("" for the oracle)


@dataclass
class EvaluationOutcome:
    run_id: str
    protocol_id: str  # the first protocol's: the gate's
    model_uri: str  # the version scored: models:/<name>/<version>, the file given, or "oracle"
    metrics: dict[str, float | None]  # every metric's values under the first protocol
    notes: dict[str, str]  # metric name -> why it has no value
    synthesized: str  # the folder holding the images that were scored ("" for the oracle)
    reused_images: bool
    record_uri: str  # the first protocol's evaluations/<protocol id>.json
    gate: Any  # pipeline.registry.gate.GateDecision with --promote, else None
    protocols: dict[str, ProtocolOutcome]  # every protocol's, by convention name, in the order named


def run(config: EvaluateConfig) -> EvaluationOutcome:
    """The whole job for a parsed config (not a dry run: see jobs/evaluate.py)."""
    plan = make_plan(config)
    config, model = plan.config, plan.model
    if config.promote and not (model and model.name and model.version):
        raise UserError(f"--promote needs a registered model (models:/<name>/<version> or @alias), not {config.model}")
    init_ray()
    setup_mlflow(config.experiment)
    reused = synthesize(plan) if model else False

    names = ", ".join(f"{s.name} {s.protocol.id}" for s in plan.protocols)
    description = (f"Evaluation of {plan.scored} on the {config.split} split of {config.store} ({plan.resolution}), "
                   f"protocols {names}.")
    with start_job_run(config.experiment, description=description, run_name=config.run_name or None) as active:
        if model:
            log_model_input(model.name, model.version)
        outcomes, per_convention = results(plan, score(plan))
        records = {s.name: evaluation_record(plan, s, outcomes[s.name], active.info.run_id) for s in plan.protocols}
        log_run(plan, outcomes, per_convention, records)
    uris = {name: write_record(plan.synthesized, record) if model else "" for name, record in records.items()}

    decision = None
    if model and model.name and model.version:
        from pipeline.registry import gate

        for scored in reversed(plan.protocols):  # the first last: the version's latest crn.eval.* tags are the gate's
            gate.record_evaluation(model.name, model.version, scored.protocol.id, outcomes[scored.name].values,
                                   active.info.run_id)
        if config.promote:
            decision = gate.promote_if_better(model.name, model.version, plan.primary.protocol.id)
    print(summary_text(plan, outcomes, active.info.run_id, decision))
    protocols = {s.name: ProtocolOutcome(s.name, s.protocol.id, outcomes[s.name].values, records[s.name]["notes"],
                                         uris[s.name]) for s in plan.protocols}
    first = protocols[plan.primary.name]
    return EvaluationOutcome(active.info.run_id, first.protocol_id, model.pinned_uri if model else "oracle",
                             first.metrics, first.notes, plan.synthesized, reused, first.record_uri, decision, protocols)
