"""Named scoring conventions, several in one pass; DRN-D-105; the oracle row; the published table.

    .venv/bin/python -m pytest tests/test_evaluate_protocols.py -q

The path a user with the Cityscapes data runs (docs/evaluation.md#reproducing-the-crn-row),
end to end on the toy store: the authors' model imported from a TensorFlow checkpoint
(tests/data/authors_tf, a 16x32 CRN), scored with a DRN-D-105 file in the published layout
(random weights) and pytorch-fid's Inception (random weights), under three conventions in
one job; then the real photos under the same protocols. References: the segmenter called
directly on the images the job wrote, the labels of the store at each convention's size,
the metrics of pipeline.evaluation.metrics (checked by hand in test_evaluation_metrics.py),
and the FID backend called directly.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from drn_fixtures import write_random_drn_d_105
from eval_fixtures import write_random_inception_weights
from mlflow.tracking import MlflowClient

from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, decode_photos, label_column, open_store, photo_column
from pipeline.errors import UserError
from pipeline.evaluation import conventions
from pipeline.evaluation.config import parse_evaluate_config
from pipeline.evaluation.conventions import Convention
from pipeline.evaluation.fid_backends import fid_backend
from pipeline.evaluation.job import run
from pipeline.evaluation.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.evaluation.plan import make_plan
from pipeline.evaluation.protocol import Protocol
from pipeline.evaluation.published import comparison_lines
from pipeline.segmenter.file import Segmenter, open_segmenter
from pipeline.synthesis.outputs import decode_png, image_path

FIXTURE = Path(__file__).resolve().parent / "data" / "authors_tf"
MODEL = "crn-authors-protocols-test"
RESOLUTION = "16x32"  # the imported model's
SPLIT = "val"  # 4 samples in conftest's toy store
EXPERIMENT = "test-evaluate-protocols"
# cityscapes-upsampled on the toy store's sizes: 16x32 images enlarged x4, compared with the
# store's 64x128 labels. (Labels enlarged by nearest neighbour: tests/test_evaluate.py.)
TOY_UPSAMPLED = Convention("toy-upsampled", "16x32 images enlarged to 64x128", segment_at="64x128")
PROTOCOLS = "native,toy-upsampled,native-ms"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def test_conventions():
    saved = dict(conventions.CONVENTIONS)
    conventions.register_convention(TOY_UPSAMPLED)
    yield
    conventions.CONVENTIONS.clear()
    conventions.CONVENTIONS.update(saved)


@pytest.fixture(scope="module")
def inputs(toy_store, ray_session, tmp_path_factory):
    """The authors' model imported and registered, a DRN-D-105 file and pytorch-fid's Inception file."""
    from jobs.import_weights import main as import_weights

    folder = tmp_path_factory.mktemp("protocols")
    assert import_weights(["--checkpoint", str(FIXTURE), "--out", str(folder / "authors.pt"), "--register",
                           "--model-name", MODEL]) == 0
    return {"store": str(toy_store), "folder": folder, "drn": write_random_drn_d_105(folder / "drn.pth"),
            "inception": write_random_inception_weights(folder / "pt_inception.pth", backend="pytorch-fid")}


def argv(inputs, *extra: str) -> list[str]:
    return ["--store", inputs["store"], "--split", SPLIT, "--segmenter", f"drn-d-105:{inputs['drn']}",
            "--protocols", PROTOCOLS, "--fid-weights", str(inputs["inception"]), "--experiment", EXPERIMENT,
            # One thread, as this process: the same summation order, so near-tied class scores of the
            # random DRN fall the same way here and in the actor.
            "--threads-per-actor", "1", *extra]


@pytest.fixture(scope="module")
def evaluated(inputs):
    from pipeline.synthesis import job as synthesis_job

    calls, printed = [], io.StringIO()
    original = synthesis_job.run
    synthesis_job.run = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        with contextlib.redirect_stdout(printed):
            outcome = run(parse_evaluate_config(argv(inputs, "--model", f"models:/{MODEL}@candidate",
                                                     "--synthesized", str(inputs["folder"] / "synthesized"))))
    finally:
        synthesis_job.run = original
    return outcome, len(calls), printed.getvalue()


@pytest.fixture(scope="module")
def oracle(inputs, evaluated):
    return run(parse_evaluate_config(argv(inputs, "--oracle", "--resolution", RESOLUTION)))


def store_arrays(store: str, resolution: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    table = open_store(store).read_table(SPLIT, resolution)
    return (table.column("sample_id").to_pylist(), decode_labels(table.column(label_column(resolution)), resolution),
            decode_photos(table.column(photo_column(resolution)), resolution))


def direct_scores(inputs, images: np.ndarray, name: str) -> dict:
    """mIoU and pixel accuracy of `images` [N, K, H, W, 3] under convention `name`, computed here."""
    chosen = conventions.convention(name)
    ids, labels, _ = store_arrays(inputs["store"], RESOLUTION)
    scored_at = chosen.scoring_size(RESOLUTION)
    if scored_at != RESOLUTION:
        labels = store_arrays(inputs["store"], scored_at)[1]
    segmenter = Segmenter(open_segmenter(f"drn-d-105:{inputs['drn']}").data, 19)
    count, k = images.shape[:2]
    predictions = segmenter.predict(images.reshape(-1, *images.shape[2:]), size=chosen.segment_at,
                                    extra_scales=chosen.extra_scales).reshape(count, k, *labels.shape[1:])
    scores = segmentation_scores(confusion_matrix(np.repeat(labels[:, None], k, axis=1), predictions, 19))
    return {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy}


def written_images(inputs) -> np.ndarray:
    ids, _, _ = store_arrays(inputs["store"], RESOLUTION)
    folder = inputs["folder"] / "synthesized"
    return np.stack([[decode_png((folder / image_path(s, k)).read_bytes()) for k in range(2)] for s in ids])


def test_one_job_scores_every_protocol_over_images_made_once(inputs, evaluated):
    outcome, synthesis_runs, _ = evaluated
    assert synthesis_runs == 1 and not outcome.reused_images
    assert list(outcome.protocols) == PROTOCOLS.split(",")
    assert len({p.protocol_id for p in outcome.protocols.values()}) == 3
    images = written_images(inputs)
    for name, scored in outcome.protocols.items():
        expected = direct_scores(inputs, images, name)
        for key in ("miou", "pixel_accuracy"):
            assert scored.metrics[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), (name, key)
        record = json.loads(open(scored.record_uri).read())
        assert record["convention"] == name and record["protocol_id"] == scored.protocol_id
        assert record["protocol"]["segmenter"] == "drn-d-105"
    protocols = {name: json.loads(open(p.record_uri).read())["protocol"] for name, p in outcome.protocols.items()}
    assert protocols["toy-upsampled"]["scored_at"] == "64x128" and protocols["toy-upsampled"]["labels"] == "store"
    assert protocols["native-ms"]["scales"] == [1.0, 0.5, 0.75, 1.25, 1.5, 1.75]
    # The conventions read the same images differently (or the test would not tell them apart).
    assert len({round(p.metrics["miou"], 12) for p in outcome.protocols.values()}) > 1


def test_fid_is_pytorch_fids_and_shared_by_every_protocol(inputs, evaluated):
    outcome, _, _ = evaluated
    _, _, photos = store_arrays(inputs["store"], RESOLUTION)
    images = written_images(inputs)
    backend = fid_backend("pytorch-fid")
    network = backend.load(inputs["inception"])
    expected = backend.distance(backend.features(network, photos, 4),
                                backend.features(network, images.reshape(-1, *images.shape[2:]), 4))
    assert {p.metrics["fid"] for p in outcome.protocols.values()} == {outcome.metrics["fid"]}
    assert outcome.metrics["fid"] == pytest.approx(expected, rel=1e-6)


def test_the_run_and_the_version_hold_every_protocol(inputs, evaluated):
    outcome, _, _ = evaluated
    client = MlflowClient()
    data = client.get_run(outcome.run_id).data
    version = outcome.model_uri.rsplit("/", 1)[1]
    tags = client.get_model_version(MODEL, version).tags
    for name, scored in outcome.protocols.items():
        assert data.metrics[f"{name}/miou"] == pytest.approx(scored.metrics["miou"])
        assert data.tags[f"crn.protocol_id.{name}"] == scored.protocol_id
        assert json.loads(tags[f"crn.eval.{scored.protocol_id}"])["miou"] == pytest.approx(scored.metrics["miou"])
    assert data.metrics["fid"] == pytest.approx(outcome.metrics["fid"]) and "native/fid" not in data.metrics
    assert tags["crn.eval.protocol"] == outcome.protocols["native"].protocol_id  # the first: the gate's


def test_the_oracle_scores_the_real_photos_under_the_same_protocol_ids(inputs, evaluated, oracle):
    outcome, _, _ = evaluated
    for name, scored in oracle.protocols.items():
        model_side = outcome.protocols[name]
        assert scored.protocol_id == model_side.protocol_id
        # The oracle's images are the photos: its scores are the model evaluation's reference.
        assert scored.metrics["miou"] == pytest.approx(model_side.metrics["real_miou"], rel=1e-12)
        assert scored.metrics["pixel_accuracy"] == pytest.approx(model_side.metrics["real_pixel_accuracy"], rel=1e-12)
    assert oracle.model_uri == "oracle" and oracle.metrics["fid"] is None and "0 by definition" in oracle.notes["fid"]
    assert oracle.metrics["diversity"] == 0.0  # one image per map


def test_the_printout_says_why_the_toy_numbers_are_not_the_published_ones(evaluated):
    outcome, _, printed = evaluated
    assert f"native (protocol {outcome.protocol_id}, scored at 16x32): miou " in printed
    assert "not comparable with the published OASIS rows: images are 16x32, not 256x512; 4 images of split 'val', " \
           "not the 500 of val" in printed


def cityscapes_protocol(**changes) -> Protocol:
    fields = dict(convention="cityscapes-upsampled", segmenter="drn-d-105", segmenter_sha256="0" * 64,
                  schema_fingerprint=load_schema("cityscapes").fingerprint(), resolution="256x512",
                  scored_at="1024x2048", labels="store", scales=(1.0,), split="val", sample_ids_sha256="1" * 64,
                  num_samples=500, fid_backend="pytorch-fid", fid_weights_sha256="2" * 64)
    return Protocol(**{**fields, **changes})


def test_published_rows_are_printed_beside_a_matching_protocol():
    values = {"miou": 0.5, "pixel_accuracy": 0.75, "fid": 100.0}
    lines = comparison_lines(cityscapes_protocol(), values, "this model")
    assert [line.split()[0] for line in lines] == ["method", "CRN", "SPADE", "this"]
    assert "52.4   77.1   104.7" in lines[1] and "50.0   75.0   100.0" in lines[3]
    native = comparison_lines(cityscapes_protocol(convention="native", scored_at="256x512"), values, "real photos")
    assert [line.split()[0] for line in native] == ["method", "OASIS", "real"] and "69.3      -    47.7" in native[1]
    other_fid = comparison_lines(cityscapes_protocol(fid_backend="torchmetrics"), values, "this model")
    assert other_fid[-1].endswith("(FID by torchmetrics, theirs by pytorch-fid)")
    (mismatch,) = comparison_lines(cityscapes_protocol(segmenter="torchscript", num_samples=20), values, "this model")
    assert mismatch.strip() == ("not comparable with the published CRN, SPADE rows: the segmenter is not DRN-D-105 "
                                "(torchscript); 20 images of split 'val', not the 500 of val")
    (none,) = comparison_lines(cityscapes_protocol(convention="native-ms"), values, "this model")
    assert none.strip() == "no published Cityscapes row uses convention native-ms"


class TwoClassScores(torch.nn.Module):
    """Scores that depend on the input's size and content, to check how a convention shows images."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, :1]
        pooled = F.avg_pool2d(red, 3, stride=1, padding=1)
        return torch.cat([red - pooled, pooled - 0.5], dim=1) * images.shape[-1]


