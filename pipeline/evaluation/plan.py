"""The evaluation's plan: every check that needs no actor, made on the driver.

The model is opened once (pipeline.registry.models.open_model: an alias resolved to its
version) and that version is what gets synthesized, scored and tagged; with `--oracle` there
is no model and the real photos are scored in its place. The store split must hold photos
(the real photos are every score's reference) in the model's schema and resolution; the
segmenter's class order must be the schema's; the FID Inception weights are found (or the
reason there is no FID is kept). Each named convention (pipeline.evaluation.conventions)
becomes one `ScoredProtocol`: the size its segmenter readings are compared at, where its
labels come from, and its protocol id (pipeline.evaluation.protocol), which hashes
everything that makes two evaluations' numbers comparable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.data.schema import LabelSchema, check_schema_match
from pipeline.data.store import Store, open_store
from pipeline.errors import UserError
from pipeline.evaluation import metrics
from pipeline.evaluation.config import EvaluateConfig, resolve
from pipeline.evaluation.conventions import Convention, convention
from pipeline.evaluation.metrics import Metric, MetricSettings
from pipeline.evaluation.metrics.fid import find_inception_weights
from pipeline.evaluation.protocol import Protocol, sample_ids_digest
from pipeline.fs import file_sha256
from pipeline.options import to_dict
from pipeline.registry.models import ModelRef, open_model
from pipeline.runtime import work_dir
from pipeline.segmenter.file import SegmenterFile, check_class_order, open_segmenter

LABELS_FROM_STORE, LABELS_ENLARGED = "store", "nearest"  # Protocol.labels


@dataclass(frozen=True)
class ScoredProtocol:
    """One convention as this evaluation applies it."""

    convention: Convention
    scored_at: str  # "HxW": segmenter readings and labels are compared at this size
    labels_from_store: bool  # the store holds labels at scored_at; else the model's are enlarged (nearest)
    protocol: Protocol

    @property
    def name(self) -> str:
        return self.convention.name


@dataclass
class EvaluationPlan:
    config: EvaluateConfig
    model: ModelRef | None  # the version opened once, handed to the synthesis this job runs; None with --oracle
    schema: LabelSchema
    store: Store
    resolution: str  # the images' size
    num_outputs: int  # images per label map: the model's K, 1 for the oracle (the photo)
    sample_ids: list[str]  # sorted
    segmenter: SegmenterFile
    fid_weights: Path | None
    metric_kinds: list[type[Metric]]  # what is scored: pipeline.evaluation.metrics.METRICS
    metric_settings: MetricSettings
    protocols: list[ScoredProtocol]  # in the order named; the first is the registry gate's
    synthesized: str  # the synthesis output folder ("" for the oracle: the photos are scored)

    @property
    def primary(self) -> ScoredProtocol:
        return self.protocols[0]

    @property
    def scored(self) -> str:
        """What was scored, in words: the model version, or the real photos."""
        return self.model.pinned_uri if self.model else f"the real photos of {self.config.store} (oracle)"

    def extra_label_resolutions(self) -> list[str]:
        """Store resolutions besides the images' own whose labels some convention compares with."""
        return sorted({p.scored_at for p in self.protocols if p.labels_from_store and p.scored_at != self.resolution})

    def describe(self) -> dict[str, Any]:
        """The resolved plan: printed by --dry-run and logged as MLflow params."""
        model = self.model
        described = {**to_dict(self.config), "model.version": (model and model.version) or "",
                     "model.sha256": model.sha256 if model else "", "num_outputs": self.num_outputs,
                     "segmenter.kind": self.segmenter.kind, "segmenter.version": self.segmenter.version or "",
                     "segmenter.sha256": self.segmenter.sha256, "fid.weights": str(self.fid_weights or ""),
                     "fid.note": self.metric_settings.fid_note,
                     "metrics": ",".join(kind.name for kind in self.metric_kinds), "synthesized": self.synthesized}
        for scored in self.protocols:
            described[f"{scored.name}.protocol_id"] = scored.protocol.id
            described.update({f"{scored.name}.{k}": v for k, v in scored.protocol.to_dict().items()})
        return described


