"""Batch synthesis from a store: pixels, manifest, resume, S3 output, a registry model, MLflow.

    .venv/bin/python -m pytest tests/test_synthesize.py -q

References: the model called directly on the store's label maps (tests/synth_models.py),
and an uninterrupted run compared byte for byte with an interrupted one finished by a
re-run. Real local Ray, real MLflow (SQLite), S3 served by moto on 127.0.0.1.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from synth_models import TEST_NUM_OUTPUTS, make_test_checkpoint, reference_images
from worker_probes import recording_actor

from jobs.synthesize import main
from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, label_column, open_store
from pipeline.errors import UserError
from pipeline.fs import filesystem_for
from pipeline.registry.models import log_and_register, open_model
from pipeline.runtime import CPU_WORKER_MALLOC_ENV, entrypoint, setup_mlflow
from pipeline.synthesis import job as synthesis_job
from pipeline.synthesis.actor import SynthesisActor
from pipeline.synthesis.config import parse_synthesize_config as config_from_argv
from pipeline.synthesis.job import run
from pipeline.synthesis.outputs import encode_png, once_per_batch, write_images
from pipeline.visualize import colorize, schema_palette

RESOLUTION = "32x64"  # crn-tiny's top resolution
BATCH_SIZE = 4
THREADS = os.cpu_count()  # the job's default: one CPU actor with every core
SPLIT = "train"
NUM_SAMPLES = 8


@pytest.fixture(scope="module")
def store(toy_store) -> str:
    """conftest's toy store: split `train` has NUM_SAMPLES samples at 32x64, photos included."""
    return str(toy_store)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("synth-model") / "model.pt", seed=1)


def synth(*args: str):
    return run(config_from_argv(["--split", SPLIT, "--batch-size", str(BATCH_SIZE), *args]))


