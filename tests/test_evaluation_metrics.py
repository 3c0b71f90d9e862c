"""The evaluation's numbers against hand-computed values and an independent formula; no Ray.

    .venv/bin/python -m pytest tests/test_evaluation_metrics.py -q

References: confusion counts, IoUs and diversities worked out by hand in the comments;
FID against the Fréchet distance written out with numpy and scipy.linalg.sqrtm; the
torchmetrics Inception path against torchmetrics' own FrechetInceptionDistance fed the same
images, with random Inception weights written to a file by the test (nothing downloaded).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from eval_fixtures import PaletteSegmenter, write_palette_segmenter, write_random_inception_weights

from pipeline.data.schema import load_schema
from pipeline.errors import UserError
from pipeline.evaluation.metrics.diversity import class_diversity, diversity_score
from pipeline.evaluation.metrics.fid import InceptionFeatures, fid_from_features, find_inception_weights
from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.evaluation.protocol import Protocol, sample_ids_digest
from pipeline.segmenter.file import Segmenter, check_class_order, open_segmenter
from pipeline.visualize import colorize, schema_palette

VOID3 = 3  # with 3 classes, index 3 is void

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- segmentation scores


def test_scores_equal_hand_computed_values_with_void_ignored():
    labels = np.array([[0, 0, 1, 3],
                       [1, 2, 2, 3]], dtype=np.uint8)
    preds = np.array([[0, 1, 1, 0],
                      [1, 2, 0, 2]], dtype=np.uint8)
    # Void (3) pixels are not counted, whatever is predicted there. Of the 6 others:
    # class 0: TP 1 (0,0), FP 1 (1,2), FN 1 (0,1) -> 1/3
    # class 1: TP 2 (0,2),(1,0), FP 1 (0,1), FN 0 -> 2/3
    # class 2: TP 1 (1,1), FP 0, FN 1 (1,2)      -> 1/2
    confusion = confusion_matrix(labels, preds, num_scored_classes=3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = segmentation_scores(confusion)
    assert scores.per_class_iou == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert scores.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores.pixel_accuracy == pytest.approx(4 / 6)
    assert scores.class_pixels == [2, 2, 2]


def test_absent_classes_are_left_out_and_false_positives_count():
    labels = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    # Class 2: in no label and no prediction -> no IoU, not in the mean.
    # Class 3: predicted once but in no label -> IoU 0, in the mean.
    preds = np.array([[0, 0, 1, 3]], dtype=np.uint8)
    scores = segmentation_scores(confusion_matrix(labels, preds, num_scored_classes=4))
    assert scores.per_class_iou == [1.0, 0.5, None, 0.0]
    assert scores.miou == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert scores.pixel_accuracy == pytest.approx(3 / 4)


def test_confusion_adds_up_over_samples():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 6, 8), dtype=np.uint8)
    preds = rng.integers(0, 3, size=(5, 6, 8), dtype=np.uint8)
    summed = sum(confusion_matrix(labels[i], preds[i], 3) for i in range(5))
    np.testing.assert_array_equal(summed, confusion_matrix(labels, preds, 3))


def test_only_void_or_bad_predictions_are_errors():
    with pytest.raises(ValueError, match="void"):
        segmentation_scores(confusion_matrix(np.full((2, 2), VOID3), np.zeros((2, 2)), 3))
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 3), 3)


@pytest.fixture(scope="module")
def cityscapes():
    return load_schema("cityscapes")


@pytest.fixture(scope="module")
def palette_segmenter(cityscapes, tmp_path_factory):
    """A TorchScript segmenter for the Cityscapes classes (void left out), with classes.json inside."""
    return write_palette_segmenter(cityscapes, tmp_path_factory.mktemp("segmenter") / "palette.pt")


def test_a_segmenter_that_returns_the_label_scores_one(cityscapes, palette_segmenter):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, cityscapes.num_classes, size=(3, 8, 16), dtype=np.uint8)  # void (19) included
    images = np.stack([colorize(label, schema_palette(cityscapes)) for label in labels])
    segmenter_file = open_segmenter(str(palette_segmenter))
    predictions = Segmenter(segmenter_file.data, cityscapes.void_index).predict(images, batch_size=2)
    scores = segmentation_scores(confusion_matrix(labels, predictions, cityscapes.void_index))
    assert scores.miou == 1.0 and scores.pixel_accuracy == 1.0
    assert all(iou in (1.0, None) for iou in scores.per_class_iou)


# ---------------------------------------------------------------- the segmenter file and its class order


def test_class_order_is_checked_against_the_schema(cityscapes, palette_segmenter, tmp_path):
    segmenter_file = open_segmenter(str(palette_segmenter))
    check_class_order(segmenter_file, cityscapes)  # classes.json inside, same order: accepted
    swapped = cityscapes.class_names[: cityscapes.void_index]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(swapped))
    with pytest.raises(UserError, match="class 0 is 'sidewalk', schema 'cityscapes' has 'road'"):
        check_class_order(open_segmenter(str(palette_segmenter), str(classes)), cityscapes)
    classes.write_text(json.dumps(swapped[:5]))
    with pytest.raises(UserError, match="predicts 5 classes, schema 'cityscapes' has 19 besides void"):
        check_class_order(open_segmenter(str(palette_segmenter), str(classes)), cityscapes)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # this test writes a bare TorchScript file itself
def test_a_torchscript_file_without_its_class_order_needs_one(tmp_path, cityscapes):
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(PaletteSegmenter(schema_palette(cityscapes)[:19])), str(bare))
    with pytest.raises(UserError, match="has no classes.json inside; give one with --segmenter-classes"):
        open_segmenter(str(bare))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(cityscapes.class_names[:19]))
    check_class_order(open_segmenter(str(bare), str(classes)), cityscapes)
    not_torchscript = tmp_path / "x.pt"
    not_torchscript.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a TorchScript file"):
        open_segmenter(str(not_torchscript))


# ---------------------------------------------------------------- diversity


def test_diversity_equals_hand_computed_values():
    label = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    a = np.zeros((1, 4, 3), dtype=np.uint8)
    b = np.zeros((1, 4, 3), dtype=np.uint8)
    b[:, :2] = 255  # class 0: |255 - 0| / 255 = 1 in every channel
    b[:, 2:] = 51  # class 1: 51 / 255 = 0.2
    value, present = class_diversity(label, np.stack([a, b]), num_scored_classes=3)
    assert value.tolist() == pytest.approx([1.0, 0.2, 0.0]) and present.tolist() == [True, True, False]
    # Three variants: pairs (a,b) 1.0, (a,a) 0, (b,a) 1.0 inside class 0 -> 2/3; class 1: 0.4/3.
    value3, _ = class_diversity(label, np.stack([a, b, a]), num_scored_classes=3)
    assert value3.tolist() == pytest.approx([2 / 3, 0.4 / 3, 0.0])
    # Averaged over samples where the class occurs, then over classes.
    mean, per_class = diversity_score(value + value3, present.astype(int) * 2)
    assert per_class == pytest.approx([(1 + 2 / 3) / 2, (0.2 + 0.4 / 3) / 2, None])
    assert mean == pytest.approx(((1 + 2 / 3) / 2 + (0.2 + 0.4 / 3) / 2) / 2)


def test_one_variant_or_identical_variants_have_no_diversity():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 4, size=(6, 8), dtype=np.uint8)
    image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    for variants in (image[None], np.stack([image, image, image])):
        value, present = class_diversity(label, variants, num_scored_classes=3)  # 3 = void here: left out
        assert value.tolist() == [0.0, 0.0, 0.0] and present.any()


# ---------------------------------------------------------------- FID


def frechet_distance_by_hand(real: np.ndarray, fake: np.ndarray) -> float:
    """d^2 = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 sqrtm(S_r S_f)), unbiased covariances."""
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * root))


def test_fid_equals_the_formula_with_scipy_sqrtm():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(60, 12))
    fake = rng.normal(0.4, 1.0, size=(50, 12)) @ rng.normal(size=(12, 12)) / 3
    assert fid_from_features(real, fake) == pytest.approx(frechet_distance_by_hand(real, fake), rel=1e-9)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(real[:1], fake)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth")


def test_torchmetrics_fid_runs_end_to_end_from_a_weights_file(random_inception_weights):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(4)
    real = rng.integers(0, 256, size=(2, 32, 64, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-60, 60, size=real.shape), 0, 255).astype(np.uint8)
    # torchmetrics alone, images in.
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(random_inception_weights))
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    expected = float(metric.compute())
    # The evaluation's split: features where the images are, the distance on the driver.
    features = InceptionFeatures(random_inception_weights, "torchmetrics")
    got = fid_from_features(features(real, batch_size=1), features(fake, batch_size=2), backend="torchmetrics")
    assert np.isfinite(expected) and expected > 0
    assert got == pytest.approx(expected, rel=1e-4)


def test_without_inception_weights_fid_is_not_computed_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub folder: no cached weights
    path, reason = find_inception_weights("auto")
    assert path is None
    assert reason.startswith("FID not computed: no Inception weights at") and str(tmp_path) in reason
    assert "\n" not in reason
    assert find_inception_weights("none") == (None, "FID not computed: --fid-weights none")
    with pytest.raises(ValueError, match="no such file"):
        find_inception_weights(str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- protocol


def test_protocol_id_changes_with_every_part_and_not_with_sample_order():
    base = dict(convention="native", segmenter="torchscript", segmenter_sha256="a" * 64, schema_fingerprint="f",
                resolution="64x128", scored_at="64x128", labels="store", scales=(1.0,), split="val",
                sample_ids_sha256=sample_ids_digest(["x", "y"]), num_samples=2, fid_backend=None,
                fid_weights_sha256=None)
    protocol = Protocol(**base)
    assert Protocol(**{**base, "sample_ids_sha256": sample_ids_digest(["y", "x"])}).id == protocol.id
    changed = {"convention": "native-ms", "segmenter": "drn-d-105", "segmenter_sha256": "b" * 64,
               "schema_fingerprint": "g", "resolution": "32x64", "scored_at": "256x512", "labels": "nearest",
               "scales": (1.0, 0.5), "split": "test", "sample_ids_sha256": sample_ids_digest(["x", "z"]),
               "num_samples": 3, "fid_backend": "pytorch-fid", "fid_weights_sha256": "c" * 64}
    assert set(changed) == set(base)  # every field changes the id
    for key, value in changed.items():
        assert Protocol(**{**base, key: value}).id != protocol.id, key
    assert len(protocol.id) == 16
