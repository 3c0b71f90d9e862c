"""Preprocess labelled photographs into the multi-resolution Parquet store, with Ray Data.

    python -m pipeline.toy --out work/toy --train 24 --val 6            # a toy data set
    python jobs/preprocess.py --source work/toy --out work/store --resolutions 64x128,128x256,256x512
    ray job submit -- python jobs/preprocess.py --source s3://bucket/cityscapes --out s3://bucket/store

Stages: scan the source on the driver (paths only; name-level rejects), cut each split's
sorted samples into shards of `rows_per_file`, then a Ray Data stream over the shards:
each task decodes, validates, maps classes, downsamples to every resolution and writes its
Parquet part (pipeline.shards). Only small summaries come back to the driver, so memory
stays flat as the data set grows. Last, the manifest (pipeline.store) is written in one
atomic step. A rerun over unchanged sources reuses finished parts and gives the same
store; bad inputs are listed with their reasons in the manifest and on stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pyarrow.fs as pafs

if __package__ in (None, ""):  # `python jobs/preprocess.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.common import UserError, entrypoint, init_ray
from pipeline.fs import join, uri_join
from pipeline.resolution import format_resolution, parse_resolutions
from pipeline.schema import SchemaError, load_schema
from pipeline.shards import build_shard, plan_shards, rows_per_file_for
from pipeline.sources import DEFAULT_LABEL_TYPE, FORMATS, LABEL_TYPES, SourceError, scan_source
from pipeline.store import STORE_FORMAT, StoreError, check_destination, read_manifest, write_manifest


@dataclass
class PreprocessConfig:
    source: str  # folder or s3:// prefix holding the source data set
    out: str  # store location: folder or s3:// prefix
    format: str = "cityscapes"  # source layout, one of pipeline.sources.FORMATS
    label_type: str | None = None  # "ids" or "color"; None: the format's usual one
    schema: str = "cityscapes"  # built-in schema name or path to a schema JSON file
    resolutions: list[str] = field(default_factory=lambda: ["64x128", "128x256", "256x512"])
    splits: list[str] | None = None  # None: the format's usual splits (cityscapes: train, val)
    crop_to_aspect: bool = False  # centre-crop sources that are not 1:2 instead of rejecting them
    rows_per_file: int | None = None  # samples per Parquet part; None: about 32 MiB of pixels
    dry_run: bool = False  # print the resolved config and stop

    def store_settings(self) -> dict:
        """The settings that decide the store's content (so: its data folder's key)."""
        return {
            "format": self.format,
            "label_type": self.label_type,
            "resolutions": self.resolutions,
            "crop_to_aspect": self.crop_to_aspect,
            "rows_per_file": self.rows_per_file,
        }


def parse_args(argv: Sequence[str] | None) -> PreprocessConfig:
    parser = argparse.ArgumentParser(
        prog="preprocess", description="Preprocess a labelled data set into a multi-resolution Parquet store."
    )
    parser.add_argument("--source", required=True, help="source data set: a folder or an s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="where the store goes: a folder or an s3://bucket/prefix")
    parser.add_argument("--format", default="cityscapes", choices=FORMATS,
                        help="source layout: cityscapes (leftImg8bit/ + gtFine/), gta5 or paired "
                             "(images/ + labels/), labels-only (label PNGs, for synthesis)")
    parser.add_argument("--label-type", choices=LABEL_TYPES,
                        help="labels as single-channel ids or RGB colours (default: ids, but color for gta5)")
    parser.add_argument("--schema", default="cityscapes",
                        help="label schema: a built-in name (cityscapes) or a schema JSON file")
    parser.add_argument("--resolutions", default="64x128,128x256,256x512",
                        help="comma-separated HxW sizes to store, each h x 2h with h = 4 * 2^n")
    parser.add_argument("--splits",
                        help="comma-separated splits to read (default: train,val for cityscapes; "
                             "the <split>/ folders found, else one split 'train', for the others)")
    parser.add_argument("--crop-to-aspect", action="store_true",
                        help="centre-crop images that are not 1:2 (e.g. GTA5's 1052x1914) instead of rejecting them")
    parser.add_argument("--rows-per-file", type=int,
                        help="samples per Parquet part (default: about 32 MiB of raw pixels per part)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)

    try:
        resolutions = [format_resolution(r) for r in parse_resolutions(args.resolutions)]
    except ValueError as exc:
        raise UserError(f"--resolutions: {exc}") from None
    if args.rows_per_file is not None and args.rows_per_file < 1:
        raise UserError("--rows-per-file must be at least 1")
    config = PreprocessConfig(
        source=args.source,
        out=args.out,
        format=args.format,
        label_type=args.label_type or DEFAULT_LABEL_TYPE[args.format],
        schema=args.schema,
        resolutions=resolutions,
        splits=[s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None,
        crop_to_aspect=args.crop_to_aspect,
        rows_per_file=args.rows_per_file
        or rows_per_file_for(parse_resolutions(",".join(resolutions)), with_photos=args.format != "labels-only"),
        dry_run=args.dry_run,
    )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        schema = load_schema(config.schema)
    except SchemaError as exc:
        raise UserError(str(exc)) from None
    if config.dry_run:
        print(json.dumps(asdict(config), indent=1))
        return 0
    started = time.perf_counter()

    store_fs, store_root = check_destination(config.out)
    try:
        scan = scan_source(config.source, config.format, config.label_type, config.splits)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    for reject in scan.rejects:
        print(f"warning: rejected {reject.path}: {reject.reason}", file=sys.stderr)
    print(f"preprocess: {len(scan.candidates)} samples to read in {', '.join(scan.splits)}, "
          f"{len(scan.rejects)} rejected by name; {scan.num_files} files, fingerprint {scan.fingerprint[:19]}")
    if not scan.candidates:
        raise UserError(_no_samples_message(config.source, [r.to_dict() for r in scan.rejects]))

    key = _store_key(config, schema.fingerprint(), scan.fingerprint)
    data_dir = f"data/{key}"
    existing = _complete_manifest(store_fs, store_root, config.out)
    if existing is not None and existing.get("key") == key:
        print(f"preprocess: {config.out} is up to date (same sources and settings); nothing to do")
        _print_summary(existing, config.out, time.perf_counter() - started, written=0, reused=0)
        return 0

    shards = plan_shards(scan.candidates, scan.splits, config.rows_per_file, data_dir)
    settings = {
        "label_type": config.label_type,
        "schema": schema.to_dict(),
        "resolutions": [list(r) for r in parse_resolutions(",".join(config.resolutions))],
        "crop_to_aspect": config.crop_to_aspect,
    }
    summaries = _run_shards(shards, settings, config, scan, store_fs, store_root)

    manifest = _manifest(config, schema, scan, key, data_dir, summaries)
    if sum(split["count"] for split in manifest["splits"].values()) == 0:
        raise UserError(_no_samples_message(config.source, manifest["rejects"]))
    write_manifest(store_fs, store_root, manifest)
    _remove_leftovers(store_fs, store_root, manifest)
    written = sum(1 for s in summaries if s["path"] and not s["reused"])
    reused = sum(1 for s in summaries if s["reused"])
    _print_summary(manifest, config.out, time.perf_counter() - started, written, reused)
    return 0


def _run_shards(shards, settings, config, scan, store_fs, store_root) -> list[dict]:
    """The Ray Data stage: one task per shard; summaries stream back as parts finish."""
    import ray.data

    init_ray()
    dataset = ray.data.from_items([shard.to_row() for shard in shards], override_num_blocks=len(shards))
    dataset = dataset.map(
        build_shard,
        fn_kwargs={
            "settings": settings,
            "source_fs": scan.filesystem,
            "source_uri": config.source,
            "store_fs": store_fs,
            "store_root": store_root,
        },
    )
    summaries, errors = [], []
    for row in dataset.iter_rows():
        summary = json.loads(row["summary"])
        if "error" in summary:
            errors.append(summary["error"])
            continue
        for reject in summary["rejects"]:
            print(f"warning: rejected {reject['path']}: {reject['reason']}", file=sys.stderr)
        summaries.append(summary)
    if errors:  # the destination failed: no manifest, so readers keep the old store
        more = f" (and {len(errors) - 1} more parts)" if len(errors) > 1 else ""
        raise StoreError(sorted(errors)[0] + more)
    return sorted(summaries, key=lambda s: (scan.splits.index(s["split"]), s["index"]))


def _manifest(config, schema, scan, key, data_dir, summaries) -> dict:
    splits = {}
    for split in scan.splits:
        parts = [s for s in summaries if s["split"] == split]
        class_pixels = [sum(values) for values in zip(*(s["class_pixels"] for s in parts))]
        splits[split] = {
            "count": sum(s["rows"] for s in parts),
            "files": [{"path": s["path"], "rows": s["rows"], "bytes": s["bytes"]} for s in parts if s["path"]],
            "class_pixels": class_pixels or [0] * schema.num_classes,
        }
    rejects = [r.to_dict() for r in scan.rejects] + [r for s in summaries for r in s["rejects"]]
    return {
        "format": STORE_FORMAT,
        "key": key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema": schema.to_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "resolutions": config.resolutions,
        "class_pixels_resolution": config.resolutions[-1],
        "has_photos": config.format != "labels-only",
        "data_dir": data_dir,
        "splits": splits,
        "source": {
            "uri": config.source,
            "format": config.format,
            "label_type": config.label_type,
            "fingerprint": scan.fingerprint,
            "num_files": scan.num_files,
        },
        "rejects": sorted(rejects, key=lambda r: (r["path"], r["reason"])),
        "config": asdict(config),
    }


def _store_key(config: PreprocessConfig, schema_fingerprint: str, source_fingerprint: str) -> str:
    """Names the data folder: the same sources and settings always give the same key."""
    text = json.dumps(
        {"store": STORE_FORMAT, "source": source_fingerprint, "schema": schema_fingerprint,
         **config.store_settings()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _complete_manifest(store_fs, store_root: str, uri: str) -> dict | None:
    """The manifest already at the destination if its every part is present, else None."""
    try:
        manifest = read_manifest(store_fs, store_root, uri)
    except StoreError:
        return None
    paths = [join(store_root, f["path"]) for split in manifest["splits"].values() for f in split["files"]]
    infos = store_fs.get_file_info(paths) if paths else []
    return manifest if all(info.size is not None and info.size > 0 for info in infos) else None


def _remove_leftovers(store_fs, store_root: str, manifest: dict) -> None:
    """Delete files in this run's data folder that the manifest does not list: temporary
    files and parts of an interrupted earlier attempt. Other data folders (older stores,
    which readers may still have open) are left alone."""
    listed = {join(store_root, f["path"]) for split in manifest["splits"].values() for f in split["files"]}
    selector = pafs.FileSelector(join(store_root, manifest["data_dir"]), recursive=True, allow_not_found=True)
    for info in store_fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.path not in listed:
            store_fs.delete_file(info.path)


def _no_samples_message(source: str, rejects: list[dict]) -> str:
    if not rejects:
        return f"no good samples in {source}: no label/photo pairs found (check --format and --splits)"
    first = rejects[0]
    return f"no good samples in {source}: all {len(rejects)} inputs rejected (first: {first['path']}: {first['reason']})"


def _print_summary(manifest: dict, out: str, seconds: float, written: int, reused: int) -> None:
    counts = ", ".join(f"{name} {split['count']}" for name, split in manifest["splits"].items())
    total = sum(split["count"] for split in manifest["splits"].values())
    size = sum(f["bytes"] for split in manifest["splits"].values() for f in split["files"])
    print(f"preprocess: wrote {total} samples ({counts}) to {out}")
    print(f"  resolutions {', '.join(manifest['resolutions'])}; {len(manifest['rejects'])} rejected "
          f"(listed in {uri_join(out, 'manifest.json')})")
    print(f"  parts: {written} written, {reused} reused, {size / 2**20:.1f} MiB; "
          f"{seconds:.1f} s, {total / max(seconds, 1e-9):.1f} samples/s")


run = entrypoint(main)

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
