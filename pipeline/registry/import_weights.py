"""Import the authors' released models (TF1 checkpoints) as project checkpoints, and register them.

    outcome = run(parse_import_config(["--checkpoint", "result_256p", "--register"]))   # jobs/import_weights.py

In order: read the TF checkpoint without TensorFlow (crn.tf_checkpoint), read the
architecture off its shapes and check it against `--preset` and the label schema, map every
tensor onto the model (crn.authors), write a crn checkpoint (crn.checkpoint) that carries
the label schema, the layer-weight row the authors trained it with and the sha256 of every
source file, and with `--register` log and register it in MLflow like a trained model, so
that `jobs/synthesize.py --model models:/<name>@<alias>` runs the authors' model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crn.authors import AuthorsCheckpointError, authors_state_dict, config_from_authors_tensors, is_optimizer_state
from crn.checkpoint import make_checkpoint, save_checkpoint
from crn.config import CRNConfig
from crn.losses import LAYER_WEIGHTS
from crn.model import CRN
from crn.presets import PRESETS, make_config
from crn.tf_checkpoint import TFCheckpointError, checkpoint_prefix, read_tf_checkpoint, tf_checkpoint_names
from pipeline.data.schema import load_schema
from pipeline.errors import UserError
from pipeline.fs import file_sha256
from pipeline.options import dry_run_option, from_argv, option, to_dict
from pipeline.runtime import setup_mlflow, work_dir
from pipeline.training.recipe import recipe_for

DATASETS = ("cityscapes", "gta5")
EXPERIMENT = "crn-import"


@dataclass
class ImportConfig:
    checkpoint: str = option(help="the authors' TF1 checkpoint: its prefix (result_256p/model.ckpt), its .index "
                                  "file, or its folder")
    preset: str = option("", "the preset the checkpoint must be (crn-256p, crn-512p, crn-1024p); default: the "
                             "architecture read off the checkpoint", choices=["", *PRESETS])
    dataset: str = option("cityscapes", "what the model was trained on: picks the layer-weight row recorded with "
                                        "it and the registered name", choices=DATASETS)
    schema: str = option("cityscapes", "label schema of the model's input channels (GTA5 uses the Cityscapes one)")
    out: str = option("", "the project checkpoint to write; default: <work>/imported/<model name>.pt")
    register: bool = option(False, "log the checkpoint as an MLflow model and register it")
    model_name: str = option("", "registered model name; default: crn-authors-<dataset>-<HxW>")
    alias: str = option("candidate", "alias set on the registered version")
    dry_run: bool = dry_run_option()


@dataclass
class ImportOutcome:
    checkpoint_path: Path
    model_config: CRNConfig
    preset: str  # the matching preset, or "" for an architecture no preset has
    source_sha256: dict[str, str]  # file name -> sha256
    model_name: str
    version: str | None  # the registered version with --register


def parse_import_config(argv: Sequence[str] | None) -> ImportConfig:
    return from_argv(ImportConfig, argv, prog="jobs/import_weights.py",
                     description="Import the authors' TF1 checkpoint as a CRN checkpoint (and register it).")


def run(config: ImportConfig) -> ImportOutcome:
    schema = load_schema(config.schema)
    try:
        prefix = checkpoint_prefix(config.checkpoint)
        # Optimizer slots saved with the model are not weights: leave their bytes unread.
        tensors = read_tf_checkpoint(prefix, wanted=lambda name: not is_optimizer_state(name))
        ignored = [name for name in tf_checkpoint_names(prefix) if is_optimizer_state(name)]
    except TFCheckpointError as exc:
        raise UserError(str(exc)) from None
    try:
        model_config = config_from_authors_tensors(tensors)
    except AuthorsCheckpointError as exc:
        raise UserError(f"{config.checkpoint}: {exc}") from None
    if model_config.num_classes != schema.num_classes:
        raise UserError(f"{config.checkpoint}: the model takes {model_config.num_classes} label channels, but schema "
                        f"'{schema.name}' has {schema.num_classes} classes (void included)")
    preset = config.preset or matching_preset(model_config)
    if config.preset:
        check_preset(config.checkpoint, model_config, config.preset)
    try:
        state = authors_state_dict(tensors, model_config)
    except AuthorsCheckpointError as exc:
        raise UserError(f"{config.checkpoint}: {exc}") from None
    model = CRN(model_config)
    model.load_state_dict(state)

    resolution = str(model_config.top_resolution)
    model_name = config.model_name or f"crn-authors-{config.dataset}-{resolution}"
    out = Path(config.out) if config.out else work_dir() / "imported" / f"{model_name}.pt"
    sources = source_files(prefix)
    sha256 = {path.name: "sha256:" + file_sha256(path) for path in sources}
    loss_row = recipe_for(preset, config.dataset).loss_weights if preset else "uncalibrated"
    ckpt = make_checkpoint(
        model, optimizer=None, step=0, epoch=0, loss_weights=LAYER_WEIGHTS[loss_row], label_schema=schema.to_dict(),
        extra={"source": "authors-tf1", "source_checkpoint": str(prefix), "source_sha256": sha256,
               "preset": preset, "dataset": config.dataset, "loss_weights_row": loss_row,
               "ignored_tensors": ignored},
    )
    save_checkpoint(out, ckpt)
    print(f"import: {len(state)} tensors of {prefix} -> {out} ({preset or 'no preset'}, top {resolution}, "
          f"K={model_config.num_outputs}, {sum(v.numel() for v in state.values()):,} parameters)")
    version = register(out, model_name, config, sha256) if config.register else None
    return ImportOutcome(out, model_config, preset, sha256, model_name, version)


def matching_preset(model_config: CRNConfig) -> str:
    """The preset with exactly this architecture, or ""."""
    for name in PRESETS:
        if make_config(name, model_config.num_classes) == model_config:
            return name
    return ""


def check_preset(source: str, found: CRNConfig, preset: str) -> None:
    """One line naming the first difference between the checkpoint and the preset."""
    wanted = make_config(preset, found.num_classes)
    if found.top_resolution != wanted.top_resolution:
        raise UserError(f"{source}: a {found.top_resolution} model (modules g_4 .. g_{found.top_resolution.height}), "
                        f"not {preset} ({wanted.top_resolution}); pass the matching --preset or none")
    for resolution, have, want in zip(found.resolutions, found.widths, wanted.widths):
        if have != want:
            raise UserError(f"{source}: module {resolution} has {have} channels, {preset} has {want}")
    if found.num_outputs != wanted.num_outputs:
        raise UserError(f"{source}: the head makes K={found.num_outputs} images, {preset} makes K={wanted.num_outputs}")


def source_files(prefix: Path) -> list[Path]:
    """The index file and every data shard of the checkpoint (all exist: it was just read)."""
    return [Path(f"{prefix}.index"), *sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))]


def register(checkpoint: Path, model_name: str, config: ImportConfig, sha256: dict[str, str]) -> str:
    """One MLflow run (the import's config and source hashes) that logs and registers the model."""
    import mlflow

    from pipeline.registry.models import log_and_register

    setup_mlflow(EXPERIMENT)
    with mlflow.start_run(run_name=f"import-{model_name}"):
        mlflow.log_params(to_dict(config))
        mlflow.set_tags({"crn.source": "authors-tf1", "crn.dataset": config.dataset})
        mlflow.log_dict(sha256, "source_sha256.json")
        version = log_and_register(checkpoint, model_name, alias=config.alias)
    print(f"import: registered models:/{model_name}/{version} (@{config.alias})")
    return version

