"""Reading a whole store back to prove it sound: `python jobs/verify_store.py <store>`.

The jobs check a store's parts cheaply when they open it (size and footer:
pipeline.data.integrity); this reads every byte, so it also finds what that check cannot,
such as a byte changed inside a part whose size is unchanged. For the manifest: it parses,
has the store format and the fields readers use, each split's count is the sum of its parts'
rows, and every part lies in the store's data folder, listed once. For each part: present,
the manifest's size and sha256, the footer parses, every row decodes (each label and photo
value has its resolution's size; photos present exactly when the store has them), the
manifest's row count, sample ids sorted and unique within the split, the split column right.

One line per part (`ok` or `DAMAGED` and what is wrong), then a one-line summary; the exit
status is 1 when anything is wrong. A part is held in memory while it is checked (a part is
about 32 MiB of raw pixels, less on disk). Parts listed without a size or checksum (a store
written before they were recorded) are checked by everything else, and the line says so.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from crn.resolution import Resolution
from pipeline.data.integrity import BLOCK_BYTES, CHECKSUM
from pipeline.data.store import MANIFEST_NAME, StoreError, arrow_schema, label_column, photo_column, read_manifest
from pipeline.errors import UserError, first_line
from pipeline.fs import filesystem_for, join, uri_join
from pipeline.options import from_argv, option

REQUIRED_FIELDS = ("schema", "resolutions", "splits", "has_photos", "data_dir")


@dataclass
class VerifyConfig:
    store: str = option(help="the store to verify: a folder or s3://bucket/prefix (may also come first, "
                             "without the flag)")


def parse_verify_config(argv: Sequence[str] | None) -> VerifyConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `verify_store.py <store>`: the store needs no flag
        argv = ["--store", *argv]
    return from_argv(VerifyConfig, argv, prog="jobs/verify_store.py",
                     description="Read every part of a store back: sizes, checksums, rows; exit 1 if any is damaged.")


@dataclass
class PartResult:
    location: str  # as the user names it: the store's URI joined with the part's path
    rows: int = 0
    size: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.problems:
            return f"DAMAGED  {self.location}: {'; '.join(self.problems)}"
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"ok       {self.location}: {self.rows} rows, {self.size} bytes{notes}"


@dataclass
class VerifyReport:
    uri: str
    manifest_problems: list[str] = field(default_factory=list)
    parts: list[PartResult] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.manifest_problems and not any(part.problems for part in self.parts)

    def summary(self) -> str:
        damaged = [part for part in self.parts if part.problems]
        rows = sum(part.rows for part in self.parts)
        if self.sound:
            return f"verify: {self.uri} is sound: manifest and {len(self.parts)} parts, {rows} rows"
        what = []
        if self.manifest_problems:
            what.append(f"{len(self.manifest_problems)} problems in {MANIFEST_NAME}")
        if damaged:
            what.append(f"{len(damaged)} of {len(self.parts)} parts damaged")
        return (f"verify: {self.uri} is DAMAGED: {', '.join(what)}; to repair, delete the damaged parts and re-run "
                f"preprocessing with the same settings (it rewrites missing and torn parts)")


def verify_store(uri: str, show: Callable[[str], None] = print) -> VerifyReport:
    """Check the store at `uri` in full, showing one line per finding as it goes.

    UserError when there is no store there at all (no manifest, unreachable): nothing to verify.
    """
    try:
        fs, root = filesystem_for(uri)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    report = VerifyReport(uri)
    try:
        present = fs.get_file_info(join(root, MANIFEST_NAME)).type == pafs.FileType.File
    except OSError as exc:
        raise UserError(f"cannot reach store {uri}: {first_line(exc)}") from None
    if not present:  # a wrong address, or a store never finished: nothing to verify
        raise UserError(f"no store at {uri}: {MANIFEST_NAME} is missing")
    try:
        manifest = read_manifest(fs, root, uri)
    except StoreError as exc:
        report.manifest_problems.append(str(exc))
        show(f"DAMAGED  {uri_join(uri, MANIFEST_NAME)}: {exc}")
        return report
    report.manifest_problems = manifest_problems(manifest)
    for problem in report.manifest_problems:
        show(f"DAMAGED  {uri_join(uri, MANIFEST_NAME)}: {problem}")
    if any(problem.startswith("missing field") for problem in report.manifest_problems):
        return report
    resolutions = list(manifest["resolutions"])
    for split, listing in manifest["splits"].items():
        previous_id = None
        for entry in listing.get("files", []):
            result, ids = verify_part(fs, join(root, entry["path"]), uri_join(uri, entry["path"]), entry, split,
                                      resolutions, bool(manifest["has_photos"]))
            if ids and previous_id is not None and ids[0] <= previous_id:
                result.problems.append(f"its first sample id {ids[0]!r} does not come after the previous part's "
                                       f"last, {previous_id!r}")
            previous_id = ids[-1] if ids else previous_id
            report.parts.append(result)
            show(result.line())
    return report


def manifest_problems(manifest: dict) -> list[str]:
    """What is inconsistent in a parsed manifest (its parts' files are not read here)."""
    missing = [name for name in REQUIRED_FIELDS if name not in manifest]
    if missing:
        return [f"missing field {', '.join(missing)}"]
    problems = []
    try:
        arrow_schema([str(Resolution.parse(r)) for r in manifest["resolutions"]])
    except (ValueError, TypeError) as exc:
        problems.append(f"resolutions {manifest['resolutions']!r}: {exc}")
    seen = set()
    data_dir = str(manifest["data_dir"]).rstrip("/") + "/"
    for split, listing in manifest["splits"].items():
        files = listing.get("files", [])
        total = sum(int(entry.get("rows", 0)) for entry in files)
        if listing.get("count") != total:
            problems.append(f"split '{split}' counts {listing.get('count')} samples, its parts hold {total}")
        for entry in files:
            path = str(entry.get("path", ""))
            if not path.startswith(data_dir + split + "/") or ".." in path.split("/"):
                problems.append(f"part {path!r} of split '{split}' lies outside {data_dir}{split}/")
            if path in seen:
                problems.append(f"part {path!r} is listed twice")
            seen.add(path)
    return problems


def verify_part(fs: pafs.FileSystem, path: str, location: str, entry: dict, split: str,
                resolutions: list[str], has_photos: bool) -> tuple[PartResult, list[str]]:
    """Read one part in full: (what was found, its sample ids)."""
    result = PartResult(location)
    try:
        data = _read_all(fs, path)
    except FileNotFoundError:
        result.problems.append("missing")
        return result, []
    except OSError as exc:
        result.problems.append(f"unreadable ({first_line(exc)})")
        return result, []
    result.size = len(data)
    if "bytes" not in entry:
        result.notes.append("no size in the manifest")
    elif entry["bytes"] != len(data):
        result.problems.append(f"{len(data)} bytes, the manifest says {entry['bytes']}")
    if CHECKSUM not in entry or entry[CHECKSUM] is None:
        result.notes.append(f"no {CHECKSUM} in the manifest")
    else:
        digest = hashlib.new(CHECKSUM, data).hexdigest()
        if digest != entry[CHECKSUM]:
            result.problems.append(f"checksum mismatch: {CHECKSUM} {digest[:16]}..., "
                                   f"the manifest says {entry[CHECKSUM][:16]}...")
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except (OSError, ValueError, pa.ArrowException) as exc:
        result.problems.append(f"does not read as Parquet ({first_line(exc)})")
        return result, []
    result.rows = table.num_rows
    if table.num_rows != entry.get("rows"):
        result.problems.append(f"{table.num_rows} rows, the manifest says {entry.get('rows')}")
    result.problems += _row_problems(table, split, resolutions, has_photos)
    ids = table.column("sample_id").to_pylist() if "sample_id" in table.column_names else []
    return result, ids


def _read_all(fs: pafs.FileSystem, path: str) -> bytes:
    blocks = []
    with fs.open_input_stream(path) as stream:
        while block := stream.read(BLOCK_BYTES):
            blocks.append(block)
    return b"".join(blocks)


def _row_problems(table: pa.Table, split: str, resolutions: list[str], has_photos: bool) -> list[str]:
    """What is wrong with a part's decoded rows."""
    missing = [name for name in arrow_schema(resolutions).names if name not in table.column_names]
    if missing:
        return [f"no column {', '.join(missing)}"]
    problems = []
    ids = table.column("sample_id").to_pylist()
    if any(later <= earlier for earlier, later in zip(ids, ids[1:])):
        problems.append("sample ids not sorted and unique")
    if table.num_rows and pc.any(pc.not_equal(table.column("split"), split)).as_py():
        problems.append(f"rows of another split than '{split}'")
    for resolution in resolutions:
        height, width = Resolution.parse(resolution)
        expected = [(label_column(resolution), height * width, True)]
        expected.append((photo_column(resolution), height * width * 3, has_photos))
        for name, size, present in expected:
            column = table.column(name)
            if not present:
                if column.null_count != len(column):
                    problems.append(f"{name}: values in a store without photos")
                continue
            if column.null_count:
                problems.append(f"{name}: {column.null_count} missing values")
            lengths = pc.min_max(pc.binary_length(column))
            if table.num_rows and (lengths["min"].as_py(), lengths["max"].as_py()) != (size, size):
                problems.append(f"{name}: values of {lengths['min'].as_py()}..{lengths['max'].as_py()} bytes, "
                                f"not {size}")
    return problems


def run(config: VerifyConfig, show: Callable[[str], None] = print) -> int:
    """The whole command: the report's lines, the summary; 0 if the store is sound, else 1."""
    report = verify_store(config.store, show)
    show(report.summary())
    return 0 if report.sound else 1
