"""The store on S3 (moto's server on 127.0.0.1): written and read back, equal to the local store.

    .venv/bin/python -m pytest tests/test_store_s3.py -q
"""
from __future__ import annotations

import json
import uuid
from urllib.parse import urlparse

import boto3
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs.preprocess import main
from pipeline.data.store import StoreError, open_store
from pipeline.runtime import entrypoint

run = entrypoint(main)  # what the command line runs: user errors become exit code 2

BUCKET = "test-bucket"
RESOLUTIONS = "4x8,8x16,16x32,32x64,64x128"  # the toy_store fixture's


@pytest.fixture()
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def _prefix() -> str:
    return f"tests/{uuid.uuid4().hex[:8]}"


def _manifest_less_run_details(manifest: dict) -> dict:
    manifest = json.loads(json.dumps(manifest))
    del manifest["created_at"], manifest["config"]["out"]
    return manifest


def test_store_written_to_s3_equals_the_local_store(toy_source, toy_store, s3, s3_endpoint, capsys, ray_session):
    prefix = _prefix()
    uri = f"s3://{BUCKET}/{prefix}/store"
    assert main(["--source", str(toy_source), "--out", uri, "--resolutions", RESOLUTIONS]) == 0

    local_manifest = json.loads((toy_store / "manifest.json").read_text())
    remote_manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/store/manifest.json")["Body"].read())
    assert _manifest_less_run_details(remote_manifest) == _manifest_less_run_details(local_manifest)
    for split in local_manifest["splits"].values():  # the same parts, byte for byte
        for part in split["files"]:
            body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/store/{part['path']}")["Body"].read()
            assert body == (toy_store / part["path"]).read_bytes()
    # nothing else was left behind (no probe, no temporary files); keys ending in "/" are the
    # empty "directory" markers pyarrow leaves when it deletes a folder's last file
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
            if not o["Key"].endswith("/")}
    assert keys == {f"{prefix}/store/manifest.json"} | {
        f"{prefix}/store/{f['path']}" for s in local_manifest["splits"].values() for f in s["files"]}

    # read back through the Store API: every resolution equals the local store
    remote, local = open_store(uri), open_store(toy_store)
    assert remote.splits == local.splits and remote.resolutions == local.resolutions
    for resolution in remote.resolutions:
        assert remote.read_table("train", resolution).equals(local.read_table("train", resolution))

    # a rerun finds it up to date
    capsys.readouterr()
    assert main(["--source", str(toy_source), "--out", uri, "--resolutions", RESOLUTIONS]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_s3_store_read_with_plain_pyarrow_and_ray(toy_source, toy_store, s3_endpoint, ray_session):
    prefix = _prefix()
    uri = f"s3://{BUCKET}/{prefix}/store"
    assert main(["--source", str(toy_source), "--out", uri, "--resolutions", "8x16,32x64"]) == 0
    # plain pyarrow, with the endpoint passed by hand
    endpoint = urlparse(s3_endpoint)
    fs = pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme, region="us-east-1")
    with fs.open_input_stream(f"{BUCKET}/{prefix}/store/manifest.json") as f:
        manifest = json.loads(f.read())
    (part,) = manifest["splits"]["val"]["files"]
    table = pq.read_table(f"{BUCKET}/{prefix}/store/{part['path']}", filesystem=fs, columns=["sample_id", "label_32x64"])
    local = open_store(toy_store).read_table("val", "32x64")
    assert table.column("sample_id").equals(local.column("sample_id"))
    assert table.column("label_32x64").equals(local.column("label_32x64"))
    # Ray Data, through the Store API
    rows = {row["sample_id"]: row for row in open_store(uri).dataset("val", "32x64").take_all()}
    assert sorted(rows) == local.column("sample_id").to_pylist()
    for sample_id, label in zip(local.column("sample_id").to_pylist(), local.column("label_32x64").to_pylist()):
        np.testing.assert_array_equal(rows[sample_id]["label"], np.frombuffer(label, np.uint8).reshape(32, 64))


def test_source_on_s3(toy_source, toy_store, s3, ray_session):
    prefix = _prefix()
    for path in sorted(toy_source.rglob("*.png")):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/toy/{path.relative_to(toy_source)}", Body=path.read_bytes())
    uri = f"s3://{BUCKET}/{prefix}/store"
    assert main(["--source", f"s3://{BUCKET}/{prefix}/toy", "--out", uri, "--resolutions", RESOLUTIONS]) == 0
    remote, local = open_store(uri), open_store(toy_store)
    for split in ("train", "val"):
        for resolution in ("4x8", "64x128"):
            assert remote.read_table(split, resolution).equals(local.read_table(split, resolution))


def test_s3_errors_are_one_line(toy_source, s3_endpoint, capsys):
    assert run(["--source", str(toy_source), "--out", "s3://no-such-bucket/store", "--resolutions", "8x16"]) == 2
    error = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: cannot write to s3://no-such-bucket/store: ")
    with pytest.raises(StoreError, match=f"no store at s3://{BUCKET}/nothing/here"):
        open_store(f"s3://{BUCKET}/nothing/here")
