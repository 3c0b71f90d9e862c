"""The utility job: train on synthesized, test on real.

    .venv/bin/python -m pytest tests/test_utility.py -q

References: each segmenter's mIoU is recomputed here from its registered file on the store's
real val photos (the segmenter's own evaluation, by hand), and the utility and the
augmentation gain from those; the synthesized training rows are compared with the PNGs of
the synthesis folder and the store's label maps. Real local Ray (Ray Train, Ray Data), a
real MLflow store and registry, a crn-tiny checkpoint with seeded weights.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from jobs.preprocess import main as preprocess
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.errors import UserError
from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.registry.models import log_and_register
from pipeline.runtime import setup_mlflow
from pipeline.segmenter.config import SegmenterTrainConfig, resolve as resolve_segmenter
from pipeline.segmenter.data import check_synthesized, training_data
from pipeline.segmenter.file import Segmenter, open_segmenter
from pipeline.segmenter.loop import rows_in_key_order
from pipeline.synthesis.outputs import decode_png, image_path
from pipeline.utility.config import parse_utility_config
from pipeline.utility.job import run
from synth_models import TEST_NUM_OUTPUTS, make_test_checkpoint

RESOLUTION = "32x64"  # crn-tiny's top resolution
MODEL_NAME = "crn-utility-test"
EXPERIMENT = "test-utility"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_uri(toy_store, ray_session, tmp_path_factory):
    checkpoint = make_test_checkpoint(tmp_path_factory.mktemp("utility") / "model.pt", seed=3)
    setup_mlflow(EXPERIMENT)
    with mlflow.start_run():
        version = log_and_register(checkpoint, MODEL_NAME)
    return f"models:/{MODEL_NAME}/{version}"


def utility_argv(model_uri, toy_store, folder, *extra):
    return ["--model", model_uri, "--store", str(toy_store), "--synthesized", str(folder / "synthesized"),
            "--steps", "4", "--batch-size", "4", "--checkpoint-every", "4", "--log-every", "2",
            "--storage-path", str(folder / "runs"), "--experiment", EXPERIMENT, *extra]


@pytest.fixture(scope="module")
def outcome(model_uri, toy_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("utility-run")
    return folder, run(parse_utility_config(utility_argv(model_uri, toy_store, folder)))


def own_miou(segmenter_uri: str, store_uri: str) -> float:
    """A segmenter's mIoU on the store's real val photos, computed here from its registered file."""
    table = open_store(store_uri).read_table("val", RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    photos = decode_photos(table.column(photo_column(RESOLUTION)), RESOLUTION)
    predictions = Segmenter(open_segmenter(segmenter_uri).data, 19).predict(photos)
    return segmentation_scores(confusion_matrix(labels, predictions, 19)).miou


def test_utility_equals_the_segmenters_own_evaluations(outcome, toy_store, model_uri):
    folder, result = outcome
    assert set(result.segmenters) == {"real", "synthesized", "both"}
    miou = {train_on: own_miou(segmenter.uri, str(toy_store)) for train_on, segmenter in result.segmenters.items()}
    for train_on, segmenter in result.segmenters.items():
        assert segmenter.val_miou == pytest.approx(miou[train_on], abs=1e-12), train_on
    assert result.utility == pytest.approx(miou["synthesized"] / miou["real"], abs=1e-12)
    assert result.augmentation_gain == pytest.approx(miou["both"] - miou["real"], abs=1e-12)

    client = MlflowClient()
    run_data = client.get_run(result.run_id).data
    assert run_data.metrics["utility"] == pytest.approx(result.utility)
    assert run_data.metrics["augmentation_gain"] == pytest.approx(result.augmentation_gain)
    assert run_data.metrics["miou.both"] == pytest.approx(miou["both"])
    for train_on, segmenter in result.segmenters.items():  # the segmenters' runs and versions, linked
        assert run_data.tags[f"segmenter.{train_on}.run_id"] == segmenter.run_id
        assert run_data.tags[f"segmenter.{train_on}.model"] == segmenter.uri
        assert client.get_run(segmenter.run_id).data.metrics["val_miou"] == pytest.approx(miou[train_on])
    assert run_data.params["protocol_id"] == result.protocol_id
    assert run_data.params["model"] == model_uri
    assert (int(run_data.params["real_train_photos"]), int(run_data.params["synthesized_images"]),
            int(run_data.params["val_photos"])) == (8, 8 * TEST_NUM_OUTPUTS, 4)
    name, version = model_uri.removeprefix("models:/").split("/")
    tags = client.get_model_version(name, version).tags
    assert tags["utility.utility"] == f"{result.utility:.6g}" and tags["utility.run_id"] == result.run_id
    assert tags["utility.protocol"] == result.protocol_id


def test_synthesized_rows_pair_every_variant_with_its_label_map(outcome, toy_store):
    folder, result = outcome
    store = open_store(toy_store)
    images = check_synthesized(result.synthesized, str(toy_store), RESOLUTION, store.schema.fingerprint())
    assert (images.num_outputs, images.num_label_maps) == (TEST_NUM_OUTPUTS, 8)
    rows = training_data("synthesized", store, RESOLUTION, images).take_all()
    assert len(rows) == 8 * TEST_NUM_OUTPUTS
    table = store.read_table("train", RESOLUTION)
    ids = table.column("sample_id").to_pylist()
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    expected = sorted((labels[i].tobytes(), decode_png((folder / "synthesized" / image_path(ids[i], k)).read_bytes()).tobytes())
                      for i in range(len(ids)) for k in range(TEST_NUM_OUTPUTS))
    assert sorted((np.asarray(r["label"]).tobytes(), np.asarray(r["photo"]).tobytes()) for r in rows) == expected
    assert sorted(r["key"] for r in rows) == sorted(f"{i}#{k}" for i in ids for k in range(TEST_NUM_OUTPUTS))
    both = training_data("both", store, RESOLUTION, images)
    assert sorted(r["key"] for r in both.take_all()) == sorted(ids + [r["key"] for r in rows])


def test_the_segmenter_reads_its_rows_in_key_order_whatever_order_the_blocks_come_in():
    rng = np.random.default_rng(0)
    keys = np.asarray([f"s{i}#{k}" for i in range(6) for k in range(2)], dtype=object)
    labels = rng.integers(0, 19, (12, 4, 8), dtype=np.uint8)
    photos = rng.integers(0, 255, (12, 4, 8, 3), dtype=np.uint8)
    blocks = [{"key": keys[i:i + 5], "label": labels[i:i + 5], "photo": photos[i:i + 5]} for i in (0, 5, 10)]
    in_order = rows_in_key_order(blocks)
    shuffled = rows_in_key_order([blocks[2], blocks[0], blocks[1]])
    for name in ("key", "label", "photo"):
        np.testing.assert_array_equal(in_order[name], shuffled[name])
    assert list(in_order["key"]) == sorted(keys)


def test_a_label_only_store_is_the_synthesized_side(outcome, model_uri, toy_source, toy_store, ray_session):
    """Label maps without photos (the GTA5 -> Cityscapes use) are synthesized and the segmenter
    trained on them is tested on the other store's real photos, against the same reference."""
    folder, first = outcome
    source = folder / "labels-only" / "train" / "labels"
    source.mkdir(parents=True)
    for path in sorted((toy_source / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[:6]:
        (source / path.name.replace("_gtFine_labelIds", "")).write_bytes(path.read_bytes())
    labels = folder / "labels-store"
    assert preprocess(["--source", str(folder / "labels-only"), "--format", "labels-only", "--out", str(labels),
                       "--resolutions", RESOLUTION]) == 0
    assert not open_store(labels).has_photos
    result = run(parse_utility_config(utility_argv(model_uri, toy_store, folder, "--labels", str(labels),
                                                   "--synthesized", str(folder / "from-labels"),
                                                   "--skip-augmentation")))
    assert result.segmenters["real"].uri == first.segmenters["real"].uri  # the same reference, reused
    assert result.augmentation_gain is None and set(result.segmenters) == {"real", "synthesized"}
    miou = own_miou(result.segmenters["synthesized"].uri, str(toy_store))
    assert result.utility == pytest.approx(miou / own_miou(first.segmenters["real"].uri, str(toy_store)), abs=1e-12)
    params = MlflowClient().get_run(result.run_id).data.params
    assert int(params["synthesized_images"]) == 6 * TEST_NUM_OUTPUTS and params["labels"] == str(labels)
    assert result.protocol_id != first.protocol_id  # other label maps: another protocol


def test_synthesized_folders_that_do_not_fit_are_one_line_errors(outcome, toy_store, tmp_path):
    folder, result = outcome
    base = dict(store=str(toy_store), resolution=RESOLUTION, steps=4, batch_size=4, storage_path=str(tmp_path))
    with pytest.raises(UserError, match="needs --synthesized"):
        resolve_segmenter(SegmenterTrainConfig(**base, train_on="synthesized"))
    with pytest.raises(UserError, match=r"holds 32x64 images; the segmenter trains at 16x32"):
        resolve_segmenter(SegmenterTrainConfig(**{**base, "resolution": "16x32"}, train_on="both",
                                               synthesized=result.synthesized))
    partial = tmp_path / "partial"
    (partial / "images").mkdir(parents=True)
    (partial / "job.json").write_bytes((folder / "synthesized" / "job.json").read_bytes())
    first_id = open_store(toy_store).sample_ids("train")[0]
    for k in range(TEST_NUM_OUTPUTS):
        target = partial / image_path(first_id, k)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((folder / "synthesized" / image_path(first_id, k)).read_bytes())
    with pytest.raises(UserError, match=r"lacks images of 7 of the 8 train label maps"):
        resolve_segmenter(SegmenterTrainConfig(**base, train_on="synthesized", synthesized=str(partial)))
