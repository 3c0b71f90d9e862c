"""What the evaluation shows a person: a grid of pictures and the scores in a few lines.

The grid has one row per sample: photo | synthesized (variant 0) | the segmenter's reading of
it | the label map it was made from. A reader sees at once what the scores mean: the third
column against the fourth, in the schema's colours, next to the real photo and the image.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.store import decode_labels, decode_photos, label_column, photo_column
from pipeline.evaluation.metrics import MetricResult
from pipeline.evaluation.published import comparison_lines
from pipeline.evaluation.records import format_metrics
from pipeline.fs import filesystem_for, join, read_bytes
from pipeline.segmenter.file import Segmenter
from pipeline.synthesis.outputs import decode_png, image_path
from pipeline.visualize import colorize, png_bytes, schema_palette, tile_rows


def grid_png(plan, sample_ids: list[str]) -> bytes:
    """PNG of the grid for `sample_ids` of the plan's split (pipeline.evaluation.plan.EvaluationPlan).
    The segmenter reads the images as made (the first convention may enlarge them; the grid
    shows what the images look like, not a convention)."""
    resolution, schema = plan.resolution, plan.schema
    table = plan.store.read_table(plan.config.split, resolution)
    table = table.filter(pc.is_in(table.column("sample_id"), value_set=pa.array(sample_ids)))
    ids = table.column("sample_id").to_pylist()
    labels = decode_labels(table.column(label_column(resolution)), resolution)
    photos = decode_photos(table.column(photo_column(resolution)), resolution)
    if plan.model is None:  # the oracle: the photos are what was scored
        synthesized = photos
    else:
        fs, root = filesystem_for(plan.synthesized)
        synthesized = np.stack([decode_png(read_bytes(fs, join(root, image_path(s, 0)))) for s in ids])
    predicted = Segmenter(plan.segmenter.data, plan.metric_settings.num_scored_classes).predict(synthesized)
    palette = schema_palette(schema)
    rows = [[photos[i], synthesized[i], colorize(predicted[i], palette), colorize(labels[i], palette)]
            for i in np.argsort(ids)]
    return png_bytes(tile_rows(rows))


def summary_text(plan, outcomes: dict[str, MetricResult], run_id: str, decision) -> str:
    """What the job prints at its end: what was scored; per protocol every metric and the
    published Cityscapes rows beside it (or why not); the run; the gate's word."""
    lines = [f"evaluated {plan.scored} on {plan.config.split} ({len(plan.sample_ids)} samples x "
             f"{plan.num_outputs} images, {plan.resolution}):"]
    for scored in plan.protocols:
        result = outcomes[scored.name]
        lines.append(f"  {scored.name} (protocol {scored.protocol.id}, scored at {scored.scored_at}): "
                     f"{format_metrics(result.values, result.notes)}")
        lines += comparison_lines(scored.protocol, result.values, "real photos" if plan.model is None else "this model")
    lines.append(f"  MLflow run {run_id}")
    if decision is not None:
        lines.append(f"  gate ({plan.primary.name}): {decision.reason}")
    return "\n".join(lines)
