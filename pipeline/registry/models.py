"""Generators in the MLflow model registry: open them (the one way every stage does), log and register them.

A registered CRN is an `mlflow.pyfunc` model that carries the crn checkpoint file itself
(`artifacts/crn_checkpoint.pt`, the self-describing dict of crn.checkpoint) plus a small
`PythonModel` wrapper. Anything that speaks MLflow can call it
(`mlflow.pyfunc.load_model(uri).predict(uint8 [B,H,W]) -> uint8 [B,K,H,W,3]`), while the
pipeline skips the wrapper and opens the checkpoint itself (`open_model(uri)`, the one way
every stage opens a model), which needs nothing but torch and this repository.

Why not `mlflow.pytorch.log_model`: its default format (torch.export, "pt2") needs an input
example and fixes the spatial size (docs/stack-facts.md#mlflow-models); the checkpoint already rebuilds the
model exactly, with `torch.load(weights_only=True)` and no pickled code.

Resolving a registry or run URI first points MLflow at the project's tracking store
(pipeline.runtime.use_tracking_store: MLFLOW_TRACKING_URI, else the work folder's SQLite
file), so a model URI resolves the same before and after a job sets MLflow up, and nothing
lands in the folder a job starts from.

URIs accepted by `open_model`:
  models:/<name>@<alias>     the alias is resolved to a version once, and that version loaded
  models:/<name>/<version>   a fixed version
  runs:/<run_id>/<path>      a logged model, or a checkpoint file logged as an artifact
  <path> or a storage URL    a checkpoint file (s3://, gs://, abfs://, ... through pipeline.fs)
  <name>                     a registered model name alone: models:/<name>@champion
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crn.checkpoint import generator_name, load_checkpoint, model_from_checkpoint
from crn.generators import Generator, generator_named
from pipeline.data.schema import LabelSchema
from pipeline.errors import UserError, first_line
from pipeline.fs import display_uri, filesystem_for, is_local, is_storage, read_bytes
from pipeline.registry.pyfunc import CHECKPOINT_KEY, CRNPythonModel
from pipeline.registry.uris import ALIAS_URI, VERSION_URI, model_uri
from pipeline.runtime import REPO_ROOT, use_tracking_store

# The name the checkpoint file gets inside a logged model; `artifacts/<this>` in its folder.
CHECKPOINT_ARTIFACT = "crn_checkpoint.pt"
# The checkpoint entries that hold tensors of weights or optimizer state.
WEIGHT_KEYS = ("model", "optimizer")


def without_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's description (config, schema, step, ...) without its tensors of weights."""
    return {key: value for key, value in ckpt.items() if key not in WEIGHT_KEYS}


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A generator as every stage gets it: its checkpoint's bytes, what they hold, and exactly
    which registered version they are. Opened once (`open_model`) and handed on, so two stages
    of one job (an evaluation and the synthesis it runs) always use the same version, even if
    an alias moves meanwhile."""

    uri: str  # what the user asked for, verbatim
    name: str | None  # the registered model's name; None outside the registry
    version: str | None  # the registry version (an alias resolved once); None outside the registry
    sha256: str  # of the checkpoint file: the weights' identity
    checkpoint_bytes: bytes = dataclasses.field(repr=False)
    description: dict[str, Any] = dataclasses.field(repr=False)  # the checkpoint without its weights
    generator: Generator = dataclasses.field(repr=False)
    config: Any = dataclasses.field(repr=False)  # the generator's config (crn.generators)
    schema: LabelSchema = dataclasses.field(repr=False)

    @property
    def pinned_uri(self) -> str:
        """`models:/<name>/<version>` for a registered model (never an alias), else the URI as given."""
        return f"models:/{self.name}/{self.version}" if self.name and self.version else self.uri

    def build(self) -> torch.nn.Module:
        """The network with its weights, in eval mode, on the CPU."""
        return model_from_checkpoint(load_checkpoint(self.checkpoint_bytes), self.generator)


def open_model(uri_or_path: str) -> ModelRef:
    """Find, download and check a generator (see the module docstring for the URIs); one-line
    errors. The one way every stage opens a model."""
    resolved = resolve_checkpoint(model_uri(uri_or_path))
    try:
        data = resolved.path.read_bytes()
    finally:
        resolved.cleanup()
    try:
        ckpt = load_checkpoint(data, name=uri_or_path)
        generator = generator_named(generator_name(ckpt))
        # Built once here, so that a checkpoint that does not fit its own config fails now, in
        # one line, rather than in every worker that builds it later.
        config = model_from_checkpoint(ckpt).config
        schema = LabelSchema.from_dict(ckpt["label_schema"], where=f"model {uri_or_path}")
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"model {uri_or_path}: {first_line(exc)}") from None
    return ModelRef(uri=uri_or_path, name=resolved.name, version=resolved.version,
                    sha256=hashlib.sha256(data).hexdigest(), checkpoint_bytes=data, description=without_weights(ckpt),
                    generator=generator, config=config, schema=schema)


@dataclasses.dataclass
class ResolvedCheckpoint:
    """A checkpoint file on local disk, found from a URI; `cleanup()` removes any download."""

    path: Path
    uri: str
    version: str | None
    download_dir: Path | None = None
    name: str | None = None  # the registered model's name, for registry URIs

    def cleanup(self) -> None:
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)


def log_and_register(checkpoint_path: str | os.PathLike, model_name: str, alias: str = "candidate",
                     description: str = "") -> str:
    """Log the checkpoint as an MLflow model in the active run, register it, set `alias`.

    Returns the new registered version (a string, as MLflow shows it). The model carries a
    tensor signature (uint8 [-1,H,W] -> uint8 [-1,K,H,W,3]) read from the checkpoint's config,
    an input example (one all-void label map), its complete requirements, and descriptions:
    `description` on the version, and what the model is on the registered model.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    if mlflow.active_run() is None:
        raise UserError("log_and_register needs an active MLflow run (call it inside mlflow.start_run())")
    model = open_model(str(checkpoint_path))
    config, ckpt = model.config, model.description
    height, width = config.top_resolution
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, config.num_outputs, height, width, 3))]),
    )
    with tempfile.TemporaryDirectory(prefix="crn-register-") as staging:
        # A fixed artifact name lets open_model find the file without guessing.
        staged = Path(staging) / CHECKPOINT_ARTIFACT
        staged.write_bytes(model.checkpoint_bytes)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=CRNPythonModel(),
            artifacts={CHECKPOINT_KEY: str(staged)},
            # The wrapper's code travels with the model, so it loads outside this repo too.
            code_paths=[str(REPO_ROOT / "crn"), str(REPO_ROOT / "pipeline")],
            # Listed explicitly: inferring them would load the model in a subprocess.
            pip_requirements=pyfunc_requirements(),
            signature=signature,
            input_example=np.full((1, height, width), config.num_classes - 1, np.uint8),
            registered_model_name=model_name,
            tags={"crn.schema": model.schema.name, "crn.generator": model.generator.name},
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(model_name, alias, version)
    client.update_registered_model(model_name, description=(
        f"Generator ({model.generator.name}): {model.schema.name} label maps of {height}x{width} (uint8 class indices) in, "
        f"{config.num_outputs} photograph(s) per map out (uint8 RGB)."))
    client.update_model_version(model_name, version, description=description or (
        f"step {ckpt.get('step')}, epoch {ckpt.get('epoch')}, from run {mlflow.active_run().info.run_id}"))
    return version


