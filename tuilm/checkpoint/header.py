"""A safetensors file's header, read without trusting it, and the refusal of pickles.

The header is parsed and every tensor's offsets checked against the file's size before any data is read: a
forged file can neither make tuilm allocate what it does not hold nor read past its end. A PyTorch pickle is
recognised by its structure (`sniff`) and refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from tuilm import atomic
from tuilm.errors import CheckpointError
from tuilm.formatting import short

MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header: a longer one no reader opens
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
MAX_TENSORS = 100_000
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
ITEMSIZE |= {"U64": 8, "U32": 4, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets within the data section
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # where the data section starts in the file
    size: int  # of the whole file


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters: a forged file can make any message as long as it likes."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_regular(path: Path) -> None:
    atomic.check_regular(path, CheckpointError, "a checkpoint file")


def sniff(path: Path) -> str:
    """'safetensors', 'pickle' or 'unknown', judged by the file's structure, never by one byte.

    A safetensors file opens with its header's length as a little-endian u64 and then that many bytes of JSON;
    that length can start with any byte (0x80 included, whenever it is 128 mod 256), so the layout is checked
    first and only a file that is not laid out so is tested for pickle's protocol marker or a zip archive.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
            if len(head) == 8:
                n = int.from_bytes(head, "little")
                if 2 <= n <= min(MAX_HEADER, size - 8):
                    header = f.read(n)
                    if header[:1] == b"{":
                        try:
                            if isinstance(json.loads(header), dict):
                                return "safetensors"
                        except (UnicodeDecodeError, ValueError, RecursionError):
                            pass
    except OSError:
        return "unknown"
    # Pickle protocol 2+ starts with PROTO (0x80) and a protocol number; torch.save's default is a zip archive.
    if (head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04":
        return "pickle"
    return "unknown"


def read_header(path: Path, corrupt: Callable[[str], CheckpointError] | None = None) -> Header:
    """The safetensors header of `path`, each tensor's offsets checked against the file before any data is read."""
    if corrupt is None:

        def corrupt(why: str) -> CheckpointError:
            return CheckpointError(f"{path}: not a safetensors file, or a corrupt one ({why})")

    check_regular(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= size - 8:
                raise corrupt(f"a header of {n:,} bytes does not fit a file of {size:,} bytes: truncated?")
            if n > MAX_HEADER:  # whole, but no safetensors reader opens it
                raise corrupt(f"a header of {n:,} bytes, over safetensors' limit of {MAX_HEADER:,}")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("its metadata is not a table of strings")
    if len(header) > MAX_TENSORS:
        raise corrupt(f"{len(header):,} tensors (at most {MAX_TENSORS:,})")
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise corrupt(f"tensor {short(name)} is described wrongly")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise corrupt(f"tensor {short(name)} has an unknown dtype {short(dtype)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d >= 0 for d in shape):
            raise corrupt(f"tensor {short(name)} has an impossible shape {short(shape)}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise corrupt(f"tensor {short(name)} lies outside the file ({short(offsets)}): truncated?")
        if offsets[1] - offsets[0] != math.prod(shape) * ITEMSIZE[dtype]:
            raise corrupt(f"tensor {short(name)} has {offsets[1] - offsets[0]:,} bytes for shape {short(shape)}")
        tensors[name] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != end:
            raise corrupt("tensor data overlaps or leaves gaps")
        end = info.end
    if end != data_len:
        raise corrupt(f"the file holds {data_len - end:,} bytes more than its header describes")
    return Header(tensors, metadata, 8 + n, size)


def open_checked(path: Path) -> Header:
    """The header of a checkpoint file, after refusing a pickle by its name or its structure."""
    if path.suffix.lower() in PICKLE_SUFFIXES or sniff(path) == "pickle":
        raise CheckpointError(
            f"{path}: refusing to load a PyTorch pickle checkpoint: unpickling can run arbitrary code. "
            "tuilm reads and writes .safetensors checkpoints only"
        )
    return read_header(path)


def read_data(path: Path, header: Header) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(header.size + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) != header.size:
        raise CheckpointError(f"{path}: the file changed size while it was read; try again")
    return data


def load_tensors(path: Path, data: bytes, problem: str) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except Exception as e:  # the header was checked already: whatever safetensors still refuses is corruption
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: {problem} ({reason})") from None
