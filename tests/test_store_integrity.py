"""A store that can be trusted: damaged parts are named before any job starts Ray, found by
`jobs/verify_store.py`, and rewritten by a re-run of preprocessing.

    .venv/bin/python -m pytest tests/test_store_integrity.py -q

Every test damages its own copy of the session's toy store, never the shared one.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from conftest import TOY_STORE_RESOLUTIONS
from synth_models import make_test_checkpoint

from jobs.evaluate import main as evaluate_main
from jobs.preprocess import main as preprocess_main
from jobs.synthesize import main as synthesize_main
from jobs.train import main as train_main
from jobs.train_segmenter import main as train_segmenter_main
from jobs.verify_store import main as verify_main
from pipeline.data.store import StoreError, open_store
from pipeline.runtime import entrypoint

BUCKET = "test-bucket"  # the s3_endpoint fixture's


@pytest.fixture()
def store(toy_store, tmp_path) -> Path:
    """A private copy of the toy store, free to damage."""
    return Path(shutil.copytree(toy_store, tmp_path / "store"))


def parts(store: Path, split: str) -> list[dict]:
    return json.loads((store / "manifest.json").read_text())["splits"][split]["files"]


def cut_to_a_third(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return len(data) // 3, len(data)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def all_rows(store: Path) -> dict[str, list]:
    """Every row of every part, split by split, as Python values."""
    return {split: [pq.read_table(store / part["path"]).to_pylist() for part in parts(store, split)]
            for split in ("train", "val")}


# Each job's command line (less --store), given a folder for its other inputs and outputs.
# None of them gets as far as Ray: the store check comes first.
JOBS = {
    "train": (train_main, lambda tmp: ["--preset", "crn-tiny", "--vgg-weights", "random", "--dry-run"]),
    "train (no dry run)": (train_main, lambda tmp: ["--preset", "crn-tiny", "--vgg-weights", "random", "--steps", "1"]),
    "evaluate": (evaluate_main, lambda tmp: ["--oracle", "--segmenter", "drn-d-22:/nowhere/drn.pth", "--dry-run"]),
    "synthesize": (synthesize_main, lambda tmp: ["--model", str(make_test_checkpoint(tmp / "model.pt")),
                                                 "--output", str(tmp / "out"), "--split", "val", "--dry-run"]),
    "train_segmenter": (train_segmenter_main, lambda tmp: ["--dry-run"]),
}


@pytest.mark.parametrize("job", JOBS)
def test_a_torn_part_stops_every_job_with_one_line_naming_it(store, job, tmp_path, capsys):
    """A part cut to a third: each job's real entry point stops on the driver, before Ray, with
    one line that names the part and its sizes (the training job's Ray Train run would
    otherwise die with an ArrowInvalid traceback)."""
    part = store / parts(store, "train")[0]["path"]
    size, original = cut_to_a_third(part)
    main, extra = JOBS[job]
    assert entrypoint(main)(["--store", str(store), *extra(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {part}: {size} bytes, the manifest says {original}; the store is damaged: "
                       f"run `python jobs/verify_store.py {store}` or re-run preprocessing to rewrite it")


def test_open_store_names_a_missing_part_and_one_whose_footer_is_gone(store):
    first, second = (store / part["path"] for part in parts(store, "val")[:1] + parts(store, "train")[:1])
    first.unlink()
    with pytest.raises(StoreError, match=f"^{first}: missing; the store is damaged"):
        open_store(store)
    first.write_bytes(second.read_bytes()[:1])  # a file of one byte, the size unrecorded: footer check
    manifest = json.loads((store / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split["files"]:
            del entry["bytes"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=f"^{first}: unreadable Parquet footer"):
        open_store(store)


def test_verify_finds_a_flipped_byte_that_the_cheap_check_cannot(store, capsys):
    verify = entrypoint(verify_main)
    assert verify([str(store)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"verify: {store} is sound: manifest and 2 parts, 12 rows")
    assert all(line.startswith("ok ") for line in out[:-1])

    part = store / parts(store, "train")[0]["path"]
    flip_a_byte(part)
    open_store(store)  # same size, footer intact: only a full read finds it
    assert verify(["--store", str(store)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    damaged = [line for line in out if line.startswith("DAMAGED")]
    assert len(damaged) == 1 and damaged[0].startswith(f"DAMAGED  {part}: checksum mismatch: sha256 ")
    assert out[-1].startswith(f"verify: {store} is DAMAGED: 1 of 2 parts damaged")


def test_verify_checks_the_manifest_and_reads_a_store_written_without_sizes(store, capsys):
    manifest = json.loads((store / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split["files"]:
            del entry["bytes"], entry["sha256"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    open_store(store)  # an older store still opens: its parts are checked by their footers
    assert verify_main([str(store)]) == 0
    assert "(no size in the manifest; no sha256 in the manifest)" in capsys.readouterr().out

    manifest["splits"]["val"]["count"] += 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert verify_main([str(store)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  {store / 'manifest.json'}: split 'val' counts 5 samples, its parts hold 4" in out


def test_rerunning_preprocessing_rewrites_a_torn_part(store, toy_store, toy_source, capsys, ray_session):
    part_path = parts(store, "val")[0]["path"]
    size, original = cut_to_a_third(store / part_path)
    argv = ["--source", str(toy_source), "--out", str(store), "--resolutions", TOY_STORE_RESOLUTIONS]
    assert preprocess_main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing to do" not in out
    assert f"preprocess: rewrote {store / part_path}: {size} bytes, the manifest says {original}" in out
    assert "parts: 1 written, 1 reused" in out
    assert verify_main([str(store)]) == 0
    assert all_rows(store) == all_rows(toy_store)
    assert parts(store, "val") == parts(toy_store, "val")  # the same size and checksum again

    assert preprocess_main(argv) == 0  # and now it is whole: nothing to do
    assert "is up to date (same sources and settings); nothing to do" in capsys.readouterr().out

    # A changed byte only verify finds; the repair it prints: delete the part, re-run.
    train_part = store / parts(store, "train")[0]["path"]
    flip_a_byte(train_part)
    assert verify_main([str(store)]) == 1
    train_part.unlink()
    assert preprocess_main(argv) == 0
    assert f"preprocess: rewrote {train_part}: missing" in capsys.readouterr().out
    assert verify_main([str(store)]) == 0
    assert all_rows(store) == all_rows(toy_store)


def test_verify_reads_a_store_on_s3(store, s3_endpoint, capsys):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"tests/{uuid.uuid4().hex[:8]}/store"
    for path in store.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(store)}", Body=path.read_bytes())
    uri = f"s3://{BUCKET}/{prefix}"
    assert verify_main([uri]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"verify: {uri} is sound")

    part = parts(store, "train")[0]["path"]
    data = (store / part).read_bytes()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{part}", Body=data[: len(data) // 3])
    assert verify_main([uri]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  {uri}/{part}: {len(data) // 3} bytes, the manifest says {len(data)}" in out
    with pytest.raises(StoreError, match=f"^{uri}/{part}: {len(data) // 3} bytes, the manifest says {len(data)}; "):
        open_store(uri)
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{part}")
    with pytest.raises(StoreError, match=f"^{uri}/{part}: missing; the store is damaged"):
        open_store(uri)


def test_verify_says_when_there_is_no_store(tmp_path, capsys):
    assert entrypoint(verify_main)([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: no store at {tmp_path}: manifest.json is missing")