def local_files(root: Path) -> dict[str, bytes]:
    """Every file under images/ (temp files included), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "images").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_run(store, checkpoint, tmp_path_factory):
    """One uninterrupted run: the reference for every other test here."""
    output = tmp_path_factory.mktemp("synth-reference") / "out"
    outcome = synth("--model", str(checkpoint), "--store", store, "--output", str(output), "--seed", "7")
    return output, outcome


def test_images_equal_a_direct_model_call(store, checkpoint, reference_run):
    output, outcome = reference_run
    table = open_store(store).read_table(SPLIT, RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    expected = reference_images(checkpoint, labels, BATCH_SIZE, THREADS)  # [N, K, H, W, 3], in store order
    sample_ids = table.column("sample_id").to_pylist()
    assert len(sample_ids) == NUM_SAMPLES
    for n, sample_id in enumerate(sample_ids):
        for k in range(TEST_NUM_OUTPUTS):
            image = np.asarray(Image.open(output / "images" / sample_id / f"{k}.png"))
            np.testing.assert_array_equal(image, expected[n, k], err_msg=f"{sample_id} variant {k}")
    assert outcome.num_written == outcome.num_images == NUM_SAMPLES * TEST_NUM_OUTPUTS
    assert outcome.num_skipped == 0 and outcome.rejects == []
    # Clamping is exercised: this untrained model's raw outputs leave [0, 255] somewhere.
    assert expected.min() == 0 or expected.max() == 255


def test_manifest_has_one_row_per_image_with_provenance(store, checkpoint, reference_run):
    output, _ = reference_run
    rows = pq.read_table(output / "manifest.parquet").to_pylist()
    schema = load_schema("cityscapes")
    sample_ids = sorted(open_store(store).read_table(SPLIT, RESOLUTION).column("sample_id").to_pylist())
    assert [(r["sample_id"], r["variant"]) for r in rows] == [(s, k) for s in sample_ids for k in range(TEST_NUM_OUTPUTS)]
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    for row in rows:
        assert row["image_path"] == f"images/{row['sample_id']}/{row['variant']}.png"
        assert (output / row["image_path"]).is_file()
        assert row["model_uri"] == str(checkpoint) and row["model_version"] is None
        assert row["model_sha256"] == digest
        assert row["seed"] == 7 and row["resolution"] == RESOLUTION and row["precision"] == "fp32"
        assert row["schema"] == "cityscapes" and row["schema_fingerprint"] == schema.fingerprint()
    assert json.loads((output / "rejects.json").read_text()) == []


def test_png_bytes_are_deterministic(reference_run):
    output, _ = reference_run
    path = output / "images" / sorted(os.listdir(output / "images"))[0] / "0.png"
    assert encode_png(np.asarray(Image.open(path))) == path.read_bytes()


def test_mlflow_run_records_config_metrics_and_artifacts(store, checkpoint, reference_run, tmp_path):
    output, outcome = reference_run
    run_data = MlflowClient().get_run(outcome.run_id)
    assert run_data.data.params["store"] == store and run_data.data.params["batch_size"] == str(BATCH_SIZE)
    assert run_data.data.params["resolution"] == RESOLUTION
    assert run_data.data.tags["crn.model_uri"] == str(checkpoint)
    metrics = run_data.data.metrics
    assert metrics["num_images"] == NUM_SAMPLES * TEST_NUM_OUTPUTS and metrics["num_rejects"] == 0
    assert metrics["num_skipped"] == 0 and metrics["images_per_s"] > 0
    # Two batches: the start-up (the first one back) and the pace after it are recorded apart.
    assert 0 < metrics["first_batch_s"] < metrics["elapsed_s"] and metrics["images_per_s_after_first_batch"] > 0
    # The actor's seconds per batch, each batch counted once: one actor runs the two batches one
    # after the other, so their forward passes and writes (2 x the median of 2) fit in the run.
    assert metrics["num_batches"] == NUM_SAMPLES // BATCH_SIZE
    forward, write = metrics["forward_s_per_batch_median"], metrics["write_s_per_batch_median"]
    assert forward > 0 and write > 0 and 2 * (forward + write) < metrics["elapsed_s"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(outcome.run_id)}
    assert {"gallery.html", "manifest.parquet", "rejects.json"} <= artifacts
    local = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="manifest.parquet", dst_path=str(tmp_path)))
    assert local.read_bytes() == (output / "manifest.parquet").read_bytes()

    # The gallery: one row per sample (8 by default), label | 2 variants | photo, all embedded.
    page = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="gallery.html", dst_path=str(tmp_path))).read_text()
    assert (output / "gallery.html").read_text() == page  # also beside the images, to open directly
    assert page.count("<tr>") == 1 + 8 and page.count("<img") == 8 * (1 + TEST_NUM_OUTPUTS + 1)
    # Its first label cell is the schema-coloured label map of a sample (shown at full size).
    first_id = re.search(r"<td class=id>([^<]+)</td>", page)[1]
    first_image = re.search(r'src="data:image/png;base64,([^"]+)"', page)[1]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(first_image))))
    table = open_store(store).read_table(SPLIT, RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)
    label = labels[table.column("sample_id").to_pylist().index(first_id)]
    np.testing.assert_array_equal(shown, colorize(label, schema_palette(load_schema("cityscapes"))))


def test_images_written_by_several_threads_are_the_same_files_and_rows(tmp_path):
    """A CPU actor encodes and writes with its torch threads' count (pipeline.synthesis.actor)."""
    batch = {
        "sample_id": np.asarray(["a", "b/c", "d"], dtype=object),
        "source": np.asarray(["a", "b/c", "d.png"], dtype=object),
        "reject": np.asarray(["", "", "too small"], dtype=object),
        "images": np.random.default_rng(0).integers(0, 256, (3, 2, 8, 16, 3), dtype=np.uint8),
        "forward_s": once_per_batch(0.25, 3),  # the actor's forward pass over this batch
    }
    rows = {t: write_images(batch, pafs.LocalFileSystem(), str(tmp_path / str(t)), {"a": [1]}, threads=t) for t in (1, 3)}
    assert local_files(tmp_path / "1") == local_files(tmp_path / "3")
    assert sorted(local_files(tmp_path / "1")) == ["images/a/0.png", "images/b/c/0.png", "images/b/c/1.png"]
    for name in ("sample_id", "variant", "source", "reject"):
        np.testing.assert_array_equal(rows[1][name], rows[3][name])
    assert list(zip(rows[1]["sample_id"], rows[1]["variant"])) == [("a", 0), ("b/c", 0), ("b/c", 1), ("d", -1)]
    # The batch's timings ride on its first row only: the forward pass passed on, the writes' own.
    np.testing.assert_array_equal(rows[1]["forward_s"], [0.25, np.nan, np.nan, np.nan])
    assert rows[1]["write_s"][0] > 0 and np.isnan(rows[1]["write_s"][1:]).all()


