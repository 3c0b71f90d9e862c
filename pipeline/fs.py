"""One way to reach storage: every location a job takes (a local folder, `file://`, `s3://`,
`gs://`/`gcs://`, `abfs://`/`abfss://`/`az://`) becomes a pyarrow filesystem here, and
nowhere else.

pyarrow's filesystems are what Ray Data, Parquet, Ray Train and our own readers share, and
they pickle, so the same object travels to Ray workers. S3 uses pyarrow's own S3FileSystem
(faster than s3fs on our reads and writes: docs/storage.md); the other clouds use their
fsspec library wrapped as `PyFileSystem(FSSpecHandler(...))`, so callers never see the
difference. Only the library for a scheme a job uses is imported, and a missing one is a
one-line error naming the extra that installs it.

pyarrow's S3FileSystem does not read `AWS_ENDPOINT_URL` by itself
(docs/stack-facts.md#s3-without-aws), so we pass it explicitly: that is how the tests reach
moto on 127.0.0.1 and how a cluster reaches MinIO or another S3-compatible service.
Credentials come from each library's usual chain (AWS: environment, ~/.aws, instance role;
Google: application default credentials; Azure: `AZURE_STORAGE_CONNECTION_STRING` or
`AZURE_STORAGE_ACCOUNT_NAME` with a key, SAS token or Azure identity), never from the URL,
so nothing a job prints or logs carries a secret, and a pickled filesystem carries none
either: each worker reads its own environment.
"""
from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import threading
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from pipeline.errors import UserError, first_line

# The schemes a location may have, with the fsspec library (and the project's extra that
# installs it) for those that are not local or S3.
FSSPEC_SCHEMES = {
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "az": ("adlfs", "azure"),
}
KNOWN_SCHEMES = ("s3", *FSSPEC_SCHEMES, "file")
# Locations that are not storage but MLflow's (pipeline.registry resolves them).
MLFLOW_PREFIXES = ("models:/", "runs:/")
# Azure's SDK waits 15 s, 18 s and 24 s between its retries of a failed request, so an
# unreachable account held a job about a minute per request, and a job makes several; these
# waits (about 1 s, 3 s and 5 s) still ride out a dropped connection or a throttled burst.
AZURE_RETRY = {"initial_backoff": 1, "increment_base": 2, "random_jitter_range": 1, "total_retries": 3}


def scheme(location: str | os.PathLike) -> str:
    """A location's scheme in lower case (`s3`, `abfs`, ...); "" for a plain local path."""
    text = str(location)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_s3(uri: str | os.PathLike) -> bool:
    return scheme(uri) == "s3"


def is_local(location: str | os.PathLike) -> bool:
    """True for a path on this machine's disks; False for a URI (`s3://`, `file://`, MLflow's
    `models:/` and `runs:/`, ...)."""
    text = str(location)
    return "://" not in text and not text.startswith(MLFLOW_PREFIXES)


def is_storage(location: str | os.PathLike) -> bool:
    """True for a location `filesystem_for` opens (a path or a URL of a known scheme), False
    for MLflow's `models:/` and `runs:/` and for other schemes."""
    return is_local(location) or scheme(location) in KNOWN_SCHEMES


