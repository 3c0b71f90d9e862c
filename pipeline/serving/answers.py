"""What the service answers: the K images, the schema, errors, and the headers on every answer.

`POST /synthesize` answers JSON by default, the K images as base64 PNGs in variant order:

    {"model": {"uri": "models:/crn-x/3", "name": "crn-x", "version": "3", "sha256": ...},
     "size": "256x512", "num_outputs": 9, "label_type": "color", "unknown_pixels": 0,
     "batch_size": 4, "images": ["iVBORw0KGgo...", ...]}

JSON because the K images come out of one forward pass: one answer carries them all, and
the page shows each as a `data:` URL as it is. `?variant=k` answers image k alone as
`image/png`, for `curl > file.png`. The PNGs are encoded as the synthesis job writes its
files (pipeline.synthesis.outputs.encode_png), so equal pixels give equal bytes.

Every answer, errors and the page included, carries `X-Model-Version` (the registry
version, `none` for a checkpoint file), `X-Model-Uri` (`models:/<name>/<version>`, never an
alias) and `X-Model-Sha256`. On a synthesis answer they name the version that made its
images; on any other, the version the replica serves at that moment. `X-Batch-Size` says
how many requests shared the forward pass.
"""
from __future__ import annotations

import base64

import numpy as np
from fastapi.responses import JSONResponse, Response

from pipeline.serving.follower import ServedModel
from pipeline.serving.inputs import LabelMap
from pipeline.synthesis.outputs import encode_png
from pipeline.visualize import schema_palette


def model_headers(served: ServedModel) -> dict[str, str]:
    return {"X-Model-Version": served.version or "none", "X-Model-Uri": served.uri,
            "X-Model-Sha256": served.ref.sha256}


def model_summary(served: ServedModel) -> dict:
    return {"uri": served.uri, "name": served.ref.name, "version": served.version or None,
            "sha256": served.ref.sha256, "resolution": str(served.resolution), "num_outputs": served.num_outputs,
            "schema": served.ref.schema.name}


def images_answer(images: np.ndarray, served: ServedModel, label_map: LabelMap, batch_size: int,
                  variant: int | None) -> Response:
    """uint8 [K, H, W, 3] made by `served` -> all K as JSON, or image `variant` as PNG."""
    headers = {**model_headers(served), "X-Batch-Size": str(batch_size)}
    if variant is not None:
        return Response(encode_png(images[variant]), media_type="image/png", headers=headers)
    return JSONResponse({
        "model": model_summary(served),
        "size": str(served.resolution),
        "num_outputs": served.num_outputs,
        "label_type": label_map.label_type,
        "unknown_pixels": label_map.unknown_pixels,
        "batch_size": batch_size,
        "images": [base64.b64encode(encode_png(image)).decode("ascii") for image in images],
    }, headers=headers)


def schema_answer(served: ServedModel) -> dict:
    """The classes in index order (void last): name, source ids, colours, and the colour the
    page paints with (the first listed; the fixed palette of pipeline.visualize otherwise)."""
    schema = served.ref.schema
    palette = schema_palette(schema)
    return {
        "name": schema.name,
        "num_classes": schema.num_classes,
        "void_index": schema.void_index,
        "classes": [{"index": index, "name": cls.name, "ids": list(cls.ids), "colors": [list(c) for c in cls.colors],
                     "color": [int(v) for v in palette[index]]}
                    for index, cls in enumerate(schema.all_classes)],
        "resolution": str(served.resolution),
        "num_outputs": served.num_outputs,
        "model": model_summary(served),
    }


def error_answer(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)
