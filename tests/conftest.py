"""Shared test fixtures: the real services, started once per test session.

    make test                      # everything
    .venv/bin/python -m pytest tests/test_model.py -q

- `s3_endpoint`: S3 served by moto's server mode on 127.0.0.1 (a real HTTP endpoint that
  pyarrow, s3fs and Ray workers reach, unlike moto's in-process mock), bucket `test-bucket`.
- `azure_endpoint`: Azure Blob Storage served by Azurite (`make azurite`) on 127.0.0.1,
  container `test-container`, reached as abfs://test-container/... through
  `AZURE_STORAGE_CONNECTION_STRING`.
- `ray_session`: one local Ray instance for the whole session (starting one costs ~6 s).
  It gets 4 logical CPUs on 2 cores so training workers cannot starve Ray Data
  (docs/stack-facts.md#ray-logical-cpus).
- MLflow: a real SQLite tracking store in the session's temporary folder, named by
  `MLFLOW_TRACKING_URI` so Ray workers and jobs find it too.

Environment variables are set before Ray starts so that its workers inherit them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from chain_presets import add_chain_presets

# The test-only presets (crn-chain-*) join the production tables before any test imports them.
add_chain_presets()

BUCKET = "test-bucket"
CONTAINER = "test-container"
AZURITE = Path(__file__).resolve().parent.parent / "infra" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one account and its key, published in Azure's documentation for the emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session", autouse=True)
def test_environment(tmp_path_factory):
    """Offline, isolated settings for every test: work dir, MLflow store, S3 credentials."""
    root = tmp_path_factory.mktemp("session")
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "CRN_WORK_DIR": str(root / "work"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        # Fake credentials for moto; never real ones in tests.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # Ray Train gives its workers 60 s to start by default; on a loaded 2-core machine
        # importing torch in two workers can take longer (pipeline.runtime.init_ray does the same).
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def s3_endpoint(test_environment):
    """An S3 endpoint on 127.0.0.1 (moto server mode) with bucket `test-bucket`.

    Sets `AWS_ENDPOINT_URL` for the session, so the project's own filesystem helpers
    (and Ray workers started afterwards) talk to it.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    os.environ.pop("AWS_ENDPOINT_URL", None)
    server.stop()


@pytest.fixture(scope="session")
def azure_endpoint(test_environment):
    """Azure Blob Storage on 127.0.0.1 (Azurite, in memory) with container `test-container`.

    Sets `AZURE_STORAGE_CONNECTION_STRING` for the session (adlfs reads it), before Ray
    starts so that its workers have it too. The port is a free one picked here; should
    another process take it before Azurite binds it, Azurite exits and another is tried.
    """
    import socket
    import subprocess
    import threading

    from azure.storage.blob import BlobServiceClient

    assert AZURITE.exists(), f"{AZURITE} is missing: run `make azurite`"
    for _ in range(5):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [str(AZURITE), "--silent", "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=test_environment)
        # Azurite says when it listens; it exits when the port is taken.
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "successfully listens" in line:
                break
        else:
            server.wait()
            continue
        threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its pipe from filling
        break
    else:
        raise RuntimeError(f"Azurite did not start: {''.join(lines)}")
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};")
    BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container(CONTAINER)
    yield endpoint
    os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    server.terminate()
    server.wait()


@pytest.fixture(scope="module")
def module_experiment(request, test_environment) -> str:
    """The test module's MLflow experiment (its `EXPERIMENT`), created with its artifacts in the
    session's folder: MLflow would put a new SQLite experiment's in ./mlruns, the repository."""
    from mlflow.tracking import MlflowClient

    name = request.module.EXPERIMENT
    client = MlflowClient()
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(test_environment / "mlartifacts").as_uri())
    return name


@pytest.fixture(scope="session")
def ray_session(s3_endpoint, azure_endpoint):
    """One local Ray instance for the session; workers see the S3 and Azure endpoints and MLflow store."""
    import ray

    from pipeline.console import prepare_worker_process

    # address="local": our own instance even when a `ray start` head runs on the machine. The
    # setup hook as in pipeline.runtime.init_ray: Ray Train's cleaner then finds this instance.
    # The tests' folder is on the workers' path, as an installed plug-in's package would be
    # (tests/plugin_fixtures.py: a generator and a metric from outside the project's packages).
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": prepare_worker_process,
                          "env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}})
    yield ray
    ray.shutdown()


# ---- toy data (pipeline/): a tiny source data set and its preprocessed store ----

TOY_SOURCE_SIZE = (128, 256)  # scenes are drawn at 128x256, so every stored size is a real downsample
TOY_STORE_RESOLUTIONS = "4x8,8x16,16x32,32x64,64x128"


@pytest.fixture(scope="session")
def toy_source(tmp_path_factory):
    """A toy data set in the Cityscapes layout: 8 train + 4 val street scenes at 128x256.

    `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/.../*_gtFine_labelIds.png`
    and `*_gtFine_color.png` (pipeline.data.toy, seed 0). Returns the folder (pathlib.Path).
    Drawn once per session (well under a second). Treat it as read-only: tests that damage
    a data set copy it first.
    """
    from pipeline.data.toy import generate_toy_dataset

    root = tmp_path_factory.mktemp("toy_source")
    generate_toy_dataset(root, num_train=8, num_val=4, seed=0, size=TOY_SOURCE_SIZE)
    return root


@pytest.fixture(scope="session")
def toy_store(toy_source, ray_session, tmp_path_factory):
    """`toy_source` preprocessed by the real job into a local store (pipeline.data.toy.make_toy_store).

    Splits `train` (8) and `val` (4), resolutions 4x8, 8x16, 16x32, 32x64, 64x128, Cityscapes
    schema (20 classes, void = 19), photos included. Open it with
    `pipeline.data.store.open_store(toy_store)`. Made once per session (a few seconds, on the
    session's Ray instance). Read-only: tests that change a store make their own.
    """
    from pipeline.data.toy import make_toy_store

    return make_toy_store(tmp_path_factory.mktemp("toy_store") / "store", toy_source, num_train=8, num_val=4,
                          size=TOY_SOURCE_SIZE, resolutions=TOY_STORE_RESOLUTIONS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures(...)`):
    the test process computes references next to Ray workers on 2 shared cores, and two
    threads there spin-wait each other into a crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Modules with a test marked slow run first, the rest after them in their order (each
    module's tests keep theirs): `make test`'s two workers (pytest-xdist, whole modules each,
    in this order) then start on the longest and share out the short ones at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
