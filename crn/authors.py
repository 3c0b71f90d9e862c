"""The authors' released generators (TF1 checkpoints) as CRN weights.

The authors' `recursive_generator` (demo_256p.py, demo_512p.py, demo_1024p.py,
GTA_Diversity_256p.py) names its variables by the module's height `h` (4, 8, ..., 1024):

    g_<h>_conv1/weights              [3, 3, in, out]   conv3x3, no bias (slim.conv2d with a normalizer)
    g_<h>_conv1/LayerNorm/gamma|beta [out]             slim.layer_norm's scale and shift
    g_<h>_conv2/...                                    the same for the second conv
    g_<top>_conv100/weights|biases   [1, 1, d, 3K], [3K]   the head

so 6 tensors per module plus 2: 44, 50 and 56 for the 256p, 512p and 1024p models. Each maps
onto one parameter of crn.model.CRN: `modules_by_res["<h>x<2h>"].conv1.weight` (kernels HWIO
-> OIHW), `.norm1.weight|bias` (GroupNorm(1) is their layer norm), and `head.weight|bias`.
Two orders need no change because our model already has the authors': a module's input is
[upsampled features, labels] in that order, and the head's 3K channels are planar (R of all
K images, then G, then B). Slots of a TF optimizer saved alongside (`.../Adam`, `beta1_power`)
are not weights and are left out; any other tensor that maps nowhere is an error, as is a
parameter that no tensor sets.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch

from crn.config import BASE_RESOLUTION, CRNConfig
from crn.model import CRN

_MODULE_KERNEL = re.compile(r"^g_(\d+)_conv1/weights$")
_OPTIMIZER_STATE = re.compile(r"(^|/)(Adam(_\d+)?|beta[12]_power|Momentum|RMSProp(_\d+)?)$")
HEAD_SCOPE = "conv100"


class AuthorsCheckpointError(ValueError):
    """The tensors do not form the authors' generator, or not the one asked for: one line."""


def is_optimizer_state(name: str) -> bool:
    """A TF optimizer's slot or counter saved with the model (not a weight)."""
    return bool(_OPTIMIZER_STATE.search(name))


def config_from_authors_tensors(tensors: Mapping[str, np.ndarray]) -> CRNConfig:
    """The CRNConfig the tensors describe: module heights, widths, L and K read off the shapes."""
    heights = sorted(int(m.group(1)) for name in tensors if (m := _MODULE_KERNEL.match(name)))
    if not heights:
        raise AuthorsCheckpointError("no g_<h>_conv1/weights tensors: not one of the authors' CRN generators")
    expected = [BASE_RESOLUTION.height << i for i in range(len(heights))]
    if heights != expected:
        raise AuthorsCheckpointError(
            f"modules g_{'/'.join(map(str, heights))} are not the cascade g_{'/'.join(map(str, expected))}")
    first = tensors[f"g_{heights[0]}_conv1/weights"]
    widths = tuple(int(tensors[f"g_{h}_conv1/weights"].shape[-1]) for h in heights)
    head_name = f"g_{heights[-1]}_{HEAD_SCOPE}/weights"
    if head_name not in tensors:
        heads = sorted(n for n in tensors if re.match(rf"^g_\d+_{HEAD_SCOPE}/weights$", n))
        raise AuthorsCheckpointError(
            f"no head {head_name} on the top module g_{heights[-1]}" + (f" (found {', '.join(heads)})" if heads else ""))
    head_channels = int(tensors[head_name].shape[-1])
    if head_channels % 3:
        raise AuthorsCheckpointError(f"head {head_name} has {head_channels} channels, not 3 per image")
    return CRNConfig(num_classes=int(first.shape[2]), widths=widths, num_outputs=head_channels // 3)


def tensor_names(config: CRNConfig) -> dict[str, tuple[str, bool]]:
    """Authors' variable name -> (CRN state-dict key, whether it is a kernel to transpose)."""
    names = {}
    for resolution in config.resolutions:
        module, h = f"modules_by_res.{resolution}", resolution.height
        for conv in ("1", "2"):
            scope = f"g_{h}_conv{conv}"
            names[f"{scope}/weights"] = (f"{module}.conv{conv}.weight", True)
            names[f"{scope}/LayerNorm/gamma"] = (f"{module}.norm{conv}.weight", False)
            names[f"{scope}/LayerNorm/beta"] = (f"{module}.norm{conv}.bias", False)
    head = f"g_{config.top_resolution.height}_{HEAD_SCOPE}"
    names[f"{head}/weights"] = ("head.weight", True)
    names[f"{head}/biases"] = ("head.bias", False)
    return names


def authors_state_dict(tensors: Mapping[str, np.ndarray], config: CRNConfig) -> dict[str, torch.Tensor]:
    """The CRN state dict for `config` from the authors' tensors; every tensor used, every
    parameter set, every shape checked (one-line AuthorsCheckpointError otherwise)."""
    names = tensor_names(config)
    weights = {name for name in tensors if not is_optimizer_state(name)}
    unused = sorted(weights - names.keys())
    if unused:
        raise AuthorsCheckpointError(
            f"{len(unused)} tensors map to no parameter of a {config.top_resolution} model (first: {unused[0]})")
    missing = sorted(names.keys() - weights)
    if missing:
        raise AuthorsCheckpointError(f"{len(missing)} parameters have no tensor (first: {missing[0]})")
    wanted = CRN(config).state_dict()
    if set(wanted) != {key for key, _ in names.values()}:  # the model and this table must agree
        raise AssertionError("crn.authors.tensor_names does not cover crn.model.CRN's parameters")
    state = {}
    for name, (key, is_kernel) in names.items():
        array = np.asarray(tensors[name], dtype=np.float32)
        value = torch.from_numpy(array.transpose(3, 2, 0, 1).copy() if is_kernel else array.copy())  # HWIO -> OIHW
        if value.shape != wanted[key].shape:
            out, inp, *kernel = wanted[key].shape
            expected = [*kernel, inp, out] if is_kernel else [out]
            raise AuthorsCheckpointError(f"{name} has shape {list(array.shape)}, expected {expected} for {key}")
        state[key] = value
    return state
