"""What a segmenter learns from: a store's real photos, synthesized images of label maps, or both.

    data = training_data(config, store)   # a Ray Dataset of {"key", "label", "photo"}, as the loop takes it

`--train-on real` is the store's `train` photos. `--train-on synthesized` pairs every image
of a synthesis output folder (pipeline.synthesis.outputs: `images/<sample>/<k>.png`) with the
label map it was made from, read from the store named by `--synthesized-labels` (default: the
store itself; a label-only store is fine, which is how GTA5 label maps synthesized into
photos are tested on Cityscapes photos): all K variants, so each label map gives K samples.
`both` is the two together. The folder must hold every variant of every `train` label map,
made at the resolution the segmenter trains at and with the store's schema; anything less is
a one-line error rather than a segmenter quietly trained on part of the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.data.store import TRAIN_SPLIT, Store, open_store
from pipeline.errors import UserError
from pipeline.fs import filesystem_for, join, read_bytes
from pipeline.synthesis.outputs import JOB_FILE, list_existing, read_variants

TRAIN_ON = ("real", "synthesized", "both")


@dataclass(frozen=True)
class SynthesizedImages:
    """A synthesis output folder checked against the label maps it is paired with."""

    uri: str
    labels_uri: str
    num_outputs: int
    model_sha256: str
    num_label_maps: int


def check_synthesized(uri: str, labels_uri: str, resolution: str, schema_fingerprint: str) -> SynthesizedImages:
    """The folder's job.json and images against the `train` label maps of `labels_uri`."""
    fs, root = filesystem_for(uri)
    try:
        job = json.loads(read_bytes(fs, join(root, JOB_FILE)))
    except (OSError, ValueError) as exc:
        raise UserError(f"--synthesized {uri}: not a synthesis output folder ({JOB_FILE}: {exc})") from None
    if job.get("resolution") != resolution:
        raise UserError(f"--synthesized {uri} holds {job.get('resolution')} images; the segmenter trains at "
                        f"{resolution}: synthesize at that size or give --resolution {job.get('resolution')}")
    labels = open_store(labels_uri)
    if labels.schema.fingerprint() != schema_fingerprint or job.get("schema_fingerprint") != schema_fingerprint:
        raise UserError(f"--synthesized {uri} (schema {job.get('schema_name')}) and --synthesized-labels {labels_uri} "
                        f"({labels.schema.name}) must share the schema of the store the segmenter is tested on")
    num_outputs = int(job["num_outputs"])
    sample_ids = labels.sample_ids(TRAIN_SPLIT)
    have = list_existing(fs, root, num_outputs).variants
    missing = [s for s in sample_ids if len(have.get(s, ())) < num_outputs]
    if missing:
        raise UserError(f"--synthesized {uri} lacks images of {len(missing)} of the {len(sample_ids)} {TRAIN_SPLIT} "
                        f"label maps of {labels_uri} (first: {missing[0]}): synthesize that split into it first")
    return SynthesizedImages(uri, labels_uri, num_outputs, job["model_sha256"], len(sample_ids))


def training_data(train_on: str, store: Store, resolution: str, synthesized: SynthesizedImages | None):
    """The Ray Dataset of {"key", "label", "photo"} the segmenter's loop reads. `key` names the
    row (the sample id; `<sample id>#<k>` for variant k), and the loop orders rows by it."""
    parts = []
    if train_on in ("real", "both"):
        parts.append(store.dataset(TRAIN_SPLIT, resolution).rename_columns({"sample_id": "key"}))
    if train_on in ("synthesized", "both"):
        fs, root = filesystem_for(synthesized.uri)
        labels = open_store(synthesized.labels_uri).dataset(TRAIN_SPLIT, resolution).select_columns(["sample_id", "label"])
        parts.append(labels.map_batches(with_each_variant, fn_kwargs={"filesystem": fs, "root": root,
                                                                      "num_outputs": synthesized.num_outputs}))
    return parts[0] if len(parts) == 1 else parts[0].union(parts[1])


def with_each_variant(batch: dict[str, np.ndarray], filesystem, root: str, num_outputs: int) -> dict[str, np.ndarray]:
    """Ray Data task: B label maps -> B*K (label, synthesized photo) rows, variants of a map in order."""
    variants = read_variants(filesystem, root, batch["sample_id"], num_outputs)  # [B, K, H, W, 3]
    return {"key": np.asarray([f"{sample_id}#{k}" for sample_id in batch["sample_id"] for k in range(num_outputs)],
                              dtype=object),
            "label": np.repeat(batch["label"], num_outputs, axis=0),
            "photo": variants.reshape(-1, *variants.shape[2:])}
