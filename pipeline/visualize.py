"""Pictures of label maps and model outputs: class colours and "label | K outputs | photo" grids.

    palette = schema_palette(schema)              # uint8 [L, 3], the schema's own colours
    colours = colorize(label_map, palette)        # uint8 [H, W] -> uint8 [H, W, 3]
    grid = image_grid(labels, outputs, photos, palette)
    Path("grid.png").write_bytes(png_bytes(grid))

Training logs such grids to MLflow at intervals; synthesis reuses `colorize` for its
gallery. Each class is drawn in the first colour its schema lists (Cityscapes: the
gtFine_color colours, void black); a schema that lists ids only gets a fixed, seeded palette
so a class keeps its colour from one picture to the next.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# White gap between the tiles of a grid, in pixels.
GAP = 2


def schema_palette(schema) -> np.ndarray:
    """uint8 [L, 3]: one RGB colour per class index of a `pipeline.data.schema.LabelSchema`.

    Also accepts the schema's dict form (as stored in checkpoints and manifests).
    """
    if isinstance(schema, dict):
        from pipeline.data.schema import LabelSchema

        schema = LabelSchema.from_dict(schema)
    fallback = np.random.default_rng(0).integers(0, 256, size=(schema.num_classes, 3), dtype=np.uint8)
    colours = [cls.colors[0] if cls.colors else fallback[i] for i, cls in enumerate(schema.all_classes)]
    return np.asarray(colours, dtype=np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-index map uint8 [H, W] -> RGB uint8 [H, W, 3], class c drawn as `palette[c]`.

    Raises ValueError when the map holds an index the palette has no colour for.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize: expected a label map [H, W], got shape {label.shape}")
    if label.size and int(label.max()) >= len(palette):
        raise ValueError(f"colorize: label map holds class {int(label.max())}, palette has {len(palette)} colours")
    return np.asarray(palette, dtype=np.uint8)[label]


def image_grid(labels: np.ndarray, outputs: np.ndarray, photos: np.ndarray | None, palette: np.ndarray) -> np.ndarray:
    """One row per sample: coloured label | output 1 .. output K | photograph.

    labels uint8 [B, H, W]; outputs uint8 [B, K, H, W, 3] (crn.model.to_uint8_images);
    photos uint8 [B, H, W, 3] or None (label-only data). Returns uint8 [rows, cols, 3] with
    white gaps between tiles.
    """
    return tile_rows([[colorize(labels[b], palette), *outputs[b], *([photos[b]] if photos is not None else [])]
                      for b in range(len(outputs))])


def tile_rows(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Equal-sized RGB tiles uint8 [H, W, 3], row by row, into one picture with white gaps."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    grid = np.full((len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = r * (height + GAP), c * (width + GAP)
            grid[top : top + height, left : left + width] = tile
    return grid


def png_bytes(image: np.ndarray | Image.Image, compress_level: int = 6) -> bytes:
    """Encode an RGB uint8 [H, W, 3] array (or a Pillow image) as PNG; no timestamp, so the
    same pixels and level always give the same bytes."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
