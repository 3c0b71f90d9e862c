"""Segmenters in the MLflow model registry, beside the CRNs (pipeline.registry.models).

A registered segmenter is an `mlflow.pyfunc` model carrying the TorchScript file itself
(artifact `segmenter`, the contract of pipeline.segmenter.file): anything speaking
MLflow can call `predict(uint8 [B,H,W,3]) -> uint8 [B,H,W]`, while the evaluation job reads
the file's bytes (pipeline.segmenter.file.open_segmenter, which finds the file behind a
models:/ or runs:/ URI); their sha256 is the segmenter's identity in an evaluation protocol.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from pipeline.errors import UserError
from pipeline.registry.pyfunc import SEGMENTER_KEY
from pipeline.runtime import REPO_ROOT
from pipeline.segmenter.file import Segmenter, open_segmenter

SEGMENTER_ARTIFACT = "segmenter.pt"


class SegmenterPythonModel(mlflow.pyfunc.PythonModel):
    """uint8 RGB images [B,H,W,3] in, uint8 class-index maps [B,H,W] out."""

    def load_context(self, context):
        file = open_segmenter(context.artifacts[SEGMENTER_KEY])
        self.segmenter = Segmenter(file.data, num_classes=len(file.class_names))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.segmenter.predict(np.asarray(model_input, dtype=np.uint8))


def log_and_register_segmenter(torchscript_path: str | Path, model_name: str, alias: str) -> str:
    """Log the TorchScript file as an MLflow model in the active run, register it, set `alias`.

    Returns the new version (a string).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if mlflow.active_run() is None:
        raise UserError("log_and_register_segmenter needs an active MLflow run")
    with tempfile.TemporaryDirectory(prefix="crn-segmenter-") as staging:
        staged = Path(staging) / SEGMENTER_ARTIFACT
        shutil.copyfile(torchscript_path, staged)
        info = mlflow.pyfunc.log_model(
            name="segmenter",
            python_model=SegmenterPythonModel(),
            artifacts={SEGMENTER_KEY: str(staged)},
            code_paths=[str(REPO_ROOT / "crn"), str(REPO_ROOT / "pipeline")],  # loads outside this repo too
            pip_requirements=["torch", "mlflow", "numpy"],
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version
