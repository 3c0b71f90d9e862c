"""A store's rows by index: what a training worker reads to visit them in any order.

    reader = RowReader(open_store(uri), "train", "256x512", cache_bytes=256 * 2**20)
    batch = reader.read([17, 3, 2950])
    # {"sample_id": str [3], "label": uint8 [3, H, W], "photo": uint8 [3, H, W, 3]}

Row i is the i-th row of the split in the store's order (the manifest's parts in turn, rows
sorted by sample id). Parquet reads whole row groups, so a row costs the decompression of
its row group's column chunks at this resolution (nothing of the other resolutions). The
decoded row groups are kept in a least-recently-used cache of at most `cache_bytes`, so
memory stays flat in the data set's size; a data set that fits is read from the store once.
Part files are opened when first needed and kept open (their footers give the row groups).
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from pipeline.data.store import Store, StoreError, decode_labels, decode_photos, label_column, photo_column
from pipeline.errors import first_line


class RowReader:
    def __init__(self, store: Store, split: str, resolution: str, cache_bytes: int):
        self.store = store
        self.resolution = store.resolution(resolution)
        self.paths = store.files(split)
        rows = [int(part["rows"]) for part in store.manifest["splits"][split]["files"]]
        self.file_starts = np.concatenate([[0], np.cumsum(rows)]).tolist()  # first row of each part
        self.num_rows = self.file_starts[-1]
        if self.num_rows != store.count(split):
            raise StoreError(f"store {store.uri}: split '{split}' lists {self.num_rows} rows in its parts "
                             f"but counts {store.count(split)}")
        self.columns = ["sample_id", label_column(self.resolution)]
        if store.has_photos:
            self.columns.append(photo_column(self.resolution))
        self.cache_bytes = cache_bytes
        self._files: dict[int, tuple[pq.ParquetFile, list[int]]] = {}  # part -> (file, first row of each group)
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self.groups_read = 0  # row groups decoded so far (cache misses)

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded pixels held in the cache now."""
        return self._cached_bytes

    def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The rows at `indices`, in that order, as decoded arrays (copies)."""
        items = [self._row(int(i)) for i in indices]
        return {key: np.stack([item[key] for item in items]) for key in items[0]}

    def _row(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} is outside the split's {self.num_rows} rows")
        part = bisect.bisect_right(self.file_starts, index) - 1
        handle, group_starts = self._file(part)
        in_part = index - self.file_starts[part]
        group = bisect.bisect_right(group_starts, in_part) - 1
        decoded = self._group(part, group, handle)
        offset = in_part - group_starts[group]
        return {key: values[offset] for key, values in decoded.items()}

    def _file(self, part: int) -> tuple[pq.ParquetFile, list[int]]:
        if part not in self._files:
            path = self.paths[part]
            try:
                handle = pq.ParquetFile(self.store.filesystem.open_input_file(path), pre_buffer=False)
            except OSError as exc:
                raise StoreError(f"store {self.store.uri}: cannot read {path}: {first_line(exc)}") from None
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.metadata.num_row_groups)]
            self._files[part] = (handle, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist())
        return self._files[part]

    def _group(self, part: int, group: int, handle: pq.ParquetFile) -> dict[str, np.ndarray]:
        key = (part, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            table = handle.read_row_group(group, columns=self.columns)
        except OSError as exc:
            raise StoreError(f"store {self.store.uri}: cannot read {self.paths[part]}: {first_line(exc)}") from None
        self.groups_read += 1
        decoded = {"sample_id": np.asarray(table.column("sample_id").to_pylist(), dtype=object),
                   "label": decode_labels(table.column(self.columns[1]), self.resolution)}
        if self.store.has_photos:
            decoded["photo"] = decode_photos(table.column(self.columns[2]), self.resolution)
        self._cache[key] = decoded
        self._cached_bytes += sum(v.nbytes for v in decoded.values())
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:  # keep at least the newest
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= sum(v.nbytes for v in dropped.values())
        return decoded
