"""Online synthesis: a registered tiny model served by Ray Serve on the session's Ray (jobs/serve.py).

    .venv/bin/python -m pytest tests/test_serve.py -q

- The K images answered equal the model called directly (ModelRef.build()) on the same map,
  whether the map comes as colours, as one-channel ids, or larger (brought down by nearest
  neighbour, as the synthesis job does); `?variant=k` answers image k alone as PNG.
- /schema lists the model's classes, ids and colours; /health, the page and the store's maps
  answer; every answer names the model version in its headers.
- Concurrent requests share forward passes (X-Batch-Size and /health's batch counts).
- Every kind of bad request gets its 4xx and a one-line reason, and the service still answers.
- The alias moves while clients keep asking: no request fails, each client's answers switch
  from version 1 to version 2 once, and version 2's answers are its own model's images.
"""
from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from PIL import Image
from serve_fixtures import (MAX_BATCH_SIZE, MAX_BODY_BYTES, PATIENCE_S, colour_png, decode_images, ids_png,
                            served_model)

from crn.inference import generate_images
from crn.resolution import Resolution
from jobs.serve import main as serve_main
from pipeline.data.prepare import downsample_label
from pipeline.data.schema import load_schema
from pipeline.data.store import decode_labels, label_column, open_store
from pipeline.errors import UserError
from pipeline.registry.models import open_model
from pipeline.serving.config import ServeConfig, parse_serve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCHEMA = load_schema("cityscapes")
NAME = "crn-serve-test"


@pytest.fixture(scope="module")
def service(toy_store, ray_session, tmp_path_factory):
    with served_model(toy_store, tmp_path_factory.mktemp("serve"), NAME) as served:
        yield served


@pytest.fixture(scope="module")
def val_maps(toy_store) -> dict[str, np.ndarray]:
    """The toy store's val maps at the model's 32x64 and at twice that."""
    table = {}
    for resolution in ("32x64", "64x128"):
        read = open_store(toy_store).read_table("val", resolution)
        table[resolution] = decode_labels(read.column(label_column(resolution)), resolution)
    table["ids"] = open_store(toy_store).read_table("val", "32x64").column("sample_id").to_pylist()
    return table


def expected_images(service, version: str, labels: np.ndarray) -> np.ndarray:
    """The registered model called directly, in passes padded as the service pads them."""
    network = open_model(service.uri(version)).build()
    return generate_images(network, labels[None], batch_size=MAX_BATCH_SIZE)[0]


def synthesize(service, body: bytes, **params) -> requests.Response:
    return requests.post(f"{service.url}/synthesize", data=body, params=params, timeout=PATIENCE_S)


def test_answers_equal_the_model_called_directly(service, val_maps):
    labels = val_maps["32x64"][0]
    expected = expected_images(service, "1", labels)
    for body, kind in ((colour_png(labels, SCHEMA), "color"), (ids_png(labels, SCHEMA), "ids")):
        answer = synthesize(service, body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "1"
        assert answer.headers["X-Model-Uri"] == f"models:/{NAME}/1"
        content = answer.json()
        assert content["label_type"] == kind and content["num_outputs"] == 2 and content["size"] == "32x64"
        np.testing.assert_array_equal(decode_images(content), expected)

    one = synthesize(service, colour_png(labels, SCHEMA), variant="1")
    assert one.headers["Content-Type"] == "image/png" and one.headers["X-Model-Version"] == "1"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(one.content)).convert("RGB")), expected[1])


def test_a_larger_map_is_brought_down_as_the_synthesis_job_does(service, val_maps):
    large = val_maps["64x128"][1]
    answer = synthesize(service, colour_png(large, SCHEMA), size="32x64")
    assert answer.status_code == 200, answer.text
    expected = expected_images(service, "1", downsample_label(large, Resolution(32, 64)))
    np.testing.assert_array_equal(decode_images(answer.json()), expected)


