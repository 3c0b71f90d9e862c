"""A one-file HTML gallery of synthesized images: label | variant 1 .. K | photograph.

    html = gallery_html(samples, palette, title="crn@champion on val", details={...})
    Path("gallery.html").write_text(html)

Every picture is embedded as a base64 PNG, so the page is one self-contained file that
MLflow shows as an artifact and that can be mailed around. Label maps are drawn in their
schema's colours (pipeline.visualize.colorize). Large images are shrunk to thumbnails to keep
the page light (labels by nearest neighbour so no colour is invented); small ones are shown
enlarged with pixelated rendering so a 32x64 test image is still visible.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.visualize import colorize, png_bytes

# Thumbnails are at most this wide (pixels); the page shows every tile at this width.
THUMBNAIL_WIDTH = 256


@dataclass
class GallerySample:
    sample_id: str
    label: np.ndarray  # uint8 [H, W] class indices
    variants: list[np.ndarray]  # K images, uint8 [H, W, 3]
    photo: np.ndarray | None  # uint8 [H, W, 3], or None for label-only inputs


def gallery_html(samples: list[GallerySample], palette: np.ndarray, title: str, details: dict[str, str]) -> str:
    """The page: a header with `details` (model, schema, ...) and one table row per sample."""
    num_variants = max((len(s.variants) for s in samples), default=0)
    has_photos = any(s.photo is not None for s in samples)
    header = ["sample", "label"] + [f"variant {k}" for k in range(num_variants)] + (["photograph"] if has_photos else [])
    rows = []
    for sample in samples:
        cells = [f"<td class=id>{html.escape(sample.sample_id)}</td>", _image_cell(colorize(sample.label, palette), Image.Resampling.NEAREST)]
        cells += [_image_cell(image, Image.Resampling.LANCZOS) for image in sample.variants]
        cells += ["<td></td>"] * (num_variants - len(sample.variants))
        if has_photos:
            cells.append(_image_cell(sample.photo, Image.Resampling.LANCZOS) if sample.photo is not None else "<td>(none)</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    detail_items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in details.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 2px; text-align: center; }}
td.id {{ font-family: monospace; font-size: small; max-width: 12em; word-break: break-all; }}
img {{ width: {THUMBNAIL_WIDTH}px; image-rendering: pixelated; display: block; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{detail_items}</ul>
<table>
<tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>
{chr(10).join(rows)}
</table>
</body></html>
"""


def evaluation_details(fs, root: str) -> dict[str, str]:
    """One header line per evaluation of these images: every metric of each record the
    evaluation job left in `<output>/evaluations/` (pipeline.evaluation.records)."""
    from pipeline.evaluation.records import format_metrics, read_records

    return {f"scores ({record.get('convention', '?')}, protocol {record['protocol_id']})":
            f"{format_metrics(record.get('metrics', {}), record.get('notes', {}))}; segmenter "
            f"{record.get('segmenter', {}).get('uri', '?')}; split {record.get('protocol', {}).get('split', '?')}"
            for record in read_records(fs, root)}


def _image_cell(image: np.ndarray, resample: Image.Resampling) -> str:
    picture = Image.fromarray(np.ascontiguousarray(image))
    if picture.width > THUMBNAIL_WIDTH:
        height = round(picture.height * THUMBNAIL_WIDTH / picture.width)
        picture = picture.resize((THUMBNAIL_WIDTH, height), resample)
    encoded = base64.b64encode(png_bytes(picture)).decode("ascii")
    return f'<td><img alt="" src="data:image/png;base64,{encoded}"></td>'
