"""One-hot label maps and the label pyramid (docs/model.md#input-labels).

    .venv/bin/python -m pytest tests/test_labels.py -q
"""
from __future__ import annotations

import pytest
import torch

from crn.labels import label_pyramid, one_hot


def test_one_hot_marks_exactly_the_class_of_each_pixel():
    index_map = torch.tensor([[[0, 1, 2, 2], [2, 1, 0, 3]]])
    onehot = one_hot(index_map, 4)
    assert onehot.shape == (1, 4, 2, 4) and onehot.dtype == torch.float32
    for y in range(2):
        for x in range(4):
            expected = [1.0 if c == index_map[0, y, x] else 0.0 for c in range(4)]
            assert onehot[0, :, y, x].tolist() == expected
    # Channels sum to one everywhere, void (the last index) included.
    assert torch.all(onehot.sum(dim=1) == 1)


def test_one_hot_rejects_ids_outside_the_schema():
    with pytest.raises(ValueError, match="class ids 0..20, outside 0..19 of a 20-class schema"):
        one_hot(torch.tensor([[[0, 20]]]), 20)
    with pytest.raises(ValueError, match="class ids -1..3"):
        one_hot(torch.tensor([[[-1, 3]]]), 20)
    with pytest.raises(ValueError, match=r"must be \[B, H, W\]"):
        one_hot(torch.zeros(4, 8, dtype=torch.long), 20)


def test_pyramid_is_box_averaging_coarse_first():
    torch.manual_seed(0)
    onehot = one_hot(torch.randint(0, 5, (2, 32, 64)), 5)
    levels = label_pyramid(onehot, 4)
    assert [tuple(level.shape[-2:]) for level in levels] == [(4, 8), (8, 16), (16, 32), (32, 64)]
    assert levels[-1] is onehot
    for level in levels:
        factor = 32 // level.shape[-2]
        # Each coarse pixel is the plain average of the factor x factor block it covers.
        box = onehot.reshape(2, 5, 32 // factor, factor, 64 // factor, factor).mean(dim=(3, 5))
        torch.testing.assert_close(level, box, rtol=0, atol=1e-6)
        torch.testing.assert_close(level.sum(dim=1), torch.ones_like(level[:, 0]))


def test_pyramid_keeps_class_fractions_that_nearest_neighbour_would_lose():
    # A one-pixel-wide line of class 1 in a field of class 0, on odd columns only.
    index_map = torch.zeros(1, 8, 16, dtype=torch.long)
    index_map[:, :, 1::2] = 1
    coarse = label_pyramid(one_hot(index_map, 2), 2)[0]
    assert torch.all(coarse[:, 1] == 0.5) and torch.all(coarse[:, 0] == 0.5)
