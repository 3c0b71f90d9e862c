"""The preprocessing job: labelled photographs -> the multi-resolution Parquet store, with Ray Data.

    run(parse_preprocess_config(["--source", "work/toy", "--out", "work/store"]))   # jobs/preprocess.py

The configuration is pipeline.preprocessing.config.

Stages: scan the source on the driver (paths only; name-level rejects), cut each split's
sorted samples into shards of `rows_per_file`, then a Ray Data stream over the shards:
each task decodes, validates, maps classes, downsamples to every resolution and writes its
Parquet part (pipeline.data.shards). Only small summaries come back to the driver, so memory
stays flat as the data set grows. Last, the manifest (pipeline.data.store) is written in one
atomic step. A rerun over unchanged sources reuses finished parts and gives the same
store; a part that fails the cheap integrity check (size, footer: pipeline.data.integrity)
is not reused but rewritten, and the run names it and says why. Bad inputs are listed with
their reasons in the manifest and on stderr.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import datetime, timezone

import pyarrow.fs as pafs

from pipeline.data.integrity import CHECKSUM
from pipeline.data.prepare import WRONG_ASPECT, PrepareSettings
from pipeline.data.schema import load_schema
from pipeline.data.shards import build_shard, plan_shards
from pipeline.data.sources import scan_source
from pipeline.data.store import (STORE_FORMAT, StoreError, check_destination, manifest_parts, part_checks,
                                 read_manifest, write_manifest)
from pipeline.errors import UserError
from pipeline.fs import filesystem_for, join, uri_join
from pipeline.options import to_dict
from pipeline.preprocessing.config import PreprocessConfig, resolve
from pipeline.records import start_job_run
from pipeline.runtime import init_ray


def run(config: PreprocessConfig) -> dict:
    """The whole job for a config, as one MLflow run; returns the store's manifest."""
    import mlflow

    config = resolve(config)  # a config built in code, not parsed, is filled in here
    schema = load_schema(config.schema)
    description = f"{config.source} ({config.format}) -> {config.out} at {', '.join(map(str, config.resolutions))}"
    with start_job_run(config.experiment, description=description, tags={"crn.store": config.out}):
        mlflow.log_params(to_dict(config))
        started = time.perf_counter()
        manifest = build_store(config, schema)
        counts = {f"samples_{name}": split["count"] for name, split in manifest["splits"].items()}
        mlflow.log_metrics({**counts, "rejects": len(manifest["rejects"]), "seconds": time.perf_counter() - started})
        mlflow.set_tags({"crn.store_key": manifest["key"], "crn.source_fingerprint": manifest["source"]["fingerprint"]})
        mlflow.log_dict(manifest, "manifest.json")
    return manifest


def build_store(config: PreprocessConfig, schema) -> dict:
    """Scan, prepare and write the store (or find it up to date); returns its manifest."""
    started = time.perf_counter()

    scan = scan_source(config.source, config.format, config.label_type, config.splits or None)
    for reject in scan.rejects:
        print(f"warning: rejected {reject.path}: {reject.reason}", file=sys.stderr)
    print(f"preprocess: {len(scan.candidates)} samples to read in {', '.join(scan.splits)}, "
          f"{len(scan.rejects)} rejected by name; {scan.num_files} files, fingerprint {scan.fingerprint[:19]}")
    if not scan.candidates:
        raise UserError(_no_samples_message(config.source, [r.to_dict() for r in scan.rejects]))
    created = not _exists(config.out)
    store_fs, store_root = check_destination(config.out)

    key = _store_key(config, schema.fingerprint(), scan.fingerprint)
    data_dir = f"data/{key}"
    existing = _current_manifest(store_fs, store_root, config.out)
    listed = {}
    if existing is not None and existing.get("key") == key:
        damaged = _damaged_parts(store_fs, store_root, config.out, existing)
        if not damaged:
            print(f"preprocess: {config.out} is up to date (same sources and settings); nothing to do")
            _print_summary(existing, config.out, time.perf_counter() - started, written=0, reused=0)
            return existing
        print(f"preprocess: {config.out} has the same sources and settings, but {len(damaged)} of its parts "
              f"are damaged or missing: rewriting them")
        # Parts found in the folder are reused only if they match these entries.
        listed = {part["path"]: part for part in manifest_parts(existing)}

    shards = plan_shards(scan.candidates, scan.splits, config.rows_per_file, data_dir)
    settings = PrepareSettings(label_type=config.label_type, schema=schema.to_dict(),
                               resolutions=config.resolutions, crop_to_aspect=config.crop_to_aspect,
                               enlarge_small=config.small_images == "enlarge", unknown_labels=config.unknown_labels, max_unknown_fraction=config.max_unknown_fraction,
                               photo_tone=config.photo_tone)
    summaries = _run_shards(shards, settings, config, scan, store_fs, store_root, listed)
    for summary in summaries:
        if summary.get("rewritten"):
            print(f"preprocess: rewrote {uri_join(config.out, summary['path'] or '')}: {summary['rewritten']}")

    manifest = _manifest(config, schema, scan, key, data_dir, summaries)
    if sum(split["count"] for split in manifest["splits"].values()) == 0:
        _discard(store_fs, store_root, data_dir, created)
        raise UserError(_no_samples_message(config.source, manifest["rejects"]))
    write_manifest(store_fs, store_root, manifest)
    _remove_leftovers(store_fs, store_root, manifest)
    written = sum(1 for s in summaries if s["path"] and not s["reused"])
    reused = sum(1 for s in summaries if s["reused"])
    _print_summary(manifest, config.out, time.perf_counter() - started, written, reused)
    return manifest


