"""What a synthesis request says, read and checked before it waits for a batch: the body's
size, the label map in it, and the query's `size` and `variant`.

A label map goes through exactly what the synthesis job does to a folder of label PNGs
(pipeline.data.prepare.SamplePreparer, as pipeline.synthesis.inputs uses it): decoded
completely (Pillow's pixel limit refuses a decompression bomb from its header), PNG only,
1:2, at least the model's resolution, every colour (or id) looked up in the schema, colours
outside the palette made void up to a fraction of the map, then brought to the model's
resolution by nearest neighbour. A colour PNG is read through the palette, a one-channel
PNG as schema ids, a palette PNG by what its pixels mean in the schema: the guess is the
synthesis job's own (pipeline.data.prepare.LabelMapper.label_type_of); `?label_type=`
overrides it.

Each problem is a `BadRequest`: an HTTP status and a one-line reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crn.resolution import Resolution
from pipeline.data.prepare import BadInput, PrepareSettings, SamplePreparer
from pipeline.data.schema import LabelSchema

LABEL_TYPES = ("auto", "ids", "color")
# The first words of prepare's reason for an image over Pillow's pixel limit (decode_image).
TOO_LARGE = "label image too large"
# The first words of prepare's reasons for a body that is no readable PNG at all.
UNREADABLE = ("empty label", "unreadable label", "label is ")


class BadRequest(Exception):
    """A request the service refuses: `status` (4xx) and a one-line `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class LabelMap:
    """A request's label map as the model takes it."""

    classes: np.ndarray  # uint8 [H, W] class indices at the model's resolution
    label_type: str  # "ids" or "color": how the body was read
    unknown_pixels: int  # source pixels outside the schema, made void


class LabelReader:
    """PNG bytes -> a `LabelMap` at the model's resolution, read as the synthesis job reads files."""

    def __init__(self, schema: LabelSchema, resolution: Resolution, max_unknown_fraction: float):
        self.schema = schema
        self.resolution = resolution
        self.max_unknown_fraction = max_unknown_fraction

    def __call__(self, body: bytes, label_type: str = "auto") -> LabelMap:
        if label_type not in LABEL_TYPES:
            raise BadRequest(400, f"label_type '{label_type}' is not one of {', '.join(LABEL_TYPES)}")
        settings = PrepareSettings(label_type=label_type, schema=self.schema.to_dict(), resolutions=(self.resolution,),
                                   crop_to_aspect=False, max_unknown_fraction=self.max_unknown_fraction)
        try:
            prepared = _BodyPreparer(settings, body).prepare("request", "request", "request body", None)
        except BadInput as bad:
            raise BadRequest(status_of(bad.reason), bad.reason) from None
        return LabelMap(prepared.labels[str(self.resolution)], prepared.label_type, prepared.unknown_pixels)


class _BodyPreparer(SamplePreparer):
    """The synthesis job's preparer with the request body where it would read a file: every
    check and mapping is the job's own. One per request (its tables are the schema's, tiny)."""

    def __init__(self, settings: PrepareSettings, body: bytes):
        super().__init__(settings, source_fs=None, display=lambda path: path)
        self.body = body

    def read(self, path: str) -> bytes:
        return self.body


def status_of(reason: str) -> int:
    """413 for a map over the pixel limit, 400 for a body that is no readable PNG, 422 for a
    PNG the model cannot take (aspect, size, colours or ids outside the schema)."""
    if reason.startswith(TOO_LARGE):
        return 413
    if reason.startswith(UNREADABLE):
        return 400
    return 422


def check_size(text: str | None, resolution: Resolution) -> None:
    """`?size=HxW`: the size to synthesize at, as the job's --resolution: the model's own only."""
    if not text:
        return
    try:
        size = Resolution.parse(text)
    except ValueError as exc:
        raise BadRequest(400, f"size: {exc}") from None
    if size != resolution:
        raise BadRequest(422, f"size {size}: the model makes {resolution} images, the only size it takes "
                              f"(a larger 1:2 map is brought down to it)")


def parse_variant(text: str | None, num_outputs: int) -> int | None:
    """`?variant=k`: one image (0 .. K-1) as image/png instead of all K as JSON."""
    if text is None or text == "":
        return None
    if not text.isdigit() or int(text) >= num_outputs:
        raise BadRequest(400, f"variant '{text}' is not one of 0..{num_outputs - 1}")
    return int(text)


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to be over `limit` bytes: from
    its Content-Length, else while it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes is over the limit of {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body over the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
