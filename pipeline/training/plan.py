"""The training job's plan: everything the driver works out and checks before any worker starts.

Each check is a one-line UserError: the store exists and holds photographs, the resolution
is in it and is the preset's top resolution, there are enough samples for one step per
worker, the VGG weights resolve (ImageNet weights must be in torchvision's cache: nothing
is downloaded), a preset whose recipe starts from a lower stage has one (`--init-from`) or
is told `--from-scratch`, and that earlier stage has the store's label schema and every
module of the new model but its top one. The recipe row (pipeline.training.recipe) is
chosen here, because the store names the data set and the loss network its input
convention (which decides the default layer weights).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crn.config import CRNConfig
from crn.losses import LAYER_WEIGHTS
from crn.presets import make_config
from crn.vgg import VGG19Features, VGGWeightsError
from pipeline.data.schema import check_schema_match
from pipeline.data.store import TRAIN_SPLIT, Store, open_store
from pipeline.errors import UserError
from pipeline.fs import uri_join
from pipeline.options import AUTO, to_dict
from pipeline.training import order, stages
from pipeline.training.config import TrainConfig, resolve
from pipeline.training.loop import WorkerPlan
from pipeline.training.recipe import Recipe, layer_weights_choice, recipe_for, recipe_table


@dataclass
class TrainPlan:
    """Everything the driver worked out before starting workers."""

    config: TrainConfig  # resolved: no "auto" left
    model_config: CRNConfig
    label_schema: dict
    dataset: str  # data set name, for the registered model's name
    train_samples: int
    steps_per_epoch: int  # per rank, the same on every rank
    train_modules: list[str]
    vgg_source: str
    vgg_convention: str  # the loss network's input convention (crn.vgg): "torchvision" or "caffe"
    layer_weights_rule: str  # why these layer weights, and when they are recalibrated
    run_dir: str  # <storage>/<run name>, where Ray Train keeps this run
    init_weights: dict | None  # earlier-stage tensors the new model takes over
    recipe: Recipe  # the recipe row for this preset and data set

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as printed by --dry-run and logged as MLflow params."""
        return {
            **to_dict(self.config),
            "model.widths": list(self.model_config.widths),
            "model.num_classes": self.model_config.num_classes,
            "model.num_outputs": self.model_config.num_outputs,
            "model.train_modules": ",".join(self.train_modules),
            "model.init_modules": len({k.split(".")[1] for k in self.init_weights}) if self.init_weights else 0,
            "data.dataset": self.dataset,
            "data.schema": self.label_schema["name"],
            "data.train_samples": self.train_samples,
            "data.steps_per_epoch": self.steps_per_epoch,
            "loss.layer_weights": list(LAYER_WEIGHTS[self.config.loss_weights]),
            "loss.layer_weights_rule": self.layer_weights_rule,
            "vgg.weights_source": self.vgg_source,
            "vgg.input_convention": self.vgg_convention,
            "run_dir": self.run_dir,
            **{f"recipe.{key}": value for key, value in self.recipe.describe().items()},
        }

    @property
    def total_steps(self) -> int:
        """Where the run stops: --steps, or the epochs' steps, whichever comes first."""
        by_epochs = self.config.epochs * self.steps_per_epoch
        return min(self.config.steps, by_epochs) if self.config.steps else by_epochs

    def for_workers(self, init_weights_ref: Any = None) -> WorkerPlan:
        """What each Ray Train worker needs; the earlier stage's tensors go by object-store reference."""
        return WorkerPlan(config=self.config, model_config=self.model_config, label_schema=self.label_schema,
                          loss_weights=list(LAYER_WEIGHTS[self.config.loss_weights]),
                          train_modules=self.train_modules, steps_per_epoch=self.steps_per_epoch,
                          train_samples=self.train_samples, run_dir=self.run_dir, init_weights=init_weights_ref)


