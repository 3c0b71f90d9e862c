"""The multi-resolution store: Parquet parts plus a manifest, in a folder or an s3:// prefix.

Layout:

    <store>/manifest.json                           written last, atomically
    <store>/data/<key>/<split>/part-00000.parquet   one set of parts per split

Columns (docs/design.md#store-format): `sample_id` (string), `split` (string), and for each resolution,
smallest first, `label_<H>x<W>` (binary: H*W uint8 class indices, C order) and
`photo_<H>x<W>` (binary: H*W*3 uint8 RGB; null for label-only sources). Rows are sorted by
sample id within a split, across the listed parts in order. Each resolution is its own
column chunks, so reading one resolution reads only its bytes.

Atomicity: the manifest is the store. It names its part files, and it is written only after
every part is complete, in one step (temp file + rename locally, one object upload on S3).
Readers open the manifest first, so they see the old store or the new one, never a mix.
`<key>` is a digest of the source fingerprint and the job's settings: a rerun over the same
sources writes the same parts into the same folder (finishing an interrupted run), and a
changed source writes a new folder while the old manifest's parts stay readable.

Integrity: the manifest records each part's rows, size in bytes and sha256. Opening a store
checks every part it lists, cheaply (size and Parquet footer: pipeline.data.integrity), so a
torn or replaced part stops a job on the driver with one line naming it, before Ray starts;
`jobs/verify_store.py` (pipeline.data.verify) reads every byte.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from crn.resolution import Resolution
from pipeline.data.integrity import PartCheck, check_part, verify_hint
from pipeline.data.schema import LabelSchema
from pipeline.errors import UserError, first_line
from pipeline.fs import filesystem_for, join, missing_bucket, read_bytes, uri_join, write_bytes_atomically

STORE_FORMAT = "crn-store/1"
MANIFEST_NAME = "manifest.json"
# The splits the jobs read by name: trainings learn from `train`, evaluations score `val`.
TRAIN_SPLIT, VAL_SPLIT = "train", "val"


class StoreError(UserError):
    """A store that is missing, unreadable or cannot be written (one-line message)."""


def label_column(resolution: str) -> str:
    return f"label_{resolution}"


def photo_column(resolution: str) -> str:
    return f"photo_{resolution}"


def arrow_schema(resolutions: Sequence[str]) -> pa.Schema:
    fields = [pa.field("sample_id", pa.string(), nullable=False), pa.field("split", pa.string(), nullable=False)]
    for resolution in resolutions:
        fields.append(pa.field(label_column(resolution), pa.binary(), nullable=False))
        fields.append(pa.field(photo_column(resolution), pa.binary()))
    return pa.schema(fields)


def write_part(table: pa.Table, handle) -> None:
    """Serialise one part into an open file. Settings chosen for raw pixel columns: no
    dictionary encoding or statistics on the binary columns (useless there), zstd (label
    maps shrink ~50x)."""
    pq.write_table(
        table,
        handle,
        compression="zstd",
        use_dictionary=["sample_id", "split"],
        write_statistics=["sample_id", "split"],
    )


# ---------------------------------------------------------------- writing the manifest


def check_destination(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root) of a store we can write, or StoreError naming the problem.

    A tiny probe file is written and removed, so an unreachable endpoint, a missing bucket
    or a read-only folder stop the job before any work is done.
    """
    try:
        fs, root = filesystem_for(uri)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    probe = join(root, ".crn-write-probe")
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(root, exist_ok=True)
        write_bytes_atomically(fs, probe, b"probe")
        fs.delete_file(probe)
    except OSError as exc:
        raise StoreError(f"cannot write to {uri}: {first_line(exc)}") from None
    return fs, root


def write_manifest(fs: pafs.FileSystem, root: str, manifest: dict) -> None:
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    try:
        write_bytes_atomically(fs, join(root, MANIFEST_NAME), data)
    except OSError as exc:
        raise StoreError(f"cannot write {join(root, MANIFEST_NAME)}: {first_line(exc)}") from None