def test_actor_handing_images_to_write_tasks_passes_its_forward_time_on(store, checkpoint, tmp_path):
    """The GPU path's composition, run on the CPU: the actor hands images back (no `output`)
    and a write task beside it passes the batch's forward time on with its own."""
    table = open_store(store).read_table(SPLIT, RESOLUTION)
    labels = decode_labels(table.column(label_column(RESOLUTION)), RESOLUTION)[:3]
    # A CPU actor sets its process's torch thread count; this process is pytest's: keep its own.
    actor = SynthesisActor(open_model(str(checkpoint)), "cpu", False, BATCH_SIZE, torch.get_num_threads())
    batch = {"sample_id": np.asarray(["a", "b", "c"], dtype=object), "source": np.asarray(["a", "b", "c"], dtype=object),
             "reject": np.asarray(["", "", ""], dtype=object), "label": labels}
    began = time.perf_counter()
    result = actor(batch)
    elapsed = time.perf_counter() - began
    assert result["images"].shape == (3, TEST_NUM_OUTPUTS, *labels.shape[1:], 3)
    assert 0 < result["forward_s"][0] <= elapsed and np.isnan(result["forward_s"][1:]).all()
    rows = write_images(result, pafs.LocalFileSystem(), str(tmp_path), {})
    assert len(rows["variant"]) == 3 * TEST_NUM_OUTPUTS
    assert rows["forward_s"][0] == result["forward_s"][0] and np.isnan(rows["forward_s"][1:]).all()


