"""The authors' VGG-19 file (MatConvNet .mat), read exactly as their build_vgg19 reads it.

    .venv/bin/python -m pytest tests/test_matconvnet.py -q

The file is written here with scipy in the layout of imagenet-vgg-verydeep-19.mat (a 1 x N
cell array `layers` of structs with fields name, type, weights, ...; weights = {W, b} with
W as [h, w, in, out]) and random weights. Reference: the authors' network written out in
numpy, each convolution summed by hand with the kernel indexed as W[h, w, in, out], the
way tf.nn.conv2d uses it.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from numpy.lib.stride_tricks import sliding_window_view

from crn.matconvnet import CONV_INDICES, CONV_NAMES
from crn.vgg import IMAGENET_MEAN_RGB, VGG19Features, VGGWeightsError

# imagenet-vgg-verydeep-19.mat's first 37 layers: (name, type, output channels for convs).
BLOCKS = ((1, 64, 2), (2, 128, 2), (3, 256, 4), (4, 512, 4), (5, 512, 4))
TAPS = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")


def layer_list() -> list[tuple[str, str, int]]:
    layers = []
    for block, channels, convs in BLOCKS:
        for n in range(1, convs + 1):
            layers += [(f"conv{block}_{n}", "conv", channels), (f"relu{block}_{n}", "relu", 0)]
        layers.append((f"pool{block}", "pool", 0))
    return layers


@pytest.fixture(scope="module")
def authors_mat(tmp_path_factory):
    """(path, {conv name: (W [h, w, in, out], b [out])}) of a random network in the file's layout."""
    rng = np.random.default_rng(19)
    cells = np.empty((1, len(layer_list())), dtype=object)
    arrays, channels_in = {}, 3
    for i, (name, kind, channels) in enumerate(layer_list()):
        if kind != "conv":
            cells[0, i] = {"name": name, "type": kind}
            continue
        weights = (rng.standard_normal((3, 3, channels_in, channels)) * np.sqrt(2 / (9 * channels_in))).astype(np.float32)
        bias = (0.1 * rng.standard_normal((channels, 1))).astype(np.float32)  # stored as a column, like the file
        pair = np.empty((1, 2), dtype=object)
        pair[0, 0], pair[0, 1] = weights, bias
        cells[0, i] = {"name": name, "type": "conv", "weights": pair, "size": np.array([[3, 3, channels_in, channels]])}
        arrays[name] = (weights, bias.ravel())
        channels_in = channels
    path = tmp_path_factory.mktemp("matconvnet") / "imagenet-vgg-verydeep-19.mat"
    scipy.io.savemat(path, {"layers": cells})
    return path, arrays


def conv_hwio(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x [in, H, W] with SAME zero padding; out[o, y, x] = sum W[h, w, i, o] * x[i, y+h-1, x+w-1] + b[o]."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(1, 2))  # [in, H, W, h, w]
    return np.einsum("iyxhw,hwio->oyx", windows, weights, optimize=True) + bias[:, None, None]


def authors_features(arrays: dict, rgb: np.ndarray, swap_spatial_axes: bool = False) -> list[np.ndarray]:
    """build_vgg19 of demo_256p.py for one image rgb [3, H, W] in 0..255."""
    x = rgb - np.array(IMAGENET_MEAN_RGB).reshape(3, 1, 1)
    taps = [x]
    for name, kind, _ in layer_list():
        if kind == "conv":
            weights, bias = arrays[name]
            weights = weights.transpose(1, 0, 2, 3) if swap_spatial_axes else weights
            x = np.maximum(conv_hwio(x, weights, bias), 0)
            if name in TAPS:
                taps.append(x)
            if name == TAPS[-1]:
                return taps
        elif kind == "pool":  # tf.nn.avg_pool 2x2, stride 2
            x = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2).mean(axis=(2, 4))
    raise AssertionError("conv5_2 not reached")


def test_the_authors_indices_are_the_conv_layers():
    convs = [i for i, (_, kind, _) in enumerate(layer_list()) if kind == "conv"][: len(CONV_INDICES)]
    assert tuple(convs) == CONV_INDICES
    assert tuple(layer_list()[i][0] for i in CONV_INDICES) == CONV_NAMES


def test_features_equal_the_authors_network_on_the_same_arrays(authors_mat):
    path, arrays = authors_mat
    vgg = VGG19Features(str(path))
    assert vgg.weights_source == f"matconvnet:{path.resolve()}"
    assert vgg.input_convention == "caffe"
    rgb = np.random.default_rng(1).uniform(0, 255, size=(3, 32, 64)).astype(np.float32)
    with torch.no_grad():
        ours = [f[0].numpy() for f in vgg(torch.from_numpy(rgb)[None])]
    expected = authors_features(arrays, rgb.astype(np.float64))
    assert [f.shape for f in ours] == [f.shape for f in expected]
    for layer, (a, b) in enumerate(zip(ours, expected)):
        scale = np.abs(b).max()
        assert np.abs(a - b).max() <= 1e-4 * scale, f"layer {layer}"
    # The test can tell the two readings apart: with h and w swapped the features differ.
    swapped = authors_features(arrays, rgb.astype(np.float64), swap_spatial_axes=True)
    assert np.abs(ours[2] - swapped[2]).max() > 0.1 * np.abs(swapped[2]).max()


def test_bad_mat_files_are_one_line_errors(tmp_path, authors_mat):
    path, _ = authors_mat
    cases = {
        "missing.mat": ("does not exist", None),
        "empty-dict.mat": ("has no 'layers' array", {"other": np.zeros(3)}),
        "truncated.mat": ("cannot be read as a .mat file", path.read_bytes()[:5000]),
    }
    for name, (expected, content) in cases.items():
        target = tmp_path / name
        if isinstance(content, dict):
            scipy.io.savemat(target, content)
        elif content is not None:
            target.write_bytes(content)
        with pytest.raises(VGGWeightsError) as info:
            VGG19Features(str(target))
        message = str(info.value)
        assert expected in message and len(message.splitlines()) == 1, message


def test_a_layer_out_of_place_is_named(tmp_path):
    cells = np.empty((1, 3), dtype=object)
    pair = np.empty((1, 2), dtype=object)
    pair[0, 0], pair[0, 1] = np.zeros((3, 3, 3, 64), np.float32), np.zeros((64, 1), np.float32)
    cells[0, 0] = {"name": "conv1_2", "type": "conv", "weights": pair}
    cells[0, 1] = {"name": "relu", "type": "relu"}
    cells[0, 2] = {"name": "conv1_2", "type": "conv", "weights": pair}
    target = tmp_path / "wrong.mat"
    scipy.io.savemat(target, {"layers": cells})
    with pytest.raises(VGGWeightsError, match="layer 0 is 'conv1_2', expected 'conv1_1'"):
        VGG19Features(str(target))
