"""The serving job's configuration: one dataclass whose fields are jobs/serve.py's flags.

The service's shape (replicas, batching, limits) is fixed when it is deployed; which model
version it runs is not: with an alias URI every replica follows the alias
(pipeline.serving.follower), so the flags name the alias, never a version to pin.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from pipeline.data.prepare import DEFAULT_MAX_UNKNOWN_FRACTION
from pipeline.data.store import VAL_SPLIT
from pipeline.errors import UserError
from pipeline.fs import absolute
from pipeline.options import at_least, dry_run_option, from_argv, non_negative, option, store_option
from pipeline.registry.uris import model_uri

SERVICE = "service"
LIMITS = "limits (a request over one gets a 4xx and one line saying why)"


def fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")


def port_number(value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"must be a TCP port 1..65535, got {value}")


@dataclass
class ServeConfig:
    # --- what to serve ---
    model: str = option(help="models:/<name>@<alias> (followed: replicas load each new version the alias points "
                             "to), models:/<name>/<version>, runs:/<id>/model, a checkpoint file, or a registered "
                             "model name alone (= models:/<name>@champion)")
    store: str = store_option("preprocessed store whose label maps the page offers (GET /labels); optional", "")
    split: str = option(VAL_SPLIT, "split of --store the page offers")
    poll_seconds: float = option(10.0, "how often each replica asks the registry where the alias points; 0 = "
                                       "never (the version found at start is kept)", check=non_negative)
    # --- where it listens ---
    host: str = option("127.0.0.1", "address the HTTP proxy listens on (0.0.0.0: every interface)", group=SERVICE)
    port: int = option(8000, "HTTP port", check=port_number, group=SERVICE)
    # --- compute ---
    replicas: int = option(1, "replicas at start (the fixed count without --max-replicas)", check=at_least(1),
                           group=SERVICE)
    min_replicas: int = option(1, "autoscaling: fewest replicas (with --max-replicas)", check=at_least(1),
                               group=SERVICE)
    max_replicas: int = option(0, "autoscaling: most replicas; 0 = no autoscaling (--replicas fixed)",
                               check=non_negative, group=SERVICE)
    use_gpu: bool = option(False, "one GPU per replica", group=SERVICE)
    threads_per_replica: int = option(0, "torch threads (and logical CPUs) per CPU replica; 0 = this machine's "
                                         "cores / --replicas", check=non_negative, group=SERVICE)
    max_batch_size: int = option(8, "label maps per forward pass: concurrent requests are batched up to this, and "
                                    "every pass is padded to it so an image never depends on its batch-mates",
                                 check=at_least(1), group=SERVICE)
    batch_wait_ms: float = option(10.0, "how long a replica waits for a batch to fill before running it",
                                  check=non_negative, group=SERVICE)
    # --- limits ---
    max_body_bytes: int = option(8 * 2**20, "largest request body", check=at_least(1), group=LIMITS)
    max_pixels: int = option(4 * 1024 * 2048, "largest label map in pixels, by its PNG header (Pillow's "
                                              "MAX_IMAGE_PIXELS: a decompression bomb is refused before it is "
                                              "decoded)", check=at_least(1), group=LIMITS)
    max_unknown_fraction: float = option(DEFAULT_MAX_UNKNOWN_FRACTION,
                                         "colour maps: colours outside the schema's palette become void up to this "
                                         "fraction of the pixels; more is refused (one-channel ids must all be "
                                         "known)", check=fraction, group=LIMITS)
    open: bool = option(False, "open the page in this machine's web browser once the service is up")
    dry_run: bool = dry_run_option()

    def check(self) -> None:
        if self.max_replicas and not self.min_replicas <= self.replicas <= self.max_replicas:
            raise UserError(f"--replicas {self.replicas} must lie within --min-replicas {self.min_replicas} and "
                            f"--max-replicas {self.max_replicas}")


def parse_serve_config(argv: Sequence[str] | None) -> ServeConfig:
    config = from_argv(ServeConfig, argv, prog="jobs/serve.py",
                       description="Serve a registered model over HTTP with Ray Serve (POST /synthesize, a page to "
                                   "paint label maps on at /), following its registry alias.")
    return resolve(config)


def resolve(config: ServeConfig) -> ServeConfig:
    """Make the config explicit: the model URI spelled out, local paths absolute, threads filled in."""
    config.check()
    resolved = dataclasses.replace(config, model=model_uri(config.model))
    for name in ("model", "store"):
        setattr(resolved, name, absolute(getattr(resolved, name)))
    if resolved.threads_per_replica == 0 and not resolved.use_gpu:
        resolved.threads_per_replica = max(1, (os.cpu_count() or 1) // resolved.replicas)
    return resolved
