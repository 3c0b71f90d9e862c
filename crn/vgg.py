"""The loss network: VGG-19 features the way the CRN authors used them (crn-spec.md section 3).

torchvision's VGG-19 layers, with the authors' three differences from the usual use:
RGB input in [0, 255] minus the ImageNet mean (no division by a standard deviation),
average instead of max pooling, and features taken after the ReLUs of conv1_2 .. conv5_2,
plus the mean-subtracted image itself as "layer 0". Nothing after conv5_2 is built.

Weights are chosen by name and never silently: `"imagenet"` (torchvision's
VGG19_Weights.IMAGENET1K_V1, from torchvision's cache; we never download), a path to a
state dict file, the authors' MatConvNet file (a path ending in `.mat`, crn.matconvnet), or
`"random"`. `weights_source` records which one a run used.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
from torchvision.models import VGG19_Weights, vgg19

from crn.matconvnet import MatConvNetError, load_matconvnet_vgg19

# The authors' (MatConvNet) ImageNet mean, RGB, on the 0..255 scale.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
# torchvision vgg19().features indices of relu1_2, relu2_2, relu3_2, relu4_2, relu5_2.
FEATURE_INDICES = (3, 8, 13, 22, 31)
LAYER_NAMES = ("image", "relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
IMAGENET_WEIGHTS = VGG19_Weights.IMAGENET1K_V1


class VGGWeightsError(ValueError):
    """The requested VGG-19 weights cannot be used (missing, unreadable, wrong shapes)."""


def imagenet_cache_path() -> Path:
    """Where torchvision looks for (and would download) the ImageNet VGG-19 weights."""
    file_name = os.path.basename(urlparse(IMAGENET_WEIGHTS.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


class VGG19Features(nn.Module):
    """Frozen VGG-19 feature extractor: RGB [N, 3, H, W] in [0, 255] -> 6 feature maps."""

    # What `forward` feeds layer 1: "caffe" = RGB in 0..255 minus the mean, what the
    # authors' MatConvNet network was trained on.
    input_convention = "caffe"

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        # Build on the meta device so the 400 MB classifier we never use is not allocated.
        with torch.device("meta"):
            layers = vgg19(weights=None).features[: FEATURE_INDICES[-1] + 1]
        layers = layers.to_empty(device="cpu")
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                layers[i] = nn.AvgPool2d(kernel_size=2, stride=2)
        self.layers = layers
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.weights_source = self._load_weights(weights)
        self.requires_grad_(False)
        self.eval()

    def _load_weights(self, weights: str | os.PathLike) -> str:
        if weights == "random":
            self._init_random()
            return "random"
        if weights == "imagenet":
            path = imagenet_cache_path()
            if not path.is_file():
                raise VGGWeightsError(
                    f"VGG-19 ImageNet weights not found at {path} (no download is attempted): copy "
                    f"{IMAGENET_WEIGHTS.url} there, or pass a path to the file, or ask for 'random' weights"
                )
            # torchvision's own weights API; with the file in its cache it only reads it.
            state = IMAGENET_WEIGHTS.get_state_dict(progress=False, map_location="cpu", weights_only=True)
            self._load_state(state, what=str(path))
            return f"imagenet:{path}"
        path = Path(weights)
        if path.suffix == ".mat":
            if not path.is_file():
                raise VGGWeightsError(f"VGG-19 MatConvNet file {path} does not exist")
            try:
                state = load_matconvnet_vgg19(path)
            except MatConvNetError as exc:
                raise VGGWeightsError(f"VGG-19 MatConvNet file {exc}") from None
            self._load_state(state, what=str(path))
            self.input_convention = "caffe"  # the input the MatConvNet network was trained on
            return f"matconvnet:{path.resolve()}"
        if not path.is_file():
            raise VGGWeightsError(
                f"VGG-19 weights {str(weights)!r} are neither 'imagenet', 'random' nor an existing file"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: say which one, in one line
            raise VGGWeightsError(f"VGG-19 weights file {path} cannot be read: {exc}".splitlines()[0]) from exc
        self._load_state(state, what=str(path))
        return f"file:{path.resolve()}"

    def _init_random(self) -> None:
        # torchvision's own initialisation of VGG convolutions.
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def _load_state(self, state: object, what: str) -> None:
        """Load a torchvision vgg19 state dict, full ("features.0.weight", "classifier...")
        or of the features alone ("0.weight", ...); layers past conv5_2 are ignored."""
        if not isinstance(state, dict):
            raise VGGWeightsError(f"VGG-19 weights file {what} holds a {type(state).__name__}, not a state dict")
        features = {}
        for key, value in state.items():
            name = key.removeprefix("features.")
            if name.split(".")[0].isdigit():
                features[name] = value
        wanted = self.layers.state_dict()
        missing = [k for k in wanted if k not in features]
        if missing:
            raise VGGWeightsError(
                f"VGG-19 weights file {what} is not a torchvision vgg19 state dict: missing {len(missing)} "
                f"feature tensors (first: {missing[0]})"
            )
        for key, target in wanted.items():
            if tuple(features[key].shape) != tuple(target.shape):
                raise VGGWeightsError(
                    f"VGG-19 weights file {what}: {key} has shape {tuple(features[key].shape)}, "
                    f"expected {tuple(target.shape)}"
                )
        self.layers.load_state_dict({k: features[k] for k in wanted})

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] RGB in [0, 255] -> [image - mean, relu1_2, relu2_2, relu3_2, relu4_2, relu5_2]."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"VGG-19 input must be RGB [N, 3, H, W], got shape {tuple(rgb.shape)}")
        x = rgb - self.mean
        features = [x]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in FEATURE_INDICES:
                features.append(x)
        return features