def test_schema_health_page_and_store_maps(service, val_maps):
    schema = requests.get(f"{service.url}/schema", timeout=PATIENCE_S)
    assert schema.status_code == 200 and schema.headers["X-Model-Version"] == "1"
    content = schema.json()
    assert [c["name"] for c in content["classes"]] == SCHEMA.class_names
    assert content["classes"][0]["ids"] == [7] and content["classes"][0]["colors"] == [[128, 64, 128]]
    assert content["void_index"] == 19 and content["resolution"] == "32x64" and content["num_outputs"] == 2

    health = requests.get(f"{service.url}/health", timeout=PATIENCE_S)
    assert health.json()["status"] == "ok" and health.json()["follow"]["alias"] == "champion"
    page = requests.get(f"{service.url}/", timeout=PATIENCE_S)
    assert page.status_code == 200 and "<canvas" in page.text and page.headers["X-Model-Version"] == "1"
    for asset in ("page/paint.js", "page/paint.css"):
        assert requests.get(f"{service.url}/{asset}", timeout=PATIENCE_S).status_code == 200

    listing = requests.get(f"{service.url}/labels", timeout=PATIENCE_S).json()
    assert listing["ids"] == sorted(val_maps["ids"]) and listing["split"] == "val"
    sample = val_maps["ids"][2]
    picture = requests.get(f"{service.url}/labels/{sample}", timeout=PATIENCE_S)
    assert picture.headers["Content-Type"] == "image/png"
    assert picture.content == colour_png(val_maps["32x64"][2], SCHEMA)
    missing = requests.get(f"{service.url}/labels/no-such-sample", timeout=PATIENCE_S)
    assert missing.status_code == 404 and "no-such-sample" in missing.json()["error"]


def test_concurrent_requests_share_forward_passes(service, val_maps):
    bodies = [colour_png(labels, SCHEMA) for labels in val_maps["32x64"]] * 2  # 8 requests
    before = requests.get(f"{service.url}/health", timeout=PATIENCE_S).json()["batches"]
    sizes = []
    for _ in range(5):  # the machine may be slow to start the clients; a few rounds, not a timing
        gate = threading.Barrier(len(bodies))

        def ask(body: bytes) -> requests.Response:
            gate.wait()
            return synthesize(service, body)

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(ask, bodies))
        assert all(a.status_code == 200 for a in answers)
        sizes += [int(a.headers["X-Batch-Size"]) for a in answers]
        if max(sizes) > 1:
            break
    assert 1 < max(sizes) <= MAX_BATCH_SIZE
    after = requests.get(f"{service.url}/health", timeout=PATIENCE_S).json()["batches"]
    grown = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert any(int(size) > 1 for size in grown), after
    # Each image is the map's own, whoever shared its pass.
    np.testing.assert_array_equal(decode_images(answers[5].json()),
                                  expected_images(service, "1", val_maps["32x64"][1]))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels and whose data holds none: a
    decompression bomb's header, a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def jpeg_of(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(SCHEMA_COLOURS[labels]).save(buffer, format="JPEG")
    return buffer.getvalue()


def with_unknown_colour(labels: np.ndarray, pixels: int) -> bytes:
    picture = SCHEMA_COLOURS[labels].copy()
    picture.reshape(-1, 3)[:pixels] = (1, 2, 3)  # in no class's colours
    return png_of(picture)


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


SCHEMA_COLOURS = np.asarray([cls.colors[0] for cls in SCHEMA.all_classes], dtype=np.uint8)
GOOD = np.full((32, 64), 0, dtype=np.uint8)

# (name, body, query, status, words the one-line reason holds)
BAD_REQUESTS = [
    ("not an image", b"hello, not a png", {}, 400, "not an image"),
    ("empty body", b"", {}, 400, "empty"),
    ("a JPEG", jpeg_of(GOOD), {}, 400, "not PNG"),
    ("a truncated PNG", colour_png(GOOD, SCHEMA)[:60], {}, 400, "unreadable"),
    ("a decompression bomb", png_header_only(60000, 30000), {}, 413, "too large"),
    ("a body over --max-body-bytes", b"\0" * (MAX_BODY_BYTES + 1), {}, 413, "max-body-bytes"),
    ("colours outside the palette", with_unknown_colour(GOOD, 512), {}, 422, "outside schema"),  # 25%
    ("ids outside the schema", png_of(np.full((32, 64), 200, dtype=np.uint8)), {}, 422, "outside schema"),
    ("not 1:2", colour_png(np.zeros((32, 32), np.uint8), SCHEMA), {}, 422, "aspect"),
    ("smaller than the model", colour_png(np.zeros((16, 32), np.uint8), SCHEMA), {}, 422, "too small"),
    ("a size the model cannot take", colour_png(GOOD, SCHEMA), {"size": "64x128"}, 422, "32x64"),
    ("a size that is no size", colour_png(GOOD, SCHEMA), {"size": "big"}, 400, "HxW"),
    ("a variant the model lacks", colour_png(GOOD, SCHEMA), {"variant": "2"}, 400, "0..1"),
    ("an unknown label type", colour_png(GOOD, SCHEMA), {"label_type": "words"}, 400, "label_type"),
]


