"""Inference: class-index label maps in, uint8 images out, at a fixed padded batch shape.

    images = generate_images(model, labels, batch_size=8)   # uint8 [B,H,W] -> uint8 [B,K,H,W,3]

The one place that says what a synthesized image is; synthesis actors, the MLflow pyfunc
model and the tests all call it.
"""
from __future__ import annotations

import numpy as np
import torch

from crn.labels import one_hot
from crn.model import CRN, to_uint8_images


def generate_images(
    model: CRN, labels: np.ndarray, *, device: str = "cpu", bf16: bool = False, batch_size: int | None = None
) -> np.ndarray:
    """Run the generator on class-index maps: uint8 [B,H,W] -> uint8 images [B,K,H,W,3].

    This is the documented meaning of a synthesized image: the model's unclamped output
    clamped to [0, 255] and rounded (crn.model.to_uint8_images). With `bf16` the forward pass
    runs under bfloat16 autocast (GPUs), so its bytes differ slightly from float32's.

    `batch_size` fixes the shape of every forward pass: the maps go through in chunks of
    exactly that many, the last chunk padded with copies of its last map. Convolution
    kernels pick their algorithm (and so their rounding) by batch size, so without this a
    sample's pixels could change with the number of samples that happened to share its
    batch; with it they depend only on the map, the weights and the settings.
    """
    labels = np.ascontiguousarray(labels)
    chunk = batch_size or len(labels)
    outputs = []
    for start in range(0, len(labels), chunk):
        maps = labels[start:start + chunk]
        count = len(maps)
        if count < chunk:
            maps = np.concatenate([maps, np.repeat(maps[-1:], chunk - count, axis=0)])
        outputs.append(_forward_uint8(model, maps, device, bf16)[:count])
    if not outputs:
        return np.zeros((0, model.config.num_outputs, *labels.shape[1:], 3), np.uint8)
    return np.concatenate(outputs)


def _forward_uint8(model: CRN, labels: np.ndarray, device: str, bf16: bool) -> np.ndarray:
    index_maps = torch.from_numpy(labels).to(device=device, dtype=torch.long)
    with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        out = model(one_hot(index_maps, model.config.num_classes))  # [B,K,3,H,W]
    return to_uint8_images(out.float()).cpu().numpy()  # [B,K,H,W,3]
