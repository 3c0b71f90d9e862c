"""The authors' loss network file: MatConvNet's `imagenet-vgg-verydeep-19.mat`, read as they read it.

The authors' `build_vgg19` (demo_256p.py) loads the file with scipy.io.loadmat and takes, for
the conv layers at indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30 of
`layers` (conv1_1 .. conv5_2; relus and pools sit between them),

    W = layers[0][i][0][0][2][0][0]     handed to tf.nn.conv2d as [h, w, in, out]
    b = layers[0][i][0][0][2][0][1]     reshaped to [out]

and feeds the network RGB in 0..255 minus the mean (123.68, 116.779, 103.939): the "caffe"
input convention. We take the same arrays and only change the layout to torchvision's
[out, in, h, w]. MatConvNet's layer list has torchvision's vgg19().features order (conv,
relu, ..., pool), so the indices are also the torchvision state-dict keys ("0.weight", ...).

The spatial axes are NOT swapped. Other TensorFlow ports of this file transpose the kernels
to [w, h, in, out], reading MatConvNet's layout as width first; the authors did not, and
their loss, with the kernels exactly as loadmat returns them, is the function we reproduce.
"""
from __future__ import annotations

import os

import numpy as np
import torch

# build_vgg19's layer indices, conv1_1 .. conv5_2, and the names the file gives those layers.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30)
CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
              "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2")


class MatConvNetError(ValueError):
    """The .mat file is not the MatConvNet VGG-19 in the layout the authors read: one line."""


def load_matconvnet_vgg19(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torchvision-style feature state dict ("0.weight", "0.bias", ..., "30.bias") from the file."""
    import scipy.io

    try:
        layers = scipy.io.loadmat(path)["layers"][0]
    except KeyError:
        raise MatConvNetError(f"{path} has no 'layers' array: not a MatConvNet network") from None
    except Exception as exc:  # scipy raises several types for torn or foreign files
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MatConvNetError(f"{path} cannot be read as a .mat file ({message})") from None
    state = {}
    for index, name in zip(CONV_INDICES, CONV_NAMES):
        try:
            layer = layers[index][0][0]
            weights = layer[2][0][0]
            bias = layer[2][0][1]
        except (IndexError, TypeError, ValueError):
            raise MatConvNetError(f"{path}: layer {index} ({name}) has no [W, b] weights where the authors "
                                  "read them (layers[0][i][0][0][2][0])") from None
        found = _layer_name(layer)
        if found is not None and found != name:
            raise MatConvNetError(f"{path}: layer {index} is '{found}', expected '{name}'")
        weights, bias = np.asarray(weights, dtype=np.float32), np.asarray(bias, dtype=np.float32)
        if weights.ndim != 4:
            raise MatConvNetError(f"{path}: layer {index} ({name}) weights have shape {list(weights.shape)}, "
                                  "not [h, w, in, out]")
        # [h, w, in, out] -> [out, in, h, w]; h stays h (see the module docstring).
        state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(weights.transpose(3, 2, 0, 1)))
        state[f"{index}.bias"] = torch.from_numpy(bias.reshape(bias.size).copy())
    return state


def _layer_name(layer) -> str | None:
    """The layer struct's `name` field where it has one (the real file does)."""
    names = getattr(getattr(layer, "dtype", None), "names", None) or ()
    if "name" not in names:
        return None
    value = np.asarray(layer["name"]).ravel()
    return str(value[0]) if value.size else None
