"""References for the store tests: what a store must hold, computed straight from the source.

Written apart from pipeline/: the Cityscapes id -> train id table is typed out again, label
maps are downsampled with Pillow's NEAREST (the pixel under each output pixel's centre, as
pipeline/prepare.py documents), photos with the documented Pillow call. Stores are read
with plain pyarrow and numpy.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                      24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
VOID = 19


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    table = np.full(256, VOID, dtype=np.uint8)
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
        table[label_id] = train_id
    return table[label_ids]


def cityscapes_files(source: Path, split: str, sample_id: str) -> tuple[Path, Path]:
    city = sample_id.split("_")[0]
    return (source / "gtFine" / split / city / f"{sample_id}_gtFine_labelIds.png",
            source / "leftImg8bit" / split / city / f"{sample_id}_leftImg8bit.png")


def expected_sample(label_path: Path, photo_path: Path | None, resolution: str, box=None):
    """(label uint8 [h, w], photo uint8 [h, w, 3] or None) as the store must hold them."""
    height, width = (int(v) for v in resolution.split("x"))
    label_image = Image.open(label_path)
    if box is not None:
        label_image = label_image.crop(box)
    classes = Image.fromarray(train_ids(np.asarray(label_image)))
    label = np.asarray(classes.resize((width, height), Image.Resampling.NEAREST))
    if photo_path is None:
        return label, None
    photo_image = Image.open(photo_path).convert("RGB")
    if box is not None:
        photo_image = photo_image.crop(box)
    if photo_image.size != (width, height):
        photo_image = photo_image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
    return label, np.asarray(photo_image)


def read_store_plainly(store: Path, split: str, resolution: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{sample_id: (label, photo)} using only json, pyarrow and numpy (no pipeline code)."""
    manifest = json.loads((store / "manifest.json").read_text())
    height, width = (int(v) for v in resolution.split("x"))
    rows = {}
    for part in manifest["splits"][split]["files"]:
        table = pq.read_table(store / part["path"], columns=["sample_id", f"label_{resolution}", f"photo_{resolution}"])
        for sample_id, label, photo in zip(*(table.column(i).to_pylist() for i in range(3))):
            rows[sample_id] = (
                np.frombuffer(label, np.uint8).reshape(height, width),
                None if photo is None else np.frombuffer(photo, np.uint8).reshape(height, width, 3),
            )
    return rows


# ---- counting the bytes a read touches ----


class RecordingFile:
    """A file object that appends (path, offset, length) of every read to a log file.

    A log file rather than a list, so reads made by Ray workers (other processes) count too.
    """

    def __init__(self, handle, path: str, log: str):
        self.handle, self.path, self.log = handle, path, log

    def read(self, size=-1):
        offset = self.handle.tell()
        data = self.handle.read(size)
        with open(self.log, "a") as out:
            out.write(json.dumps([self.path, offset, len(data)]) + "\n")
        return data

    def __getattr__(self, name):
        return getattr(self.handle, name)


class RecordingHandler(pafs.FSSpecHandler):
    """Local files through fsspec, each opened file wrapped in a RecordingFile."""

    def __init__(self, log: str):
        super().__init__(LocalFileSystem())
        self.log = log

    def __reduce__(self):  # travels to Ray workers with its log path
        return RecordingHandler, (self.log,)

    def open_input_file(self, path):
        return pa.PythonFile(RecordingFile(self.fs.open(path, "rb"), path, self.log), mode="r")

    def open_input_stream(self, path):
        return self.open_input_file(path)


def recording_filesystem(log: str) -> pafs.PyFileSystem:
    """A pyarrow filesystem over the local disk that logs every byte range read to `log`.

    Ray workers cannot import this test helper, so it is pickled by value for them.
    """
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return pafs.PyFileSystem(RecordingHandler(log))


def read_ranges(log: str) -> list[tuple[str, int, int]]:
    """[(path, start, end)] logged so far (empty reads left out)."""
    if not Path(log).exists():
        return []
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line]
    return [(path, offset, offset + length) for path, offset, length in rows if length > 0]


def column_chunk_ranges(path: str) -> dict[str, tuple[int, int]]:
    """{column name: (start, end)} byte ranges of the (single row group's) column chunks."""
    metadata = pq.ParquetFile(path).metadata
    ranges = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            previous = ranges.get(chunk.path_in_schema)
            ranges[chunk.path_in_schema] = (start, start + chunk.total_compressed_size) if previous is None else \
                (min(previous[0], start), max(previous[1], start + chunk.total_compressed_size))
    return ranges
