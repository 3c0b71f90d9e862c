"""One way to reach storage: local folders and `s3://bucket/prefix`, as pyarrow filesystems.

pyarrow's filesystems are what Ray Data, Parquet and our own readers share, and they
pickle, so the same object travels to Ray workers. pyarrow's S3FileSystem does not read
`AWS_ENDPOINT_URL` by itself (docs/stack-facts.md#s3-without-aws), so we pass it explicitly: that is how the
tests reach moto on 127.0.0.1 and how a cluster reaches MinIO or another S3-compatible
service. Credentials come from the usual AWS chain (environment, ~/.aws, instance role).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem for AWS, or for the endpoint in `AWS_ENDPOINT_URL` when set."""
    kwargs: dict = {
        # Naming the region saves a lookup that S3-compatible endpoints may not answer.
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "connect_timeout": 10,
        "request_timeout": 60,
        # Open output files lazily: a small file (a manifest, a part) then goes up as one
        # PutObject on close instead of a three-request multipart upload.
        "allow_delayed_open": True,
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an `s3://bucket/prefix` URI.

    Local paths come back absolute (Ray workers run in other working directories); S3
    paths come back as `bucket/prefix` without a trailing slash.
    """
    text = str(uri)
    if is_s3(text):
        path = text[len("s3://"):].strip("/")
        if not path:
            raise ValueError(f"{text}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        return s3_filesystem(), path
    if text.startswith("file://"):
        text = text[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join paths inside a filesystem (always '/', also for local paths on POSIX)."""
    return posixpath.join(base, *parts)


def uri_join(uri: str, *parts: str) -> str:
    """Join a user-facing location (local path or s3:// URI) with relative parts."""
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://"):].rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_atomically(fs: pafs.FileSystem, path: str, write: Callable[[BinaryIO], None]) -> int:
    """Create a whole file with `write(handle)` so that readers see either nothing (or the
    old file) or all of it; returns the file's size in bytes.

    Locally: a temporary file beside the target, synced to disk, then `os.replace` (atomic
    on POSIX). On S3 an object becomes visible only once its upload completes, so writing
    it in place is already all-or-nothing. `write` streams into the file, so large files
    (Parquet parts) need no second copy in memory.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
                size = handle.tell()
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return size
    with fs.open_output_stream(path) as stream:
        write(stream)
        return stream.tell()


def write_bytes_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """`write_atomically` for data already in memory."""
    write_atomically(fs, path, lambda handle: handle.write(data))


def is_local(location: str) -> bool:
    """True for a path on this machine's disks; False for a URI (`s3://`, `file://`, MLflow's
    `models:/` and `runs:/`, ...)."""
    return "://" not in location and not location.startswith(("models:/", "runs:/"))


def absolute(location: str) -> str:
    """A location as workers elsewhere can use it: local paths made absolute, URIs and the
    empty string unchanged. Ray workers run in other working directories, so every path a job
    hands them goes through here first."""
    if not location or not is_local(location):
        return location
    return str(Path(location).expanduser().resolve())


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a local file, as 64 hex digits, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
