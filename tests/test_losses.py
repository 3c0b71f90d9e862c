"""The CRN loss against hand-computed values (docs/model.md#perceptual-loss).

    .venv/bin/python -m pytest tests/test_losses.py -q

A randomly initialised VGG-19 stands in for the ImageNet one: every property tested here
holds for any weights.
"""
from __future__ import annotations

import pytest
import torch

from crn.labels import label_pyramid, one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss, class_layer_errors, diversity_loss, recalibrate
from crn.vgg import LAYER_NAMES, VGG19Features

IMAGE_ONLY = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG19Features("random")


def random_batch(batch=2, k=3, classes=4, size=(32, 64), seed=0):
    generator = torch.Generator().manual_seed(seed)
    onehot = one_hot(torch.randint(0, classes, (batch, *size), generator=generator), classes)
    real = torch.rand(batch, 3, *size, generator=generator) * 255
    fake = torch.rand(batch, k, 3, *size, generator=generator) * 255
    return fake, real, onehot


def test_layer_weight_presets_are_the_published_rows():
    assert LAYER_WEIGHTS["uncalibrated"] == (1, 1, 1, 1, 1, 10)
    assert LAYER_WEIGHTS["cityscapes-256p"] == pytest.approx((1, 1 / 1.6, 1 / 2.3, 1 / 1.8, 1 / 2.8, 10 / 0.8))
    assert LAYER_WEIGHTS["cityscapes-512p"] == pytest.approx((1, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5))
    assert LAYER_WEIGHTS["gta5-256p"] == pytest.approx((1, 1 / 1.4, 1 / 1.8, 1 / 1.3, 1 / 2.2, 10 / 0.62))


def test_loss_is_zero_for_identical_images(vgg):
    _, real, onehot = random_batch()
    fake = real.unsqueeze(1).expand(-1, 3, -1, -1, -1)
    loss, terms = CRNLoss(vgg, LAYER_WEIGHTS["cityscapes-256p"])(fake, real, onehot)
    assert loss.item() == 0.0
    assert terms == {name: 0.0 for name in ("image", "relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")}


def test_with_k1_the_class_sum_is_the_unmasked_mean_l1_of_each_layer(vgg):
    fake, real, onehot = random_batch(k=1, classes=5)
    with torch.no_grad():
        real_features = vgg(real)
        fake_features = vgg(fake[:, 0])
    errors = class_layer_errors(real_features, fake_features, onehot)  # [B, 1, L, 6]
    assert errors.shape == (2, 1, 5, 6)
    for layer, (r, f) in enumerate(zip(real_features, fake_features)):
        plain_l1 = (r - f).abs().mean(dim=(1, 2, 3))  # [B]
        torch.testing.assert_close(errors[:, 0, :, layer].sum(dim=1), plain_l1, rtol=1e-5, atol=1e-6)
    # And the whole K=1 loss is the plain weighted feature-matching loss.
    weights = LAYER_WEIGHTS["cityscapes-512p"]
    loss, _ = CRNLoss(vgg, weights)(fake, real, onehot)
    plain = sum(w * (r - f).abs().mean() for w, r, f in zip(weights, real_features, fake_features))
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-5)


