"""Label schemas and resolutions: the Cityscapes table, JSON files, mismatches, bad schemas.

    .venv/bin/python -m pytest tests/test_schema.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from crn.resolution import Resolution, parse_resolutions
from pipeline.data.schema import INVALID, SchemaError, SchemaMismatch, check_schema_match, load_schema

# The official Cityscapes label id -> train id table, written out independently of
# pipeline/cityscapes.py (void = 19 here, i.e. trainId 255 / -1 in the official table).
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                      24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
TRAIN_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
               "motorcycle", "bicycle", "void"]


def test_cityscapes_classes_are_the_19_train_ids_then_void():
    schema = load_schema("cityscapes")
    assert schema.class_names == TRAIN_NAMES
    assert schema.num_classes == 20 and schema.void_index == 19


def test_cityscapes_id_table_matches_the_official_table():
    table = load_schema("cityscapes").id_table()
    for label_id in range(34):
        assert table[label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 19), label_id
    assert (table[34:] == INVALID).all()  # ids 34..255 are in no schema entry: rejects


def test_cityscapes_colours_and_shared_colours_resolve_to_the_class():
    schema = load_schema("cityscapes")
    keys, classes = schema.color_table()
    lookup = {int(k): int(c) for k, c in zip(keys, classes)}

    def class_of(rgb):
        return lookup[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]]

    assert class_of((128, 64, 128)) == 0  # road
    assert class_of((70, 130, 180)) == 10  # sky
    assert class_of((119, 11, 32)) == 18  # bicycle
    assert class_of((0, 0, 0)) == 19  # unlabeled, ego vehicle, ...: void
    assert class_of((81, 0, 81)) == 19  # ground: void
    assert class_of((153, 153, 153)) == 5  # pole and polegroup share it: the class wins
    assert class_of((0, 0, 142)) == 13  # car and license plate share it: the class wins
    assert len(lookup) == 29  # 19 class colours + 10 void-only colours


def test_schema_json_round_trip_and_fingerprint(tmp_path):
    schema = load_schema("cityscapes")
    path = tmp_path / "schema.json"
    path.write_text(schema.to_json())
    again = load_schema(str(path))
    assert again == schema
    assert again.fingerprint() == schema.fingerprint()
    assert again.to_dict() == json.loads(schema.to_json())


def _tiny_schema(**changes) -> dict:
    d = {"format": "crn-label-schema/1", "name": "tiny",
         "classes": [{"name": "ground", "ids": [1], "colors": [[10, 20, 30]]},
                     {"name": "thing", "ids": [2], "colors": [[200, 0, 0]]}],
         "void": {"name": "void", "ids": [0], "colors": [[0, 0, 0]]}}
    d.update(changes)
    return d


def test_user_schema_from_a_json_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_tiny_schema()))
    schema = load_schema(path)
    assert schema.class_names == ["ground", "thing", "void"]
    table = schema.id_table()
    assert table[0] == 2 and table[1] == 0 and table[2] == 1 and table[3] == INVALID


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "other"}, "not a label schema"),
        ({"classes": []}, "at least one class"),
        ({"classes": [{"name": "a", "ids": [1]}, {"name": "b", "ids": [1]}]}, "id 1 is listed by both 'a' and 'b'"),
        ({"classes": [{"name": "a", "colors": [[1, 2, 3]]}, {"name": "b", "colors": [[1, 2, 3]]}]}, "listed by both"),
        ({"classes": [{"name": "a"}, {"name": "a"}]}, "class names used twice"),
        ({"classes": [{"name": "a", "colors": [[1, 2]]}]}, "'colors' must be a list"),
        ({"void": {"name": "void", "ids": [1]}}, "id 1 is listed by both 'ground' and 'void'"),
    ],
)
def test_bad_schema_files_are_refused_in_one_line(tmp_path, changes, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_tiny_schema(**changes)))
    with pytest.raises(SchemaError, match=message) as info:
        load_schema(path)
    assert "\n" not in str(info.value)


def test_unknown_schema_name_says_what_exists():
    with pytest.raises(SchemaError, match="unknown label schema 'mapillary'.*cityscapes"):
        load_schema("mapillary")


def test_schema_mismatch_is_one_line_naming_the_difference():
    cityscapes = load_schema("cityscapes").to_dict()
    check_schema_match(cityscapes, json.loads(json.dumps(cityscapes)), "store vs model")  # equal: no error
    other = json.loads(json.dumps(cityscapes))
    other["classes"][3]["name"] = "barrier"
    with pytest.raises(SchemaMismatch, match="store vs model: .*class 3 is 'wall' vs 'barrier'") as info:
        check_schema_match(cityscapes, other, "store vs model")
    assert "\n" not in str(info.value)
    with pytest.raises(SchemaMismatch, match="class counts differ"):
        check_schema_match(cityscapes, _tiny_schema(), "store vs model")


def test_resolutions_are_h_by_2h_with_h_4_times_a_power_of_two():
    assert parse_resolutions("64x128, 4x8,64x128") == ((4, 8), (64, 128))
    assert Resolution.parse("1024x2048") == (1024, 2048)
    for bad in ("48x96", "64x64", "2x4", "64*128", "x", "0x0"):
        with pytest.raises(ValueError):
            Resolution.parse(bad)


def test_id_table_maps_a_label_image_like_a_dictionary():
    schema = load_schema("cityscapes")
    ids = np.array([[7, 8, 26], [0, 33, 23]], dtype=np.uint8)
    expected = np.array([[OFFICIAL_TRAIN_IDS.get(int(v), 19) for v in row] for row in ids])
    assert (schema.id_table()[ids] == expected).all()
