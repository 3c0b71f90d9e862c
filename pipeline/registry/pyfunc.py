"""The MLflow pyfunc face of a CRN, so that anything speaking MLflow can run a registered model.

    model = mlflow.pyfunc.load_model("models:/crn@champion")
    images = model.predict(label_maps)   # uint8 [B,H,W] class indices -> uint8 [B,K,H,W,3]

The logged model carries the crn checkpoint as its artifact `checkpoint`; loading rebuilds
the network from it (crn.checkpoint.model_from_checkpoint). The registry
(pipeline.registry.models) imports this module, never the other way round.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from crn.inference import generate_images

# The key of the checkpoint among the logged model's artifacts.
CHECKPOINT_KEY = "checkpoint"
# The key of a segmenter's TorchScript file among its logged model's artifacts (pipeline.registry.segmenters).
SEGMENTER_KEY = "segmenter"


class CRNPythonModel(mlflow.pyfunc.PythonModel):
    """uint8 class-index maps [B,H,W] in, uint8 images [B,K,H,W,3] out (clamped and rounded)."""

    def load_context(self, context):
        self.model = model_from_checkpoint(load_checkpoint(context.artifacts[CHECKPOINT_KEY]))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return generate_images(self.model, np.asarray(model_input, dtype=np.uint8))
