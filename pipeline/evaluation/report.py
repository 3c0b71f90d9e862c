"""The evaluation's picture: photo | synthesized | its segmentation | label map, one row per sample.

A reader sees at once what the scores mean: the segmenter's reading of a synthesized image
(third column) against the label map the image was made from (fourth), in the schema's
colours, next to the real photo and the image itself (variant 0).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.store import decode_labels, decode_photos, label_column, photo_column
from pipeline.evaluation.segmenter import Segmenter
from pipeline.fs import filesystem_for, join, read_bytes
from pipeline.synthesis.outputs import decode_png, image_path
from pipeline.visualize import GAP, colorize, png_bytes, schema_palette


def grid_png(plan, sample_ids: list[str]) -> bytes:
    """PNG of the grid for `sample_ids` of the plan's split (pipeline.evaluation.job.EvaluationPlan)."""
    resolution = plan.resolution
    table = plan.store.read_table(plan.config.split, resolution)
    table = table.filter(pc.is_in(table.column("sample_id"), value_set=pa.array(sample_ids)))
    ids = table.column("sample_id").to_pylist()
    labels = decode_labels(table.column(label_column(resolution)), resolution)
    photos = decode_photos(table.column(photo_column(resolution)), resolution)
    fs, root = filesystem_for(plan.synthesized)
    synthesized = np.stack([decode_png(read_bytes(fs, join(root, image_path(s, 0)))) for s in ids])
    predicted = Segmenter(plan.segmenter.data, plan.schema.void_index).predict(synthesized)
    palette = schema_palette(plan.schema)
    rows = [[photos[i], synthesized[i], colorize(predicted[i], palette), colorize(labels[i], palette)]
            for i in np.argsort(ids)]
    return png_bytes(tile(rows))


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Equal-sized RGB tiles into one picture with white gaps."""
    height, width = rows[0][0].shape[:2]
    columns = len(rows[0])
    grid = np.full((len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            top, left = r * (height + GAP), c * (width + GAP)
            grid[top:top + height, left:left + width] = picture
    return grid
