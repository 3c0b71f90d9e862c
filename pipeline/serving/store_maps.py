"""The label maps the page offers to start from: one split of a preprocessed store, by sample id.

    maps = StoreMaps(uri, "val", Resolution(256, 512))
    maps.ids                       # sorted sample ids
    maps.png("frankfurt_000000_000294")   # the map in the schema's colours, as PNG bytes

Maps are read by index through the store's row reader (pipeline.data.rows: a row group at a
time, kept in a small cache), so a replica holds a few row groups, never the split. Row i
of a split is its i-th sample id in sorted order (the store's parts cut the sorted samples
in turn, pipeline.data.shards).
"""
from __future__ import annotations

import threading

from crn.resolution import Resolution
from pipeline.data.rows import RowReader
from pipeline.data.schema import LabelSchema, check_schema_match
from pipeline.data.store import open_store
from pipeline.visualize import colorize, png_bytes, schema_palette

CACHE_BYTES = 32 * 2**20


class StoreMaps:
    def __init__(self, uri: str, split: str, resolution: Resolution, schema: LabelSchema):
        store = open_store(uri)
        check_schema_match(schema.to_dict(), store.schema.to_dict(), f"store {uri} vs the served model")
        self.split = split
        self.resolution = resolution
        self.reader = RowReader(store, split, str(resolution), CACHE_BYTES)
        self.ids = store.sample_ids(split)
        self.rows = {sample_id: index for index, sample_id in enumerate(self.ids)}
        self.palette = schema_palette(schema)
        self._lock = threading.Lock()  # the reader's cache is not made for threads

    def png(self, sample_id: str) -> bytes | None:
        """The map in the schema's colours (each class in its first colour), or None for an unknown id."""
        index = self.rows.get(sample_id)
        if index is None:
            return None
        with self._lock:
            row = self.reader.read([index])
        if row["sample_id"][0] != sample_id:
            raise RuntimeError(f"store row {index} holds {row['sample_id'][0]}, not {sample_id}")
        return png_bytes(colorize(row["label"][0], self.palette))


def no_maps() -> dict:
    """What GET /labels answers without --store."""
    return {"split": None, "resolution": None, "ids": []}