def test_a_convention_enlarges_the_images_and_sums_log_probabilities_over_scales(tmp_path):
    from pipeline.segmenter.file import save_torchscript

    module = TwoClassScores()
    segmenter = Segmenter(save_torchscript(module, ["a", "b"], tmp_path / "two.pt").read_bytes(), 2)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 3), dtype=np.uint8)
    shown = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0

    enlarged = F.interpolate(shown, size=(32, 64), mode="bilinear", align_corners=False)
    expected = module(enlarged).argmax(dim=1).numpy()
    np.testing.assert_array_equal(segmenter.predict(images, size="32x64"), expected)

    total = F.log_softmax(module(shown), dim=1)
    for scale in (0.5, 1.5):
        scaled = F.interpolate(shown, size=(int(8 * scale), int(16 * scale)), mode="bicubic", align_corners=False,
                               antialias=scale < 1).clamp(0, 1)
        total += F.log_softmax(F.interpolate(module(scaled), size=(8, 16), mode="bilinear", align_corners=False,
                                             antialias=scale > 1), dim=1)
    multi = segmenter.predict(images, extra_scales=(0.5, 1.5))
    np.testing.assert_array_equal(multi, total.argmax(dim=1).numpy())
    assert (multi != segmenter.predict(images)).any()  # the scales change the reading


def test_mistakes_are_one_line_errors(inputs, tmp_path):
    conventions.register_convention(Convention("square", "a 1:1 size", segment_at="64x64"))
    cases = [
        (["--model", f"models:/{MODEL}@candidate", "--protocols", "square"],
         "convention 'square' shows the segmenter 64x64 images; 16x32 images have another aspect ratio"),
        (["--model", f"models:/{MODEL}@candidate", "--segmenter", f"drn-d-105:{tmp_path / 'none.pth'}"],
         "no file .*none.pth; it is the published DRN-D-105 Cityscapes model"),
        (["--oracle", "--resolution", "20x40"], "has no resolution 20x40"),
    ]
    for extra, message in cases:
        with pytest.raises(UserError, match=message) as info:
            make_plan(parse_evaluate_config(argv(inputs, *extra)))
        assert "\n" not in str(info.value)
    for extra, message in [(["--protocols", "native,native"], "a protocol named twice"),
                           (["--oracle", "--promote"], "--promote needs a model"),
                           (["--model", "m", "--resolution", "16x32"], "--resolution goes with --oracle")]:
        with pytest.raises(UserError, match=message):
            parse_evaluate_config(argv(inputs, *extra))