def test_cpu_actor_starts_with_the_allocator_settings(store, checkpoint, monkeypatch, tmp_path):
    """The actor's forward passes reuse their memory (pipeline.runtime.CPU_WORKER_MALLOC_ENV):
    its process has the settings from its start."""
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setattr(synthesis_job, "SynthesisActor", recording_actor(SynthesisActor, probes, CPU_WORKER_MALLOC_ENV))
    outcome = synth("--model", str(checkpoint), "--store", store, "--output", str(tmp_path / "out"), "--limit", "2")
    assert outcome.num_written == 2 * TEST_NUM_OUTPUTS
    assert [json.loads(p.read_text()) for p in probes.glob("actor-*.json")] == [CPU_WORKER_MALLOC_ENV]


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(store, checkpoint, reference_run, tmp_path):
    reference_output, _ = reference_run
    output = tmp_path / "out"
    common = ["--model", str(checkpoint), "--store", store, "--output", str(output), "--seed", "7"]
    # A run stopped after 4 samples ...
    first = synth(*common, "--limit", "4")
    assert first.num_written == 4 * TEST_NUM_OUTPUTS
    # ... and left as a kill between two image writes would leave it: one sample with only
    # variant 0, a half-written temp file, and no manifest yet.
    done = sorted(os.listdir(output / "images"))
    (output / "images" / done[0] / "1.png").unlink()
    (output / "images" / done[1] / ".0.png.tmp-4242").write_bytes(b"\x89PNG half")
    (output / "manifest.parquet").unlink()
    before = {p: os.stat(p) for p in (output / "images").rglob("*.png")}

    second = synth(*common)

    assert second.num_skipped == 3  # complete samples are not read again
    assert second.num_written == (NUM_SAMPLES - 3) * TEST_NUM_OUTPUTS - 1  # variant 1 of done[0] is redone alone
    after = local_files(output)
    assert after == local_files(reference_output)  # no duplicates, no gaps, same bytes, temp file gone
    for path, stat in before.items():  # what was complete was not written again
        assert (os.stat(path).st_mtime_ns, os.stat(path).st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert pq.read_table(output / "manifest.parquet").equals(pq.read_table(reference_output / "manifest.parquet"))

    # A third run finds nothing to do and leaves everything as it was.
    third = synth(*common)
    assert third.num_written == 0 and third.num_skipped == NUM_SAMPLES and local_files(output) == after


def test_registry_model_by_alias_with_output_to_s3(checkpoint, store, reference_run, s3_endpoint):
    """A registered version of the reference's checkpoint, named by alias, writing to S3."""
    reference_output, _ = reference_run
    setup_mlflow("test-synthesize-registry")
    with mlflow.start_run():
        version = log_and_register(checkpoint, "crn-synth-test", alias="champion")
    uri = "s3://test-bucket/synth/train"
    # A bare registered name means its champion.
    outcome = synth("--model", "crn-synth-test", "--store", store, "--output", uri, "--seed", "7")
    assert outcome.num_written == NUM_SAMPLES * TEST_NUM_OUTPUTS
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["crn.model_version"] == version
    # The run and the version it used find each other.
    model_version = MlflowClient().get_model_version("crn-synth-test", version)
    assert run.data.tags["crn.model_name"] == "crn-synth-test"
    assert model_version.tags["crn.last_used_by_run"] == outcome.run_id
    assert run.info.run_name and "models:/crn-synth-test@champion (version 1)" in run.data.tags["mlflow.note.content"]

    fs, root = filesystem_for(uri)
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(root + "/images", recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                found[info.path[len(root) + 1:]] = stream.read()
    assert found == local_files(reference_output)  # same weights, same bytes
    with fs.open_input_file(root + "/manifest.parquet") as handle:
        rows = pq.read_table(handle).to_pylist()
    assert {(r["model_uri"], r["model_version"]) for r in rows} == {("models:/crn-synth-test@champion", version)}
    expected = pq.read_table(reference_output / "manifest.parquet").to_pylist()
    same = ("sample_id", "variant", "image_path", "model_sha256", "seed")
    assert [{k: r[k] for k in same} for r in rows] == [{k: r[k] for k in same} for r in expected]


def test_output_folder_of_another_model_is_refused(store, reference_run, tmp_path):
    reference_output, _ = reference_run
    other = make_test_checkpoint(tmp_path / "other.pt", seed=2)
    with pytest.raises(UserError, match=r"holds images made with model_sha256=.*choose another --output"):
        synth("--model", str(other), "--store", store, "--output", str(reference_output), "--seed", "7")


def test_command_line_errors_are_one_line(store, checkpoint, reference_run, tmp_path, capsys):
    reference_output, _ = reference_run
    cases = [
        (["--resolution", "64x128"], "makes 32x64 images; --resolution 64x128 differs"),
        (["--split", "test"], "has no split 'test'"),
        (["--precision", "bf16"], "--precision bf16 needs --use-gpu"),
        (["--resolution", "32by64"], "resolution '32by64' is not written HxW"),
        (["--model", str(tmp_path / "garbage.pt")], "garbage.pt cannot be read"),
        (["--model", "models:/no-such-model@champion"], "models:/no-such-model@champion"),
        (["--seed", "8", "--output", str(reference_output)], "holds images made with seed=7"),
        (["--seed", "7", "--batch-size", "8", "--output", str(reference_output)], "holds images made with batch_size=4"),
        # The session's Ray has 4 CPUs; a pool that took them all would starve its reads.
        (["--num-actors", "2", "--threads-per-actor", "2"], "2 actor(s) x 2 CPU and 1 CPU for reading and writing "
                                                            "need 5 CPUs; the Ray cluster has 4"),
    ]
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    larger = make_test_checkpoint(tmp_path / "mid.pt", seed=3, preset="crn-mid")  # top 128x256
    cases.append((["--model", str(larger)], "has no resolution 128x256 (it has 4x8, 8x16, 16x32, 32x64, 64x128)"))
    for extra, message in cases:
        argv = ["--model", str(checkpoint), "--store", store, "--output", str(tmp_path / "never"), *extra]
        assert entrypoint(main)(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()
