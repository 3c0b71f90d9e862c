"""The CRN generator against docs/model.md: parameter counts, layer norm, upsampling, K split, errors.

    .venv/bin/python -m pytest tests/test_model.py -q
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crn.config import CRNConfig
from crn.labels import one_hot
from crn.model import CRN, to_uint8_images
from crn.presets import PRESETS, make_config

CITYSCAPES_CLASSES = 20  # 19 train classes + void


def count_parameters_on_meta(config: CRNConfig) -> int:
    with torch.device("meta"):  # no memory, no initialisation cost
        model = CRN(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, expected",
    [("crn-256p", 97_875_483), ("crn-512p", 98_622_851), ("crn-1024p", 98_674_531)],
)
def test_parameter_counts_match_the_authors_checkpoints(preset, expected):
    assert count_parameters_on_meta(make_config(preset, CITYSCAPES_CLASSES)) == expected


def test_presets_resolutions_outputs_and_module_names():
    expected = {
        "crn-256p": ((256, 512), 9), "crn-512p": ((512, 1024), 1), "crn-1024p": ((1024, 2048), 1),
        "crn-tiny": ((32, 64), 4), "crn-small": ((64, 128), 4), "crn-mid": ((128, 256), 4),
        "crn-chain-16p": ((16, 32), 4), "crn-chain-32p": ((32, 64), 1), "crn-chain-64p": ((64, 128), 1),
    }
    assert set(PRESETS) == set(expected)
    for name, (top, k) in expected.items():
        config = make_config(name, CITYSCAPES_CLASSES)
        assert (config.top_resolution, config.num_outputs) == (top, k), name
    with torch.device("meta"):
        model = CRN(make_config("crn-256p", CITYSCAPES_CLASSES))
    assert list(model.modules_by_res) == ["4x8", "8x16", "16x32", "32x64", "64x128", "128x256", "256x512"]
    # M_1..M_4 hold 19.06 M parameters each (docs/model.md#parameter-counts); conv1 sees 1024 + L channels.
    m1 = model.modules_by_res["8x16"]
    assert m1.conv1.weight.shape == (1024, 1024 + CITYSCAPES_CLASSES, 3, 3)
    assert sum(p.numel() for p in m1.parameters()) == 19_062_784
    assert model.modules_by_res["256x512"].conv1.weight.shape == (512, 512 + CITYSCAPES_CLASSES, 3, 3)
    assert model.head.weight.shape == (27, 512, 1, 1) and model.head.bias.shape == (27,)


def test_make_config_overrides_k_and_rejects_unknown_names():
    assert make_config("crn-tiny", 7, num_outputs=1) == CRNConfig(7, (64, 64, 64, 64), 1)
    with pytest.raises(ValueError, match="unknown model preset 'crn-huge'"):
        make_config("crn-huge", 20)


def test_config_round_trips_through_plain_dicts():
    config = make_config("crn-small", 20)
    d = config.to_dict()
    assert d == {"num_classes": 20, "widths": [128] * 5, "num_outputs": 4}
    assert CRNConfig.from_dict(d) == config
    assert config.resolutions == [(4, 8), (8, 16), (16, 32), (32, 64), (64, 128)]
    with pytest.raises(ValueError, match="unknown fields"):
        CRNConfig.from_dict({**d, "depth": 3})


def test_convs_are_bias_free_xavier_uniform_and_norms_are_one_group():
    torch.manual_seed(0)
    model = CRN(CRNConfig(num_classes=5, widths=(64, 32), num_outputs=2))
    for module in model.modules_by_res.values():
        for conv in (module.conv1, module.conv2):
            assert conv.bias is None and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            fan_in = conv.in_channels * 9
            fan_out = conv.out_channels * 9
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = conv.weight
            assert w.abs().max() <= bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
        for norm in (module.norm1, module.norm2):
            assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 1 and norm.eps == 1e-12
            assert norm.weight.shape == (norm.num_channels,)  # per-channel scale and shift
    assert model.head.bias is not None and torch.all(model.head.bias == 0)


def test_layer_norm_equals_the_formula():
    torch.manual_seed(1)
    module = CRN(CRNConfig(num_classes=3, widths=(6,))).modules_by_res["4x8"]
    with torch.no_grad():
        module.norm1.weight.uniform_(0.5, 2.0)
        module.norm1.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 6, 4, 8) * 3 + 1
    # Per sample: mean and biased variance over C, H and W together; then per-channel affine.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + 1e-12) * module.norm1.weight.view(1, -1, 1, 1) + module.norm1.bias.view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(module.norm1(x), by_hand, rtol=1e-5, atol=1e-5)


def bilinear_align_corners_by_hand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize where the corner pixels of input and output coincide."""

    def interpolation_matrix(n_out: int, n_in: int) -> torch.Tensor:
        matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            src = i * (n_in - 1) / (n_out - 1)
            lo = min(int(math.floor(src)), n_in - 2)
            frac = src - lo
            matrix[i, lo] += 1 - frac
            matrix[i, lo + 1] += frac
        return matrix

    rows = interpolation_matrix(size[0], x.shape[-2])
    cols = interpolation_matrix(size[1], x.shape[-1])
    return torch.einsum("Hh,bchw,Ww->bcHW", rows, x.double(), cols).float()


