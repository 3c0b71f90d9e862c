"""The evaluation's scores, one metric a file; `METRICS` is the list every stage loops over.

A new metric is a module here with a `Metric` subclass (pipeline.evaluation.metrics.base)
and one line in `METRICS`: the scoring actors update it, the driver merges and computes it,
and its values reach the MLflow run, the evaluation record, the model version's tags, the
gallery and the demo's summary without any of them naming it.
"""
from __future__ import annotations

from pipeline.evaluation.metrics.base import Metric, MetricResult, MetricSettings, ScoringInputs
from pipeline.evaluation.metrics.diversity import DiversityMetric
from pipeline.evaluation.metrics.fid import FIDMetric
from pipeline.evaluation.metrics.segmentation import SegmentationMetric

METRICS: list[type[Metric]] = [
    SegmentationMetric,
    FIDMetric,
    DiversityMetric,
]


def make_metrics(kinds: list[type[Metric]], settings: MetricSettings) -> list[Metric]:
    """A fresh accumulator of each metric kind (the plan's list: METRICS when it was made)."""
    return [kind(settings) for kind in kinds]


def compute_all(metrics: list[Metric]) -> MetricResult:
    """Every metric's result in one: values, per-class columns and notes side by side."""
    total = MetricResult(values={})
    for metric in metrics:
        result = metric.compute()
        total.values.update(result.values)
        total.per_class.update(result.per_class)
        total.notes.update(result.notes)
    return total


__all__ = ["METRICS", "Metric", "MetricResult", "MetricSettings", "ScoringInputs", "compute_all", "make_metrics"]
