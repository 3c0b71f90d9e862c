"""The segmenter's network: a torchvision segmentation architecture with random weights, and
the face it is exported with (the contract of pipeline.segmenter.file).

LR-ASPP or DeepLabV3 on a MobileNetV3-Large backbone, trained from scratch: no pretrained
weights, so nothing is downloaded.
"""
from __future__ import annotations

import torch

ARCHITECTURES = ("lraspp-mobilenet-v3-large", "deeplabv3-mobilenet-v3-large")
# torchvision's MobileNetV3 sets BatchNorm momentum 0.01; in a run of a few hundred steps the
# running statistics then lag so far behind the weights that eval-mode predictions collapse
# to one class (seen here on the toy data). The PyTorch default keeps them current.
BATCHNORM_MOMENTUM = 0.1


def build_network(architecture: str, num_scored_classes: int) -> torch.nn.Module:
    """A torchvision segmentation network with random weights (nothing downloaded)."""
    from torchvision.models import segmentation

    builder = {"lraspp-mobilenet-v3-large": segmentation.lraspp_mobilenet_v3_large,
               "deeplabv3-mobilenet-v3-large": segmentation.deeplabv3_mobilenet_v3_large}[architecture]
    kwargs = {"aux_loss": False} if architecture.startswith("deeplabv3") else {}
    network = builder(weights=None, weights_backbone=None, num_classes=num_scored_classes, **kwargs)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = BATCHNORM_MOMENTUM
    return network


class ExportedSegmenter(torch.nn.Module):
    """The segmenter contract's face (pipeline.segmenter.file): RGB in 0..1 -> class scores."""

    def __init__(self, network):  # (no annotation: TorchScript cannot read "torch.nn.Module" as a string)
        super().__init__()
        self.network = network
        # ImageNet statistics, the usual input normalisation of torchvision's backbones.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)["out"]
