"""DRN-D-105 built in (pipeline.segmenter.drn): the published layout loads strictly, its facts
hold as written out by hand from fyu/drn, damaged files are one-line errors, and
open_segmenter serves it through the segmenter contract.

The weights are random (tests/drn_fixtures.py) in the published file's layout; the published
file itself is never downloaded.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from drn_fixtures import (hand_bilinear_kernel, published_layout, random_drn_d_105_state, save_like_published,
                          write_random_drn_d_105)

from pipeline.data.schema import load_schema
from pipeline.errors import UserError
from pipeline.segmenter.drn import (DRN_D_105, PUBLISHED_FILE, DRNSeg, DRNSegmenter, drn_d_105_path,
                                    is_drn_d_105_state_dict, load_drn_d_105)
from pipeline.segmenter.file import Segmenter, check_class_order, open_segmenter

# fyu/drn datasets/cityscapes/info.json, typed out here (the README rounds them to 6 digits).
INFO_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
INFO_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)


@pytest.fixture(scope="module")
def published_file(tmp_path_factory):
    path = write_random_drn_d_105(tmp_path_factory.mktemp("drn") / PUBLISHED_FILE)
    yield path
    path.unlink()  # 218 MB; pytest keeps its last temporary folders


@pytest.fixture(scope="module")
def drn(published_file):
    return load_drn_d_105(published_file)


@pytest.fixture(scope="module")
def opened(published_file):
    return open_segmenter(f"{DRN_D_105}:{published_file}")


def cityscapes_names() -> list[str]:
    return load_schema("cityscapes").scored_class_names


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- (a) loads and segments


def test_the_published_layout_loads_strictly_with_every_value(drn, published_file):
    saved = torch.load(published_file, weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in saved)
    loaded = drn.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert not drn.training


def test_the_scripted_segmenter_predicts_class_maps(opened, drn):
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    maps = Segmenter(opened.data, 19).predict(images)
    assert maps.shape == (2, 64, 128) and maps.dtype == np.uint8 and maps.max() <= 18
    with torch.no_grad():
        eager = DRNSegmenter(drn)(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    assert (maps == eager).mean() > 0.999


def test_sizes_not_multiples_of_8_are_cropped_not_resized(opened, drn):
    """60x100 gives features 8x13 and up's 64x104; the wrapper keeps the first 60x100."""
    x = torch.rand(1, 3, 60, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = drn((x - torch.tensor(INFO_MEAN).view(1, 3, 1, 1)) / torch.tensor(INFO_STD).view(1, 3, 1, 1))
        scores = DRNSegmenter(drn)(x)
    assert full.shape == (1, 19, 64, 104)
    assert scores.shape == (1, 19, 60, 100)
    torch.testing.assert_close(scores, full[:, :, :60, :100])
    maps = Segmenter(opened.data, 19).predict((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    assert maps.shape == (1, 60, 100)


# ---------------------------------------------------------------- (b) facts, by hand


def test_parameter_count_by_hand():
    """Layer by layer from fyu/drn's table. A Bottleneck(inplanes, p): convs in*p + 9p^2 + 4p^2,
    BatchNorm scale and shift 2p + 2p + 8p; a stage's first block adds the 1x1 shortcut in*4p + 8p."""
    def bottleneck(inplanes: int, planes: int, shortcut: bool) -> int:
        convs = inplanes * planes + 9 * planes ** 2 + 4 * planes ** 2
        return convs + 12 * planes + (inplanes * 4 * planes + 8 * planes if shortcut else 0)

    layers = {
        "layer0 7x7 3->16": 3 * 16 * 49 + 32,  # 2,384
        "layer1 3x3 16->16": 16 * 16 * 9 + 32,  # 2,336
        "layer2 3x3 16->32": 16 * 32 * 9 + 64,  # 4,672
        "layer3 3 x B(64)": bottleneck(32, 64, True) + 2 * bottleneck(256, 64, False),  # 205,568
        "layer4 4 x B(128)": bottleneck(256, 128, True) + 3 * bottleneck(512, 128, False),  # 1,219,584
        "layer5 23 x B(256)": bottleneck(512, 256, True) + 22 * bottleneck(1024, 256, False),  # 26,090,496
        "layer6 3 x B(512)": bottleneck(1024, 512, True) + 2 * bottleneck(2048, 512, False),  # 14,964,736
        "layer7 3x3 2048->512": 2048 * 512 * 9 + 1024,  # 9,438,208
        "layer8 3x3 512->512": 512 * 512 * 9 + 1024,  # 2,360,320
        "seg 1x1 512->19": 512 * 19 + 19,  # 9,747
        "up 19 x 16x16": 19 * 16 * 16,  # 4,864
    }
    assert layers["layer5 23 x B(256)"] == 26_090_496 and layers["layer6 3 x B(512)"] == 14_964_736
    assert sum(layers.values()) == 54_302_915
    assert sum(p.numel() for p in DRNSeg().parameters()) == 54_302_915
    # fyu/drn's README gives DRN-D-105 54.8M with its ImageNet classifier (1x1 conv 512 -> 1000) for seg and up.
    classifier = sum(layers.values()) - layers["seg 1x1 512->19"] - layers["up 19 x 16x16"] + 512 * 1000 + 1000
    assert round(classifier / 1e6, 1) == 54.8


def test_keys_and_shapes_are_the_published_layout():
    reference = DRNSeg().state_dict()
    ours = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    assert list(ours.items()) == list(published_layout().items())
    assert len(ours) == 543 and len(reference) == 651  # 108 BatchNorms, one num_batches_tracked each
    for key in ("base.0.0.weight", "base.0.1.running_mean", "base.5.0.downsample.0.weight", "base.8.0.weight",
                "seg.weight", "seg.bias", "up.weight"):
        assert key in ours
    assert ours["base.5.0.downsample.0.weight"] == (1024, 512, 1, 1)


def test_stage_outputs_for_a_64x128_image(drn):
    """base.0 .. base.8: strides 1, 1, 2, 4, 8, 8, 8, 8, 8; channels 16, 16, 32, 256, 512, 1024, 2048, 512, 512."""
    x = torch.rand(1, 3, 64, 128)
    shapes = []
    with torch.no_grad():
        for layer in drn.base:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 64, 128), (16, 64, 128), (32, 32, 64), (256, 16, 32), (512, 8, 16), (1024, 8, 16),
                      (2048, 8, 16), (512, 8, 16), (512, 8, 16)]


def test_strides_and_dilations_are_drn_d():
    base = DRNSeg().base
    assert (base[0][0].kernel_size, base[0][0].padding) == ((7, 7), (3, 3))
    assert base[2][0].stride == (2, 2)
    for index, stride, dilation in ((3, 2, 1), (4, 2, 1), (5, 1, 2), (6, 1, 4)):
        first = base[index][0]
        assert first.conv2.stride == first.downsample[0].stride == (stride, stride)
        for block in base[index]:
            assert block.conv2.dilation == block.conv2.padding == (dilation, dilation)
    assert (base[7][0].dilation, base[7][0].padding) == ((2, 2), (2, 2))
    assert (base[8][0].dilation, base[8][0].padding) == ((1, 1), (1, 1))
    assert [len(base[i]) for i in range(3, 7)] == [3, 4, 23, 3]


def test_up_kernel_is_the_hand_computed_bilinear_kernel():
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    assert (f, c) == (8, 0.9375)
    line = [0.0625, 0.1875, 0.3125, 0.4375, 0.5625, 0.6875, 0.8125, 0.9375]
    line = torch.tensor(line + line[::-1])  # 1 - |i / 8 - 0.9375|
    up = DRNSeg().up
    assert (up.kernel_size, up.stride, up.padding, up.groups, up.bias) == ((16, 16), (8, 8), (4, 4), 19, None)
    assert not up.weight.requires_grad
    for channel in range(19):
        torch.testing.assert_close(up.weight[channel, 0], torch.outer(line, line), rtol=0, atol=1e-7)
    torch.testing.assert_close(hand_bilinear_kernel(), torch.outer(line, line), rtol=0, atol=1e-7)
    assert up.weight[0, 0, 0, 0].item() == 0.0625 ** 2 and up.weight[0, 0, 7, 8].item() == 0.9375 ** 2


def test_the_keys_identify_drn_d_105():
    layout = published_layout()
    assert is_drn_d_105_state_dict(layout)
    assert not is_drn_d_105_state_dict({k: v for k, v in layout.items() if k != "seg.weight"})
    assert not is_drn_d_105_state_dict({k: v for k, v in layout.items() if not k.startswith("base.5.22.")})
    assert not is_drn_d_105_state_dict([("seg.weight", 0)])


# ---------------------------------------------------------------- (c) damaged files


@pytest.fixture(scope="module")
def published_state():
    return random_drn_d_105_state()


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("damage, expected", [
    (lambda s: _without(s, "base.8.0.weight"), r": 1 key missing \(base\.8\.0\.weight\)$"),
    (lambda s: {**s, "base.9.0.weight": torch.zeros(1)}, r": 1 unexpected key \(base\.9\.0\.weight\)$"),
    (lambda s: {**s, "seg.weight": torch.zeros(20, 512, 1, 1)},
     r": 1 shape mismatch \(seg\.weight \[20, 512, 1, 1\], expected \[19, 512, 1, 1\]\)$"),
    (lambda s: {f"module.{k}": v for k, v in s.items()},
     r": 543 keys missing \(base\.0\.0\.weight, base\.0\.1\.weight, base\.0\.1\.bias, \.\.\.\); 543 unexpected keys"
     r" .*a DataParallel state dict\)$"),
    (lambda s: {"epoch": torch.tensor(1), "state_dict": torch.zeros(1)}, r": a training checkpoint"),
    (lambda s: list(s.values())[:2], r": not a state dict \(a list\)$"),
], ids=["missing", "unexpected", "shape", "dataparallel", "checkpoint", "list"])
def test_a_file_without_the_published_layout_is_one_line(tmp_path, published_state, damage, expected):
    path = save_like_published(damage(published_state), tmp_path / "damaged.pth")
    with pytest.raises(UserError) as exc:
        load_drn_d_105(path)
    message = one_line(exc)
    assert message.startswith(f"{DRN_D_105} {path}: ")
    assert re.search(expected, message), message
    path.unlink()


def test_a_copy_saved_by_a_newer_torch_loads_too(tmp_path, drn):
    """With num_batches_tracked keys and the zip format, as `torch.save(model.state_dict())` writes today."""
    path = tmp_path / "resaved.pth"
    torch.save(drn.state_dict(), path)
    assert "base.0.1.num_batches_tracked" in torch.load(path, weights_only=True)
    again = load_drn_d_105(path)
    torch.testing.assert_close(again.seg.weight, drn.seg.weight, rtol=0, atol=0)
    path.unlink()


@pytest.mark.parametrize("content", ["truncated", "text", "pickled object"])
def test_a_file_that_is_no_state_dict_is_one_line(tmp_path, published_file, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        with open(published_file, "rb") as whole:
            path.write_bytes(whole.read(1_000_000))
    elif content == "text":
        path.write_text("<html>404 Not Found</html>\n")
    else:
        torch.save(torch.nn.Conv2d(1, 1, 1), path)
    with pytest.raises(UserError) as exc:
        load_drn_d_105(path)
    message = one_line(exc)
    expected = "not a plain state dict" if content == "pickled object" else "not a PyTorch file (truncated?)"
    assert message.startswith(f"{DRN_D_105} {path}: {expected}"), message


# ---------------------------------------------------------------- (d) open_segmenter


def test_open_segmenter_serves_the_weights_as_torchscript(opened, published_file):
    file_sha = hashlib.sha256(published_file.read_bytes()).hexdigest()
    assert opened.kind == DRN_D_105
    assert opened.class_names == cityscapes_names()
    assert opened.sha256 == opened.source_sha256 == file_sha
    assert opened.sha256 != hashlib.sha256(opened.data).hexdigest()
    check_class_order(opened, load_schema("cityscapes"))


def test_a_plain_path_to_the_weights_is_recognised(published_file, tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(cityscapes_names()))  # the same order: allowed, and changes nothing
    plain = open_segmenter(str(published_file), str(classes))
    assert (plain.kind, plain.class_names, plain.uri) == (DRN_D_105, cityscapes_names(), str(published_file))
    assert plain.sha256 == hashlib.sha256(published_file.read_bytes()).hexdigest()


def test_a_class_order_other_than_the_train_ids_is_refused(published_file, tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(cityscapes_names()[::-1]))
    with pytest.raises(UserError) as exc:
        open_segmenter(f"{DRN_D_105}:{published_file}", str(classes))
    assert "leave --segmenter-classes out" in one_line(exc)


def test_a_missing_file_says_where_to_get_it():
    with pytest.raises(UserError) as exc:
        open_segmenter(f"{DRN_D_105}:/nonexistent/drn.pth")
    message = one_line(exc)
    assert message.startswith("segmenter drn-d-105:/nonexistent/drn.pth: no file /nonexistent/drn.pth; ")
    for part in (PUBLISHED_FILE, "fyu/drn", "nothing is downloaded", "--segmenter drn-d-105:<path to the file>"):
        assert part in message


def test_drn_d_105_alone_looks_in_torch_hub(tmp_path, monkeypatch, published_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = tmp_path / "checkpoints" / PUBLISHED_FILE
    with pytest.raises(UserError) as exc:
        open_segmenter(DRN_D_105)
    assert f"no {expected} (torch hub's checkpoints folder)" in one_line(exc)
    expected.parent.mkdir()
    expected.symlink_to(published_file)
    assert drn_d_105_path(DRN_D_105) == expected


# ---------------------------------------------------------------- (e) against computations by hand


def test_normalisation_is_info_json(drn):
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    wrapper = DRNSegmenter(drn)
    torch.testing.assert_close(wrapper.mean.flatten(), torch.tensor(INFO_MEAN), rtol=0, atol=0)
    readme_mean, readme_std = (0.290101, 0.328081, 0.286964), (0.182954, 0.186566, 0.184475)
    assert np.allclose(INFO_MEAN, readme_mean, atol=1e-6) and np.allclose(INFO_STD, readme_std, atol=1e-6)
    by_hand = torch.stack([(x[:, i] - INFO_MEAN[i]) / INFO_STD[i] for i in range(3)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), drn(by_hand))


def test_seg_and_up_equal_the_hand_computation(drn):
    """With seg's weights zero the class scores before `up` are its biases b on every feature
    pixel, whatever the image; then up's output is b_c * S(i) * S(j), where S(i) sums the 1-D
    kernel taps that reach output row i: sum over feature rows k of line[i + 4 - 8k]."""
    model = copy.deepcopy(drn)
    bias = torch.linspace(-2, 2, 19)
    with torch.no_grad():
        model.seg.weight.zero_()
        model.seg.bias.copy_(bias)
    height, width = 20, 36  # features 3 x 5, up 24 x 40, cropped to 20 x 36
    line = [1 - abs(t / 8 - 0.9375) for t in range(16)]

    def taps(size: int, features: int) -> torch.Tensor:
        return torch.tensor([sum(line[i + 4 - 8 * k] for k in range(features) if 0 <= i + 4 - 8 * k < 16)
                             for i in range(size)])

    rows, cols = taps(height, 3), taps(width, 5)
    assert rows[0].item() == 0.5625 and rows[10].item() == 1.0  # the border gets one tap, the inside two
    expected = F.log_softmax(bias.view(19, 1, 1) * torch.outer(rows, cols), dim=0)
    with torch.no_grad():
        scores = DRNSegmenter(model)(torch.rand(1, 3, height, width))
    torch.testing.assert_close(scores[0], expected, rtol=0, atol=1e-5)
