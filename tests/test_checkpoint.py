"""Checkpoints: self-describing, loadable with weights_only, written atomically.

    .venv/bin/python -m pytest tests/test_checkpoint.py -q
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from crn.checkpoint import (
    FORMAT,
    capture_rng_state,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from crn.config import CRNConfig
from crn.labels import one_hot
from crn.model import CRN

SCHEMA = {"name": "toy", "class_names": ["road", "car", "void"]}


def trained_model_and_optimizer():
    torch.manual_seed(0)
    model = CRN(CRNConfig(num_classes=3, widths=(8, 8, 8), num_outputs=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    onehot = one_hot(torch.randint(0, 3, (1, 16, 32)), 3)
    for _ in range(2):
        optimizer.zero_grad()
        model(onehot).mean().backward()
        optimizer.step()
    return model, optimizer, onehot


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model, optimizer, onehot = trained_model_and_optimizer()
    ckpt = make_checkpoint(
        model, optimizer=optimizer, step=2, epoch=1, loss_weights=(1, 1, 1, 1, 1, 10),
        label_schema=SCHEMA, extra={"weights_source": "random"},
    )
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(path, ckpt)

    raw = torch.load(path, weights_only=True)  # the contract: no pickled code needed
    assert raw["format"] == FORMAT
    assert raw["model_config"] == {"num_classes": 3, "widths": [8, 8, 8], "num_outputs": 2}
    assert (raw["step"], raw["epoch"], raw["loss_weights"]) == (2, 1, [1.0, 1.0, 1.0, 1.0, 1.0, 10.0])
    assert raw["label_schema"] == SCHEMA and raw["extra"] == {"weights_source": "random"}

    loaded = load_checkpoint(path)
    rebuilt = model_from_checkpoint(loaded)
    assert not rebuilt.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(onehot), model(onehot))

    # The optimizer resumes exactly: one more step from either gives the same weights.
    resumed_opt = torch.optim.Adam(rebuilt.parameters(), lr=1e-3)
    resumed_opt.load_state_dict(loaded["optimizer"])
    for m, opt in ((model, optimizer), (rebuilt, resumed_opt)):
        m.train()
        opt.zero_grad()
        m(onehot).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), rebuilt.parameters()):
        assert torch.equal(a, b)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    model, _, _ = trained_model_and_optimizer()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    ckpt = make_checkpoint(model, optimizer=None, step=0, epoch=0, loss_weights=[1] * 6, label_schema=SCHEMA)
    expected = (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])
    save_checkpoint(tmp_path / "c.pt", ckpt)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]) == expected
    assert capture_rng_state()["torch"].dtype == torch.uint8


def test_a_failed_save_leaves_the_previous_file_and_no_debris(tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    path = tmp_path / "latest.pt"
    good = make_checkpoint(model, optimizer=optimizer, step=1, epoch=0, loss_weights=[1] * 6, label_schema=SCHEMA)
    save_checkpoint(path, good)
    bad = dict(good, step=2, extra={"unpicklable": lambda: None})
    with pytest.raises(Exception):
        save_checkpoint(path, bad)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_bad_files_get_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="garbage.pt cannot be read") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="is not a crn-checkpoint/1 file"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="not a crn-checkpoint/1 dict"):
        save_checkpoint(tmp_path / "x.pt", {"format": FORMAT})
