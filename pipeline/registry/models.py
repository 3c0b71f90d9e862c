"""Trained CRNs in the MLflow model registry: log and register them, and load them back.

A registered CRN is an `mlflow.pyfunc` model that carries the crn checkpoint file itself
(`artifacts/crn_checkpoint.pt`, the self-describing dict of crn.checkpoint) plus a small
`PythonModel` wrapper. Anything that speaks MLflow can call it
(`mlflow.pyfunc.load_model(uri).predict(uint8 [B,H,W]) -> uint8 [B,K,H,W,3]`), while the
pipeline skips the wrapper and rebuilds the model straight from the checkpoint
(`load_model(uri)`), which needs nothing but torch and this repository.

Why not `mlflow.pytorch.log_model`: its default format (torch.export, "pt2") needs an input
example and fixes the spatial size (stack-notes.md); the checkpoint already rebuilds the
model exactly, with `torch.load(weights_only=True)` and no pickled code.

Resolving a registry or run URI first points MLflow at the project's tracking store
(pipeline.runtime.use_tracking_store: MLFLOW_TRACKING_URI, else the work folder's SQLite
file), so a model URI resolves the same before and after a job sets MLflow up, and nothing
lands in the folder a job starts from.

URIs accepted by `load_model`:
  models:/<name>@<alias>     the alias is resolved to a version once, and that version loaded
  models:/<name>/<version>   a fixed version
  runs:/<run_id>/<path>      a logged model, or a checkpoint file logged as an artifact
  <path> or s3://...         a checkpoint file (S3 through pipeline.fs, so AWS_ENDPOINT_URL counts)
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from crn.model import CRN
from pipeline.errors import UserError, first_line
from pipeline.registry.pyfunc import CHECKPOINT_KEY, CRNPythonModel
from pipeline.runtime import REPO_ROOT, use_tracking_store

# The name the checkpoint file gets inside a logged model; `artifacts/<this>` in its folder.
CHECKPOINT_ARTIFACT = "crn_checkpoint.pt"
# The checkpoint entries that hold tensors of weights or optimizer state.
WEIGHT_KEYS = ("model", "optimizer")

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclasses.dataclass
class LoadedModel:
    """A CRN ready to run, and where it came from."""

    model: CRN  # eval mode, on the CPU
    checkpoint: dict[str, Any]  # the checkpoint without its weights (config, schema, step, ...)
    uri: str  # what the user asked for, verbatim
    version: str | None  # the registry version (resolved from an alias); None outside the registry


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
    resolved = resolve_checkpoint(str(checkpoint_path))
    try:
        ckpt = load_checkpoint(resolved.path)
        config = model_from_checkpoint(ckpt).config
        height, width = config.top_resolution
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width))]),
            outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, config.num_outputs, height, width, 3))]),
        )
        with tempfile.TemporaryDirectory(prefix="crn-register-") as staging:
            # A fixed artifact name lets load_model find the file without guessing.
            staged = Path(staging) / CHECKPOINT_ARTIFACT
            shutil.copyfile(resolved.path, staged)
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
                tags={"crn.schema": ckpt.get("label_schema", {}).get("name", "")},
            )
    finally:
        resolved.cleanup()
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(model_name, alias, version)
    schema_name = ckpt.get("label_schema", {}).get("name", "")
    client.update_registered_model(model_name, description=(
        f"Cascaded Refinement Network: {schema_name} label maps of {height}x{width} (uint8 class indices) in, "
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
    if uri_or_path.startswith("s3://"):
        return _download_s3_checkpoint(uri_or_path)
    if "://" not in uri_or_path and not uri_or_path.startswith(("models:/", "runs:/")):
        path = Path(uri_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"model checkpoint {uri_or_path}: no such file")
        return ResolvedCheckpoint(path=path.resolve(), uri=uri_or_path, version=None)

    use_tracking_store()
    version = None
    download_uri = uri_or_path
    if match := _ALIAS_URI.match(uri_or_path):
        # Resolve the alias once, so that moving it while a job runs changes nothing.
        version = _registry_call(uri_or_path, "get_model_version_by_alias", match["name"], match["alias"]).version
        download_uri = f"models:/{match['name']}/{version}"
    elif match := _VERSION_URI.match(uri_or_path):
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


def _download_s3_checkpoint(uri: str) -> ResolvedCheckpoint:
    """A checkpoint file on S3 (or an S3-compatible endpoint), through the project's pyarrow filesystem."""
    from pipeline.fs import filesystem_for, read_bytes

    download_dir = Path(tempfile.mkdtemp(prefix="crn-model-"))
    path = download_dir / CHECKPOINT_ARTIFACT
    try:
        fs, key = filesystem_for(uri)
        path.write_bytes(read_bytes(fs, key))
    except (OSError, ValueError) as exc:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise UserError(f"model checkpoint {uri}: cannot read ({first_line(exc)})") from None
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



def without_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's description (config, schema, step, ...) without its tensors of weights."""
    return {key: value for key, value in ckpt.items() if key not in WEIGHT_KEYS}


def load_model(uri_or_path: str) -> LoadedModel:
    """Load a CRN from the registry, a run, or a checkpoint file (see the module docstring)."""
    resolved = resolve_checkpoint(uri_or_path)
    try:
        ckpt = load_checkpoint(resolved.path)
    finally:
        resolved.cleanup()
    return LoadedModel(model=model_from_checkpoint(ckpt), checkpoint=without_weights(ckpt), uri=resolved.uri, version=resolved.version)