def _run_shards(shards, settings, config, scan, store_fs, store_root, listed) -> list[dict]:
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
            "listed": listed,
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
            "files": [{"path": s["path"], "rows": s["rows"], "bytes": s["bytes"], CHECKSUM: s[CHECKSUM]}
                      for s in parts if s["path"]],
            "class_pixels": class_pixels or [0] * schema.num_classes,
        }
    rejects = [r.to_dict() for r in scan.rejects] + [r for s in summaries for r in s["rejects"]]
    return {
        "format": STORE_FORMAT,
        "key": key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema": schema.to_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "resolutions": [str(r) for r in config.resolutions],
        "class_pixels_resolution": str(config.resolutions[-1]),
        "has_photos": config.format != "labels-only",
        "photo_tone": config.photo_tone,
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
        # Label maps stored with unknown ids / colours as void, and how many of their pixels.
        "unknown_labels": {
            "policy": config.unknown_labels,
            "max_fraction": config.max_unknown_fraction,
            "samples": sorted((u for s in summaries for u in s.get("unknown_labels", [])),
                              key=lambda u: u["sample_id"]),
        },
        "config": to_dict(config),
    }


def _store_key(config: PreprocessConfig, schema_fingerprint: str, source_fingerprint: str) -> str:
    """Names the data folder: the same sources and settings always give the same key."""
    text = json.dumps(
        {"store": STORE_FORMAT, "source": source_fingerprint, "schema": schema_fingerprint,
         **config.store_settings()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _current_manifest(store_fs, store_root: str, uri: str) -> dict | None:
    """The manifest already at the destination, if there is a readable one."""
    try:
        return read_manifest(store_fs, store_root, uri)
    except StoreError:
        return None


def _damaged_parts(store_fs, store_root: str, uri: str, manifest: dict) -> list[str]:
    """The manifest's parts that fail the cheap integrity check (missing, torn, resized)."""
    checks = part_checks(store_fs, store_root, manifest, uri)
    return [part["path"] for part, check in zip(manifest_parts(manifest), checks) if check.problem is not None]


def _remove_leftovers(store_fs, store_root: str, manifest: dict) -> None:
    """Delete files in this run's data folder that the manifest does not list: temporary
    files and parts of an interrupted earlier attempt. Other data folders (older stores,
    which readers may still have open) are left alone."""
    listed = {join(store_root, f["path"]) for split in manifest["splits"].values() for f in split["files"]}
    selector = pafs.FileSelector(join(store_root, manifest["data_dir"]), recursive=True, allow_not_found=True)
    for info in store_fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.path not in listed:
            store_fs.delete_file(info.path)


def _exists(uri: str) -> bool:
    try:
        fs, root = filesystem_for(uri)
        return fs.get_file_info(root).type != pafs.FileType.NotFound
    except (OSError, ValueError):
        return False  # check_destination says what is wrong


def _discard(store_fs, store_root: str, data_dir: str, created: bool) -> None:
    """Leave no trace of a run that wrote no sample: its (empty) data folder, and the store
    folder itself if this run created it and nothing else is in it."""
    for folder in (join(store_root, data_dir), join(store_root, "data")):
        if _is_empty_dir(store_fs, folder):
            store_fs.delete_dir(folder)
    if created and _is_empty_dir(store_fs, store_root):
        store_fs.delete_dir(store_root)


def _is_empty_dir(fs, path: str) -> bool:
    """A folder holding no file (empty folders inside it do not count)."""
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    return all(info.type != pafs.FileType.File for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)))


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
    if any(r["reason"].startswith(WRONG_ASPECT) for r in manifest["rejects"]):
        print("  hint: --crop-to-aspect keeps images that are not 1:2 by cutting their centre 1:2 window")
    print(f"  parts: {written} written, {reused} reused, {size / 2**20:.1f} MiB; "
          f"{seconds:.1f} s, {total / max(seconds, 1e-9):.1f} samples/s")
