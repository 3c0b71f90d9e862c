"""A tiny model registered in two versions and served on the session's Ray, for the serving tests.

    with served_model(toy_store, tmp_path, name="crn-serve-test") as service:
        service.url, service.versions, service.checkpoints, service.config

- Two crn-tiny checkpoints (tests/synth_models.py, seeds 0 and 1: visibly different models)
  logged and registered under one name: version 1 is `@champion`, version 2 `@candidate`.
- The service (pipeline.serving.app.deploy) on a port the OS picked free, on the session's
  Ray instance, following `@champion` every half second, one torch thread per replica (as the
  tests compute their references), batches of up to 4 that wait up to 100 ms to fill.
- On leaving, Serve is shut down (serve.shutdown()); the session's Ray stays up.
"""
from __future__ import annotations

import contextlib
import io
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import requests
from PIL import Image
from synth_models import make_test_checkpoint

from pipeline.data.schema import LabelSchema
from pipeline.registry.models import log_and_register
from pipeline.runtime import setup_mlflow
from pipeline.serving.app import deploy
from pipeline.serving.config import ServeConfig
from pipeline.serving.plan import make_plan
from pipeline.visualize import colorize, png_bytes, schema_palette

MAX_BATCH_SIZE = 4
MAX_BODY_BYTES = 64 * 1024
# Long enough for concurrent requests to share a batch, short enough for a module of requests.
BATCH_WAIT_MS = 100
POLL_SECONDS = 0.5
# A guard against a hang, never a measured time: a loaded 2-core machine may take long.
PATIENCE_S = 180


@dataclass
class Served:
    url: str
    name: str
    versions: list[str]
    checkpoints: list[Path]
    config: ServeConfig

    def uri(self, version: str) -> str:
        return f"models:/{self.name}/{version}"


def free_port() -> int:
    """A port the OS has free now (bound to port 0 and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def register_two_versions(name: str, folder: Path) -> tuple[list[str], list[Path]]:
    checkpoints = [make_test_checkpoint(folder / f"v{seed}.pt", seed=seed) for seed in (0, 1)]
    setup_mlflow("test-serve")
    with mlflow.start_run():
        versions = [log_and_register(checkpoints[0], name, alias="champion"),
                    log_and_register(checkpoints[1], name, alias="candidate")]
    return versions, checkpoints


@contextlib.contextmanager
def served_model(store: str | Path | None, folder: Path, name: str):
    from ray import serve

    versions, checkpoints = register_two_versions(name, folder)
    config = ServeConfig(model=f"models:/{name}@champion", store=str(store or ""), port=free_port(),
                         poll_seconds=POLL_SECONDS, threads_per_replica=1, max_batch_size=MAX_BATCH_SIZE,
                         batch_wait_ms=BATCH_WAIT_MS, max_body_bytes=MAX_BODY_BYTES)
    try:
        service = deploy(make_plan(config))
        wait_until_healthy(service.url)
        yield Served(service.url, name, versions, checkpoints, service.plan.config)
    finally:
        serve.shutdown()


def wait_until_healthy(url: str) -> dict:
    """serve.run returns once the replicas are up; the proxy may take a moment more to route."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            answer = requests.get(f"{url}/health", timeout=30)
            if answer.status_code == 200:
                return answer.json()
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer within {PATIENCE_S} s")
        time.sleep(0.2)


def colour_png(labels: np.ndarray, schema: LabelSchema) -> bytes:
    """Class indices [H, W] -> the map in the schema's colours, as a PNG."""
    return png_bytes(colorize(labels, schema_palette(schema)))


def ids_png(labels: np.ndarray, schema: LabelSchema) -> bytes:
    """Class indices [H, W] -> a one-channel PNG of each class's first schema id."""
    first_ids = np.asarray([cls.ids[0] for cls in schema.all_classes], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(first_ids[labels], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_images(answer: dict) -> np.ndarray:
    """A JSON answer of POST /synthesize -> uint8 [K, H, W, 3]."""
    import base64

    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
                     for png in answer["images"]])
