"""The loss network: VGG-19 features the way the CRN authors used them (docs/model.md#perceptual-loss).

torchvision's VGG-19 layers, with the authors' differences from the usual use: average
instead of max pooling, and features taken after the ReLUs of conv1_2 .. conv5_2, plus the
image itself minus the ImageNet mean on the 0..255 scale as "layer 0" (the image term).
Nothing after conv5_2 is built.

Input convention: what the convolutions are fed depends on how the weights were trained.
- "torchvision": torchvision-layout weights ("imagenet", a .pth state dict, "random") were
  trained on (x / 255 - mean) / std, torchvision's ImageNet normalisation; fed 0..255 they
  would see inputs about 57x too large (docs/recipe.md#loss-network-weights). We normalise explicitly rather
  than fold the normalisation into conv1_1: a folded conv1_1 differs at the image border,
  where the zero padding would stand for a black pixel instead of a zero-mean one.
- "caffe": the authors' MatConvNet network takes RGB 0..255 minus the mean, no std.
Layer 0 is the same in both. `input_convention_for(weights)` says which convention a weights
name implies (a weights loader for another layout adds its kind there); the constructor's
`input_convention` overrides it.

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
# torchvision's ImageNet normalisation of x / 255 (VGG19_Weights.IMAGENET1K_V1.transforms()).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TORCHVISION, CAFFE = "torchvision", "caffe"
INPUT_CONVENTIONS = (TORCHVISION, CAFFE)
# torchvision vgg19().features indices of relu1_2, relu2_2, relu3_2, relu4_2, relu5_2.
FEATURE_INDICES = (3, 8, 13, 22, 31)
LAYER_NAMES = ("image", "relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
IMAGENET_WEIGHTS = VGG19_Weights.IMAGENET1K_V1


class VGGWeightsError(ValueError):
    """The requested VGG-19 weights cannot be used (missing, unreadable, wrong shapes)."""


def input_convention_for(weights: str | os.PathLike) -> str:
    """The input convention a weights name implies: the authors' MatConvNet file (`.mat`) was
    trained on 0..255 minus the mean ("caffe"); every other kind read here is torchvision's
    layout, trained on torchvision's normalisation (random weights follow it too: their
    Kaiming initialisation expects inputs of unit scale)."""
    return CAFFE if str(weights).endswith(".mat") else TORCHVISION


def imagenet_cache_path() -> Path:
    """Where torchvision looks for (and would download) the ImageNet VGG-19 weights."""
    file_name = os.path.basename(urlparse(IMAGENET_WEIGHTS.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


class VGG19Features(nn.Module):
    """Frozen VGG-19 feature extractor: RGB [N, 3, H, W] in [0, 255] -> 6 feature maps.

    `input_convention` ("torchvision" or "caffe", see the module docstring) defaults to the
    one the weights imply (`input_convention_for`).
    """

    def __init__(self, weights: str | os.PathLike, input_convention: str | None = None):
        super().__init__()
        self.input_convention = input_convention or input_convention_for(weights)
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"VGG-19 input convention {self.input_convention!r} is not one of "
                             f"{', '.join(INPUT_CONVENTIONS)}")
        # Build on the meta device so the 400 MB classifier we never use is not allocated.
        with torch.device("meta"):
            layers = vgg19(weights=None).features[: FEATURE_INDICES[-1] + 1]
        layers = layers.to_empty(device="cpu")
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                layers[i] = nn.AvgPool2d(kernel_size=2, stride=2)
        self.layers = layers
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        # What the convolutions see: (rgb - shift) / scale, per channel.
        if self.input_convention == TORCHVISION:
            shift = [255.0 * m for m in TORCHVISION_MEAN]
            scale = [255.0 * s for s in TORCHVISION_STD]
        else:
            shift, scale = list(IMAGENET_MEAN_RGB), [1.0, 1.0, 1.0]
        self.register_buffer("input_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
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
            return f"matconvnet:{path.resolve()}"  # input_convention_for gave it "caffe", its training input
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
        features = [rgb - self.mean]  # the image term, 0..255 scale, in either convention
        x = (rgb - self.input_shift) / self.input_scale
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in FEATURE_INDICES:
                features.append(x)
        return features
