"""Read a TensorFlow 1 checkpoint (`model.ckpt.index` + `model.ckpt.data-*`) into numpy arrays.

The authors released their models as TF1 checkpoints ("V2" tensor bundles, what
`tf.train.Saver` writes). Reading them needs no TensorFlow: the format is small and fixed.

    <prefix>.index                   a LevelDB-style table (SSTable): key "" holds the
                                     BundleHeaderProto, every other key is a tensor's name and
                                     holds its BundleEntryProto (dtype, shape, shard, offset, size)
    <prefix>.data-00000-of-0000N     the tensors' raw little-endian bytes, back to back

The table: a 48-byte footer (two varint block handles, then the magic number) points at an
index block, whose values point at data blocks; each block is prefix-compressed entries
followed by its restart offsets, and carries a 5-byte trailer (compression type and CRC).
TensorFlow writes the bundle's table uncompressed. The few protobuf fields we need are read
straight off the wire format.

Why not the PyPI reader `tensorflow-checkpoint-reader` (0.2.2): it pins protobuf < 3.19,
which MLflow and Ray cannot run with, and carries 4.5 MB of generated TensorFlow protos.

Checked: the footer's magic, every block and tensor lying inside its file, shapes agreeing
with byte sizes, the data shards all present. Not checked: the CRC32C checksums (Python has
no CRC32C built in; pure-Python CRC over a 400 MB file takes minutes). Whoever imports a
checkpoint records the files' sha256 instead.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Callable

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
# tensorflow/core/framework/types.proto DataType -> numpy little-endian dtype.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2",
          19: "<f2", 22: "<u4", 23: "<u8"}


class TFCheckpointError(ValueError):
    """A TF checkpoint that cannot be read (missing, truncated, not a checkpoint): one line."""


def checkpoint_prefix(path: str | Path) -> Path:
    """The checkpoint's prefix (`.../model.ckpt`) from the prefix itself, its `.index` file, or
    a folder holding either a TF `checkpoint` state file or exactly one `*.index` file."""
    path = Path(path)
    if path.name.endswith(".index"):
        path = path.with_name(path.name[: -len(".index")])
    if path.is_dir():
        state = path / "checkpoint"
        named = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(), re.M) if state.is_file() else None
        if named:
            prefix = Path(named.group(1))
            return prefix if prefix.is_absolute() else path / prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise TFCheckpointError(f"TF checkpoint folder {path}: {len(indexes)} *.index files and no "
                                    "'checkpoint' file naming one; pass the .index file itself")
        return indexes[0].with_name(indexes[0].name[: -len(".index")])
    return path


def read_tf_checkpoint(path: str | Path, wanted: Callable[[str], bool] = lambda name: True) -> dict[str, np.ndarray]:
    """The tensors of the checkpoint at `path` (see `checkpoint_prefix`) by variable name, those
    that `wanted(name)` accepts (the others' bytes are not read: optimizer slots, say)."""
    prefix = checkpoint_prefix(path)
    header, entries = _read_index(prefix)
    num_shards = _one(header, 1, 1)
    if _one(header, 2, 0) != 0:
        raise TFCheckpointError(f"TF checkpoint {prefix}.index: a big-endian bundle is not supported")
    shards = []
    for shard in range(num_shards):
        data_path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
        if not data_path.is_file():
            raise TFCheckpointError(f"TF checkpoint {prefix}: data file {data_path.name} is missing")
        shards.append(data_path)
    return {name: _read_tensor(name, entry, shards) for name, entry in entries.items() if wanted(name)}


def tf_checkpoint_names(path: str | Path) -> list[str]:
    """Every variable name in the checkpoint's index, sorted (no tensor is read)."""
    return sorted(_read_index(checkpoint_prefix(path))[1])


def _read_index(prefix: Path) -> tuple[dict[int, list], dict[str, dict[int, list]]]:
    """(BundleHeaderProto fields, {tensor name: BundleEntryProto fields}) of `<prefix>.index`."""
    index_path = Path(f"{prefix}.index")
    if not index_path.is_file():
        raise TFCheckpointError(f"TF checkpoint {prefix}: no index file {index_path}")
    try:
        entries = _read_table(index_path)
        header = _fields(entries.pop(b"", b""))
        return header, {key.decode("utf-8", errors="replace"): _fields(value) for key, value in entries.items()}
    except (IndexError, struct.error):  # a varint or field running past its bytes
        raise TFCheckpointError(f"TF checkpoint index {index_path} is corrupt (a record runs past its end)") from None


def _read_tensor(name: str, entry: dict[int, list], shards: list[Path]) -> np.ndarray:
    if entry.get(7):
        raise TFCheckpointError(f"TF checkpoint tensor {name}: partitioned variables are not supported")
    dtype_code = _one(entry, 1, 0)
    if dtype_code not in DTYPES:
        raise TFCheckpointError(f"TF checkpoint tensor {name}: data type {dtype_code} is not supported")
    shape = [_one(_fields(dim), 1, 0) for dim in _fields(_one(entry, 2, b"")).get(2, [])]
    shard, offset, size = _one(entry, 3, 0), _one(entry, 4, 0), _one(entry, 5, 0)
    dtype = np.dtype(DTYPES[dtype_code])
    if size != dtype.itemsize * int(np.prod(shape)):
        raise TFCheckpointError(f"TF checkpoint tensor {name}: {size} bytes for shape {shape} of {dtype}")
    if shard >= len(shards):
        raise TFCheckpointError(f"TF checkpoint tensor {name}: in shard {shard}, but there are {len(shards)}")
    with open(shards[shard], "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise TFCheckpointError(f"TF checkpoint data file {shards[shard]} is truncated: tensor {name} needs "
                                f"bytes {offset}..{offset + size}, the file ends at {shards[shard].stat().st_size}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ---- the table (SSTable) ----

def _read_table(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE or struct.unpack("<Q", data[-8:])[0] != TABLE_MAGIC:
        raise TFCheckpointError(f"TF checkpoint index {path} is truncated or not a checkpoint index "
                                "(no table footer)")
    footer = data[-FOOTER_SIZE:]
    _metaindex, position = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, position)
    entries: dict[bytes, bytes] = {}
    for _separator, handle in _block_entries(_block(data, index_handle, path)):
        block_handle, _ = _block_handle(handle, 0)
        entries.update(_block_entries(_block(data, block_handle, path)))
    return entries


def _block_handle(data: bytes, position: int) -> tuple[tuple[int, int], int]:
    offset, position = _varint(data, position)
    size, position = _varint(data, position)
    return (offset, size), position


def _block(data: bytes, handle: tuple[int, int], path: Path) -> bytes:
    offset, size = handle
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE:
        raise TFCheckpointError(f"TF checkpoint index {path} is truncated (a block ends past the file)")
    if data[offset + size] != 0:
        raise TFCheckpointError(f"TF checkpoint index {path}: compressed blocks are not supported")
    return data[offset: offset + size]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Prefix-compressed (shared, unshared, value length, key suffix, value) entries."""
    num_restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 * (num_restarts + 1)
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        key = key[:shared] + block[position: position + unshared]
        position += unshared
        entries.append((key, block[position: position + value_length]))
        position += value_length
    return entries


# ---- protobuf wire format (only what the bundle's two messages use) ----

def _varint(data: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(message: bytes) -> dict[int, list]:
    """field number -> values (ints for varint and fixed fields, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    position = 0
    while position < len(message):
        tag, position = _varint(message, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(message, position)
        elif wire_type == 1:
            value, position = struct.unpack_from("<Q", message, position)[0], position + 8
        elif wire_type == 2:
            length, position = _varint(message, position)
            value, position = message[position: position + length], position + length
        elif wire_type == 5:
            value, position = struct.unpack_from("<I", message, position)[0], position + 4
        else:
            raise TFCheckpointError(f"TF checkpoint index: unexpected protobuf wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields: dict[int, list], number: int, default):
    values = fields.get(number)
    return values[-1] if values else default
