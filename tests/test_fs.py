"""pipeline.fs: how a location becomes a filesystem, the one place that reads schemes.

    .venv/bin/python -m pytest tests/test_fs.py -q

Azure cases run against the session's Azurite (`azure_endpoint`); the rest need nothing.
"""
from __future__ import annotations

import pickle
import sys
import uuid

import pyarrow.fs as pafs
import pytest
from conftest import AZURITE_KEY, CONTAINER

from pipeline import fs
from pipeline.errors import UserError


def test_schemes_and_locations():
    assert [fs.scheme(x) for x in ("/data/x", "rel/x", "S3://b/k", "abfs://c/p", "models:/crn@champion")] == [
        "", "", "s3", "abfs", ""]
    assert fs.is_local("rel/x") and not fs.is_local("file:///x") and not fs.is_local("runs:/abc/model")
    assert all(fs.is_storage(x) for x in ("rel/x", "s3://b/k", "gs://b/k", "az://c/p", "file:///x"))
    assert not any(fs.is_storage(x) for x in ("models:/crn/1", "runs:/abc/model", "http://host/x"))
    assert fs.uri_join("abfs://c/p/", "a", "b.png") == "abfs://c/p/a/b.png"
    assert fs.location_of("gs://bucket/store", "bucket/store/part-0.parquet") == "gs://bucket/store/part-0.parquet"
    assert fs.location_of("file:///tmp/x", "/tmp/x/y") == "/tmp/x/y"


def test_printed_urls_carry_no_secrets():
    assert fs.display_uri("abfs://user:secret@host/path?sig=abc#x") == "abfs://user@host/path"
    assert fs.display_uri("s3://bucket/key") == "s3://bucket/key"
    assert fs.display_uri("/local/path") == "/local/path"


def test_unknown_scheme_and_missing_library_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError) as unknown:
        fs.filesystem_for("hdfs://namenode/data")
    assert str(unknown.value) == ("hdfs://namenode/data: unknown scheme hdfs:// (known: s3://, gs://, gcs://, abfs://, "
                                  "abfss://, az://, file://, or a local path)")
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed: importing it fails
    with pytest.raises(UserError, match=r"^gs:// needs gcsfs: pip install 'crn-ray\[gcs\]'$"):
        fs.filesystem_for("gs://bucket/store")
    with pytest.raises(UserError, match="takes no query"):
        fs.filesystem_for("abfs://c/p?sv=2024&sig=secret")


def test_local_paths_and_file_urls(tmp_path):
    for location in (str(tmp_path), f"file://{tmp_path}"):
        filesystem, path = fs.filesystem_for(location)
        assert isinstance(filesystem, pafs.LocalFileSystem) and path == str(tmp_path)


def test_azure_filesystem_pickles_without_the_key(azure_endpoint):
    filesystem, root = fs.filesystem_for(f"abfs://{CONTAINER}/{uuid.uuid4().hex[:8]}")
    fs.write_bytes_atomically(filesystem, fs.join(root, "a/b.bin"), b"payload")
    data = pickle.dumps(filesystem)
    assert AZURITE_KEY.encode() not in data
    fs._instances.clear()  # rebuilt from the environment, as in a Ray worker
    assert fs.read_bytes(pickle.loads(data), fs.join(root, "a/b.bin")) == b"payload"
    missing = fs.join(root, "nothing")
    assert filesystem.get_file_info(missing).type == pafs.FileType.NotFound