@pytest.mark.parametrize("name,body,query,status,words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_gets_its_4xx_and_one_line(service, name, body, query, status, words):
    answer = synthesize(service, body, **query)
    assert answer.status_code == status, answer.text
    reason = answer.json()["error"]
    assert words in reason and "\n" not in reason
    assert answer.headers["X-Model-Version"] == "1"


def test_a_streamed_body_over_the_limit_is_refused_as_it_arrives(service):
    chunks = (b"\0" * 8192 for _ in range(MAX_BODY_BYTES // 8192 + 2))  # no Content-Length: chunked
    answer = requests.post(f"{service.url}/synthesize", data=chunks, timeout=PATIENCE_S)
    assert answer.status_code == 413 and "max-body-bytes" in answer.json()["error"]


def test_a_few_unknown_colours_become_void_and_it_still_serves(service, val_maps):
    answer = synthesize(service, with_unknown_colour(GOOD, 10))  # 10 of 2048 pixels: under --max-unknown-fraction
    assert answer.status_code == 200 and answer.json()["unknown_pixels"] == 10
    good = synthesize(service, colour_png(val_maps["32x64"][0], SCHEMA))
    assert good.status_code == 200 and len(good.json()["images"]) == 2


def test_config_rules_and_dry_run(service, capsys):
    with pytest.raises(UserError, match="--replicas 5 must lie within"):
        parse_serve_config(["--model", "x.pt", "--replicas", "5", "--max-replicas", "4"])
    with pytest.raises(UserError, match="--max-unknown-fraction"):
        parse_serve_config(["--model", "x.pt", "--max-unknown-fraction", "2"])
    assert parse_serve_config(["--model", NAME]).model == f"models:/{NAME}@champion"
    assert serve_main(["--model", NAME, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert '"model.version": "1"' in printed and '"follows": "@champion"' in printed
    assert ServeConfig(model="x").host == "127.0.0.1"  # nothing listens beyond loopback unless asked


def test_the_alias_moves_while_clients_ask_and_no_request_fails(service, val_maps):
    labels = val_maps["32x64"][3]
    body = colour_png(labels, SCHEMA)
    stop = threading.Event()
    seen: list[list[tuple[int, str, bytes]]] = [[] for _ in range(3)]
    failures: list[str] = []

    def client(record: list) -> None:
        while not stop.is_set():
            try:
                answer = synthesize(service, body)
                record.append((answer.status_code, answer.headers.get("X-Model-Version", ""), answer.content))
            except requests.RequestException as exc:
                failures.append(str(exc))

    def answers_of(version: str) -> int:
        return sum(1 for record in seen for _, v, _ in record if v == version)

    with ThreadPoolExecutor(len(seen)) as pool:
        futures = [pool.submit(client, record) for record in seen]
        try:
            wait_for(lambda: answers_of("1") >= 6, "answers from version 1")
            MlflowClient().set_registered_model_alias(NAME, "champion", service.versions[1])
            wait_for(lambda: answers_of("2") >= 6, "answers from version 2 after the alias moved")
        finally:
            stop.set()
            for future in futures:
                future.result()
    assert not failures
    assert all(status == 200 for record in seen for status, _, _ in record)
    for record in seen:  # once a client has an answer from version 2, it never gets version 1 again
        versions = [v for _, v, _ in record]
        assert versions == sorted(versions) and set(versions) <= {"1", "2"}
    last = next(content for record in seen for status, v, content in reversed(record) if v == "2")
    np.testing.assert_array_equal(decode_images(json.loads(last)), expected_images(service, "2", labels))
    health = requests.get(f"{service.url}/health", timeout=PATIENCE_S).json()
    assert health["model"]["version"] == "2" and health["follow"]["swaps"][-1]["to"] == "2"


def wait_for(condition, what: str) -> None:
    """Until `condition()` holds; a guard against a hang, not a timing."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {PATIENCE_S} s")
        time.sleep(0.1)
