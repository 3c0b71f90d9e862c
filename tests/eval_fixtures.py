"""Small stand-ins for the evaluation tests: Inception weights and a segmenter, made on the spot.

- `write_random_inception_weights(path, backend=...)`: random weights in the FID Inception's
  layout (torchvision's Inception v3 layers with a 1008-way fc, which all three FID backends
  load), scaled so the activations stay finite through the 90-odd layers, and saved the way
  that backend's published file is: torch-fidelity's converter leaves out BatchNorm's
  `num_batches_tracked`. The same seed gives the same weights for every backend; `live_features`
  silences the rest of the 2048 features to make eigenvalue-based FIDs fast. Nothing is
  downloaded; FID numbers from them mean nothing, but every step of each library's path runs.
- `PaletteSegmenter`: a segmenter that reads a colour-coded label map back (the class whose
  schema colour is nearest), so on colourized label maps it returns the label itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.schema import LabelSchema
from pipeline.evaluation.fid_backends import (DEFAULT_FID_BACKEND, FID_BACKENDS, OPTIONAL_KEY, fid_backend,
                                              fid_inception_v3_structure)
from pipeline.segmenter.file import save_torchscript
from pipeline.visualize import schema_palette


# The last block's branches in the order their outputs are concatenated into the 2048 features.
FINAL_BRANCHES = ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")


def write_random_inception_weights(path: str | Path, seed: int = 0, backend: str = DEFAULT_FID_BACKEND,
                                   live_features: int = 2048) -> Path:
    """`live_features` < 2048 makes the other features 0 for every image: their covariance rows
    are then exactly 0, which LAPACK's balancing sets aside, so the eigenvalue-based FIDs
    (torch-fidelity's, torchmetrics') run on a small block instead of 2048 x 2048: seconds saved
    per FID on a small machine. scipy's sqrtm (pytorch-fid) takes its full time either way."""
    generator = torch.Generator().manual_seed(seed)
    network = fid_inception_v3_structure()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        first = 0
        for name in FINAL_BRANCHES:
            bias = getattr(network.Mixed_7c, name).bn.bias
            bias[max(0, live_features - first):] = -1e4  # ReLU after it: exactly 0 at every pixel
            first += len(bias)
    state = network.state_dict()
    if fid_backend(backend).weights_file == FID_BACKENDS["torch-fidelity"].weights_file:
        # torch-fidelity's file (torchmetrics reads it too): a plain dict of the converted tensors.
        state = {key: value for key, value in state.items() if not key.endswith(OPTIONAL_KEY)}
    torch.save(state, path)
    return Path(path)


class PaletteSegmenter(torch.nn.Module):
    """RGB [B, 3, H, W] in 0..1 -> scores [B, C, H, W]: minus the distance to each class colour."""

    def __init__(self, palette: np.ndarray):
        super().__init__()
        self.register_buffer("palette", torch.from_numpy(palette.astype(np.float32) / 255.0))  # [C, 3]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -((images[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(dim=2)


def write_palette_segmenter(schema: LabelSchema, path: str | Path) -> Path:
    """The palette segmenter of `schema` (void left out) as a TorchScript file with classes.json inside."""
    num_classes = schema.void_index
    return save_torchscript(PaletteSegmenter(schema_palette(schema)[:num_classes]), schema.class_names[:num_classes], path)
