"""What the fresh permutation every epoch costs: reading training rows by index.

    python -m bench.run_all bench_data_order [--quick]

A toy store of 256x512 scenes (with 128x256 and 64x128 beside them, as a 256p store has),
written by the real preprocessing job in its default parts (48 rows each here). Training
reads each step's rows by index (pipeline.data.rows): a row costs the decompression of its
row group's column chunks at one resolution. Measured in turns, the same rows each way:
- permuted: the rows of an epoch's permutation, batch 1, with no cache (every read decodes
  a row group: the worst case, a data set far larger than `--row-cache-mb`);
- stored order: the same number of rows in the store's order, where consecutive rows share
  their row group (what the old sequential read paid per row, roughly).
The figure is the permuted read's median time per step against a crn-mid training step
(128x256, K=4, CRNLoss with a random VGG-19) timed in this process on the same CPU; a
256p step is far longer, and the training loop reads the next batch in a background thread
while the current step runs, so what a run sees is less than this.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crn.labels import one_hot
from crn.losses import LAYER_WEIGHTS, CRNLoss
from crn.model import CRN
from crn.presets import make_config
from crn.vgg import VGG19Features
from pipeline.data.rows import RowReader
from pipeline.data.store import open_store
from pipeline.training.loop import train_step
from pipeline.training.order import epoch_permutation

FULL = {"samples": 144, "reads": 60, "steps": 4}
QUICK = {"samples": 48, "reads": 20, "steps": 2}
RESOLUTION = "256x512"
GOAL = 0.05


def median_read_ms(reader: RowReader, rows) -> float:
    times = []
    for row in rows:
        start = time.perf_counter()
        reader.read([int(row)])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def crn_mid_step_ms(steps: int) -> float:
    torch.manual_seed(0)
    model = CRN(make_config("crn-mid", 20))
    loss_fn = CRNLoss(VGG19Features("random"), LAYER_WEIGHTS["uncalibrated"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    onehot = one_hot(torch.randint(0, 20, (1, 128, 256)), 20)
    photo = torch.rand(1, 3, 128, 256) * 255
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        train_step(model, loss_fn, optimizer, onehot, photo, "fp32")
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[1:]))


def run(quick: bool = False) -> list[dict]:
    from pipeline.data.toy import make_toy_store

    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-order-") as scratch:
        store_path = make_toy_store(Path(scratch) / "store", Path(scratch) / "source", num_train=size["samples"],
                                    num_val=0, size=(256, 512), resolutions="64x128,128x256,256x512", splits="train")
        store = open_store(store_path)
        rows_per_part = store.manifest["splits"]["train"]["files"][0]["rows"]
        permuted_rows = epoch_permutation(size["samples"], 0, 0)[: size["reads"]]
        stored_rows = np.arange(size["reads"])
        permuted, stored = [], []
        for _ in range(2):  # in turns
            permuted.append(median_read_ms(RowReader(store, "train", RESOLUTION, cache_bytes=0), permuted_rows))
            stored.append(median_read_ms(RowReader(store, "train", RESOLUTION, cache_bytes=0), stored_rows))
        step = crn_mid_step_ms(size["steps"])
    read = min(permuted)
    described = (f"one {RESOLUTION} row read by index in an epoch's permutation, no cache (decodes its "
                 f"{rows_per_part}-row group), median over {size['reads']} reads")
    return [
        {"name": "order_read_ms_per_step", "value": read, "unit": "ms", "goal": "n/a", "compared": described},
        {"name": "order_stored_read_ms_per_step", "value": min(stored), "unit": "ms", "goal": "n/a",
         "compared": "the same number of rows in stored order (consecutive rows share a row group)"},
        {"name": "order_read_vs_crn_mid_step", "value": read / step, "unit": "ratio", "goal": f"<= {GOAL}",
         "compared": f"{described} vs a crn-mid training step ({step:.0f} ms, 128x256, K=4) on the same CPU"},
    ]


if __name__ == "__main__":
    import sys

    for figure in run(quick="--quick" in sys.argv):
        print(f"{figure['name']:32s} {figure['value']:10.4g} {figure['unit']:6s} {figure['compared']}")