def test_class_layer_errors_by_hand_with_area_averaged_masks():
    # One sample, two outputs, two classes; layer 0 at 4x8, a second "layer" at 2x4.
    index_map = torch.zeros(1, 4, 8, dtype=torch.long)
    index_map[:, :, 5:] = 1  # class 1 covers columns 5..7: one 2x2 block is half class 1
    onehot = one_hot(index_map, 2)
    real = [torch.zeros(1, 2, 4, 8), torch.zeros(1, 3, 2, 4)]
    fake = [torch.zeros(2, 2, 4, 8), torch.zeros(2, 3, 2, 4)]
    fake[0][0, 0] = 4.0  # output 0 is off by 4 in one of 2 channels: distance 2 everywhere
    fake[1][1, :, :, 2] = 3.0  # output 1, coarse layer: distance 3 on coarse column 2 only
    errors = class_layer_errors(real, fake, onehot)  # [1, 2, 2, 2]
    # Full-resolution layer: class 0 covers 20 of 32 pixels, class 1 covers 12.
    assert errors[0, 0, :, 0].tolist() == pytest.approx([2 * 20 / 32, 2 * 12 / 32])
    assert errors[0, 1, :, 0].tolist() == [0.0, 0.0]
    # Coarse layer: column 2 covers original columns 4..5, so its mask is half class 0, half
    # class 1; the error is 3 * 0.5 on 2 of 8 coarse pixels for each class.
    assert errors[0, 1, :, 1].tolist() == pytest.approx([3 * 0.5 * 2 / 8, 3 * 0.5 * 2 / 8])
    coarse_mask = label_pyramid(onehot, 2)[0]
    assert coarse_mask[0, :, 0, 2].tolist() == [0.5, 0.5]


def test_diversity_takes_the_minimum_per_class_not_per_image():
    # Output 0 is right about class 0 and wrong about class 1; output 1 the other way round.
    content = torch.tensor([[[1.0, 10.0], [10.0, 1.0]]])  # [B=1, K=2, C=2]
    loss = diversity_loss(content)
    per_class = 0.999 * (1 + 1) + 0.001 * (5.5 + 5.5)
    assert loss.item() == pytest.approx(per_class)
    per_image = 0.999 * min(11, 11) + 0.001 * (5.5 + 5.5)  # what a whole-image minimum would give
    assert loss.item() != pytest.approx(per_image)
    # A batch gives the mean of its samples' losses.
    batch = torch.cat([content, torch.full((1, 2, 2), 3.0)])
    assert diversity_loss(batch).item() == pytest.approx((per_class + 6.0) / 2)


def test_crn_loss_lets_each_class_pick_its_best_output(vgg):
    # Left half class 0, right half class 1. Output 0 matches the photo on the left only,
    # output 1 on the right only: each class has a perfect output, so only the 0.001 share
    # of the mean remains. Image-only weights make the value computable by hand.
    index_map = torch.zeros(1, 32, 64, dtype=torch.long)
    index_map[:, :, 32:] = 1
    onehot = one_hot(index_map, 2)
    real = torch.full((1, 3, 32, 64), 100.0)
    fake = real.unsqueeze(1).repeat(1, 2, 1, 1, 1)
    fake[0, 0, :, :, 32:] += 40.0
    fake[0, 1, :, :, :32] += 40.0
    fake.requires_grad_()
    loss, terms = CRNLoss(vgg, IMAGE_ONLY)(fake, real, onehot)
    # content[u, c]: 0 where output u is right, 40 * 0.5 (class area) where it is wrong.
    assert loss.item() == pytest.approx(0.999 * 0.0 + 0.001 * (10.0 + 10.0), rel=1e-5)
    # The image term: the plain mean L1 of each output (20 = 40 on half the pixels), averaged
    # over the 2 outputs; a mean over the 2 classes as well would halve it.
    assert terms["image"] == pytest.approx((0 + 20 + 20 + 0) / 2, rel=1e-5)
    loss.backward()
    assert fake.grad[0, 0, :, :, 32:].abs().sum() > 0  # the losing side still gets a gradient


def test_real_features_are_computed_once_per_sample_without_a_graph(vgg):
    calls = []
    hook = vgg.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], torch.is_grad_enabled())))
    try:
        fake, real, onehot = random_batch(batch=2, k=3)
        CRNLoss(vgg, LAYER_WEIGHTS["uncalibrated"])(fake.requires_grad_(), real, onehot)
    finally:
        hook.remove()
    assert sorted(calls) == [(2, False), (6, True)]  # real: B images, no grad; fake: B*K images


