"""Checksummed safetensors files: written in one pass over the tensors, verified before their data is used.

The checksum (xxh3-128 over the metadata, then every tensor's name, dtype, shape and bytes) is stored in the
file's own metadata under `checksum`, so it must be in the header, which comes before the data. Hashing the
tensors first and writing them after costs a second trip through memory: on a 2-core VM that was 3-10% of a save
(benchmarks/checkpoint_hash.py). So the header is written with a placeholder of the checksum's exact length, each
megabyte of tensor data is hashed right after it is written, while it is still in the CPU's cache, and the
placeholder is overwritten at the end, before the file is renamed into place. Writing the tensors' memory
straight to the file also spares the two copies safetensors' own `save()` makes. The writes run in a second
thread (a write releases the GIL) while the caller's thread hashes the same megabytes: under 2% of a save.

Kinds of checksum (the prefix of the stored value):
- `xxh3-128.2`: the tensors in the order they lie in the file (what this writer can hash in one pass);
- `xxh3-128`: the tensors sorted by name (tuilm 0.x files written before the one-pass writer); still verified.

A file without a checksum (an older tuilm's) loads with a note; one whose checksum entry is damaged does not.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch
import xxhash

from tuilm.atomic import atomic_write_with
from tuilm.checkpoint.header import MAX_HEADER, Header
from tuilm.errors import CheckpointError
from tuilm.formatting import short

CHECKSUM = "checksum"  # metadata key: "<kind>:<hex>" over the other metadata and every tensor
BY_NAME = "xxh3-128"
IN_FILE_ORDER = "xxh3-128.2"
KINDS = (IN_FILE_ORDER, BY_NAME)
CHUNK = 1 << 20  # hashed while still in the cache the write just read it through
HASHER = xxhash.xxh3_128  # a module attribute so that benchmarks/checkpoint_hash.py can time a save without it
# Every dtype the official safetensors library maps to torch (safetensors.torch), so that it reads each file
# tuilm writes; any other dtype (float8_e8m0fnu, complex128, the sub-byte ints, quantized) is refused at save time.
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.complex64: "C64",
}
# safetensors' own order of the data (widest alignment first, then by name): every tensor stays aligned.
ORDER = ("C64", "U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16")
LAYOUT_RANK = {
    n: i for i, n in enumerate((*ORDER, "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I8", "U8", "BOOL"))
}


def check_dtypes(tensors: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the first tensor whose dtype safetensors cannot store (before anything is written)."""
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            kinds = ", ".join(str(d).removeprefix("torch.") for d in DTYPE_NAMES)
            raise CheckpointError(f"cannot save {name}: safetensors has no {t.dtype}; convert it to one of {kinds}")


Item = tuple[str, str, tuple[int, ...], Any]  # name, dtype, shape, bytes-like data


def _start(metadata: dict[str, str]):
    h = HASHER()
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)).encode())
    return h


def _describe(name: str, dtype: str, shape: Iterable[int]) -> bytes:
    return json.dumps([name, dtype, list(shape)]).encode()


def digest(metadata: dict[str, str], items: Iterable[Item], kind: str = IN_FILE_ORDER) -> str:
    """The checksum of this metadata (but the checksum itself) and these tensors, given in file order."""
    if kind == BY_NAME:
        items = sorted(items, key=lambda item: item[0])
    h = _start(metadata)
    for name, dtype, shape, data in items:
        h.update(_describe(name, dtype, shape))
        h.update(data)
    return f"{kind}:{h.hexdigest()}"


