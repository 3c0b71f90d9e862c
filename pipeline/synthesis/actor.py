"""The Ray Data actor that turns batches of label maps into images.

One actor per GPU on a cluster (or a CPU actor with a fixed torch thread count on a
laptop) runs

    ds.map_batches(SynthesisActor, fn_constructor_kwargs=..., compute=ActorPoolStrategy(...))

It builds the model once, from the opened model (checkpoint bytes and generator kind) the
driver put in the object store (so the registry is asked once per job, not once per actor), and for each batch checks the class
indices and runs the generator (crn.inference.generate_images) on a batch of exactly
`batch_size` maps.

Who encodes and writes the PNGs (pipeline.synthesis.outputs.write_images) depends on the
device:
- a GPU actor hands back uint8 images and CPU tasks beside it encode them, because at
  256x512 encoding K PNGs takes a CPU core far longer than a GPU takes to make them;
- a CPU actor (given `output`) writes its own images between two forward passes, with its
  own threads: encoding takes a few percent of a forward pass on a CPU (docs/benchmarks.md),
  and as tasks beside the actor they would run on the cores its torch threads use, with
  each task's scheduling and the images' trip through the object store on top.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from crn.inference import generate_images
from pipeline.synthesis.outputs import once_per_batch, write_images


class SynthesisActor:
    """Callable class for `map_batches`: label maps in; uint8 images [B,K,H,W,3] out, or with
    `output` the images written and one row per image out (write_images' rows)."""

    def __init__(self, model, device: str, bf16: bool, batch_size: int, num_threads: int,
                 output: dict | None = None):
        """`model`: a ray.ObjectRef to (or the) pipeline.registry.models.ModelRef. `output`:
        write_images' keyword arguments (filesystem, output_root, existing_variants), to
        write the images here rather than hand them back."""
        import ray

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        if device == "cpu":
            # Ray sets no thread count; torch would start one thread per core in every actor.
            # The count is part of the output's identity: reductions split by thread round differently.
            torch.set_num_threads(num_threads)
        else:
            # The same convolution algorithm on every run, so the same pixels.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.model = model.build().to(device)
        self.num_classes = self.model.config.num_classes
        self.device, self.bf16, self.batch_size = device, bf16, batch_size
        self.output, self.num_threads = output, num_threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch["label"]  # uint8 [B, H, W]
        reasons = np.asarray([str(r) for r in batch["reject"]], dtype=object)
        for i, reason in enumerate(reasons):
            if not reason and labels[i].max(initial=0) >= self.num_classes:
                reasons[i] = f"class index {int(labels[i].max())} outside 0..{self.num_classes - 1} of the model's schema"
        good = np.flatnonzero(reasons == "")
        height, width = labels.shape[1:]
        images = np.zeros((len(labels), self.model.config.num_outputs, height, width, 3), dtype=np.uint8)
        began = time.perf_counter()
        if len(good):
            # Always full batches through the network (padded): pixels independent of batch-mates.
            images[good] = generate_images(self.model, labels[good], device=self.device, bf16=self.bf16,
                                           batch_size=self.batch_size)
        result = {
            "sample_id": batch["sample_id"],
            "source": batch["source"],
            "reject": reasons,
            "images": images,  # all zero for rejected rows
            # The batch's forward pass on its first row only (write_images carries it on), so
            # that the job can tell its time in the network from the rest, batch by batch.
            "forward_s": once_per_batch(time.perf_counter() - began, len(labels)),
        }
        if self.output is None:
            return result
        # The torch threads are idle now: the same number of threads encode and write.
        return write_images(result, **self.output, threads=self.num_threads)
