"""The Ray Data side of the evaluation: per-sample counts, summed on the driver.

    ds = store.dataset(split, resolution)                             # sample_id, label, photo
    ds = ds.map_batches(attach_variants, fn_kwargs=...)               # + the K synthesized PNGs
    ds = ds.map_batches(ScoringActor, compute=ActorPoolStrategy(...))  # segmenter, diversity, Inception
    totals = Totals(num_classes); for batch in ds.iter_batches(...): totals.add(batch)

Each sample gives its confusion matrices (real photo, and its K synthesized images pooled),
its per-class diversity and, with Inception weights, its FID features; everything adds up
over samples (pipeline.evaluation.metrics), so any number of actors and any batch split
give the same totals.
"""
from __future__ import annotations

import tempfile

import numpy as np
import pyarrow.fs as pafs
import torch

from pipeline.evaluation.metrics import class_diversity, confusion_matrix
from pipeline.fs import join, read_bytes
from pipeline.synthesis.outputs import decode_png, image_path


def attach_variants(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, root: str,
                    num_outputs: int) -> dict[str, np.ndarray]:
    """Ray Data task: add `variants` uint8 [B, K, H, W, 3], read from the synthesis output folder."""
    variants = [[decode_png(read_bytes(filesystem, join(root, image_path(str(sample_id), k)))) for k in range(num_outputs)]
                for sample_id in batch["sample_id"]]
    return {**batch, "variants": np.asarray(variants, dtype=np.uint8)}


class ScoringActor:
    """Callable class for `map_batches`: a batch of (label, photo, variants) -> per-sample counts."""

    def __init__(self, segmenter, num_classes: int, num_threads: int, fid_weights, batch_size: int):
        """`segmenter`: a ray.ObjectRef to (or the) TorchScript bytes; `fid_weights`: one to the
        Inception weights file's bytes, or None (no FID). Bytes, not paths: the driver's files
        need not exist on the node an actor runs on."""
        import ray

        from pipeline.evaluation.fid import InceptionFeatures
        from pipeline.evaluation.segmenter import Segmenter

        segmenter, fid_weights = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (segmenter, fid_weights))
        torch.set_num_threads(num_threads)
        self.segmenter = Segmenter(segmenter, num_classes)
        self.inception = None
        if fid_weights is not None:
            with tempfile.NamedTemporaryFile(suffix=".pth") as handle:  # torch-fidelity reads weights from a file
                handle.write(fid_weights)
                handle.flush()
                self.inception = InceptionFeatures(handle.name)
        self.num_classes, self.batch_size = num_classes, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels, photos, variants = batch["label"], batch["photo"], batch["variants"]  # [B,H,W], [B,H,W,3], [B,K,H,W,3]
        count, num_outputs = variants.shape[:2]
        real = self.segmenter.predict(photos, self.batch_size)
        synthesized = self.segmenter.predict(variants.reshape(-1, *variants.shape[2:]), self.batch_size)
        synthesized = synthesized.reshape(count, num_outputs, *synthesized.shape[1:])
        out = {
            "sample_id": batch["sample_id"],
            "confusion_real": np.stack([confusion_matrix(labels[i], real[i], self.num_classes) for i in range(count)]),
            # The K variants of a label map are pooled: each is scored against the same map.
            "confusion_synthesized": np.stack([
                confusion_matrix(np.broadcast_to(labels[i], synthesized[i].shape), synthesized[i], self.num_classes)
                for i in range(count)]),
        }
        diversity = [class_diversity(labels[i], variants[i], self.num_classes) for i in range(count)]
        out["diversity"] = np.stack([value for value, _ in diversity])
        out["class_present"] = np.stack([present for _, present in diversity])
        if self.inception is not None:
            out["features_real"] = self.inception(photos, self.batch_size)
            fake = self.inception(variants.reshape(-1, *variants.shape[2:]), self.batch_size)
            out["features_synthesized"] = fake.reshape(count, num_outputs, -1)
        return out


class Totals:
    """What the driver adds up from the actors' rows."""

    def __init__(self, num_classes: int):
        self.confusion_real = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.confusion_synthesized = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.diversity_sums = np.zeros(num_classes, dtype=np.float64)
        self.diversity_counts = np.zeros(num_classes, dtype=np.int64)
        self.features_real: list[np.ndarray] = []
        self.features_synthesized: list[np.ndarray] = []
        self.sample_ids: list[str] = []

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.sample_ids += [str(s) for s in batch["sample_id"]]
        self.confusion_real += batch["confusion_real"].sum(axis=0)
        self.confusion_synthesized += batch["confusion_synthesized"].sum(axis=0)
        self.diversity_sums += batch["diversity"].sum(axis=0)
        self.diversity_counts += batch["class_present"].sum(axis=0)
        if "features_real" in batch:
            self.features_real.append(batch["features_real"])
            self.features_synthesized.append(batch["features_synthesized"].reshape(-1, batch["features_synthesized"].shape[-1]))
