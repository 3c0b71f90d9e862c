"""Small stand-ins for the evaluation tests: Inception weights and a segmenter, made on the spot.

- `write_random_inception_weights(path)`: random weights in the layout torch-fidelity's FID
  Inception reads (torchvision's Inception v3 layers with a 1008-way fc), scaled so the
  activations stay finite through the 90-odd layers. Nothing is downloaded; FID numbers from
  them mean nothing, but every step of the torchmetrics path runs.
- `PaletteSegmenter`: a segmenter that reads a colour-coded label map back (the class whose
  schema colour is nearest), so on colourized label maps it returns the label itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.schema import LabelSchema
from pipeline.segmenter.file import save_torchscript
from pipeline.visualize import schema_palette


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    from torchvision.models import inception_v3

    generator = torch.Generator().manual_seed(seed)
    network = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    torch.save(network.state_dict(), path)
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
