"""Telling a damaged part of the store from a sound one.

The manifest records, for every part, its size in bytes and the sha256 of its bytes, both
taken while the part is written (no second read). Two checks use them:

- the cheap one, `check_part`: the part's size, then its Parquet footer, which must parse
  and count the manifest's rows. One open and one small read per part, so every job runs it
  on every part of a store it opens (pipeline.data.store.open_store), and preprocessing runs
  it before it reuses a part. It finds a missing, torn, truncated or replaced part; it does
  not find a byte changed inside a data page with the size kept.
- the full one, pipeline.data.verify (`jobs/verify_store.py`): every byte read, the sha256
  compared, every row decoded.

A part listed without a size (a store written before sizes were recorded) is checked by its
footer and row count alone; one without a checksum by its full decode alone.

sha256 because `sha256sum` can check it by hand and it is fast enough not to matter: about
1 GB/s on a core with SHA instructions, well above what a part is written or read at
(docs/design.md#store-integrity has the measurements).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import first_line

CHECKSUM = "sha256"  # the manifest's key for a part's checksum, and the hashlib algorithm
BLOCK_BYTES = 8 * 2**20  # reads of a whole part go in blocks of this size


def verify_hint(uri: str) -> str:
    """What the one-line error about a damaged part tells the user to do."""
    return (f"the store is damaged: run `python jobs/verify_store.py {uri}` "
            "or re-run preprocessing to rewrite it")


class HashingWriter:
    """A writable file that passes everything on to `handle` and hashes it on the way,
    so a part's checksum costs no second read (the Parquet writer takes any file-like)."""

    def __init__(self, handle):
        self._handle = handle
        self._digest = hashlib.new(CHECKSUM)
        self.closed = False

    def write(self, data) -> int:
        self._digest.update(data)
        written = self._handle.write(data)
        return len(data) if written is None else written

    def flush(self) -> None:
        self._handle.flush()

    def tell(self) -> int:
        return self._handle.tell()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True)
class PartCheck:
    """What the cheap check found: `problem` (None for a sound part), and for a part that
    opened, its size and (when it parsed) its footer."""
    problem: str | None
    size: int | None = None
    footer: pq.FileMetaData | None = None


def check_part(fs: pafs.FileSystem, path: str, entry: dict) -> PartCheck:
    """The cheap check of the part at `path` against its manifest entry: size ("bytes", where
    recorded), then the footer, which must parse and count the entry's "rows" (where given).

    Only the footer is read. An OSError other than a missing file (an unreachable endpoint,
    no permission) is raised: that is not damage, and rewriting the part would not help.
    """
    try:
        handle = fs.open_input_file(path)
    except FileNotFoundError:
        return PartCheck("missing")
    with handle:
        size = handle.size()
        expected = entry.get("bytes")
        if expected is not None and size != expected:
            return PartCheck(f"{size} bytes, the manifest says {expected}", size)
        try:
            footer = pq.ParquetFile(handle).metadata
        except OSError:
            raise
        except (ValueError, pa.ArrowException) as exc:  # pyarrow's ArrowInvalid: not Parquet (any more)
            return PartCheck(f"unreadable Parquet footer ({first_line(exc)})", size)
    if "rows" in entry and footer.num_rows != entry["rows"]:
        return PartCheck(f"{footer.num_rows} rows, the manifest says {entry['rows']}", size, footer)
    return PartCheck(None, size, footer)


def file_checksum(fs: pafs.FileSystem, path: str) -> tuple[int, str]:
    """(size, checksum) of a whole file, read as a stream in blocks."""
    digest = hashlib.new(CHECKSUM)
    size = 0
    with fs.open_input_stream(path) as stream:
        while block := stream.read(BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
