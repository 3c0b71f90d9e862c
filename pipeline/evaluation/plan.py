"""The evaluation's plan: every check that needs no actor, made on the driver.

The model is opened once (pipeline.registry.models.open_model: an alias resolved to its
version) and that version is what gets synthesized, scored and tagged. The store split must
hold photos (the real photos are every score's reference) in the model's schema and
resolution; the segmenter's class order must be the schema's; the FID Inception weights are
found (or the reason there is no FID is kept); and the protocol id hashes everything that
makes two evaluations' numbers comparable (pipeline.evaluation.protocol).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.schema import check_schema_match
from pipeline.data.store import Store, open_store
from pipeline.errors import UserError
from pipeline.evaluation import metrics
from pipeline.evaluation.config import EvaluateConfig, resolve
from pipeline.evaluation.metrics import Metric, MetricSettings
from pipeline.evaluation.metrics.fid import find_inception_weights
from pipeline.evaluation.protocol import Protocol, sample_ids_digest
from pipeline.fs import file_sha256
from pipeline.options import to_dict
from pipeline.registry.models import ModelRef, open_model
from pipeline.runtime import work_dir
from pipeline.segmenter.file import SegmenterFile, check_class_order, open_segmenter


@dataclass
class EvaluationPlan:
    config: EvaluateConfig
    model: ModelRef  # the version opened once, handed to the synthesis this job runs
    store: Store
    resolution: str
    sample_ids: list[str]  # sorted
    segmenter: SegmenterFile
    fid_weights: Path | None
    metric_kinds: list[type[Metric]]  # what is scored: pipeline.evaluation.metrics.METRICS
    metric_settings: MetricSettings
    protocol: Protocol
    synthesized: str  # the synthesis output folder

    def describe(self) -> dict[str, Any]:
        """The resolved plan: printed by --dry-run and logged as MLflow params."""
        return {**to_dict(self.config), "model.version": self.model.version or "", "model.sha256": self.model.sha256,
                "model.num_outputs": self.model.config.num_outputs, "segmenter.version": self.segmenter.version or "",
                "segmenter.sha256": self.segmenter.sha256, "fid.weights": str(self.fid_weights or ""),
                "fid.note": self.metric_settings.fid_note,
                "metrics": ",".join(kind.name for kind in self.metric_kinds), "protocol.id": self.protocol.id,
                **{f"protocol.{k}": v for k, v in self.protocol.to_dict().items()}, "synthesized": self.synthesized}


def make_plan(config: EvaluateConfig) -> EvaluationPlan:
    """Every check that needs no actor (module docstring)."""
    config = resolve(config)  # a config built in code, not parsed, is spelled out here
    model = open_model(config.model)
    schema, resolution = model.schema, str(model.config.top_resolution)
    store = open_store(config.store)
    if not store.has_photos:
        raise UserError(f"store {config.store} has no photos: the real photos are the reference of every score")
    check_schema_match(schema.to_dict(), store.schema.to_dict(), f"store {config.store} vs model {config.model}")
    store.resolution(resolution)  # one-line error when the store lacks the model's resolution
    if config.split not in store.splits:
        raise UserError(f"store {store.uri} has no split '{config.split}' (it has {', '.join(store.splits)})")
    sample_ids = store.sample_ids(config.split)

    segmenter = open_segmenter(config.segmenter, config.segmenter_classes)
    check_class_order(segmenter, schema)
    try:
        fid_weights, fid_note = find_inception_weights(config.fid_weights)
    except ValueError as exc:
        raise UserError(f"--fid-weights: {exc}") from None
    if fid_weights is not None and len(sample_ids) < 2:
        fid_weights, fid_note = None, f"FID not computed: split '{config.split}' has {len(sample_ids)} sample (2 needed)"
    protocol = Protocol(
        segmenter_sha256=segmenter.sha256,
        schema_fingerprint=schema.fingerprint(),
        resolution=resolution,
        split=config.split,
        sample_ids_sha256=sample_ids_digest(sample_ids),
        num_samples=len(sample_ids),
        fid_weights_sha256=file_sha256(fid_weights) if fid_weights else None,
    )
    folder = f"{model.name}-v{model.version}" if model.name and model.version else f"model-{model.sha256[:12]}"
    synthesized = config.synthesized or str(work_dir() / "evaluations" / folder / config.split)
    settings = MetricSettings(num_scored_classes=schema.num_scored_classes, fid=fid_weights is not None, fid_note=fid_note)
    return EvaluationPlan(config, model, store, resolution, sample_ids, segmenter, fid_weights, list(metrics.METRICS), settings,
                          protocol, synthesized)
