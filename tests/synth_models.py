"""Small CRN checkpoints for the synthesis and registry tests (no training needed).

`make_test_checkpoint(path, seed)` builds a crn-tiny model (top 32x64) for the Cityscapes
schema, moves every weight by seeded noise (so that the norms' scales and shifts are not
their trivial initial values and two seeds give two visibly different models), and saves
it as a crn checkpoint. `reference_images` is the direct model call synthesis must equal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crn.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from crn.labels import one_hot
from crn.model import CRN, to_uint8_images
from crn.presets import make_config
from pipeline.data.schema import load_schema

TEST_PRESET = "crn-tiny"
TEST_NUM_OUTPUTS = 2


def make_test_checkpoint(
    path: str | Path, seed: int = 0, schema: dict | None = None, num_outputs: int = TEST_NUM_OUTPUTS, preset: str = TEST_PRESET
) -> Path:
    schema = schema or load_schema("cityscapes").to_dict()
    num_classes = len(schema["classes"]) + 1
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CRN(make_config(preset, num_classes, num_outputs))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    ckpt = make_checkpoint(model, optimizer=None, step=0, epoch=0, loss_weights=[1.0] * 6, label_schema=schema)
    save_checkpoint(path, ckpt)
    return Path(path)


def reference_images(checkpoint_path: str | Path, labels: np.ndarray, batch_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """What synthesis must produce: the checkpoint's model called directly, uint8 [B,K,H,W,3].

    The documented computation (jobs/synthesis_output.py): forward passes of exactly
    `batch_size` maps (the last padded with copies of its last map) on `threads` torch
    threads, then the unclamped output clamped to [0, 255] and rounded
    (crn.model.to_uint8_images). Defaults: one pass over all maps, this process's threads.
    """
    model = model_from_checkpoint(load_checkpoint(checkpoint_path))
    labels = torch.from_numpy(np.ascontiguousarray(labels)).long()
    batch_size = batch_size or len(labels)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        images = []
        for start in range(0, len(labels), batch_size):
            chunk = labels[start:start + batch_size]
            padded = torch.cat([chunk, chunk[-1:].repeat(batch_size - len(chunk), 1, 1)])
            with torch.no_grad():
                out = model(one_hot(padded, model.config.num_classes))
            images.append(to_uint8_images(out)[: len(chunk)].numpy())
    finally:
        torch.set_num_threads(saved_threads)
    return np.concatenate(images)
