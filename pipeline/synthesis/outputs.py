"""The synthesis output folder (local or s3://): its layout, and what a re-run finds in it.

    <output>/job.json                  what makes these images (written before the first one)
    <output>/images/<sample>/<k>.png   variant k (0 .. K-1) of sample <sample> (PNG, RGB)
    <output>/manifest.parquet          one row per image, written last
    <output>/rejects.json              input label maps left out, with the reason for each

`<sample>` is the sample id; an id holding "/" (label maps in nested folders) gives nested
folders (`images/256/00100027/0.png`), each part percent-quoted where a file system would
not take it as it is.

Every image file is written atomically (pipeline.fs.write_bytes_atomically: temp file and
rename locally, a single upload on S3), so an image that exists is complete. Each image is
a deterministic function of (label map, model weights, variant) and of how the forward pass
runs: the CRN has no noise input, every forward pass has the same shape (batches padded to
--batch-size), CPU actors use a fixed torch thread count, GPUs a fixed cuDNN algorithm, and
PNG encoding has a fixed compression level and no timestamp. Floating-point rounding does
depend on batch size and thread count (a 1-map batch and 2 threads vs 1 both change some
pixels by one level), which is why those are part of the folder's identity. The job's seed
is recorded in the manifest but changes nothing in the pixels.

Resuming: `job.json` pins the model weights (sha256), schema, resolution, K, precision,
seed, device, batch size and CPU threads per actor. A re-run into the same folder must agree with it (else a one-line error), lists the
images already there, skips the samples that have all K, writes only the missing variants
of the others, deletes temp files an interrupted write left behind, and then writes a
manifest covering every image in the folder. The manifest's rows are computed from
(sample id, variant, job.json) alone, so an interrupted run plus a re-run gives exactly the
rows, and the files, of one uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipeline.errors import UserError
from pipeline.fs import filesystem_for, join, read_bytes, write_bytes_atomically
from pipeline.visualize import png_bytes

OUTPUT_FORMAT = "crn-synthesis/1"
JOB_FILE = "job.json"
IMAGES_DIR = "images"
MANIFEST_FILE = "manifest.parquet"
REJECTS_FILE = "rejects.json"
GALLERY_FILE = "gallery.html"
# zlib level for PNGs: fixed, because the same pixels must give the same bytes on every run;
# 1, because encoding is the job's largest cost after the forward pass (about 2.5x faster
# than Pillow's default 6, for files about 13% larger).
PNG_COMPRESS_LEVEL = 1

_VARIANT_FILE = re.compile(r"^(\d+)\.png$")


@dataclasses.dataclass(frozen=True)
class OutputIdentity:
    """What decides every pixel and manifest row of an output folder (kept in job.json)."""

    model_uri: str
    model_version: str | None
    model_sha256: str
    schema_name: str
    schema_fingerprint: str
    resolution: str
    num_outputs: int
    precision: str
    seed: int
    # How the forward pass runs. Floating-point rounding depends on these (kernels chosen by
    # batch size, reductions split by thread count), so equal bytes need equal settings.
    device: str  # "cpu" or "cuda"
    batch_size: int
    threads_per_actor: int  # torch threads of a CPU actor; 0 on GPUs
    torch_version: str  # recorded, not checked

    # model_uri and model_version may change between runs (an alias vs the version it points
    # to) as long as the weights are the same; everything else but the torch version must match.
    PINNED = ("model_sha256", "schema_fingerprint", "resolution", "num_outputs", "precision", "seed",
              "device", "batch_size", "threads_per_actor")

    def to_dict(self) -> dict:
        return {"format": OUTPUT_FORMAT, **dataclasses.asdict(self)}


def image_path(sample_id: str, variant: int) -> str:
    """Path of an image relative to the output folder (also the manifest's `image_path`)."""
    folders = [quote(part, safe=" ()+,;=@[]~") for part in sample_id.split("/")]
    return posixpath.join(IMAGES_DIR, *folders, f"{variant}.png")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes; the same pixels always give the same bytes."""
    return png_bytes(image, compress_level=PNG_COMPRESS_LEVEL)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_variants(filesystem: pafs.FileSystem, root: str, sample_ids, num_outputs: int) -> np.ndarray:
    """The K images of each sample: uint8 [B, K, H, W, 3]."""
    return np.asarray([[decode_png(read_bytes(filesystem, join(root, image_path(str(sample_id), k))))
                        for k in range(num_outputs)] for sample_id in sample_ids], dtype=np.uint8)


def claim_output(fs: pafs.FileSystem, root: str, uri: str, identity: OutputIdentity, notes: dict | None = None) -> None:
    """Write job.json into a new output folder, or check that an existing one agrees with it.

    `notes` (not pinned: a re-run may differ) are recorded beside the identity, e.g. how many
    label maps were downsampled to the model's resolution."""
    path = join(root, JOB_FILE)
    if fs.get_file_info(path).type == pafs.FileType.File:
        try:
            existing = json.loads(read_bytes(fs, path))
        except (OSError, ValueError) as exc:
            raise UserError(f"output {uri}: unreadable {JOB_FILE} ({exc})") from None
        wanted = identity.to_dict()
        for key in OutputIdentity.PINNED:
            if existing.get(key) != wanted[key]:
                raise UserError(
                    f"output {uri} holds images made with {key}={existing.get(key)!r} "
                    f"(model {existing.get('model_uri')}), this run has {wanted[key]!r}: choose another --output"
                )
        return
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(root, recursive=True)
    document = {**identity.to_dict(), **(notes or {})}
    write_bytes_atomically(fs, path, (json.dumps(document, indent=1) + "\n").encode())


@dataclasses.dataclass
class ExistingImages:
    variants: dict[str, set[int]]  # sample id -> variants whose image exists
    temp_files: list[str]  # leftovers of interrupted local writes (dot-files), to delete


def list_existing(fs: pafs.FileSystem, root: str, num_outputs: int) -> ExistingImages:
    """What an earlier run into this folder already wrote."""
    images_root = join(root, IMAGES_DIR)
    variants: dict[str, set[int]] = defaultdict(set)
    temp_files = []
    selector = pafs.FileSelector(images_root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        *folders, name = posixpath.relpath(info.path, images_root).split("/")
        if not folders:
            continue  # not ours
        if name.startswith("."):
            temp_files.append(info.path)
        elif (match := _VARIANT_FILE.match(name)) and int(match[1]) < num_outputs:
            variants["/".join(unquote(folder) for folder in folders)].add(int(match[1]))
    return ExistingImages(dict(variants), temp_files)


def manifest_table(images: set[tuple[str, int]], identity: OutputIdentity) -> pa.Table:
    """One row per (sample id, variant), sorted; provenance columns from the job identity."""
    ordered = sorted(images)
    count = len(ordered)
    table = pa.table(
        {
            "sample_id": pa.array([s for s, _ in ordered], pa.string()),
            "variant": pa.array([v for _, v in ordered], pa.int32()),
            "image_path": pa.array([image_path(s, v) for s, v in ordered], pa.string()),
            "model_uri": pa.array([identity.model_uri] * count, pa.string()),
            "model_version": pa.array([identity.model_version] * count, pa.string()),
            "model_sha256": pa.array([identity.model_sha256] * count, pa.string()),
            "seed": pa.array([identity.seed] * count, pa.int64()),
            "schema": pa.array([identity.schema_name] * count, pa.string()),
            "schema_fingerprint": pa.array([identity.schema_fingerprint] * count, pa.string()),
            "resolution": pa.array([identity.resolution] * count, pa.string()),
            "precision": pa.array([identity.precision] * count, pa.string()),
        }
    )
    return table.replace_schema_metadata({"crn.synthesis": json.dumps(identity.to_dict())})


def once_per_batch(seconds: float, rows: int) -> np.ndarray:
    """A per-batch timing as a column: `seconds` on the first of `rows` rows, NaN on the rest,
    so that it survives Ray Data's splitting and joining of blocks and each batch counts once."""
    column = np.full(rows, np.nan)
    column[:1] = seconds
    return column


def batch_timings(column) -> list[float]:
    """The per-batch values of a `once_per_batch` column (or of several batches' joined)."""
    return [float(t) for t in column if not np.isnan(t)]


def write_images(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, output_root: str,
                 existing_variants: dict[str, list[int]], threads: int = 1) -> dict[str, np.ndarray]:
    """Encode each variant of a batch of images as PNG and write it atomically.

    `batch` is what pipeline.synthesis.actor.SynthesisActor makes. Returns one row per image
    written ({sample_id, variant}) and one per rejected sample (variant -1, with its source
    and reason), and the batch's timings (`once_per_batch`): `forward_s` passed on from the
    actor, `write_s` this call's encoding and writing. `existing_variants` lists the
    variants of partly written samples that are already on disk (an interrupt between two
    writes); those complete files are not written again. `threads` encode and write images
    side by side (Pillow's zlib and the file writes release the GIL); the files and rows do
    not depend on it.
    """
    began = time.perf_counter()
    out: list[tuple[str, int, str, str]] = []  # (sample id, variant or -1, source, reject reason)
    todo: list[tuple[str, np.ndarray]] = []  # (path, image)
    for sample_id, source, reason, images in zip(batch["sample_id"], batch["source"], batch["reject"], batch["images"]):
        sample_id = str(sample_id)
        if reason:
            out.append((sample_id, -1, str(source), str(reason)))
            continue
        already = set(existing_variants.get(sample_id, ()))
        for variant, image in enumerate(images):
            if variant not in already:
                todo.append((join(output_root, image_path(sample_id, variant)), image))
                out.append((sample_id, variant, "", ""))

    def write(item: tuple[str, np.ndarray]) -> None:
        write_bytes_atomically(filesystem, item[0], encode_png(item[1]))

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="crn-png") as pool:
        list(pool.map(write, todo))  # list(): re-raises the first failed write here
    ids, variants, sources, reasons = zip(*out) if out else ((), (), (), ())
    forward = batch_timings(batch["forward_s"]) if "forward_s" in batch else []
    return {
        "sample_id": np.asarray(ids, dtype=object),
        "variant": np.asarray(variants, dtype=np.int32),
        "source": np.asarray(sources, dtype=object),
        "reject": np.asarray(reasons, dtype=object),
        "forward_s": once_per_batch(sum(forward) if forward else np.nan, len(out)),
        "write_s": once_per_batch(time.perf_counter() - began, len(out)),
    }


def write_manifest(fs: pafs.FileSystem, root: str, table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    write_bytes_atomically(fs, join(root, MANIFEST_FILE), data)
    return data


def write_rejects(fs: pafs.FileSystem, root: str, rejects: list[dict]) -> bytes:
    data = (json.dumps(sorted(rejects, key=lambda r: (r["path"], r["reason"])), indent=1) + "\n").encode()
    write_bytes_atomically(fs, join(root, REJECTS_FILE), data)
    return data


def images_complete(uri: str, model_sha256: str, resolution: str, sample_ids: list[str], num_outputs: int) -> bool:
    """True when the output folder holds all K images of every sample, made by the weights with
    this sha256 at this resolution (its job.json and manifest say so); False for anything
    else, an empty or interrupted folder included (the synthesis job finishes those)."""
    fs, root = filesystem_for(uri)
    try:
        job = json.loads(read_bytes(fs, join(root, JOB_FILE)))
        manifest = pq.read_table(join(root, MANIFEST_FILE), columns=["sample_id", "variant"], filesystem=fs)
    except (OSError, ValueError):
        return False
    if job.get("model_sha256") != model_sha256 or job.get("resolution") != resolution:
        return False
    have = set(zip(manifest.column("sample_id").to_pylist(), manifest.column("variant").to_pylist()))
    return all((s, k) in have for s in sample_ids for k in range(num_outputs))
