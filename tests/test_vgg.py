"""The VGG-19 loss network: the authors' variant of it, and weights that never come silently.

    .venv/bin/python -m pytest tests/test_vgg.py -q

No test downloads anything: weight files are made here from random tensors shaped like
torchvision's vgg19 state dict, and the torch hub cache is pointed at a temporary folder.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg19

from torchvision.models import VGG19_Weights
from torchvision.transforms.functional import normalize

from crn.vgg import IMAGENET_MEAN_RGB, VGG19Features, VGGWeightsError, imagenet_cache_path, input_convention_for

# torchvision's configuration "E" (VGG-19): conv widths and "M" for the pooling layers.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# The authors tap the second conv of each block: conv1_2, conv2_2, conv3_2, conv4_2, conv5_2.
TAPPED_CONVS = (2, 4, 6, 10, 14)  # 1-based positions among the 16 convs


@pytest.fixture(scope="module")
def torchvision_features_state():
    """A random state dict with exactly the keys and shapes of torchvision's vgg19().features."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg19(weights=None).features.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("weight"):
            fan_out = shape[0] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_out) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, torchvision_features_state):
    folder = tmp_path_factory.mktemp("vgg")
    features_only = folder / "vgg19_features.pth"  # keys "0.weight", ... (vgg.features.state_dict())
    torch.save(torchvision_features_state, features_only)
    full = folder / "vgg19_full.pth"  # keys "features.0.weight", ..., "classifier..." (vgg.state_dict())
    full_state = {f"features.{k}": v for k, v in torchvision_features_state.items()}
    full_state["classifier.6.bias"] = torch.zeros(1000)  # present in the real file, unused by us
    torch.save(full_state, full)
    return {"features": features_only, "full": full}


def reference_features(state: dict, rgb: torch.Tensor) -> list[torch.Tensor]:
    """The authors' build_vgg19 (MatConvNet weights, the "caffe" input convention), written
    out: 0..255 minus the mean, conv+relu, average pooling, taps after conv_2."""
    conv_keys = sorted({int(k.split(".")[0]) for k in state})
    x = rgb - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
    taps = [x]
    conv_number = 0
    for item in VGG19_LAYOUT:
        if item == "M":
            x = F.avg_pool2d(x, 2)
            continue
        index = conv_keys[conv_number]
        conv_number += 1
        x = F.relu(F.conv2d(x, state[f"{index}.weight"], state[f"{index}.bias"], padding=1))
        if conv_number in TAPPED_CONVS:
            taps.append(x)
        if conv_number == TAPPED_CONVS[-1]:
            break
    return taps


