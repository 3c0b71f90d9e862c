"""The CRN training loss: per-class, per-layer VGG feature matching with the diversity minimum.

docs/model.md#perceptual-loss. For each output u, class c and loss-network layer l:

    E_l[u, c] = mean_x  M_c^l(x) * mean_j |Phi_l^j(real)(x) - Phi_l^j(fake_u)(x)|      (3.1)
    content[u, c] = sum_l lambda_l * E_l[u, c]                                          (3.2)
    loss = 0.999 * sum_c min_u content[u, c] + 0.001 * sum_c mean_u content[u, c]       (3.4)

With K = 1 the minimum and the mean coincide and the loss is the plain feature-matching
loss, because the class masks sum to one at every pixel. A batch of B label maps gives the
mean of the B per-sample losses (the authors trained with B = 1).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from crn.labels import label_pyramid
from crn.vgg import LAYER_NAMES, VGG19Features

# lambda_l for (image, relu1_2, relu2_2, relu3_2, relu4_2, relu5_2), docs/model.md#layer-weights. The
# published rows are the "uncalibrated" row divided by measured term means (docs/recipe.md#recalibration) of the
# authors' MatConvNet VGG-19; the 1024p model uses the 512p row. With torchvision's weights
# the features have other scales, so those rows are only starting values.
LAYER_WEIGHTS: dict[str, tuple[float, ...]] = {
    "cityscapes-256p": (1.0, 1 / 1.6, 1 / 2.3, 1 / 1.8, 1 / 2.8, 10 / 0.8),
    "cityscapes-512p": (1.0, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5),
    "gta5-256p": (1.0, 1 / 1.4, 1 / 1.8, 1 / 1.3, 1 / 2.2, 10 / 0.62),
    "uncalibrated": (1.0, 1.0, 1.0, 1.0, 1.0, 10.0),
}
NUM_LAYERS = 6

# docs/model.md#diversity-loss: the share of the per-class minimum; the rest goes to the mean over outputs so
# that outputs which never win still get a gradient.
MIN_SHARE = 0.999


def class_layer_errors(
    real_features: Sequence[torch.Tensor],
    fake_features: Sequence[torch.Tensor],
    onehot: torch.Tensor,
) -> torch.Tensor:
    """E_l[u, c] of equation 3.1 for every sample, output, class and layer.

    real_features: per layer [B, C_l, H_l, W_l]; fake_features: per layer [B*K, C_l, H_l, W_l]
    (sample-major: the K outputs of sample b are rows b*K .. b*K+K-1); onehot [B, L, H, W].
    Returns [B, K, L, num_layers].
    """
    batch = onehot.shape[0]
    num_outputs = fake_features[0].shape[0] // batch
    # Masks at every resolution the features use, area-averaged like the model's label
    # pyramid. relu1_2 runs at full resolution, so layers 0 and 1 share the full mask.
    smallest = min(f.shape[-2] for f in real_features)
    levels = label_pyramid(onehot, (onehot.shape[-2] // smallest).bit_length())
    masks = {m.shape[-2]: m for m in levels}

    per_layer = []
    for real, fake in zip(real_features, fake_features):
        channels, height, width = real.shape[1:]
        fake = fake.view(batch, num_outputs, channels, height, width)
        # mean over channels j of |Phi(real) - Phi(fake_u)|, per pixel
        distance = (fake - real.unsqueeze(1)).abs().mean(dim=2)  # [B, K, H_l, W_l]
        mask = masks[height]  # [B, L, H_l, W_l]
        # mean over pixels x of M_c(x) * distance_u(x), as one batched matrix product
        errors = torch.bmm(distance.flatten(2), mask.flatten(2).transpose(1, 2)) / (height * width)  # [B, K, L]
        per_layer.append(errors)
    return torch.stack(per_layer, dim=-1)  # [B, K, L, num_layers]


def diversity_loss(content: torch.Tensor) -> torch.Tensor:
    """Equation 3.4 on content [B, K, C]: the minimum over outputs is taken per class.

    Different classes may be won by different outputs; a minimum over each output's total
    would be a different, weaker objective. Returns the mean over the batch.
    """
    per_class_min = content.min(dim=1).values.sum(dim=-1)  # [B]
    per_class_mean = content.mean(dim=1).sum(dim=-1)  # [B]
    return (MIN_SHARE * per_class_min + (1.0 - MIN_SHARE) * per_class_mean).mean()


def recalibrate(weights: Sequence[float], term_means: Sequence[float]) -> tuple[float, ...]:
    """docs/recipe.md#recalibration: divide each VGG layer's weight by the measured mean of its term.

    `term_means` are the unweighted per-layer terms that `CRNLoss` reports, averaged over a
    pass through the data: each layer's plain mean L1 (sum over classes of E_l, averaged
    over samples and outputs). Starting from "uncalibrated" the result keeps conv5_2's extra
    x10. The image term (layer 0) keeps its weight: every published row has it at 1.
    """
    if len(weights) != NUM_LAYERS or len(term_means) != NUM_LAYERS:
        raise ValueError(f"recalibrate needs {NUM_LAYERS} weights and {NUM_LAYERS} term means")
    if any(m <= 0 for m in term_means[1:]):
        raise ValueError(f"recalibrate: term means must be positive, got {list(term_means)}")
    return (float(weights[0]),) + tuple(float(w) / float(m) for w, m in zip(weights[1:], term_means[1:]))


class CRNLoss(nn.Module):
    """The full training loss for K outputs per label map (docs/model.md#perceptual-loss).

    forward(fake [B, K, 3, H, W], real [B, 3, H, W], onehot [B, L, H, W]) returns the scalar
    loss and, for logging and `recalibrate`, each layer's unweighted term by its layer name
    (image, relu1_2 .. relu5_2): the plain mean L1 of the layer, sum over classes of E_l
    averaged over samples and outputs (docs/recipe.md#recalibration; the masks sum to one, so this is the
    unmasked L1, not a mean over classes, which would be L times smaller).
    """

    def __init__(self, vgg: VGG19Features, layer_weights: Sequence[float]):
        super().__init__()
        if len(layer_weights) != NUM_LAYERS:
            raise ValueError(f"CRNLoss needs {NUM_LAYERS} layer weights, got {len(layer_weights)}")
        self.vgg = vgg
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("weights", torch.tensor(self.layer_weights), persistent=False)

    def forward(
        self, fake: torch.Tensor, real: torch.Tensor, onehot: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch, num_outputs, _, height, width = fake.shape
        if real.shape != (batch, 3, height, width) or onehot.shape[0] != batch or onehot.shape[-2:] != (height, width):
            raise ValueError(
                f"CRNLoss: fake {tuple(fake.shape)}, real {tuple(real.shape)} and labels "
                f"{tuple(onehot.shape)} do not describe the same batch of {height}x{width} images"
            )
        if height < 16:
            raise ValueError(f"CRNLoss: images of {height}x{width} are too small for VGG-19's four poolings")
        # The real image's features do not depend on the model: once per sample, no graph.
        with torch.no_grad():
            real_features = self.vgg(real)
        fake_features = self.vgg(fake.reshape(batch * num_outputs, 3, height, width))
        errors = class_layer_errors(real_features, fake_features, onehot)  # [B, K, L, layers]
        content = errors @ self.weights  # [B, K, L]
        loss = diversity_loss(content)
        term_means = errors.detach().sum(dim=2).mean(dim=(0, 1)).tolist()  # sum over classes, mean over B, K
        return loss, dict(zip(LAYER_NAMES, term_means))
