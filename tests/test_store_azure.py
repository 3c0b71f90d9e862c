"""A second cloud for real: Azure Blob Storage (Azurite on 127.0.0.1) as store, Ray Train
storage path and synthesis output, through abfs:// URLs and nothing else.

    .venv/bin/python -m pytest tests/test_store_azure.py -q

The store written to Azure equals the local toy store; a crn-tiny fit of 2 steps keeps its
checkpoints there, and the checkpoint read back from there synthesizes into Azure exactly the
images its model computes in this process. The connection string (with the account key) reaches
no printed line and no MLflow param or tag. Bad locations are one-line errors.
"""
from __future__ import annotations

import io
import json
import os
import socket
import uuid

import numpy as np
import pyarrow.fs as pafs
import pytest
from conftest import AZURITE_ACCOUNT, AZURITE_KEY, CONTAINER, TOY_STORE_RESOLUTIONS
from mlflow.tracking import MlflowClient
from PIL import Image
from synth_models import reference_images

from jobs.preprocess import main as preprocess_main
from jobs.synthesize import main as synthesize_main
from pipeline.data.store import StoreError, decode_labels, label_column, open_store
from pipeline.fs import filesystem_for, read_bytes
from pipeline.runtime import entrypoint
from pipeline.training import job as train
from pipeline.training.config import parse_train_config
from pipeline.training.loop import CHECKPOINT_FILE

EXPERIMENT = "test-store-azure"

pytestmark = pytest.mark.usefixtures("one_torch_thread", "module_experiment")


def files_under(uri: str) -> dict[str, bytes]:
    """Every file below a location, by path relative to it."""
    fs, root = filesystem_for(uri)
    return {info.path[len(root) + 1:]: read_bytes(fs, info.path)
            for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if info.type == pafs.FileType.File}


def test_store_training_and_synthesis_on_azure(toy_source, toy_store, azure_endpoint, ray_session, tmp_path, capsys):
    base = f"abfs://{CONTAINER}/{uuid.uuid4().hex[:8]}"
    store = f"{base}/store"
    assert preprocess_main(["--source", str(toy_source), "--out", store, "--resolutions", TOY_STORE_RESOLUTIONS]) == 0
    remote, local = open_store(store), open_store(toy_store)
    assert remote.splits == local.splits and remote.resolutions == local.resolutions
    for split in ("train", "val"):
        assert remote.read_table(split, "32x64").equals(local.read_table(split, "32x64"))

    run_name = f"azure-{uuid.uuid4().hex[:8]}"
    outcome = train.run(parse_train_config([
        "--store", store, "--preset", "crn-tiny", "--num-outputs", "2", "--vgg-weights", "random",
        "--threads-per-worker", "1", "--batch-size", "2", "--steps", "2", "--image-every", "0",
        "--run-name", run_name, "--experiment", EXPERIMENT, "--storage-path", f"{base}/runs"]))
    assert outcome.final["step"] == 2
    assert outcome.checkpoint.path.startswith(f"{base[len('abfs://'):]}/runs/{run_name}/")
    model = f"abfs://{outcome.checkpoint.path}/{CHECKPOINT_FILE}"

    # The checkpoint, read from Azure, synthesizes into Azure what the model computes here.
    assert synthesize_main(["--model", model, "--store", store, "--split", "val", "--batch-size", "4",
                            "--output", f"{base}/synth"]) == 0
    written = files_under(f"{base}/synth")
    assert len([k for k in written if k.startswith("images/")]) == 4 * 2 and "manifest.parquet" in written
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(files_under(f"abfs://{outcome.checkpoint.path}")[CHECKPOINT_FILE])
    table = local.read_table("val", "32x64")
    expected = reference_images(checkpoint, decode_labels(table.column(label_column("32x64")), "32x64"),
                                batch_size=4, threads=os.cpu_count())
    for n, sample_id in enumerate(table.column("sample_id").to_pylist()):
        for k in range(2):
            image = np.asarray(Image.open(io.BytesIO(written[f"images/{sample_id}/{k}.png"])))
            np.testing.assert_array_equal(image, expected[n, k], err_msg=f"{sample_id} variant {k}")

    # The account key reached no line printed and no MLflow param or tag of these runs.
    printed = capsys.readouterr()
    assert AZURITE_KEY not in printed.out + printed.err
    client = MlflowClient()
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        assert AZURITE_KEY not in json.dumps({**run.data.params, **run.data.tags})


def test_azure_errors_are_one_line(toy_source, azure_endpoint, monkeypatch, capsys):
    run = entrypoint(preprocess_main)

    def one_error_line() -> str:
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, errors
        return errors[0]

    assert run(["--source", str(toy_source), "--out", "abfs2://c/store", "--resolutions", "8x16"]) == 2
    assert one_error_line() == ("error: abfs2://c/store: unknown scheme abfs2:// (known: s3://, gs://, gcs://, "
                                "abfs://, abfss://, az://, file://, or a local path)")
    with pytest.raises(StoreError, match="abfs://no-such-container/store"):
        open_store("abfs://no-such-container/store")
    assert run(["--source", "abfs://no-such-container/toy", "--out", str(toy_source.parent / "unused"),
                "--resolutions", "8x16"]) == 2
    assert "abfs://no-such-container/toy" in one_error_line()

    # An endpoint nobody listens on (a port held by a socket that never listens refuses every
    # connection): a few short retries, then one line.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed_port.getsockname()[1]}/{AZURITE_ACCOUNT}"
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                           f"BlobEndpoint={dead};")
        assert run(["--source", f"abfs://{CONTAINER}/toy", "--out", str(toy_source.parent / "unused"),
                    "--resolutions", "8x16"]) == 2
        line = one_error_line()
    assert f"abfs://{CONTAINER}/toy" in line and AZURITE_KEY not in line
