"""Label schemas: which source label ids or colours mean which class, and which class is void.

A schema is a small JSON document that travels with the store and with every model trained
on it (docs/design.md#label-maps-and-schemas). It lists the trainable classes in index order and, apart,
the void class, which always takes the last index (docs/design.md#label-maps-and-schemas):

    {"format": "crn-label-schema/1", "name": "cityscapes",
     "classes": [{"name": "road", "ids": [7], "colors": [[128, 64, 128]]}, ...],
     "void": {"name": "void", "ids": [0, 1, ...], "colors": [[0, 0, 0], ...]}}

`ids` are the values of a single-channel label image (Cityscapes *_gtFine_labelIds.png),
`colors` the RGB values of a colour-coded one (*_gtFine_color.png, GTA5 labels). What a
value the schema does not list becomes is the preprocessing's choice, never the schema's:
a reject, or (colour labels, as the authors read them) void, counted in the manifest
(pipeline.data.prepare, `--unknown-labels`).

Shared colours: Cityscapes gives some void labels the colour of a real class (polegroup
has pole's (153, 153, 153), license plate has car's (0, 0, 142)). A colour listed both by
a class and by void therefore means the class. Two real classes may not share an id or a
colour, and an id may not be listed twice: those schemas are refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.cityscapes import LABELS, NUM_TRAIN_CLASSES
from pipeline.errors import UserError

SCHEMA_FORMAT = "crn-label-schema/1"

# Marks "not in the schema" in lookup tables. Class indices are uint8 and a schema has at
# most 255 classes, so 255 is never a real class index.
INVALID = 255
MAX_CLASSES = 255


class SchemaError(UserError, ValueError):
    """A schema file or name that cannot be used (one-line message)."""


class SchemaMismatch(SchemaError):
    """Two parts of the project disagree on the label schema (one-line message)."""


@dataclass(frozen=True)
class LabelClass:
    """One class: its name and the source ids / RGB colours that mean it."""

    name: str
    ids: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "ids": list(self.ids), "colors": [list(c) for c in self.colors]}

    @staticmethod
    def from_dict(d: dict, where: str) -> "LabelClass":
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise SchemaError(f"{where}: each class needs a non-empty 'name'")
        name = d["name"]
        ids = d.get("ids", [])
        colors = d.get("colors", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and -1 <= i <= 65535 for i in ids):
            raise SchemaError(f"{where}: class '{name}': 'ids' must be a list of integers in -1..65535")
        if not isinstance(colors, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in colors
        ):
            raise SchemaError(f"{where}: class '{name}': 'colors' must be a list of [r, g, b] in 0..255")
        return LabelClass(name, tuple(ids), tuple(tuple(c) for c in colors))


@dataclass(frozen=True)
class LabelSchema:
    """Trainable classes in index order, then void at index `num_classes - 1`."""

    name: str
    classes: tuple[LabelClass, ...]
    void: LabelClass

    def __post_init__(self) -> None:
        where = f"label schema '{self.name}'"
        if not self.classes:
            raise SchemaError(f"{where}: needs at least one class besides void")
        if len(self.classes) + 1 > MAX_CLASSES:
            raise SchemaError(f"{where}: at most {MAX_CLASSES} classes including void")
        names = [c.name for c in self.all_classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"{where}: class names used twice: {', '.join(duplicates)}")
        seen_ids: dict[int, str] = {}
        for cls in self.all_classes:
            for i in cls.ids:
                if i in seen_ids:
                    raise SchemaError(f"{where}: id {i} is listed by both '{seen_ids[i]}' and '{cls.name}'")
                seen_ids[i] = cls.name
        seen_colors: dict[tuple[int, int, int], str] = {}
        for cls in self.classes:  # void may share a class's colour (the class wins), classes may not
            for c in cls.colors:
                if c in seen_colors and seen_colors[c] != cls.name:
                    raise SchemaError(f"{where}: colour {c} is listed by both '{seen_colors[c]}' and '{cls.name}'")
                seen_colors[c] = cls.name

    @property
    def all_classes(self) -> tuple[LabelClass, ...]:
        return self.classes + (self.void,)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.all_classes]

    @property
    def num_classes(self) -> int:
        """Class count including void: the label channels L a generator takes (crn's num_classes)."""
        return len(self.classes) + 1

    @property
    def num_scored_classes(self) -> int:
        """Class count without void: what a segmenter predicts and every score counts."""
        return len(self.classes)

    @property
    def scored_class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def void_index(self) -> int:
        return self.num_classes - 1

    # ---- lookup tables used to turn source label images into class-index maps ----

    def id_table(self) -> np.ndarray:
        """uint8 table: source id -> class index, INVALID for ids the schema does not list."""
        ids = [i for cls in self.all_classes for i in cls.ids if i >= 0]
        table = np.full(max(ids + [255]) + 1, INVALID, dtype=np.uint8)
        for index, cls in enumerate(self.all_classes):
            for i in cls.ids:
                if i >= 0:  # negative ids (Cityscapes' license plate, -1) cannot occur in a PNG
                    table[i] = index
        return table

    def color_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted packed 0xRRGGBB keys as uint32, class index per key as uint8)."""
        mapping: dict[int, int] = {}
        for c in self.void.colors:
            mapping[pack_rgb(c)] = self.void_index
        for index, cls in enumerate(self.classes):  # written after void: a shared colour means the class
            for c in cls.colors:
                mapping[pack_rgb(c)] = index
        keys = np.array(sorted(mapping), dtype=np.uint32)
        return keys, np.array([mapping[int(k)] for k in keys], dtype=np.uint8)

    # ---- plain-type forms ----

    def to_dict(self) -> dict:
        return {
            "format": SCHEMA_FORMAT,
            "name": self.name,
            "classes": [c.to_dict() for c in self.classes],
            "void": self.void.to_dict(),
        }

    @staticmethod
    def from_dict(d: dict, where: str = "label schema") -> "LabelSchema":
        if not isinstance(d, dict) or d.get("format") != SCHEMA_FORMAT:
            raise SchemaError(f"{where}: not a label schema (expected \"format\": \"{SCHEMA_FORMAT}\")")
        if not isinstance(d.get("name"), str) or not isinstance(d.get("classes"), list) or "void" not in d:
            raise SchemaError(f"{where}: needs 'name', 'classes' (a list) and 'void'")
        classes = tuple(LabelClass.from_dict(c, where) for c in d["classes"])
        return LabelSchema(d["name"], classes, LabelClass.from_dict(d["void"], where))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal fingerprints mean identical schemas."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def pack_rgb(color) -> int:
    r, g, b = color
    return (int(r) << 16) | (int(g) << 8) | int(b)


def cityscapes_schema() -> LabelSchema:
    """19 train classes in train-id order, then void gathering the other 16 labels."""
    classes = []
    for train_id in range(NUM_TRAIN_CLASSES):
        (label,) = [l for l in LABELS if l.train_id == train_id]
        classes.append(LabelClass(label.name, (label.id,), (label.color,)))
    void_labels = [l for l in LABELS if not 0 <= l.train_id < NUM_TRAIN_CLASSES]
    void_colors = tuple(dict.fromkeys(l.color for l in void_labels))  # distinct, in table order
    void = LabelClass("void", tuple(l.id for l in void_labels), void_colors)
    return LabelSchema("cityscapes", tuple(classes), void)


def builtin_schemas() -> dict[str, LabelSchema]:
    """`cityscapes`, and the schema each registered data-set format brings (ade20k, coco-stuff)."""
    from pipeline.data.formats import FORMATS

    schemas = {"cityscapes": cityscapes_schema()}
    for fmt in FORMATS.values():
        if fmt.build_schema is not None:
            schemas[fmt.schema] = fmt.build_schema()
    return schemas


def load_schema(name_or_path: str | Path) -> LabelSchema:
    """A built-in schema by name (`cityscapes`, `ade20k`, `coco-stuff`), or a schema JSON file by path."""
    builtins = builtin_schemas()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise SchemaError(
            f"unknown label schema '{name_or_path}': not a built-in ({', '.join(sorted(builtins))}) "
            "and no such JSON file"
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"label schema {path}: cannot read JSON ({exc})") from None
    return LabelSchema.from_dict(document, where=f"label schema {path}")


def check_schema_match(expected: dict, actual: dict, what: str) -> None:
    """Raise SchemaMismatch (one line) unless two schema dicts describe the same classes.

    `what` names the thing being checked, e.g. "store s3://b/x vs model models:/crn@champion".
    """
    try:
        expected_schema = LabelSchema.from_dict(expected, where=f"{what} (expected schema)")
        actual_schema = LabelSchema.from_dict(actual, where=f"{what} (actual schema)")
    except SchemaMismatch:
        raise
    except SchemaError as exc:  # an unreadable schema on either side is a mismatch too
        raise SchemaMismatch(str(exc)) from None
    if expected_schema.fingerprint() == actual_schema.fingerprint():
        return
    detail = _first_difference(expected_schema, actual_schema)
    raise SchemaMismatch(
        f"{what}: label schema mismatch: expected '{expected_schema.name}' "
        f"({expected_schema.num_classes} classes), got '{actual_schema.name}' "
        f"({actual_schema.num_classes} classes); {detail}"
    )


def _first_difference(a: LabelSchema, b: LabelSchema) -> str:
    if a.num_classes != b.num_classes:
        return "the class counts differ"
    for index, (ca, cb) in enumerate(zip(a.all_classes, b.all_classes)):
        if ca.name != cb.name:
            return f"class {index} is '{ca.name}' vs '{cb.name}'"
        if ca != cb:
            return f"class {index} '{ca.name}' has different source ids or colours"
    return "the schema names differ"
