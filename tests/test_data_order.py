"""The order training visits the data in: a fresh permutation of all rows every epoch (docs/recipe.md#data-order).

    .venv/bin/python -m pytest tests/test_data_order.py -q

A 200-sample toy store at 8x16, written by the real preprocessing job in parts of 16 rows,
read the way each training worker reads it (pipeline.training.order + pipeline.data.rows).
References: scipy's Spearman correlation against the stored order (the old local shuffle
buffer gave 0.995), the store read whole with plain pyarrow, and set arithmetic over ranks.
The training loop's use of it (resume = uninterrupted run, the rows a DDP step takes) is
tested in tests/test_train.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from pipeline.data.rows import RowReader
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.data.toy import generate_toy_dataset
from pipeline.preprocessing.config import parse_preprocess_config
from pipeline.preprocessing.job import run
from pipeline.training.order import epoch_permutation, rank_batches, steps_per_epoch

SAMPLES, RESOLUTION = 200, "8x16"
WORLD, BATCH, SEED = 2, 2, 7


@pytest.fixture(scope="module")
def store_200(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("order")
    generate_toy_dataset(root / "source", num_train=SAMPLES, num_val=0, seed=3, size=(8, 16))
    run(parse_preprocess_config(["--source", str(root / "source"), "--out", str(root / "store"),
                                 "--resolutions", RESOLUTION, "--rows-per-file", "16", "--splits", "train"]))
    return open_store(root / "store")


def epoch_ids(store, seed: int, epoch: int) -> dict[int, list[str]]:
    """{rank: sample ids in the order that rank takes them}, read as the workers read them."""
    taken = {}
    for rank in range(WORLD):
        reader = RowReader(store, "train", RESOLUTION, cache_bytes=0)
        batches = rank_batches(SAMPLES, seed, epoch, rank, WORLD, BATCH)
        taken[rank] = [sample for rows in batches for sample in reader.read(rows)["sample_id"]]
    return taken


def global_order(taken: dict[int, list[str]]) -> list[str]:
    """The epoch as one sequence: step by step, rank 0's rows then rank 1's."""
    steps = len(taken[0]) // BATCH
    return [sample for s in range(steps) for r in range(WORLD) for sample in taken[r][s * BATCH:(s + 1) * BATCH]]


def test_each_epoch_is_a_fresh_reproducible_permutation_split_over_ranks(store_200):
    stored = open_store(store_200.uri).read_table("train", RESOLUTION).column("sample_id").to_pylist()
    assert len(stored) == SAMPLES and len(store_200.files("train")) == SAMPLES // 16 + 1
    position = {sample: i for i, sample in enumerate(stored)}

    first, second = epoch_ids(store_200, SEED, 0), epoch_ids(store_200, SEED, 1)
    for taken in (first, second):
        order = global_order(taken)
        assert len(order) == SAMPLES and set(order) == set(stored), "the epoch covers every row once"
        assert set(taken[0]).isdisjoint(taken[1]), "the ranks' parts are disjoint"
        rho = spearmanr([position[s] for s in order], np.arange(SAMPLES)).statistic
        assert abs(rho) < 0.2, rho
    assert global_order(first) != global_order(second), "each epoch has its own order"
    assert epoch_ids(store_200, SEED, 0) == first, "the same seed gives the same order"
    assert epoch_ids(store_200, SEED + 1, 0) != first


def test_rows_read_by_index_are_the_stored_rows(store_200):
    table = store_200.read_table("train", RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    photos = decode_photos(table.column(photo_column(RESOLUTION)), RESOLUTION)
    indices = epoch_permutation(SAMPLES, SEED, 3)[:40]
    reader = RowReader(store_200, "train", RESOLUTION, cache_bytes=0)
    batch = reader.read(indices)
    assert batch["sample_id"].tolist() == [table.column("sample_id")[int(i)].as_py() for i in indices]
    np.testing.assert_array_equal(batch["label"], labels[indices])
    np.testing.assert_array_equal(batch["photo"], photos[indices])


def test_memory_is_bounded_by_the_row_group_cache(store_200):
    """Rows are read one row group at a time; the decoded groups kept never exceed the cache
    (one group of 16 rows at 8x16 is 8 KiB of pixels), whatever the data set's size."""
    group_bytes = 16 * 8 * 16 * 4
    reader = RowReader(store_200, "train", RESOLUTION, cache_bytes=3 * group_bytes)
    for rows in rank_batches(SAMPLES, SEED, 0, 0, 1, 1):
        reader.read(rows)
        assert reader.cached_bytes <= 3 * group_bytes
    assert reader.groups_read > SAMPLES // 16, "a small cache re-reads groups"
    everything = RowReader(store_200, "train", RESOLUTION, cache_bytes=2**30)
    for epoch in range(2):
        for rows in rank_batches(SAMPLES, SEED, epoch, 0, 1, 1):
            everything.read(rows)
    assert everything.groups_read == SAMPLES // 16 + 1, "a cache that holds the split reads each group once"


def test_the_epoch_split_leaves_out_the_remainder_and_changes_it_every_epoch():
    assert steps_per_epoch(10, 3, 1) == 3 and rank_batches(10, 0, 0, 2, 3, 1).shape == (3, 1)
    left_out = [set(range(10)) - set(np.concatenate([rank_batches(10, 0, e, r, 3, 1).ravel() for r in range(3)]))
                for e in range(4)]
    assert all(len(rows) == 1 for rows in left_out) and len({frozenset(r) for r in left_out}) > 1