def layout(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The tensors in the order a file holds them (the same as safetensors' `save`)."""
    return sorted(tensors.items(), key=lambda item: (LAYOUT_RANK[DTYPE_NAMES[item[1].dtype]], item[0]))


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (it is on the CPU and contiguous)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def tensors_digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The checksum `write` stores for these tensors (on the CPU, contiguous) and this metadata."""
    return digest(metadata, ((n, DTYPE_NAMES[t.dtype], tuple(t.shape), _raw(t)) for n, t in layout(tensors)))


def _header(tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors:
        end = offset + t.numel() * t.element_size()
        entries[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    header = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    return header + b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes, so the data is aligned


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write a safetensors file atomically, with the checksum of the metadata and tensors in its metadata.

    `metadata[CHECKSUM]` is set to the checksum, which is returned."""
    check_dtypes(tensors)
    ordered = layout(tensors)
    placeholder = f"{IN_FILE_ORDER}:{'0' * 32}"
    metadata[CHECKSUM] = placeholder
    header = _header(ordered, metadata)
    if len(header) > MAX_HEADER:  # refused before anything is written: the file it would replace stays readable
        raise CheckpointError(
            f"{path}: not written: its metadata (config and tokenizer) is {len(header):,} bytes, over safetensors' "
            f"limit of {MAX_HEADER:,}; shorten the recipe's text (description, sample_prompt)"
        )
    marker = json.dumps({CHECKSUM: placeholder}, separators=(",", ":"))[1:-1].encode()
    # The key is unique and other values are JSON strings, whose quotes are escaped: the marker is found once.
    at = header.index(marker) + len(marker) - len(placeholder) - 1

    def fill(f: BinaryIO) -> None:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        # A second thread writes while this one hashes: a write releases the GIL inside the system call, so the
        # hash (which holds it) runs beside the copy into the page cache instead of after it.
        chunks: queue.Queue = queue.Queue(maxsize=8)
        failed: list[BaseException] = []

        def writer() -> None:
            while (chunk := chunks.get()) is not None:
                if not failed:
                    try:
                        f.write(chunk)
                    except BaseException as e:  # reported in the caller's thread, after the join
                        failed.append(e)

        thread = threading.Thread(target=writer, name="tuilm-checkpoint-writer", daemon=True)
        thread.start()
        try:
            h = _start(metadata)
            for name, t in ordered:
                h.update(_describe(name, DTYPE_NAMES[t.dtype], t.shape))
                data = _raw(t)
                for i in range(0, len(data), CHUNK):
                    chunk = data[i : i + CHUNK]
                    chunks.put(chunk)
                    h.update(chunk)
                    if failed:
                        break
        finally:
            chunks.put(None)
            thread.join()
        if failed:
            raise failed[0]
        metadata[CHECKSUM] = f"{IN_FILE_ORDER}:{h.hexdigest()}"
        f.seek(8 + at)
        f.write(metadata[CHECKSUM].encode())

    atomic_write_with(path, fill)
    return metadata[CHECKSUM]


def _damaged_key(metadata: dict[str, str]) -> bool:
    """Whether a file without a checksum entry once had one: a bit flipped in the key itself would otherwise pass
    for a file of an older tuilm, whose contents cannot be verified, and load. Its value is still a checksum, or
    its key is still within a few characters of the name."""
    for key, value in metadata.items():
        if isinstance(value, str) and value.partition(":")[0] in KINDS:
            return True
        if len(key) == len(CHECKSUM) and sum(a != b for a, b in zip(key, CHECKSUM, strict=True)) <= 4:
            return True
    return False


def verify(path: Path, header: Header, data: bytes, what: str) -> None:
    """Check `data` (the whole file, as read) against the checksum its header stores; `what` names its contents."""
    stored = header.metadata.get(CHECKSUM)
    if stored is None and _damaged_key(header.metadata):
        raise CheckpointError(
            f"{path}: corrupt checkpoint (its checksum entry is damaged): use another checkpoint of the run "
            "(best/last) or train again"
        )
    if stored is None:
        print(
            f"note: {path} has no checksum (written by an older tuilm): its {what} cannot be verified", file=sys.stderr
        )
        return
    kind = stored.partition(":")[0]
    if kind not in KINDS:
        raise CheckpointError(f"{path}: the checksum is of an unknown kind ({short(stored)}); upgrade tuilm")
    view = memoryview(data)
    start = header.data_start
    in_file = sorted(header.tensors.items(), key=lambda item: item[1].start)
    actual = digest(
        header.metadata,
        ((n, t.dtype, t.shape, view[start + t.start : start + t.end]) for n, t in in_file),
        kind,
    )
    if actual != stored:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (checksum mismatch): the file changed after tuilm wrote it; "
            "use another checkpoint of the run (best/last) or train again"
        )
