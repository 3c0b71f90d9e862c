"""Generators by name: what a checkpoint's `"generator"` entry means, and how to build one.

    GENERATORS = {"crn": Generator("crn", CRNConfig, CRN)}       # one line per kind
    network = build_generator("crn", {"num_classes": 20, "widths": [...], "num_outputs": 9})

Every stage after training (synthesis, evaluation, the registry, the MLflow model) handles a
generator only through this face, so a second kind of network (a pix2pixHD- or SPADE-style
one) is a new module plus one line in `GENERATORS`, with nothing else touched:

- its config class has `num_classes` (label channels, void included), `num_outputs` (K),
  `top_resolution` (the label-map size it takes), `to_dict()` and `from_dict(dict)`;
- its network is built from that config alone, keeps it as `.config`, and maps one-hot label
  maps float [B, L, H, W] to images [B, K, 3, H, W], RGB in 0..255 unclamped (the CRN's
  contract: crn.inference turns them into uint8 pixels).

A checkpoint written before generators had names holds no `"generator"` entry: it is a CRN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from crn.config import CRNConfig
from crn.model import CRN

# What a checkpoint without a "generator" entry holds.
DEFAULT_GENERATOR = "crn"


@dataclass(frozen=True)
class Generator:
    """One kind of generator: its name in checkpoints, its config class and its network class."""

    name: str
    config_class: type
    network_class: type

    def config_from_dict(self, values: dict[str, Any]):
        return self.config_class.from_dict(values)

    def build(self, config) -> nn.Module:
        return self.network_class(config)


GENERATORS: dict[str, Generator] = {
    "crn": Generator("crn", CRNConfig, CRN),
}


def register_generator(generator: Generator) -> None:
    """Add a kind at run time (a plug-in outside this package); a name is taken once."""
    existing = GENERATORS.get(generator.name)
    if existing is not None and existing != generator:
        raise ValueError(f"generator {generator.name!r} is already registered as {existing.network_class.__name__}")
    GENERATORS[generator.name] = generator


def generator_named(name: str | None) -> Generator:
    """The registered kind called `name` (None: the default, for checkpoints that predate names)."""
    name = name or DEFAULT_GENERATOR
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r} (registered: {', '.join(sorted(GENERATORS))})")
    return GENERATORS[name]


def generator_of(network: nn.Module) -> Generator:
    """The registered kind of a built network, found by its class."""
    for generator in GENERATORS.values():
        if type(network) is generator.network_class:
            return generator
    raise ValueError(f"{type(network).__name__} is not a registered generator (crn.generators.GENERATORS)")


def build_generator(name: str | None, config: dict[str, Any]) -> nn.Module:
    """A network of kind `name` from its config as plain types, with fresh weights."""
    generator = generator_named(name)
    return generator.build(generator.config_from_dict(config))
