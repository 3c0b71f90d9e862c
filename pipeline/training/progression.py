"""The progressive recipe as one command: every stage up to `--preset`, each from the one below.

    python jobs/train.py --store <store> --preset crn-1024p --progressive --num-workers 8 --use-gpu
    # = crn-256p from scratch, then crn-512p from it, then crn-1024p from that (docs/recipe.md#progressive-stages)

The chain comes from the recipe table (`starts_from`, pipeline.training.recipe). Each stage is
an ordinary training run (pipeline.training.job.run) with `--init-from` set to the registered
model version the stage below produced (`models:/crn-<dataset>-<HxW>/<version>`), its own
run name (a digest of its config, or `<--run-name>-<preset>`), its own MLflow run and its
own registered model. Every other flag applies to every stage (`--epochs`/`--steps` too:
0 = each stage's recipe).

Re-running the same command resumes at any point: a stage whose run already finished and
registered its model is not trained again (its version is read from MLflow), an interrupted
stage resumes from its last checkpoint, and the stages above follow.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.data.store import open_store
from pipeline.errors import UserError
from pipeline.options import AUTO
from pipeline.runtime import setup_mlflow
from pipeline.training.config import TrainConfig
from pipeline.training.recipe import Recipe, stage_chain


@dataclass
class StageOutcome:
    preset: str
    model_uri: str  # models:/<name>/<version>: what the next stage starts from
    run_id: str  # the stage's MLflow run
    trained: bool  # False: finished by an earlier invocation, skipped


def chain_for(config: TrainConfig) -> list[Recipe]:
    store = open_store(config.store)
    dataset_format = (store.manifest.get("source") or {}).get("format", "")
    return stage_chain(config.preset, dataset_format)


def stage_config(config: TrainConfig, row: Recipe, init_from: str) -> TrainConfig:
    """The single-stage config of one stage of a --progressive command."""
    if config.resolution is not None or config.train_modules != AUTO:
        raise UserError("--progressive trains each stage at its preset's resolution with the recipe's modules: "
                        "drop --resolution and --train-modules")
    return dataclasses.replace(
        config, progressive=False, dry_run=False, preset=row.preset, init_from=init_from,
        run_name=config.run_name if config.run_name == AUTO else f"{config.run_name}-{row.preset}",
        model_name=config.model_name if config.model_name == AUTO else f"{config.model_name}-{row.preset}",
    )


def run_progression(config: TrainConfig) -> list[StageOutcome]:
    """Train (or find finished) every stage of the chain in turn; see the module docstring."""
    from pipeline.trainer import finished_run
    from pipeline.training import job
    from pipeline.training.plan import make_plan

    setup_mlflow(config.experiment)
    outcomes: list[StageOutcome] = []
    init_from = ""
    for number, row in enumerate(chain_for(config), start=1):
        stage = stage_config(config, row, init_from)
        plan = make_plan(stage)
        done = finished_run(stage.experiment, plan.run_dir)
        if done is not None:
            run_id, version = done
            print(f"stage {number} ({row.preset}): finished earlier, models:/{plan.config.model_name}/{version}")
            outcomes.append(StageOutcome(row.preset, f"models:/{plan.config.model_name}/{version}", run_id, False))
        else:
            print(f"stage {number} ({row.preset}): training" + (f" from {init_from}" if init_from else ""))
            outcome = job.run(stage)
            outcomes.append(StageOutcome(row.preset, f"models:/{plan.config.model_name}/{outcome.model_version}",
                                         outcome.run_id, True))
        init_from = outcomes[-1].model_uri
    return outcomes


def dry_run_text(config: TrainConfig) -> dict:
    """What --progressive --dry-run prints: the stages in order (each stage's full resolved
    configuration needs the stage below it trained)."""
    from pipeline.training.recipe import recipe_table

    return {"stages": [row.describe() for row in chain_for(config)], "recipe_table": recipe_table()}
