"""S3 clients: pyarrow's own S3FileSystem against s3fs, on the two things the jobs do with S3.

    python -m bench.run_all bench_s3_clients          # with the other benchmarks' table
    python -m bench.bench_s3_clients [--quick]        # this one alone

pipeline/fs.py has to pick one client for s3:// and this is what it is picked by. Both are
used the way the project would use them: through pyarrow's filesystem interface, s3fs wrapped
as `PyFileSystem(FSSpecHandler(s3fs))` (what the code does for every fsspec filesystem), with
the project's helpers (`write_bytes_atomically`, `pq.read_table(filesystem=...)`). Against
one S3 endpoint, moto's server in a process of its own on 127.0.0.1 (so that the server does
not share this process's GIL), in one run:
- reading a store: the manifest and every Parquet part of a store-like folder (parts of
  48 rows of incompressible image-sized bytes, as the preprocessed store's are);
- writing synthesis output: many small PNG-sized files, four threads side by side (as
  pipeline.synthesis.outputs.write_images does), then a manifest.parquet.
The clients take turns, several rounds each, and the best time of each counts (on a shared
host the best run is the one other work disturbed least). Figures are seconds per workload
and the ratio s3fs / pyarrow (above 1: pyarrow is faster).
A local endpoint measures the clients' own cost per request and per byte, not a network's
latency; on a real network both wait the same round trips, so the gap there is smaller.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.fs import join, read_bytes, s3_filesystem, write_bytes_atomically

BUCKET = "bench-bucket"
FULL = {"parts": 16, "rows": 48, "row_bytes": 48_000, "files": 400, "file_bytes": 12_000, "rounds": 3}
QUICK = {"parts": 4, "rows": 24, "row_bytes": 24_000, "files": 80, "file_bytes": 12_000, "rounds": 2}
THREADS = 4

SERVER = """
import sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
server.stop()
"""


def start_server() -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    port = int(server.stdout.readline())
    return server, f"http://127.0.0.1:{port}"


def clients(endpoint: str) -> dict[str, pafs.FileSystem]:
    import s3fs

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    native = s3_filesystem()
    fsspec_s3 = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fsspec_s3.mkdir(BUCKET)
    return {"pyarrow": native, "s3fs": pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_s3))}


def make_store(fs: pafs.FileSystem, root: str, settings: dict) -> None:
    rng = np.random.default_rng(0)
    files = []
    for index in range(settings["parts"]):
        rows = [rng.bytes(settings["row_bytes"]) for _ in range(settings["rows"])]
        table = pa.table({"sample_id": [f"s{index}-{i}" for i in range(len(rows))], "label": rows})
        path = f"train/part-{index:05d}.parquet"
        pq.write_table(table, join(root, path), filesystem=fs)
        files.append({"path": path, "rows": len(rows)})
    manifest = {"splits": {"train": {"files": files}}}
    write_bytes_atomically(fs, join(root, "manifest.json"), json.dumps(manifest).encode())


def read_store(fs: pafs.FileSystem, root: str) -> int:
    manifest = json.loads(read_bytes(fs, join(root, "manifest.json")))
    parts = manifest["splits"]["train"]["files"]
    return sum(pq.read_table(join(root, part["path"]), filesystem=fs).num_rows for part in parts)


def write_output(fs: pafs.FileSystem, root: str, payloads: list[bytes]) -> None:
    paths = [join(root, f"images/s{i // 2:05d}_{i % 2}.png") for i in range(len(payloads))]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(lambda item: write_bytes_atomically(fs, *item), zip(paths, payloads)))
    manifest = pa.table({"image_path": paths, "bytes": [len(p) for p in payloads]})
    with fs.open_output_stream(join(root, "manifest.parquet")) as stream:
        pq.write_table(manifest, stream)


def run(quick: bool = False) -> list[dict]:
    settings = QUICK if quick else FULL
    server, endpoint = start_server()
    # moto takes any credentials; these stand in for none, and go when the benchmark ends.
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    try:
        filesystems = clients(endpoint)
        store = f"{BUCKET}/store"
        make_store(filesystems["pyarrow"], store, settings)
        payloads = [np.random.default_rng(i).bytes(settings["file_bytes"]) for i in range(settings["files"])]
        best = {(name, work): float("inf") for name in filesystems for work in ("read", "write")}
        for _ in range(settings["rounds"]):
            for name, fs in filesystems.items():
                began = time.perf_counter()
                assert read_store(fs, store) == settings["parts"] * settings["rows"]
                best[name, "read"] = min(best[name, "read"], time.perf_counter() - began)
                began = time.perf_counter()
                write_output(fs, f"{BUCKET}/synth-{name}-{uuid.uuid4().hex[:6]}", payloads)
                best[name, "write"] = min(best[name, "write"], time.perf_counter() - began)
    finally:
        server.stdin.close()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    mib = settings["parts"] * settings["rows"] * settings["row_bytes"] / 2**20
    read_what = (f"a store of {settings['parts']} Parquet parts x {settings['rows']} rows ({mib:.0f} MiB) "
                 "and its manifest")
    write_what = (f"{settings['files']} files of {settings['file_bytes'] // 1000} kB from {THREADS} threads "
                  "and a manifest.parquet")
    common = f"moto server on 127.0.0.1, best of {settings['rounds']} rounds, taking turns"
    figures = []
    for work, what in (("read", read_what), ("write", write_what)):
        for name in filesystems:
            figures.append({"name": f"s3_{work}_seconds_{name}", "value": best[name, work], "unit": "s", "goal": "n/a",
                            "compared": f"{name}: {what}; {common}"})
        figures.append({"name": f"s3_{work}_s3fs_vs_pyarrow", "value": best["s3fs", work] / best["pyarrow", work],
                        "unit": "ratio", "goal": "n/a",
                        "compared": f"s3fs time / pyarrow time (above 1: pyarrow faster); {what}; {common}"})
    return figures


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv[1:]):
        print(f"{figure['name']:32s} {figure['value']:10.3f} {figure['unit']:6s} {figure['compared']}")