def test_terms_are_each_layers_plain_mean_l1(vgg):
    """docs/recipe.md#recalibration: a layer's term is its plain mean L1 (the masks sum to one, so it is the
    sum over classes of E_l), averaged over samples and outputs."""
    fake, real, onehot = random_batch(batch=2, k=2, classes=3)
    loss_fn = CRNLoss(vgg, LAYER_WEIGHTS["cityscapes-256p"])
    loss, terms = loss_fn(fake, real, onehot)
    with torch.no_grad():
        real_features = vgg(real)
        fake_features = vgg(fake.reshape(4, 3, 32, 64))
        errors = class_layer_errors(real_features, fake_features, onehot)
    assert list(terms) == list(LAYER_NAMES) == ["image", "relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2"]
    for name, r, f in zip(LAYER_NAMES, real_features, fake_features):
        plain_l1 = (r.repeat_interleave(2, dim=0) - f).abs().mean()  # every output against its sample's photo
        assert terms[name] == pytest.approx(plain_l1.item(), rel=1e-5)
    content = (errors * torch.tensor(LAYER_WEIGHTS["cityscapes-256p"])).sum(-1)
    assert loss.item() == pytest.approx(diversity_loss(content).item(), rel=1e-5)


def test_recalibration_on_a_constructed_case_divides_by_the_plain_mean_l1():
    """A stand-in loss network whose six "layers" are the image itself, 3 classes, K=2: the
    terms CRNLoss reports and the recalibrated row, by hand. A mean over classes would make
    every VGG weight 3x too large against the image term."""

    class SixTimesTheImage(torch.nn.Module):
        def forward(self, rgb):
            return [rgb] * 6

    index_map = torch.zeros(1, 16, 32, dtype=torch.long)
    index_map[:, :, 10:] = 1
    index_map[:, 8:, 20:] = 2
    onehot = one_hot(index_map, 3)
    real = torch.full((1, 3, 16, 32), 50.0)
    fake = real.unsqueeze(1).repeat(1, 2, 1, 1, 1)  # [B=1, K=2, 3, 16, 32]
    fake[0, 0, :, 0, :4] += 8.0  # output 0: off by 8 on 4 pixels (class 0) ...
    fake[0, 0, :, 15, 30:] -= 4.0  # ... and by 4 on 2 pixels (class 2); output 1 is exact
    _, terms = CRNLoss(SixTimesTheImage(), LAYER_WEIGHTS["uncalibrated"])(fake, real, onehot)
    # Output 0's plain mean L1 is (4 * 8 + 2 * 4) / 512; output 1's is 0; the term is their mean.
    by_hand = (4 * 8 + 2 * 4) / 512 / 2
    assert terms == pytest.approx({name: by_hand for name in LAYER_NAMES}, rel=1e-6)
    recalibrated = recalibrate(LAYER_WEIGHTS["uncalibrated"], list(terms.values()))
    assert recalibrated == pytest.approx((1.0, *[1 / by_hand] * 4, 10 / by_hand), rel=1e-6)


def test_recalibration_reproduces_the_published_rows():
    measured = (37.0, 1.6, 2.3, 1.8, 2.8, 0.8)  # the image term's mean does not matter
    assert recalibrate(LAYER_WEIGHTS["uncalibrated"], measured) == pytest.approx(LAYER_WEIGHTS["cityscapes-256p"])
    measured = (12.0, 1.4, 1.8, 1.3, 2.2, 0.62)
    assert recalibrate(LAYER_WEIGHTS["uncalibrated"], measured) == pytest.approx(LAYER_WEIGHTS["gta5-256p"])
    with pytest.raises(ValueError, match="6 weights and 6 term means"):
        recalibrate((1, 1, 1), measured)
    with pytest.raises(ValueError, match="must be positive"):
        recalibrate(LAYER_WEIGHTS["uncalibrated"], (1, 1, 0, 1, 1, 1))


def test_mismatched_inputs_are_rejected(vgg):
    fake, real, onehot = random_batch()
    loss_fn = CRNLoss(vgg, LAYER_WEIGHTS["uncalibrated"])
    with pytest.raises(ValueError, match="do not describe the same batch"):
        loss_fn(fake, real[:1], onehot)
    with pytest.raises(ValueError, match="needs 6 layer weights"):
        CRNLoss(vgg, (1.0, 1.0))