def make_plan(config: TrainConfig) -> TrainPlan:
    """Resolve the config and check everything that can be checked without Ray."""
    store = open_store(config.store)  # StoreError (one line) if missing
    dataset_format = (store.manifest.get("source") or {}).get("format", "")
    recipe = recipe_for(config.preset, dataset_format)
    if recipe.starts_from and not (config.init_from or config.from_scratch):
        raise UserError(f"--preset {config.preset} starts from a {recipe.starts_from} model (docs/recipe.md#progressive-stages): "
                        f"pass --init-from <its checkpoint or models:/ URI>, or --from-scratch")
    try:
        vgg = VGG19Features(config.vgg_weights)
    except VGGWeightsError as exc:
        raise UserError(str(exc)) from None
    config = resolve(config, dataset_format, vgg.input_convention)
    choice = layer_weights_choice(recipe, vgg.input_convention, config.loss_weights)
    rule = choice.rule
    if config.recalibrate_after_epoch != choice.recalibrate_after_epoch:
        rule += f"; --recalibrate-after-epoch {config.recalibrate_after_epoch} instead (0 = never)"
    schema = store.schema
    # The preset takes its label channels L from the store's schema; its top resolution is fixed.
    model_config = make_config(config.preset, num_classes=schema.num_classes, num_outputs=config.num_outputs)
    top = model_config.top_resolution
    if config.resolution != top:
        raise UserError(f"--resolution {config.resolution}: preset {config.preset} makes {top} images; "
                        f"train it at {top} (store {config.store} has {', '.join(store.resolutions)})")
    if str(top) not in store.resolutions:
        raise UserError(f"store {config.store} has no {top} data for preset {config.preset} "
                        f"(it has {', '.join(store.resolutions)}; preprocess with --resolutions ...,{top})")
    train_modules = stages.parse_train_modules(config.train_modules, model_config)
    if not store.has_photos:
        raise UserError(f"store {config.store} holds label maps only; training needs photographs")
    if TRAIN_SPLIT not in store.splits:
        raise UserError(f"store {config.store} has no '{TRAIN_SPLIT}' split (it has {', '.join(store.splits)})")
    samples = store.count(TRAIN_SPLIT)
    steps_per_epoch = order.steps_per_epoch(samples, config.num_workers, config.batch_size)
    if steps_per_epoch < 1:
        raise UserError(f"store {config.store} has {samples} training samples: too few for "
                        f"{config.num_workers} worker(s) x batch {config.batch_size}")
    init_weights = None
    if config.init_from:
        from pipeline.registry.models import open_model

        earlier = open_model(config.init_from)
        check_schema_match(schema.to_dict(), earlier.schema.to_dict(), f"store {config.store} vs --init-from {config.init_from}")
        init_weights = stages.earlier_stage_weights(earlier.build().state_dict(), model_config, config.init_from)
        if recipe.starts_from:
            stages.check_lower_stage(init_weights, model_config, recipe.starts_from, config.init_from)
    if config.steps:  # the epochs that actually run, not the recipe's, are what the run records
        config = dataclasses.replace(config, epochs=min(config.epochs, -(-config.steps // steps_per_epoch)))
    dataset = dataset_name(store)
    if config.model_name == AUTO:
        config = dataclasses.replace(config, model_name=f"crn-{dataset}-{top}")
    return TrainPlan(
        config=config, model_config=model_config, label_schema=schema.to_dict(), dataset=dataset,
        train_samples=samples, steps_per_epoch=steps_per_epoch,
        train_modules=train_modules,
        vgg_source=vgg.weights_source, vgg_convention=vgg.input_convention, layer_weights_rule=rule,
        run_dir=uri_join(config.storage_path, config.run_name), init_weights=init_weights,
        recipe=recipe,
    )


def dataset_name(store: Store) -> str:
    """The data set's name: the manifest's if it has one, else the source folder's, else the store's."""
    source = (store.manifest.get("source") or {}).get("uri", "")
    name = store.manifest.get("name") or Path(source.rstrip("/")).name or Path(store.uri.rstrip("/")).name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)).strip("-") or "store"




def dry_run_text(plan: TrainPlan) -> dict:
    """What --dry-run prints: the resolved configuration, then the whole recipe table."""
    return {"resolved": plan.describe(), "recipe_table": recipe_table()}
