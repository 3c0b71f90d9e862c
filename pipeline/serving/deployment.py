"""The Serve deployment: what one replica answers, how it batches, and the model it follows.

    GET  /                 the paint page (pipeline/serving/page/)
    POST /synthesize       a label map PNG -> its K images (pipeline.serving.answers)
    GET  /schema           the model's classes, ids and colours
    GET  /labels           the sample ids of --store's split; /labels/<id>: that map as a colour PNG
    GET  /health           the version served, following the alias, batches so far

A request is read and checked on its own (pipeline.serving.inputs) and only then waits for
a batch, so a bad one never holds up good ones. Serve's batching (`serve.batch`) gathers up
to --max-batch-size maps that arrive within --batch-wait-ms of each other; the batch runs
on a thread of its own with the version `Follower.current` names at its start, padded to
--max-batch-size maps (crn.inference.generate_images) so that an image does not depend on
how many requests shared its pass: the same map gives the bytes `jobs/synthesize.py
--batch-size <max-batch-size>` writes on the same device and threads. Batches run one at
a time, and requests join Serve's batch queue through a gate (pipeline.serving.batching)
that holds them while a pass runs, so that the next batch takes everything that arrived
meanwhile rather than whatever came in the first --batch-wait-ms.

No `from __future__ import annotations` here: Serve sends this class to its replicas by
value, and FastAPI must find the routes' annotations (Request, the query types) as objects.
"""
import asyncio
import dataclasses
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from ray import serve
from starlette.staticfiles import StaticFiles

from pipeline.serving.answers import error_answer, images_answer, model_headers, model_summary, schema_answer
from pipeline.serving.batching import BatchGate
from pipeline.serving.follower import Follower, ServedModel, fix_torch_settings
from pipeline.serving.inputs import BadRequest, LabelReader, check_size, parse_variant, read_body
from pipeline.serving.store_maps import StoreMaps, no_maps

PAGE_DIR = Path(__file__).resolve().parent / "page"

app = FastAPI(title="crn-ray synthesis", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """Everything a replica needs, as plain types (pipeline.serving.app fills it from the config)."""

    model: str
    device: str  # "cpu" or "cuda"
    threads: int  # torch threads of a CPU replica
    max_batch_size: int
    batch_wait_s: float
    poll_seconds: float
    max_body_bytes: int
    max_pixels: int
    max_unknown_fraction: float
    store: str = ""
    split: str = ""


@app.middleware("http")
async def name_the_model(request: Request, call_next):
    """Every answer names a model version; a synthesis answer has named its own already."""
    response = await call_next(request)
    follower = getattr(request.app.state, "follower", None)
    if follower is not None:
        for key, value in model_headers(follower.current).items():
            response.headers.setdefault(key, value)
    return response


@app.exception_handler(BadRequest)
async def refuse(request: Request, bad: BadRequest) -> JSONResponse:
    return error_answer(bad.status, bad.reason)


@serve.deployment
@serve.ingress(app)
class SynthesisService:
    def __init__(self, settings: ReplicaSettings):
        # Pillow refuses a map over this many pixels from its header (prepare.decode_image).
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
        fix_torch_settings(settings.device, settings.threads)
        self.settings = settings
        self.follower = Follower(settings.model, settings.device, settings.poll_seconds)
        app.state.follower = self.follower
        served = self.follower.current
        # The contract (schema, resolution, K) never changes under a replica (pipeline.serving.follower).
        self.reader = LabelReader(served.ref.schema, served.resolution, settings.max_unknown_fraction)
        self.maps = (StoreMaps(settings.store, settings.split, served.resolution, served.ref.schema)
                     if settings.store else None)
        # One thread runs the forward passes, with the replica's torch threads.
        self.forward_pool = ThreadPoolExecutor(1, thread_name_prefix="crn-forward", initializer=torch.set_num_threads,
                                               initargs=(max(1, settings.threads),))
        self.gate = BatchGate(settings.max_batch_size)
        self.batch_sizes: Counter[int] = Counter()
        self.forward_seconds = 0.0  # in forward passes, all batches together
        self.run_batch.set_max_batch_size(settings.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(settings.batch_wait_s)

    def __del__(self):
        self.follower.stop()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set from the settings in __init__
    async def run_batch(self, maps: list[np.ndarray]) -> list[tuple[np.ndarray, ServedModel, int]]:
        served = self.follower.current  # this batch's version, from its first map to its last
        await self.gate.pass_starts()
        began = time.perf_counter()
        try:
            images = await asyncio.get_running_loop().run_in_executor(
                self.forward_pool, served.generate, np.stack(maps), self.settings.max_batch_size)
        finally:
            self.forward_seconds += time.perf_counter() - began
            await self.gate.pass_ends()
        self.batch_sizes[len(maps)] += 1
        return [(images[i], served, len(maps)) for i in range(len(maps))]

    @app.post("/synthesize")
    async def synthesize(self, request: Request, size: str | None = None, variant: str | None = None,
                         label_type: str = "auto") -> Response:
        served = self.follower.current
        check_size(size, served.resolution)
        chosen = parse_variant(variant, served.num_outputs)
        body = await read_body(request, self.settings.max_body_bytes)
        label_map = await asyncio.to_thread(self.reader, body, label_type)
        await self.gate.enter()
        try:
            images, made_by, batch_size = await self.run_batch(label_map.classes)
        finally:
            await self.gate.leave()
        return await asyncio.to_thread(images_answer, images, made_by, label_map, batch_size, chosen)

    @app.get("/")
    def page(self) -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    @app.get("/schema")
    def schema(self) -> dict:
        return schema_answer(self.follower.current)

    @app.get("/health")
    async def health(self) -> dict:  # on the event loop, where the batch counts change
        return {"status": "ok", "model": model_summary(self.follower.current), "follow": self.follower.state.to_dict(),
                "batches": {str(size): count for size, count in sorted(self.batch_sizes.items())},
                "forward_seconds": round(self.forward_seconds, 3),
                "max_batch_size": self.settings.max_batch_size}

    @app.get("/labels")
    def labels(self) -> dict:
        if self.maps is None:
            return no_maps()
        return {"split": self.maps.split, "resolution": str(self.maps.resolution), "ids": self.maps.ids}

    @app.get("/labels/{sample_id:path}")
    def label(self, sample_id: str) -> Response:
        data = self.maps.png(sample_id) if self.maps is not None else None
        if data is None:
            where = "" if self.maps else " (the service has no --store)"
            raise BadRequest(404, f"no label map '{sample_id}'{where}")
        return Response(data, media_type="image/png")
