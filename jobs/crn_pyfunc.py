"""The MLflow pyfunc face of a CRN, so that anything speaking MLflow can run a registered model.

    model = mlflow.pyfunc.load_model("models:/crn@champion")
    images = model.predict(label_maps)   # uint8 [B,H,W] class indices -> uint8 [B,K,H,W,3]

The logged model carries the crn checkpoint as its artifact `checkpoint`; loading rebuilds
the network from it (crn.checkpoint.model_from_checkpoint). Kept apart from
jobs.model_registry so that loading a checkpoint in a Ray actor does not import MLflow.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from jobs.model_registry import CHECKPOINT_KEY, generate_images


class CRNPythonModel(mlflow.pyfunc.PythonModel):
    """uint8 class-index maps [B,H,W] in, uint8 images [B,K,H,W,3] out (clamped and rounded)."""

    def load_context(self, context):
        self.model = model_from_checkpoint(load_checkpoint(context.artifacts[CHECKPOINT_KEY]))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return generate_images(self.model, np.asarray(model_input, dtype=np.uint8))
