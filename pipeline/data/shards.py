"""Parts of the store: which samples go in which Parquet file, and building one file.

The driver cuts each split's sorted candidates into consecutive shards of `rows_per_file`
samples; shard i of split s becomes `data/<key>/<s>/part-<i>.parquet`. The cut depends only
on the candidates and the settings, never on how many workers run, so the store is the same
whatever the parallelism. `build_shard` is what a Ray Data task runs for one shard: prepare
each sample (pipeline.data.prepare), write the part in one atomic step, and return a small
summary (rows, class pixels, rejects, size and sha256) for the manifest. The summary is also
stored in the part's Parquet footer, so a rerun reuses a finished part by reading its footer
alone, after the cheap integrity check (pipeline.data.integrity): a part that is torn, or
whose size differs from the one the store's manifest records, is rebuilt, and its summary
says why.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.data.integrity import CHECKSUM, HashingWriter, check_part, file_checksum
from pipeline.data.prepare import BadInput, PreparedSample, PrepareSettings, SamplePreparer
from pipeline.data.sources import Candidate, display_path
from pipeline.data.store import StoreError, arrow_schema, label_column, photo_column, write_part
from pipeline.errors import first_line
from pipeline.fs import join, write_atomically

PART_METADATA_KEY = b"crn.part"

# A part holds about this many bytes of raw pixels: big enough for efficient Parquet reads,
# small enough that a worker holds a few of them at once without trouble.
TARGET_PART_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    path: str  # relative to the store root
    samples: tuple[Candidate, ...]

    def digest(self) -> str:
        """Names the inputs of this part: a reused part must have been built from these."""
        text = json.dumps([c.to_dict() for c in self.samples], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_row(self) -> dict:
        return {"shard": json.dumps({"split": self.split, "index": self.index, "path": self.path,
                                     "samples": [c.to_dict() for c in self.samples]})}

    @staticmethod
    def from_row(row: dict) -> "Shard":
        d = json.loads(row["shard"])
        return Shard(d["split"], d["index"], d["path"], tuple(Candidate(**c) for c in d["samples"]))


def rows_per_file_for(resolutions, with_photos: bool) -> int:
    """Default part size: about TARGET_PART_BYTES of raw label (and photo) pixels."""
    bytes_per_row = sum(h * w * (4 if with_photos else 1) for h, w in resolutions)
    return int(max(1, min(4096, TARGET_PART_BYTES // bytes_per_row)))


def plan_shards(candidates: list[Candidate], splits: list[str], rows_per_file: int, data_dir: str) -> list[Shard]:
    shards = []
    for split in splits:
        in_split = [c for c in candidates if c.split == split]  # already sorted by sample id
        for index, start in enumerate(range(0, len(in_split), rows_per_file)):
            path = join(data_dir, split, f"part-{index:05d}.parquet")
            shards.append(Shard(split, index, path, tuple(in_split[start:start + rows_per_file])))
    return shards


def build_shard(
    row: dict,
    *,
    settings: PrepareSettings,
    source_fs: pafs.FileSystem,
    source_uri: str,
    store_fs: pafs.FileSystem,
    store_root: str,
    listed: dict[str, dict] | None = None,
) -> dict:
    """Ray Data `map` function: one shard row in, one summary row out (JSON text).

    `listed`: the manifest entries of the parts that the store's current manifest lists in
    this run's data folder, by path: a part found there is reused only if it matches its
    entry, and keeps the entry's checksum. The summary has "error" instead of the counts
    when the part could not be written, and "rewritten" (why) when a listed part was damaged.
    """
    shard = Shard.from_row(row)
    target = join(store_root, shard.path)
    summary, why = _finished_part_summary(store_fs, target, shard, (listed or {}).get(shard.path))
    if summary is None:
        try:
            summary = _build(shard, settings, source_fs, source_uri, store_fs, target)
        except StoreError as exc:
            # Reported, not raised: the other parts still get written (a rerun then has
            # less to do), and the driver turns it into one line instead of a Ray traceback.
            summary = {"split": shard.split, "index": shard.index, "error": str(exc)}
        if why:
            summary["rewritten"] = why
    return {"summary": json.dumps(summary)}


def _build(shard: Shard, settings: PrepareSettings, source_fs, source_uri, store_fs, target) -> dict:
    preparer = SamplePreparer(settings, source_fs, lambda path: display_path(source_uri, path))
    prepared: list[PreparedSample] = []
    rejects = []
    for c in shard.samples:
        try:
            prepared.append(preparer.prepare(c.split, c.sample_id, c.label, c.photo))
        except BadInput as bad:
            rejects.append({"path": bad.path, "reason": bad.reason})
    class_pixels = np.zeros(preparer.schema.num_classes, dtype=np.int64)
    for sample in prepared:
        class_pixels += sample.class_pixels
    # Samples stored with unknown label values as void (pipeline.data.prepare, check 5).
    unknown = [{"sample_id": s.sample_id, "pixels": s.unknown_pixels,
                "fraction": round(s.unknown_pixels / s.source_pixels, 6)} for s in prepared if s.unknown_pixels]
    summary = {
        "split": shard.split,
        "index": shard.index,
        "path": shard.path if prepared else None,
        "rows": len(prepared),
        "bytes": 0,
        CHECKSUM: None,
        "class_pixels": class_pixels.tolist(),
        "rejects": rejects,
        "unknown_labels": unknown,
        "inputs": shard.digest(),
        "reused": False,
    }
    if prepared:
        table = _to_table(prepared, [str(r) for r in settings.resolutions])
        stored_summary = {**summary, "reused": True}  # what a later run will read back
        table = table.replace_schema_metadata({PART_METADATA_KEY: json.dumps(stored_summary)})
        writers = []

        def write(handle) -> None:
            writers.append(HashingWriter(handle))
            write_part(table, writers[-1])

        try:
            summary["bytes"] = write_atomically(store_fs, target, write)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {str(exc).strip().splitlines()[0]}") from None
        summary[CHECKSUM] = writers[-1].hexdigest()
    return summary


def _to_table(samples: list[PreparedSample], resolutions: list[str]) -> pa.Table:
    columns: dict[str, list] = {
        "sample_id": [s.sample_id for s in samples],
        "split": [s.split for s in samples],
    }
    for resolution in resolutions:
        columns[label_column(resolution)] = [s.labels[resolution].tobytes() for s in samples]
        columns[photo_column(resolution)] = [
            s.photos[resolution].tobytes() if s.photos is not None else None for s in samples
        ]
    return pa.table(columns, schema=arrow_schema(resolutions))


def _finished_part_summary(store_fs: pafs.FileSystem, target: str, shard: Shard,
                           listed: dict | None) -> tuple[dict | None, str]:
    """(the stored summary of a sound, complete part built from the same inputs, "") or
    (None, why the part is to be rewritten; "" when there is nothing to tell: no such part).

    `listed` is the part's entry in the store's manifest, if it has one: then the part must
    have that size, and keeps that checksum. A part that is missing, torn (say, cut short on
    a filesystem without atomic rename), of another size, or built from other inputs is
    rebuilt and overwritten.
    """
    try:
        check = check_part(store_fs, target, listed or {})
        if check.problem == "missing":
            return None, "missing" if listed else ""
        if check.problem is not None:
            return None, check.problem
        summary = json.loads(check.footer.metadata[PART_METADATA_KEY])
    except Exception as exc:  # any failure to read it back means: build it again
        return None, f"unreadable ({first_line(exc)})"
    if summary.get("inputs") != shard.digest():
        return None, "built from other inputs" if listed else ""
    if check.footer.num_rows != summary.get("rows"):
        return None, f"{check.footer.num_rows} rows, its footer's summary says {summary.get('rows')}"
    checksum = (listed or {}).get(CHECKSUM)
    if checksum is None:  # a part of an interrupted run, or of a store written without checksums
        size, checksum = file_checksum(store_fs, target)
        if size != check.size:
            return None, f"changed while it was read ({check.size} then {size} bytes)"
    return {**summary, "bytes": check.size, CHECKSUM: checksum}, ""
