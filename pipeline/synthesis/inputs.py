"""What synthesis reads: a split of a store, or a folder of label maps alone.

Either way the result can build (lazily: opening an input starts no Ray) a Ray Dataset of rows
    {"sample_id": str, "label": uint8 [H, W] class indices, "source": str, "reject": str}
at the model's resolution (plus "photo" uint8 [H, W, 3] for a store with photographs),
where `source` is what a user would look for (the label file's path, or the sample id in a
store) and `reject` is empty for a good sample, the reason it cannot be used otherwise.
Rejected rows carry an all-zero label so that every row has the same shape.

A folder of label maps goes through exactly the checks preprocessing applies
(pipeline.data.sources.scan_source with layout `labels-only`, then pipeline.data.prepare): files
that are not PNG, unreadable or truncated, not 1:2, smaller than the model's resolution, or
holding ids/colours outside the schema are rejected with their path; good ones are mapped
to class indices and downsampled to the model's resolution by nearest neighbour.

With label type `auto` (the default) each map is read as ids or colours by its own mode and
palette (pipeline.data.prepare.LabelMapper.label_type_of, which the workers apply too); the
driver reads the same off every file while it reads their sizes, and says how many maps
it reads each way.
"""
from __future__ import annotations

import functools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from crn.resolution import Resolution
from pipeline.data.prepare import BadInput, LabelMapper, PrepareSettings, SamplePreparer
from pipeline.data.schema import LabelSchema
from pipeline.data.sources import SourceError, display_path, scan_source
from pipeline.data.store import open_store
from pipeline.errors import UserError


@dataclass
class SynthesisInput:
    build_dataset: Callable[[], object]  # -> ray.data.Dataset of the rows described above
    preview: Callable[[int], list[dict]]  # -> up to n good rows, read on the driver without Ray (gallery)
    schema: LabelSchema  # the input's label schema (the store's, or the one named for a folder)
    description: str  # "store s3://b/x split val" / "label folder /data/labels"
    rejects: list[dict]  # found before reading any pixel: {"path", "reason"}
    has_photos: bool
    # Label maps (by their headers) larger than the model's resolution, which the job
    # downsamples to it by nearest neighbour: {"HxW": count}. Empty for a store, whose maps
    # are stored at the model's resolution.
    larger: dict[str, int] = field(default_factory=dict)
    # How a folder's maps are read: {"ids": n, "color": m} (by each file's own type with
    # label type auto). Empty for a store.
    label_types: dict[str, int] = field(default_factory=dict)


def open_store_split(uri: str, split: str, resolution: Resolution) -> SynthesisInput:
    """A split of a preprocessed store at `resolution`; StoreError (one line) if it lacks it."""
    store = open_store(uri)
    text = store.resolution(resolution)  # raises StoreError naming the resolutions it has
    store.count(split)  # raises StoreError naming the splits it has

    def build_dataset():
        return store.dataset(split, text).map_batches(_mark_all_good, batch_format="numpy")

    def preview(n: int) -> list[dict]:
        return store.head(split, text, n)

    return SynthesisInput(build_dataset, preview, store.schema, f"store {uri} split {split}", [], store.has_photos)


def _mark_all_good(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # A store holds only samples that passed preprocessing's checks.
    return {**batch, "source": batch["sample_id"], "reject": np.full(len(batch["sample_id"]), "", dtype=object)}


def open_label_folder(uri: str, schema: LabelSchema, label_type: str, resolution: Resolution) -> SynthesisInput:
    """Label maps under `uri` (see pipeline.data.sources, layout `labels-only`), in `schema`."""
    try:
        scan = scan_source(uri, "labels-only", label_type, None)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    rejects = [r.to_dict() for r in scan.rejects]
    if not scan.candidates:
        raise UserError(f"label folder {uri}: no label maps (PNG files) found")
    settings = PrepareSettings(label_type=label_type, schema=schema.to_dict(), resolutions=(resolution,), crop_to_aspect=False)
    items = [{"sample_id": c.sample_id, "path": c.label} for c in scan.candidates]

    def preview(n: int) -> list[dict]:
        batch = _prepare_labels(
            {"sample_id": np.asarray([i["sample_id"] for i in items[:n]], dtype=object),
             "path": np.asarray([i["path"] for i in items[:n]], dtype=object)},
            settings, scan.filesystem, uri,
        )
        return [{name: column[i] for name, column in batch.items()} for i in range(len(batch["sample_id"])) if not batch["reject"][i]]

    def build_dataset():
        import ray.data

        # Said when the work starts: a dry run and the driver's checks print nothing more.
        print(f"synthesize: label folder {uri}: {kinds['ids']} maps read as ids, {kinds['color']} as colours, {how}")
        return ray.data.from_items(items).map_batches(
            _prepare_labels,
            fn_kwargs={"settings": settings, "filesystem": scan.filesystem, "uri": uri},
            batch_format="numpy",
        )

    mapper = LabelMapper(schema, label_type)
    headers = label_headers(scan.filesystem, [item["path"] for item in items], mapper)
    sizes = Counter(size for size, _ in headers)
    larger = {str(size): count for size, count in sorted(sizes.items())
              if size.is_crn_size and size.height > resolution.height}
    kinds = Counter(kind for _, kind in headers)
    label_types = {kind: kinds[kind] for kind in ("ids", "color") if kinds[kind]}
    how = "by each file's own type (--label-type auto)" if label_type == "auto" else f"as --label-type {label_type}"
    return SynthesisInput(build_dataset, preview, schema, f"label folder {uri}", rejects, has_photos=False,
                          larger=larger, label_types=label_types)


def label_headers(filesystem: pafs.FileSystem, paths: list[str],
                  mapper: LabelMapper) -> list[tuple[Resolution, str]]:
    """(size, label type read) of each readable label map. Sizes and one-channel or RGB types
    come from the headers alone (a few hundred bytes each, read in parallel: on S3 each is one
    small request); a palette map under label type auto is read whole, as its pixels decide.
    Unreadable files are left out: the job rejects them with their reason."""

    def header(path: str) -> tuple[Resolution, str] | None:
        try:
            with filesystem.open_input_file(path) as handle, Image.open(handle) as image:
                width, height = image.size
                kind = mapper.label_type if mapper.label_type != "auto" else mapper.label_type_of(image)
                return Resolution(height, width), kind
        except Exception:  # any unreadable file: the job's own checks say why
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [h for h in pool.map(header, paths) if h is not None]


def _prepare_labels(batch: dict[str, np.ndarray], settings: PrepareSettings, filesystem: pafs.FileSystem, uri: str) -> dict[str, np.ndarray]:
    """Ray Data task: label file paths -> class-index maps at the model's resolution, or rejects."""
    height, width = settings.resolutions[-1]
    preparer = SamplePreparer(settings, filesystem, functools.partial(display_path, uri))
    sample_ids = list(batch["sample_id"])
    labels = np.zeros((len(sample_ids), height, width), dtype=np.uint8)
    sources = np.asarray([display_path(uri, path) for path in batch["path"]], dtype=object)
    reasons = np.full(len(sample_ids), "", dtype=object)
    for i, (sample_id, path) in enumerate(zip(sample_ids, batch["path"])):
        try:
            prepared = preparer.prepare("labels", sample_id, path, None)
            labels[i] = prepared.labels[str(settings.resolutions[-1])]
        except BadInput as bad:
            reasons[i] = bad.reason
    return {"sample_id": np.asarray(sample_ids, dtype=object), "label": labels, "source": sources, "reject": reasons}