def torchvision_reference(state: dict, rgb: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own vgg19 (its max pooling swapped for average pooling, as the authors
    did) on torchvision's documented ImageNet transform of the image: x / 255, normalised
    with the mean and std of VGG19_Weights.IMAGENET1K_V1.transforms()."""
    model = vgg19(weights=None)
    model.features.load_state_dict(state)
    layers = [torch.nn.AvgPool2d(2, 2) if isinstance(m, torch.nn.MaxPool2d) else m for m in model.features]
    transform = VGG19_Weights.IMAGENET1K_V1.transforms()
    x = normalize(rgb / 255.0, mean=transform.mean, std=transform.std)
    taps = []
    with torch.no_grad():
        for index, layer in enumerate(layers[:32]):
            x = layer(x)
            if index in (3, 8, 13, 22, 31):  # relu1_2 .. relu5_2
                taps.append(x)
    return taps


@pytest.mark.parametrize("form", ["features", "full"])
def test_torchvision_weights_see_torchvisions_normalisation(form, weight_files, torchvision_features_state):
    """docs/recipe.md#loss-network-weights: with torchvision-layout weights, layers 1..5 are torchvision's own
    features of the normalised image; layer 0 is the image minus the mean on 0..255."""
    vgg = VGG19Features(str(weight_files[form]))
    assert vgg.input_convention == "torchvision" == input_convention_for(str(weight_files[form]))
    torch.manual_seed(1)
    rgb = torch.rand(2, 3, 32, 64) * 255
    with torch.no_grad():
        features = vgg(rgb)
    assert torch.equal(features[0], rgb - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1))
    for name, got, want in zip(("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2"), features[1:],
                               torchvision_reference(torchvision_features_state, rgb)):
        assert got.shape == want.shape, name
        # relative to the layer's scale: 1e-5
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=name)
    # The old input (0..255 minus the mean into torchvision weights) is far from it.
    caffe = VGG19Features(str(weight_files[form]), input_convention="caffe")
    with torch.no_grad():
        assert not torch.allclose(caffe(rgb)[1], features[1], rtol=0.1)
    assert VGG19Features("random").input_convention == "torchvision"


def test_unknown_input_convention_is_refused():
    with pytest.raises(ValueError, match="input convention 'bgr' is not one of torchvision, caffe"):
        VGG19Features("random", input_convention="bgr")


@pytest.mark.parametrize("form", ["features", "full"])
def test_caffe_convention_matches_the_authors_network(form, weight_files, torchvision_features_state):
    vgg = VGG19Features(str(weight_files[form]), input_convention="caffe")
    assert vgg.weights_source == f"file:{weight_files[form].resolve()}"
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in vgg.modules())
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 32, 64) * 255
    features = vgg(rgb)
    expected = reference_features(torchvision_features_state, rgb)
    shapes = [(3, 32, 64), (64, 32, 64), (128, 16, 32), (256, 8, 16), (512, 4, 8), (512, 2, 4)]
    assert [tuple(f.shape[1:]) for f in features] == shapes
    assert torch.equal(features[0], rgb - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1))
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_imagenet_weights_come_from_torchvisions_cache_without_download(tmp_path, monkeypatch, weight_files):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_cache_path()
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"

    with pytest.raises(VGGWeightsError) as info:
        VGG19Features("imagenet")
    message = str(info.value)
    assert str(cached) in message and "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert "no download" in message and "\n" not in message
    assert not cached.exists()

    cached.parent.mkdir(parents=True)
    cached.symlink_to(weight_files["full"])
    vgg = VGG19Features("imagenet")
    assert vgg.weights_source == f"imagenet:{cached}"
    from_file = VGG19Features(str(weight_files["full"]))
    rgb = torch.rand(1, 3, 16, 32) * 255
    for a, b in zip(vgg(rgb), from_file(rgb)):
        assert torch.equal(a, b)


def test_random_weights_only_by_name_and_frozen():
    torch.manual_seed(0)
    vgg = VGG19Features("random")
    assert vgg.weights_source == "random"
    assert all(not p.requires_grad for p in vgg.parameters())
    rgb = (torch.rand(1, 3, 16, 32) * 255).requires_grad_()
    sum(f.sum() for f in vgg(rgb)).backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0  # the image still gets a gradient
    assert all(p.grad is None for p in vgg.parameters())


def test_bad_weights_are_one_line_errors(tmp_path, torchvision_features_state):
    with pytest.raises(VGGWeightsError, match="neither 'imagenet', 'random' nor an existing file"):
        VGG19Features(str(tmp_path / "nope.pth"))
    torn = tmp_path / "torn.pth"
    torn.write_bytes(b"not a torch file")
    with pytest.raises(VGGWeightsError, match=f"{torn} cannot be read"):
        VGG19Features(str(torn))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torchvision_features_state.items() if not k.startswith("30.")}, partial)
    with pytest.raises(VGGWeightsError, match="missing 2 feature tensors \\(first: 30.weight\\)"):
        VGG19Features(str(partial))
    wrong = tmp_path / "wrong.pth"
    torch.save({**torchvision_features_state, "0.weight": torch.zeros(64, 1, 3, 3)}, wrong)
    with pytest.raises(VGGWeightsError, match="0.weight has shape \\(64, 1, 3, 3\\), expected \\(64, 3, 3, 3\\)"):
        VGG19Features(str(wrong))