def make_plan(config: EvaluateConfig, model: ModelRef | None = None,
              sample_ids: Sequence[str] | None = None) -> EvaluationPlan:
    """Every check that needs no actor (module docstring).

    `model`: the generator already opened (a training scores the checkpoint it holds),
    instead of opening `config.model`. `sample_ids`: score only these samples of the split
    (a fixed subset, e.g. a training's `--eval-samples`); the protocol id counts them.
    """
    config = resolve(config)  # a config built in code, not parsed, is spelled out here
    store = open_store(config.store)
    if not store.has_photos:
        raise UserError(f"store {config.store} has no photos: the real photos are the reference of every score")
    if model is None and config.model:
        model = open_model(config.model)
    if model is not None:
        schema, resolution, num_outputs = model.schema, str(model.config.top_resolution), model.config.num_outputs
        check_schema_match(schema.to_dict(), store.schema.to_dict(), f"store {config.store} vs model {config.model}")
    else:
        schema, num_outputs = store.schema, 1
        resolution = config.resolution or store.top_resolution
    store.resolution(resolution)  # one-line error when the store lacks the images' resolution
    if config.split not in store.splits:
        raise UserError(f"store {store.uri} has no split '{config.split}' (it has {', '.join(store.splits)})")
    sample_ids = _subset(store.sample_ids(config.split), sample_ids, f"store {store.uri} split '{config.split}'")

    segmenter = open_segmenter(config.segmenter, config.segmenter_classes)
    check_class_order(segmenter, schema)
    try:
        fid_weights, fid_note = find_inception_weights(config.fid_weights, config.fid_backend)
    except ValueError as exc:
        raise UserError(f"--fid-weights: {exc}") from None
    if fid_weights is not None and len(sample_ids) < 2:
        fid_weights, fid_note = None, f"FID not computed: split '{config.split}' has {len(sample_ids)} sample (2 needed)"
    shared = dict(segmenter=segmenter.kind, segmenter_sha256=segmenter.sha256, schema_fingerprint=schema.fingerprint(),
                  resolution=resolution, split=config.split, sample_ids_sha256=sample_ids_digest(sample_ids),
                  num_samples=len(sample_ids), fid_backend=config.fid_backend if fid_weights else None,
                  fid_weights_sha256=file_sha256(fid_weights) if fid_weights else None)
    protocols = [_scored_protocol(convention(name), resolution, store, shared) for name in config.protocols]

    if model is None:
        # The protocol keeps the FID fields of the flags (a model evaluated with the same flags
        # shares its ids), but the photos against themselves have FID 0 by definition.
        fid_weights, fid_note = None, "FID not computed: the oracle's images are the real photos (0 by definition)"
        synthesized = ""
    else:
        folder = f"{model.name}-v{model.version}" if model.name and model.version else f"model-{model.sha256[:12]}"
        synthesized = config.synthesized or str(work_dir() / "evaluations" / folder / config.split)
    settings = MetricSettings(num_scored_classes=schema.num_scored_classes, fid=fid_weights is not None,
                              fid_note=fid_note, fid_backend=config.fid_backend)
    return EvaluationPlan(config, model, schema, store, resolution, num_outputs, sample_ids, segmenter, fid_weights,
                          list(metrics.METRICS), settings, protocols, synthesized)


def _subset(split_ids: list[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    """The split's sorted ids, or `wanted` sorted after checking the split has each."""
    if wanted is None:
        return split_ids
    missing = sorted(set(wanted) - set(split_ids))
    if missing:
        raise UserError(f"{where} has no sample {missing[0]} ({len(missing)} of {len(set(wanted))} missing)")
    return sorted(set(wanted))


def _scored_protocol(chosen: Convention, resolution: str, store: Store, shared: dict) -> ScoredProtocol:
    try:
        scored_at = chosen.scoring_size(resolution)
    except ValueError as exc:
        raise UserError(f"--protocols: {exc}") from None
    from_store = scored_at in store.resolutions
    protocol = Protocol(convention=chosen.name, scored_at=scored_at,
                        labels=LABELS_FROM_STORE if from_store else LABELS_ENLARGED,
                        scales=(1.0, *chosen.extra_scales), **shared)
    return ScoredProtocol(chosen, scored_at, from_store, protocol)