def display_uri(location: str | os.PathLike) -> str:
    """A location as it may be printed or logged: a URL without its query, fragment or the
    password of a `user:password@` part (where SAS tokens and keys would sit); paths as given."""
    text = str(location)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    host = parts.netloc.rsplit("@", 1)
    netloc = f"{host[0].split(':', 1)[0]}@{host[1]}" if len(host) == 2 else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_location(location: str | os.PathLike) -> None:
    """One-line UserError unless `filesystem_for` can open this kind of location here: an
    unknown scheme, or a scheme whose library is not installed."""
    name = scheme(location)
    if not name or name in ("s3", "file"):
        return
    if name not in FSSPEC_SCHEMES:
        known = ", ".join(f"{s}://" for s in KNOWN_SCHEMES)
        raise UserError(f"{display_uri(location)}: unknown scheme {name}:// (known: {known}, or a local path)")
    library, extra = FSSPEC_SCHEMES[name]
    try:
        __import__(library)
    except ImportError:
        raise UserError(f"{name}:// needs {library}: pip install 'crn-ray[{extra}]'") from None


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
        parsed = urlsplit(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


class FsspecHandler(pafs.FSSpecHandler):
    """pyarrow's bridge to an fsspec filesystem that pickles as (scheme, options) and is
    rebuilt by `fsspec_filesystem` where it lands: a worker then reads its own credentials
    from its environment, and no key travels inside the pickle."""

    def __init__(self, protocol: str, options: dict):
        self.protocol, self.options = protocol, dict(options)
        super().__init__(LibraryErrorsAsOSErrors(fsspec_filesystem(protocol, self.options)))

    def __reduce__(self):
        return FsspecHandler, (self.protocol, self.options)


# Errors that already mean what callers expect (OSError) or are mistakes in our own code.
_PASSED_THROUGH = (OSError, TypeError, AttributeError, NotImplementedError, AssertionError)


class LibraryErrorsAsOSErrors:
    """An fsspec filesystem, or a file it opened, whose library errors come out as OSError
    with the library's first line: OSError is what every caller already handles for local
    and S3 storage, while Azure's SDK raises its own (ServiceRequestError for an unreachable
    account) and adlfs a RuntimeError with an XML page for a missing container."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args, **kwargs):
            try:
                result = value(*args, **kwargs)
            except _PASSED_THROUGH:
                raise
            except Exception as exc:
                raise OSError(first_line(exc)) from exc
            return LibraryErrorsAsOSErrors(result) if name == "open" else result

        return call


_instances: dict = {}
_instances_lock = threading.Lock()


def fsspec_filesystem(protocol: str, options: dict):
    """The fsspec filesystem for a scheme and the options its URL gives (an Azure account
    name, say), one per process and credentials: fsspec's own cache keys on the arguments
    alone and would hand back a client for credentials the environment no longer holds."""
    import fsspec

    cls = fsspec.get_filesystem_class(protocol)
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AZURE_", "GOOGLE_"))))
    key = (cls, tuple(sorted(options.items())), environment, os.getpid())
    with _instances_lock:
        if key not in _instances:
            filesystem = cls(skip_instance_cache=True, **options)
            if FSSPEC_SCHEMES[protocol][0] == "adlfs":
                # The pipeline's policies hold this same object, so its waits change in place.
                vars(filesystem.service_client._config.retry_policy).update(AZURE_RETRY)
            _instances[key] = filesystem
        return _instances[key]


def filesystem_for(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URL of a known scheme.

    Local paths come back absolute (Ray workers run in other working directories); cloud
    paths come back as `bucket/prefix` (Azure: `container/prefix`) without a trailing slash.
    Unknown schemes and missing libraries are one-line UserErrors (`check_location`).
    """
    text = str(uri)
    check_location(text)
    name = scheme(text)
    if not name or name == "file":
        local = text.split("://", 1)[1] if name else text
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    if "?" in text or "#" in text:
        raise UserError(f"{display_uri(text)}: a storage URL takes no query or fragment "
                        "(credentials come from the environment: docs/storage.md)")
    path = text.split("://", 1)[1].strip("/")
    if name == "s3":
        if not path:
            raise ValueError(f"{text}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        return s3_filesystem(), path
    import fsspec

    cls = fsspec.get_filesystem_class(name)
    options = cls._get_kwargs_from_urls(text)
    path = cls._strip_protocol(text).strip("/")
    if not path:
        raise ValueError(f"{text}: a {name}:// URL needs a bucket or container, as in {name}://container/prefix")
    return pafs.PyFileSystem(FsspecHandler(name, options)), path


def location_of(root: str | os.PathLike, path: str) -> str:
    """The URL a person recognises for `path`, a path inside `filesystem_for(root)`'s
    filesystem: `s3://bucket/key`, `abfs://container/key`, or the absolute local path."""
    name = scheme(root)
    return f"{name}://{path}" if name and name != "file" else path


def join(base: str, *parts: str) -> str:
    """Join paths inside a filesystem (always '/', also for local paths on POSIX)."""
    return posixpath.join(base, *parts)


def uri_join(uri: str, *parts: str) -> str:
    """Join a user-facing location (local path or URL) with relative parts."""
    if "://" in uri:
        head, rest = uri.split("://", 1)
        return f"{head}://" + posixpath.join(rest.rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_atomically(fs: pafs.FileSystem, path: str, write: Callable[[BinaryIO], None]) -> int:
    """Create a whole file with `write(handle)` so that readers see either nothing (or the
    old file) or all of it; returns the file's size in bytes.

    Locally: a temporary file beside the target, synced to disk, then `os.replace` (atomic
    on POSIX). In an object store (S3, GCS, Azure Blob) an object becomes visible only once
    its upload completes, so writing it in place is already all-or-nothing. `write` streams
    into the file, so large files (Parquet parts) need no second copy in memory.
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


def missing_bucket(fs: pafs.FileSystem, path: str, uri: str) -> str | None:
    """A one-line message if `uri` (at `path` inside `fs`, as `filesystem_for` gives them) names
    a bucket or container that does not exist; None when it exists, for local paths, and when
    the store cannot tell.

    An object store answers "not found" alike whether an object was never written or its
    bucket does not exist (a typo, another endpoint, a local stack whose bucket was never
    made); the two need different fixes, so a job that finds nothing asks here which it is."""
    if is_local(uri) or scheme(uri) == "file" or isinstance(fs, pafs.LocalFileSystem):
        return None
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError:
        return None  # unreachable or not allowed: the caller's own error says so
    if found:
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") if is_s3(uri) else None
    where = f" at {endpoint}" if endpoint else ""
    return f"{display_uri(uri)}: there is no bucket {bucket}{where} (a typo, or another endpoint? create it or fix the URI)"