def pyfunc_requirements() -> list[str]:
    """What loading and calling the logged model needs, pinned to the versions it was made with."""
    import cloudpickle
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
            f"cloudpickle=={cloudpickle.__version__}"]


def resolve_checkpoint(uri_or_path: str, artifact_key: str = CHECKPOINT_KEY) -> ResolvedCheckpoint:
    """Find the checkpoint file behind a registry URI, run URI or path, downloading if needed.

    `artifact_key` names the file among a logged model's artifacts (a segmenter's differs).
    """
    if is_storage(uri_or_path) and not is_local(uri_or_path):
        return _download_storage_checkpoint(uri_or_path)
    if is_local(uri_or_path):
        path = Path(uri_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"model checkpoint {uri_or_path}: no such file")
        return ResolvedCheckpoint(path=path.resolve(), uri=uri_or_path, version=None)

    use_tracking_store()
    version = None
    download_uri = uri_or_path
    if match := ALIAS_URI.match(uri_or_path):
        # Resolve the alias once, so that moving it while a job runs changes nothing.
        version = _registry_call(uri_or_path, "get_model_version_by_alias", match["name"], match["alias"]).version
        download_uri = f"models:/{match['name']}/{version}"
    elif match := VERSION_URI.match(uri_or_path):
        version = _registry_call(uri_or_path, "get_model_version", match["name"], match["version"]).version
    download_dir = Path(tempfile.mkdtemp(prefix="crn-model-"))
    try:
        checkpoint = _download_checkpoint(download_uri, download_dir, artifact_key)
    except Exception:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise
    name = match["name"] if match else None
    return ResolvedCheckpoint(path=checkpoint, uri=uri_or_path, version=str(version) if version else None,
                              download_dir=download_dir, name=name)


def _download_storage_checkpoint(uri: str) -> ResolvedCheckpoint:
    """A checkpoint file in cloud storage (S3 or an S3-compatible endpoint, GCS, Azure), through pipeline.fs."""
    download_dir = Path(tempfile.mkdtemp(prefix="crn-model-"))
    path = download_dir / CHECKPOINT_ARTIFACT
    try:
        fs, key = filesystem_for(uri)
        path.write_bytes(read_bytes(fs, key))
    except (OSError, ValueError) as exc:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise UserError(f"model checkpoint {display_uri(uri)}: cannot read ({first_line(exc)})") from None
    return ResolvedCheckpoint(path=path, uri=uri, version=None, download_dir=download_dir)


def _download_checkpoint(uri: str, download_dir: Path, artifact_key: str = CHECKPOINT_KEY) -> Path:
    """The checkpoint file of a logged model (via its MLmodel file), or `uri` if it is one."""
    import mlflow.artifacts
    from mlflow.models import Model

    try:
        mlmodel = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/MLmodel", dst_path=str(download_dir / "meta")))
    except Exception:  # any failure here means: not a logged model folder
        mlmodel = None
    if mlmodel is not None and mlmodel.is_file():
        flavor = Model.load(str(mlmodel)).flavors.get("python_function", {})
        artifact = flavor.get("artifacts", {}).get(artifact_key)
        if artifact is None:
            raise UserError(f"model {uri}: an MLflow model without a '{artifact_key}' artifact (not logged by this "
                            "project for this use)")
        target_uri = f"{uri.rstrip('/')}/{artifact['path']}"
    else:
        target_uri = uri  # not a logged model: the URI names a checkpoint file itself
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=target_uri, dst_path=str(download_dir / "ckpt")))
    except Exception as exc:  # MLflow, boto3 and HTTP clients each raise their own types
        raise UserError(f"model {uri}: cannot download ({first_line(exc)})") from None
    if not local.is_file():
        raise UserError(f"model {uri}: names a folder that is neither an MLflow model nor a checkpoint file")
    return local


def _registry_call(uri: str, method: str, *args):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return getattr(MlflowClient(), method)(*args)
    except MlflowException as exc:
        raise UserError(f"model {uri}: {first_line(exc)}") from exc
