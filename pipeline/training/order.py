"""The order in which training visits the data: a fresh permutation of all rows every epoch.

docs/recipe.md#data-order: the authors draw np.random.permutation over all training pairs at
the start of every epoch. Here the permutation is a function of (seed, epoch) alone, so
every rank computes the same one without talking to the others, a re-run computes it
again, and a resumed run continues it at the exact batch. The global batch of step s is
the permutation's rows [s * W * B, (s + 1) * W * B) for W ranks of batch B; rank r takes
its r-th slice of B rows. The ranks' parts are therefore disjoint and together cover the
epoch; the last `rows mod (W * B)` rows of each epoch's permutation are left out, and since
the permutation changes every epoch, so do they.

Only row indices are permuted (8 bytes a row); the rows themselves are read by index
(pipeline.data.rows), so memory does not grow with the data set.
"""
from __future__ import annotations

import numpy as np


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """All row indices in the order of epoch `epoch` (0-based) of a run seeded `seed`."""
    generator = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return generator.permutation(num_rows)


def steps_per_epoch(num_rows: int, world_size: int, batch_size: int) -> int:
    return num_rows // (world_size * batch_size)


def rank_batches(num_rows: int, seed: int, epoch: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """[steps_per_epoch, batch_size] row indices: what rank `rank` takes at each step of the epoch."""
    steps = steps_per_epoch(num_rows, world_size, batch_size)
    order = epoch_permutation(num_rows, seed, epoch)[: steps * world_size * batch_size]
    return order.reshape(steps, world_size, batch_size)[:, rank, :]