def read_manifest(fs: pafs.FileSystem, root: str, uri: str) -> dict:
    path = join(root, MANIFEST_NAME)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StoreError(f"cannot reach store {uri}: {first_line(exc)}") from None
    if info.type != pafs.FileType.File:
        raise StoreError(
            missing_bucket(fs, root, uri)
            or f"no store at {uri}: {MANIFEST_NAME} is missing (never preprocessed, or the write did not finish)"
        )
    try:
        manifest = json.loads(read_bytes(fs, path))
    except (OSError, ValueError) as exc:
        raise StoreError(f"store {uri}: unreadable {MANIFEST_NAME} ({first_line(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise StoreError(f"store {uri}: {MANIFEST_NAME} is not a {STORE_FORMAT} manifest")
    return manifest


# ---------------------------------------------------------------- reading


def open_store(uri: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> "Store":
    """Open a complete, sound store; StoreError (one line) if there is none at `uri` or one of
    its parts is missing, torn or altered (pipeline.data.integrity's cheap check, every part).

    `filesystem` replaces the one `filesystem_for(uri)` would choose (then `uri` is the path
    inside it); tests use it to count the bytes a read touches.
    """
    if filesystem is None:
        try:
            fs, root = filesystem_for(uri)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
    else:
        fs, root = filesystem, str(uri)
    manifest = read_manifest(fs, root, str(uri))
    return Store(str(uri), fs, root, manifest, footers=check_parts(fs, root, manifest, str(uri)))


def manifest_parts(manifest: dict) -> list[dict]:
    """Every part's manifest entry ("path" relative to the store, "rows", "bytes", "sha256"), split by split."""
    return [part for split in manifest["splits"].values() for part in split["files"]]


# Footers of remote stores found sound, by (store, manifest): a job opens its store several
# times on the driver, and on S3 a store of a thousand parts takes seconds to check.
_SOUND_REMOTE_STORES: OrderedDict[tuple[str, str], dict[str, pq.FileMetaData]] = OrderedDict()
_SOUND_REMOTE_STORES_KEPT = 4


def check_parts(fs: pafs.FileSystem, root: str, manifest: dict, uri: str) -> dict[str, pq.FileMetaData]:
    """{path: footer} of the manifest's parts, or StoreError naming the first damaged one.

    A remote store is checked once per process and manifest; a local one at every opening
    (a fraction of a millisecond per part).
    """
    remote = not isinstance(fs, pafs.LocalFileSystem)
    key = (f"{fs.type_name}:{root}", hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest())
    if remote and key in _SOUND_REMOTE_STORES:
        _SOUND_REMOTE_STORES.move_to_end(key)
        return _SOUND_REMOTE_STORES[key]
    footers = {}
    for part, check in zip(manifest_parts(manifest), part_checks(fs, root, manifest, uri)):
        if check.problem is not None:
            raise StoreError(f"{uri_join(uri, part['path'])}: {check.problem}; {verify_hint(uri)}")
        footers[join(root, part["path"])] = check.footer
    if remote:
        _SOUND_REMOTE_STORES[key] = footers
        while len(_SOUND_REMOTE_STORES) > _SOUND_REMOTE_STORES_KEPT:
            _SOUND_REMOTE_STORES.popitem(last=False)
    return footers


def part_checks(fs: pafs.FileSystem, root: str, manifest: dict, uri: str) -> list[PartCheck]:
    """The cheap check (pipeline.data.integrity) of every part, in `manifest_parts` order.

    Remote parts are checked a few at a time: each check waits on two round trips. An
    unreachable store is a StoreError.
    """
    parts = manifest_parts(manifest)

    def check(part: dict) -> PartCheck:
        try:
            return check_part(fs, join(root, part["path"]), part)
        except OSError as exc:
            raise StoreError(f"store {uri}: cannot read {uri_join(uri, part['path'])}: {first_line(exc)}") from None

    if isinstance(fs, pafs.LocalFileSystem) or len(parts) < 2:
        return [check(part) for part in parts]
    with ThreadPoolExecutor(max_workers=min(8, len(parts))) as pool:
        return list(pool.map(check, parts))


@dataclass
class Store:
    uri: str
    filesystem: pafs.FileSystem = field(repr=False)
    root: str
    manifest: dict = field(repr=False)
    # The parts' Parquet footers, read by the check at opening: reads reuse them, so a read
    # of a part touches its column chunks and nothing more.
    footers: dict[str, pq.FileMetaData] = field(default_factory=dict, repr=False)

    @property
    def schema(self) -> LabelSchema:
        return LabelSchema.from_dict(self.manifest["schema"])

    @property
    def resolutions(self) -> list[str]:
        """Resolutions held, smallest first, as "HxW" strings."""
        return list(self.manifest["resolutions"])

    @property
    def top_resolution(self) -> str:
        return self.resolutions[-1]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def has_photos(self) -> bool:
        return bool(self.manifest["has_photos"])

    def count(self, split: str) -> int:
        return int(self._split(split)["count"])

    def files(self, split: str) -> list[str]:
        """The split's part files as paths inside `self.filesystem`, in row order."""
        return [join(self.root, part["path"]) for part in self._split(split)["files"]]

    def sample_ids(self, split: str) -> list[str]:
        """The split's sample ids, sorted (only the id column is read)."""
        ids = []
        for path in self.files(split):
            try:
                ids += pq.read_table(path, columns=["sample_id"], filesystem=self.filesystem).column("sample_id").to_pylist()
            except OSError as exc:
                raise StoreError(f"store {self.uri}: cannot read {path}: {first_line(exc)}") from None
        return sorted(ids)

    def head(self, split: str, resolution: str | Resolution, n: int) -> list[dict]:
        """The first `n` rows of the split's first part, decoded (a few row groups' bytes, not the split)."""
        text = self.resolution(resolution)
        files = self.files(split)
        if not files:
            return []
        with self.filesystem.open_input_file(files[0]) as handle:
            part = pq.ParquetFile(handle, metadata=self.footers.get(files[0]))
            first = next(part.iter_batches(batch_size=n, columns=self.columns(text)), None)
        if first is None:
            return []
        batch = decode_batch(pa.Table.from_batches([first]), text, self.has_photos)
        return [{name: column[i] for name, column in batch.items()} for i in range(len(batch["sample_id"]))]

    def resolution(self, resolution: str | Resolution) -> str:
        """Normalise "64x128" / (64, 128) and check the store holds it."""
        text = str(resolution)
        if text not in self.resolutions:
            raise StoreError(f"store {self.uri} has no resolution {text} (it has {', '.join(self.resolutions)})")
        return text

    def columns(self, resolution: str | Resolution) -> list[str]:
        """The columns that hold one resolution (plus the sample id)."""
        text = self.resolution(resolution)
        columns = ["sample_id", label_column(text)]
        if self.has_photos:
            columns.append(photo_column(text))
        return columns

    def read_table(self, split: str, resolution: str | Resolution) -> pa.Table:
        """The split at one resolution with plain pyarrow: columns `sample_id`,
        `label_<HxW>` and (with photos) `photo_<HxW>`, rows sorted by sample id.

        Only those columns' chunks are read (pre-buffering off: it would merge nearby byte
        ranges and so also fetch small neighbouring columns).
        """
        columns = self.columns(resolution)
        tables = []
        for path in self.files(split):
            try:
                with self.filesystem.open_input_file(path) as handle:
                    part = pq.ParquetFile(handle, pre_buffer=False, metadata=self.footers.get(path))
                    tables.append(part.read(columns=columns))
            except OSError as exc:
                raise StoreError(f"store {self.uri}: cannot read {path}: {first_line(exc)}") from None
        if not tables:
            return arrow_schema(self.resolutions).empty_table().select(columns)
        return pa.concat_tables(tables).replace_schema_metadata(None)  # drop the parts' own summaries

    def dataset(self, split: str, resolution: str | Resolution, extra_labels: Sequence[str] = ()):
        """A Ray Dataset of {"sample_id": str, "label": uint8[H,W], "photo": uint8[H,W,3]}.

        `extra_labels`: further resolutions whose label maps come along, as
        `label_<HxW>` (the evaluation compares segmenter readings at other sizes).

        `photo` is left out for label-only stores. Rows come in file order (part by part,
        sorted by sample id) when the DataContext preserves order. torch cannot batch the
        string `sample_id`: `.select_columns(["label", "photo"])` before
        `iter_torch_batches`. Only this resolution's column chunks are read (plus, once,
        a sample of the first part's first rows, which Ray reads with its default range
        merging of gaps under 8 KiB).
        """
        import ray.data

        text = self.resolution(resolution)
        extra = [self.resolution(r) for r in extra_labels if str(r) != text]
        files = self.files(split)
        if not files:
            raise StoreError(f"store {self.uri}: split '{split}' has no samples")
        with _classic_parquet_reader():
            ds = ray.data.read_parquet(
                files,
                columns=self.columns(text) + [label_column(r) for r in extra],
                filesystem=self.filesystem,
                # No pre-buffering: it merges byte ranges less than 8 KiB apart, which
                # would pull small neighbouring columns (other resolutions) into the read.
                fragment_scan_options=pads.ParquetFragmentScanOptions(
                    pre_buffer=False, use_buffered_stream=True, buffer_size=8 * 2**20
                ),
            )
        return ds.map_batches(
            decode_batch,
            fn_kwargs={"resolution": text, "with_photos": self.has_photos, "extra_labels": extra},
            batch_format="pyarrow",
            zero_copy_batch=True,
        )

    def _split(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise StoreError(f"store {self.uri} has no split '{split}' (it has {', '.join(self.splits)})")
        return self.manifest["splits"][split]


@contextlib.contextmanager
def _classic_parquet_reader():
    """Plan a `read_parquet` with Ray 2.60's classic Parquet reader.

    The newer reader lists the files in a fresh actor on every read: seconds to start (half
    a minute on a busy 2-core machine) for a list we already hold; the classic one plans on
    the driver. The choice is read when the dataset is made (it keeps a copy of the
    DataContext), so the global setting is restored at once.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        yield
    finally:
        context.use_datasource_v2 = saved


# ---------------------------------------------------------------- decoding binary columns


def decode_column(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A binary column of equally sized raw uint8 values -> one array [N, *shape]."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [decode_column(chunk, shape) for chunk in column.chunks]
        return np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.uint8)
    if column.null_count:
        raise StoreError(f"cannot decode a column with {column.null_count} missing values")
    item_size = int(np.prod(shape))
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(
        column.buffers()[1],
        dtype=offset_type,
        count=len(column) + 1,
        offset=column.offset * np.dtype(offset_type).itemsize,
    )
    if np.any(np.diff(offsets) != item_size):
        raise StoreError(f"binary values are not all {item_size} bytes (expected shape {shape})")
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8) if len(column) else np.zeros(0, np.uint8)
    return data[offsets[0]: offsets[-1]].reshape(len(column), *shape)


def decode_labels(column, resolution: str) -> np.ndarray:
    """`label_<HxW>` column -> uint8 [N, H, W] class indices."""
    height, width = Resolution.parse(resolution)
    return decode_column(column, (height, width))


def decode_photos(column, resolution: str) -> np.ndarray:
    """`photo_<HxW>` column -> uint8 [N, H, W, 3] RGB."""
    height, width = Resolution.parse(resolution)
    return decode_column(column, (height, width, 3))


def decode_batch(batch: pa.Table, resolution: str, with_photos: bool,
                 extra_labels: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Ray Data batch of one resolution's columns -> decoded numpy arrays (copies); label maps of
    `extra_labels` resolutions under their column names."""
    out = {
        "sample_id": np.asarray(batch.column("sample_id").to_pylist(), dtype=object),
        "label": decode_labels(batch.column(label_column(resolution)), resolution).copy(),
    }
    if with_photos:
        out["photo"] = decode_photos(batch.column(photo_column(resolution)), resolution).copy()
    for extra in extra_labels:
        out[label_column(extra)] = decode_labels(batch.column(label_column(extra)), extra).copy()
    return out

