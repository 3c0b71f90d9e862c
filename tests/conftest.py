"""Shared test fixtures: the real services, started once per test session.

    make test                      # everything
    .venv/bin/python -m pytest tests/test_model.py -q

- `s3_endpoint`: S3 served by moto's server mode on 127.0.0.1 (a real HTTP endpoint that
  pyarrow, s3fs and Ray workers reach, unlike moto's in-process mock), bucket `test-bucket`.
- `ray_session`: one local Ray instance for the whole session (starting one costs ~6 s).
  It gets 4 logical CPUs on 2 cores so training workers cannot starve Ray Data
  (stack-notes.md).
- MLflow: a real SQLite tracking store in the session's temporary folder, named by
  `MLFLOW_TRACKING_URI` so Ray workers and jobs find it too.

Environment variables are set before Ray starts so that its workers inherit them.
"""
from __future__ import annotations

import os

import pytest

BUCKET = "test-bucket"


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
def ray_session(s3_endpoint):
    """One local Ray instance for the session; workers see the S3 endpoint and MLflow store."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
