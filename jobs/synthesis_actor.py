"""The Ray Data actor that turns batches of label maps into PNG files.

One actor per GPU on a cluster (or a few CPU actors on a laptop) runs

    ds.map_batches(SynthesisActor, fn_constructor_kwargs=..., compute=ActorPoolStrategy(...))

It builds the model once, from checkpoint bytes the driver put in the object store (so the
registry is asked once per job, not once per actor), and for each batch: checks the class
indices, runs the generator (jobs.model_registry.generate_images), encodes each variant as
PNG and writes it atomically at its deterministic path (jobs.synthesis_output). It hands
back one row per image written and one per rejected sample, never the pixels themselves,
with the seconds the batch spent in the forward pass and in encoding and writing (spread
evenly over its rows) and, once per actor, its start-up time: the job sums them to say
where its time went.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import pyarrow.fs as pafs
import torch

from crn.checkpoint import load_checkpoint, model_from_checkpoint
from jobs.model_registry import generate_images
from jobs.synthesis_output import encode_png, image_path
from pipeline.fs import join, write_bytes_atomically


def model_from_bytes(data: bytes):
    """Rebuild a CRN from the bytes of a checkpoint file (read with weights_only)."""
    # crn.checkpoint reads paths only; a private temp file keeps its format checks in play.
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(data)
        handle.flush()
        return model_from_checkpoint(load_checkpoint(handle.name))


class SynthesisActor:
    """Callable class for `map_batches`: label maps in, written images (as manifest keys) out."""

    def __init__(
        self,
        checkpoint,  # ray.ObjectRef to (or the) bytes of the checkpoint file
        filesystem: pafs.FileSystem,
        output_root: str,
        device: str,
        bf16: bool,
        batch_size: int,
        num_threads: int,
        existing_variants: dict[str, list[int]],
    ):
        import ray

        started = time.perf_counter()
        if isinstance(checkpoint, ray.ObjectRef):
            checkpoint = ray.get(checkpoint)
        if device == "cpu":
            # Ray sets no thread count; torch would start one thread per core in every actor.
            # The count is part of the output's identity: reductions split by thread round differently.
            torch.set_num_threads(num_threads)
        else:
            # The same convolution algorithm on every run, so the same pixels.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.model = model_from_bytes(checkpoint).to(device)
        self.num_classes = self.model.config.num_classes
        self.num_outputs = self.model.config.num_outputs
        self.device, self.bf16, self.batch_size = device, bf16, batch_size
        self.fs, self.root = filesystem, output_root
        # Variants of partly written samples that are already on disk (rare: an interrupt
        # between two variants); their files are complete and are not written again.
        self.existing = {sample_id: set(variants) for sample_id, variants in existing_variants.items()}
        self.startup_s = time.perf_counter() - started  # reported with the first batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sample_ids = [str(s) for s in batch["sample_id"]]
        labels = batch["label"]
        reasons = [str(r) for r in batch["reject"]]
        for i, reason in enumerate(reasons):
            if not reason and labels[i].max(initial=0) >= self.num_classes:
                reasons[i] = f"class index {int(labels[i].max())} outside 0..{self.num_classes - 1} of the model's schema"
        good = [i for i, reason in enumerate(reasons) if not reason]

        out_ids, out_variants, out_sources, out_reasons = [], [], [], []
        for i, reason in enumerate(reasons):
            if reason:
                out_ids.append(sample_ids[i])
                out_variants.append(-1)
                out_sources.append(str(batch["source"][i]))
                out_reasons.append(reason)
        forward_s = write_s = 0.0
        if good:
            start = time.perf_counter()
            # Always a full batch through the network (padded): pixels independent of batch-mates.
            images = generate_images(self.model, labels[good], device=self.device, bf16=self.bf16, batch_size=self.batch_size)
            forward_s = time.perf_counter() - start
            start = time.perf_counter()
            for row, i in enumerate(good):
                already = self.existing.get(sample_ids[i], ())
                for variant in range(self.num_outputs):
                    if variant in already:
                        continue
                    relative = image_path(sample_ids[i], variant)
                    write_bytes_atomically(self.fs, join(self.root, relative), encode_png(images[row, variant]))
                    out_ids.append(sample_ids[i])
                    out_variants.append(variant)
                    out_sources.append("")
                    out_reasons.append("")
            write_s = time.perf_counter() - start
        rows = max(1, len(out_ids))
        startup_s, self.startup_s = self.startup_s, 0.0
        return {
            "sample_id": np.asarray(out_ids, dtype=object),
            "variant": np.asarray(out_variants, dtype=np.int32),
            "source": np.asarray(out_sources, dtype=object),
            "reject": np.asarray(out_reasons, dtype=object),
            "forward_s": np.full(len(out_ids), forward_s / rows),
            "write_s": np.full(len(out_ids), write_s / rows),
            "startup_s": np.full(len(out_ids), startup_s / rows),
        }