def reference_forward(model: CRN, onehot: torch.Tensor) -> torch.Tensor:
    """The generator written out from docs/model.md without the model's helpers."""
    config = model.config
    batch, num_labels = onehot.shape[:2]
    labels = [onehot]
    for _ in range(len(config.widths) - 1):
        h, w = labels[-1].shape[-2:]
        labels.append(labels[-1].reshape(batch, num_labels, h // 2, 2, w // 2, 2).mean(dim=(3, 5)))
    labels = labels[::-1]
    features = None
    for module, label in zip(model.modules_by_res.values(), labels):
        x = label if features is None else torch.cat([bilinear_align_corners_by_hand(features, label.shape[-2:]), label], 1)
        for conv, norm in ((module.conv1, module.norm1), (module.conv2, module.norm2)):
            x = F.conv2d(x, conv.weight, padding=1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
            x = (x - mean) / torch.sqrt(var + 1e-12) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
            x = torch.where(x > 0, x, 0.2 * x)
        features = x
    head = F.conv2d(features, model.head.weight, model.head.bias)
    rgb = (head + 1) / 2 * 255
    k = config.num_outputs
    return torch.stack([rgb[:, [u, k + u, 2 * k + u]] for u in range(k)], dim=1)


def test_forward_matches_the_spec_written_out_by_hand():
    torch.manual_seed(2)
    model = CRN(CRNConfig(num_classes=5, widths=(8, 8, 4), num_outputs=2))
    with torch.no_grad():  # non-trivial affine parameters so their order and shape matter
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 1.5)
    index_map = torch.randint(0, 5, (2, 16, 32))
    onehot = one_hot(index_map, 5)
    with torch.no_grad():
        out = model(onehot)
        expected = reference_forward(model, onehot)
    assert out.shape == (2, 2, 3, 16, 32)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-3)


def test_upsampling_is_bilinear_with_align_corners_true():
    torch.manual_seed(3)
    model = CRN(CRNConfig(num_classes=4, widths=(6, 6)))
    seen = {}
    model.modules_by_res["4x8"].register_forward_hook(lambda m, i, o: seen.update(coarse=o))
    model.modules_by_res["8x16"].register_forward_pre_hook(lambda m, i: seen.update(fine_input=i[0]))
    onehot = one_hot(torch.randint(0, 4, (1, 8, 16)), 4)
    with torch.no_grad():
        model(onehot)
    upsampled = seen["fine_input"][:, :6]
    torch.testing.assert_close(upsampled, bilinear_align_corners_by_hand(seen["coarse"], (8, 16)), rtol=1e-5, atol=1e-5)
    not_aligned = F.interpolate(seen["coarse"], size=(8, 16), mode="bilinear", align_corners=False)
    assert not torch.allclose(upsampled, not_aligned, atol=1e-3)
    # Features first, then the labels at this resolution (the authors' concat order).
    torch.testing.assert_close(seen["fine_input"][:, 6:], onehot)


def test_k_outputs_are_split_planar():
    k = 3
    model = CRN(CRNConfig(num_classes=2, widths=(4,), num_outputs=k))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(3 * k, dtype=torch.float32))
        out = model(one_hot(torch.zeros(1, 4, 8, dtype=torch.long), 2))
    for u in range(k):
        for channel in range(3):
            expected = (channel * k + u + 1) / 2 * 255  # image u, colour c <- head channel c*K + u
            assert torch.all(out[0, u, channel] == expected), (u, channel)


def test_output_is_not_clamped_and_to_uint8_clamps_and_rounds_half_to_even():
    model = CRN(CRNConfig(num_classes=2, widths=(4,), num_outputs=1))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(2.0)  # (2 + 1) / 2 * 255 = 382.5, above the pixel range
        out = model(one_hot(torch.zeros(1, 4, 8, dtype=torch.long), 2))
    assert torch.all(out == 382.5)
    values = torch.tensor([-3.0, 0.5, 1.5, 2.5, 254.5, 300.0])
    out = values.view(1, 1, 1, 1, 6).expand(1, 2, 3, 1, 6).clone()
    out[:, 1] += 1.0  # second output differs, to check the layout
    images = to_uint8_images(out)
    assert images.dtype == torch.uint8 and images.shape == (1, 2, 1, 6, 3)
    assert images[0, 0, 0, :, 0].tolist() == [0, 0, 2, 2, 254, 255]
    assert images[0, 1, 0, :, 2].tolist() == [0, 2, 2, 4, 255, 255]


def test_bad_label_maps_get_one_line_errors():
    model = CRN(make_config("crn-tiny", 20))
    cases = [
        (torch.zeros(1, 20, 31, 64), "label map 31x64 is not 2\\^n x 2\\^\\(n\\+1\\)"),
        (torch.zeros(1, 20, 32, 32), "label map 32x32 is not 2\\^n"),
        (torch.zeros(1, 20, 64, 128), "label map 64x128 does not match the model's top resolution 32x64"),
        (torch.zeros(1, 19, 32, 64), "label map has 19 channels but the model was built for 20 classes"),
        (torch.zeros(1, 20, 32, 64, dtype=torch.long), "float one-hot map"),
        (torch.zeros(20, 32, 64), "must be a one-hot label map \\[B, L, H, W\\]"),
    ]
    for onehot, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            model(onehot)
        assert "\n" not in str(info.value)
