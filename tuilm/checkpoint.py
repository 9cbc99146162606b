"""Checkpoints as safetensors files that carry everything needed to use them.

A model checkpoint (last.safetensors, best.safetensors) holds the weights plus string metadata: format and
tuilm versions, model config, tokenizer JSON, training config, step, tokens seen, val loss, bits/char and the
data fingerprint. The plain `safetensors` API reads it; `tuilm chat` needs nothing else.

Training state (optimizer moments, RNG, data position) goes to train_state.safetensors: tensors plus JSON
metadata. Nothing is ever pickled or unpickled, and every write is atomic.

Loading trusts nothing in a file: the header is parsed and checked against the file's size before any data is
read; the metadata's values are type-checked and its model config compared with the header's tensor names,
shapes and dtypes before any model is built; a checksum (xxh3-128 over the metadata and every tensor, stored
under `checksum`) is verified before the weights are used. Whatever is wrong becomes one CheckpointError line.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from tuilm import __version__, atomic, integrity
from tuilm.errors import CheckpointError, ConfigError, TuilmError
from tuilm.integrity import CHECKSUM, MAX_HEADER, tensors_digest  # noqa: F401 (part of the checkpoint API)

FORMAT = "tuilm-checkpoint"
STATE_FORMAT = "tuilm-train-state"
VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
MAX_TENSORS = 100_000
# Position tables and the KV cache are not in the file, so their size (seq_len x d_model x layers) is bounded apart.
MAX_CONTEXT_ELEMENTS = 2**27  # 512 MiB in fp32
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
ITEMSIZE |= {"U64": 8, "U32": 4, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8}


@dataclass
class Checkpoint:
    path: Path
    model: Any  # tuilm.model.GPT, in eval mode
    tokenizer: Any  # tuilm.data.tokenizer.Tokenizer
    run_config: dict  # the training config as saved (RunConfig.to_dict())
    meta: dict  # step, tokens, val_loss, val_bpc, data fingerprint, ...

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Weights to save: fp32, contiguous, the tied head left out (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_checkpoint(path: Path, model, tokenizer, run_config: dict, **meta: Any) -> Path:
    metadata = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "tuilm_version": __version__,
        "model_config": json.dumps(model.cfg.to_dict()),
        "tokenizer": tokenizer.to_json(),
        "train_config": json.dumps(run_config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    write_with_checksum(Path(path), model_tensors(model), metadata)
    return Path(path)


STEP_FILE = re.compile(r"step-(\d+)\.safetensors")


def step_file_name(step: int) -> str:
    return f"step-{step}.safetensors"


def step_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The step-numbered checkpoints of a run directory (train.keep_checkpoints), by step."""
    found = {}
    for path in Path(run_dir).glob("step-*.safetensors"):
        match = STEP_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def resolve_step(path: Path) -> Path | None:
    """`runs/x@1200`: run x's checkpoint of step 1200 (a step-1200.safetensors, or last/best when saved at that
    step); None when `path` is no RUN@STEP (or is a file or directory of that name)."""
    run, sep, step_text = str(path).rpartition("@")
    if not sep or not step_text.isdigit() or path.exists():
        return None
    run_dir, step = Path(run), int(step_text)
    if not run_dir.is_dir():
        raise CheckpointError(f"{path}: no run directory {run_dir}")
    steps = step_checkpoints(run_dir)
    if step in steps:
        return steps[step]
    for name in ("last.safetensors", "best.safetensors"):
        saved = _saved_step(run_dir / name) if (run_dir / name).is_file() else None
        if saved == step:
            return run_dir / name
        if saved is not None:
            steps.setdefault(saved, run_dir / name)
    listed = ", ".join(str(s) for s in sorted(steps)) or "none"
    raise CheckpointError(
        f"{path}: {run_dir} has no checkpoint of step {step}; steps it has: {listed} "
        "(train.keep_checkpoints = N keeps the N newest step checkpoints)"
    )


def _saved_step(path: Path) -> int | None:
    try:
        step = json.loads(read_header(path).metadata.get("step", "null"))
    except (CheckpointError, OSError, ValueError):
        return None
    return step if isinstance(step, int) else None


def resolve_model_path(path: Path) -> Path:
    """A checkpoint file, a run directory's best checkpoint (its last one when there is no best yet), or
    RUN@STEP, the run's checkpoint of that step (resolve_step)."""
    path = Path(path).expanduser()
    at_step = resolve_step(path)
    if at_step is not None:
        check_regular(at_step)
        return at_step
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.safetensors or last.safetensors in this run directory")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    check_regular(path)
    return path


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


# -- integrity ------------------------------------------------------------------------------------------------


def write_with_checksum(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically, the checksum of the metadata and tensors stored in the metadata (tuilm/integrity.py)."""
    integrity.write(path, tensors, metadata)


def _damaged_checksum_key(metadata: dict[str, str]) -> bool:
    """Whether a file without a checksum entry once had one: a bit flipped in the key itself would otherwise pass
    for a file of an older tuilm, whose contents cannot be verified, and load. Its value is still a checksum, or
    its key is still within a few characters of the name."""
    for key, value in metadata.items():
        if isinstance(value, str) and value.partition(":")[0] in integrity.KINDS:
            return True
        if len(key) == len(CHECKSUM) and sum(a != b for a, b in zip(key, CHECKSUM, strict=True)) <= 4:
            return True
    return False


def _verify(path: Path, header: Header, data: bytes, what: str) -> None:
    stored = header.metadata.get(CHECKSUM)
    if stored is None and _damaged_checksum_key(header.metadata):
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
    if kind not in integrity.KINDS:
        raise CheckpointError(f"{path}: the checksum is of an unknown kind ({_short(stored)}); upgrade tuilm")
    view = memoryview(data)
    start = header.data_start
    in_file = sorted(header.tensors.items(), key=lambda item: item[1].start)
    actual = integrity.digest(
        header.metadata,
        ((n, t.dtype, t.shape, view[start + t.start : start + t.end]) for n, t in in_file),
        kind,
    )
    if actual != stored:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (checksum mismatch): the file changed after tuilm wrote it; "
            "use another checkpoint of the run (best/last) or train again"
        )


# -- the header -----------------------------------------------------------------------------------------------


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any, limit: int = 40) -> str:
    return _clip(repr(v), limit)


def _clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters: a forged file can make any message as long as it likes."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            raise corrupt(f"tensor {_short(name)} is described wrongly")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise corrupt(f"tensor {_short(name)} has an unknown dtype {_short(dtype)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and d >= 0 for d in shape):
            raise corrupt(f"tensor {_short(name)} has an impossible shape {_short(shape)}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise corrupt(f"tensor {_short(name)} lies outside the file ({_short(offsets)}): truncated?")
        if offsets[1] - offsets[0] != math.prod(shape) * ITEMSIZE[dtype]:
            raise corrupt(f"tensor {_short(name)} has {offsets[1] - offsets[0]:,} bytes for shape {_short(shape)}")
        tensors[name] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != end:
            raise corrupt("tensor data overlaps or leaves gaps")
        end = info.end
    if end != data_len:
        raise corrupt(f"the file holds {data_len - end:,} bytes more than its header describes")
    return Header(tensors, metadata, 8 + n, size)


def _open(path: Path) -> Header:
    if path.suffix.lower() in PICKLE_SUFFIXES or sniff(path) == "pickle":
        raise CheckpointError(
            f"{path}: refusing to load a PyTorch pickle checkpoint: unpickling can run arbitrary code. "
            "tuilm reads and writes .safetensors checkpoints only"
        )
    return read_header(path)


def _read_data(path: Path, header: Header) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(header.size + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) != header.size:
        raise CheckpointError(f"{path}: the file changed size while it was read; try again")
    return data


def _tensors(path: Path, data: bytes, problem: str) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except Exception as e:  # the header was checked already: whatever safetensors still refuses is corruption
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: {problem} ({reason})") from None


# -- metadata -------------------------------------------------------------------------------------------------


def _number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


# What each known metadata value must be once parsed as JSON; others are kept as they are.
META_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model_config": (lambda v: isinstance(v, dict), "a JSON object"),
    "train_config": (lambda v: isinstance(v, dict), "a JSON object"),
    "step": (_count, "a whole number >= 0"),
    "tokens": (_count, "a whole number >= 0"),
    "epoch": (_number_or_none, "a number"),
    "val_loss": (_number_or_none, "a number or null"),
    "val_bpc": (_number_or_none, "a number or null"),
    "best_val_loss": (_number_or_none, "a number or null"),
    "data_fingerprint": (_str_or_none, "a string"),
    "data": (lambda v: v is None or isinstance(v, dict), "a JSON object"),
    "run": (_str_or_none, "a string"),
    "recipe": (_str_or_none, "a string"),
}


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint's metadata is damaged ({why})")


def _parse(path: Path, metadata: dict[str, str], key: str, damaged=_damaged) -> Any:
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise damaged(path, f"{key} is not valid JSON") from None


def _check_version(path: Path, metadata: dict[str, str], damaged=_damaged) -> None:
    version = metadata.get("format_version", "0")
    if not re.fullmatch(r"\d{1,9}", version):
        raise damaged(path, f"format_version {_short(version)} is not a number")
    if int(version) > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer tuilm ({_short(metadata.get('tuilm_version'))}); upgrade tuilm"
        )


def _checked_metadata(path: Path, header: Header) -> dict[str, Any]:
    """The metadata's known values, parsed and type-checked; the model config checked against the tensors."""
    from tuilm.model import ModelConfig

    metadata = header.metadata
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: this safetensors file was not written by tuilm (no tuilm metadata: model config and "
            "tokenizer); train one with `tuilm train`"
        )
    _check_version(path, metadata)
    for key in ("model_config", "tokenizer"):
        if key not in metadata:
            raise _damaged(path, f"no {key}")
    parsed: dict[str, Any] = {"train_config": {}}
    for key, (ok, kind) in META_TYPES.items():
        if key in metadata:
            value = _parse(path, metadata, key)
            if not ok(value):
                raise _damaged(path, f"{key} must be {kind}, got {_short(value)}")
            parsed[key] = value
    try:
        config = ModelConfig.from_dict(parsed["model_config"])
    except (ConfigError, TypeError) as e:
        raise _damaged(path, f"model_config: {_clip(e)}") from None
    _check_config(path, config, header)
    _check_train_config(path, parsed["train_config"], parsed["model_config"])
    parsed["config"] = config
    return parsed


def _mismatch(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: the weights do not match the model config: {why}")


def _check_config(path: Path, config, header: Header) -> None:
    """Compare the config with the header's tensors: the cheap sizes first, then every name, shape and dtype."""
    from tuilm.model import GPT

    emb = header.tensors.get("tok_emb.weight")
    if emb is None:
        raise _mismatch(path, "missing tok_emb.weight")
    if emb.shape != (config.vocab_size, config.d_model):
        raise _mismatch(
            path, f"tok_emb.weight {emb.shape} vs vocab_size x d_model ({config.vocab_size}, {config.d_model})"
        )
    layers = {int(m.group(1)) for name in header.tensors if (m := re.match(r"blocks\.(\d{1,9})\.", name))}
    if layers != set(range(config.n_layers)):
        raise _mismatch(path, f"the config says {config.n_layers} layers, the weights hold {len(layers)}")
    context = config.seq_len * config.d_model * (2 * config.n_layers + 1)
    if context > MAX_CONTEXT_ELEMENTS:
        raise _mismatch(
            path, f"seq_len {config.seq_len} is absurd for this width and depth ({context:,} cached values)"
        )
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = GPT(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("head.weight", None)
    _compare(path, expected, {k: t.shape for k, t in header.tensors.items()})
    wrong_dtype = [f"{k} {t.dtype}" for k, t in header.tensors.items() if t.dtype != "F32"]
    if wrong_dtype:
        raise _mismatch(path, f"dtype {wrong_dtype[0]} (tuilm saves F32)")


def _compare(path: Path, expected: dict[str, tuple], saved: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    wrong = [f"{k} {tuple(saved[k])} vs {tuple(v)}" for k, v in expected.items() if k in saved and saved[k] != v]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(_short(e) for e in extra[:3])}{' …' if len(extra) > 3 else ''}")
        if wrong:
            parts.append(f"shape {wrong[0]} (saved vs config)")
        raise _mismatch(path, "; ".join(parts))


def _check_train_config(path: Path, train_config: dict, model_config: dict) -> None:
    """The settings a resume and `tuilm eval` rebuild: tables of plain values, the model the one saved."""
    for section, values in train_config.items():
        if section in ("recipe", "description"):
            if not isinstance(values, str):
                raise _damaged(path, f"train_config {section} must be a string, got {_short(values)}")
            continue
        if not isinstance(values, dict):
            raise _damaged(path, f"train_config [{_short(section)}] must be a table, got {_short(values)}")
        for key, value in values.items():
            if not (value is None or isinstance(value, str | int | float | bool)):
                raise _damaged(path, f"train_config {section}.{_short(key)} has the wrong type: {_short(value)}")
    for key, value in (train_config.get("model") or {}).items():
        if key in model_config and model_config[key] != value:
            raise _damaged(
                path, f"train_config model.{key} = {_short(value)} but the model is {_short(model_config[key])}"
            )
    if train_config:
        from tuilm.config import from_dict

        try:
            from_dict(train_config, train_config.get("recipe", "custom"))
        except TuilmError:
            pass  # settings this tuilm no longer takes: said in one line by whatever rebuilds them (eval, resume)
        except Exception as e:  # a value of a type the settings cannot take at all
            raise _damaged(path, f"train_config: {type(e).__name__}: {_clip(e, 80)}") from None


def read_tokenizer(path: Path):
    """The checkpoint's tokenizer, from the header only; a broken one is the file's damage, and names the file."""
    path = resolve_model_path(path)
    return _tokenizer(path, read_metadata(path))


def read_run_config(path: Path):
    """The checkpoint's training config (a RunConfig), from the header only. A setting it holds that tuilm does
    not take is the file's damage (a flipped byte in a key), never the user's: the message names the file."""
    path = resolve_model_path(path)
    return saved_run_config(path, _checked_metadata(path, _open(path))["train_config"])


def saved_run_config(path: Path, saved: dict):
    """A checkpoint's train_config (as Checkpoint.run_config holds it) as a RunConfig, or one line naming the file."""
    from tuilm.config import from_dict

    try:
        return from_dict(saved, str(saved.get("recipe", "custom")))
    except TuilmError as e:
        raise _damaged(path, f"train_config: {_clip(e)}; or a newer tuilm wrote it") from None


def _tokenizer(path: Path, metadata: dict[str, str]):
    from tuilm.data.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.from_json(metadata["tokenizer"])
        tokenizer.token_bytes  # noqa: B018 - built now: a token outside the byte alphabet fails here, not mid-reply
    except TuilmError as e:
        raise _damaged(path, f"tokenizer: {_clip(e)}") from None
    except BaseException as e:  # the tokenizers library panics (a BaseException) on some malformed JSON
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        raise _damaged(path, f"tokenizer: {type(e).__name__}") from None
    return tokenizer


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a tuilm checkpoint, after checking it is safe, really one of ours and that its
    config fits its tensors. Reads the header only; load_checkpoint and read_weights verify the checksum too."""
    path = resolve_model_path(path)
    header = _open(path)
    _checked_metadata(path, header)
    return header.metadata


# -- loading --------------------------------------------------------------------------------------------------


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (CPU, fp32) after every check: header, metadata, shapes and the checksum."""
    path = resolve_model_path(path)
    header = _open(path)
    _checked_metadata(path, header)
    data = _read_data(path, header)
    _verify(path, header, data, "weights")
    return _tensors(path, data, "the weights cannot be read")


def load_checkpoint(path: Path, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False) -> Checkpoint:
    """The model, tokenizer and settings of a checkpoint. Weights holding NaN or Inf are refused unless
    `allow_nonfinite` (a post-mortem of a diverged run)."""
    from tuilm.model import GPT

    path = resolve_model_path(path)
    header = _open(path)
    parsed = _checked_metadata(path, header)
    config = parsed["config"]
    metadata = header.metadata
    tokenizer = _tokenizer(path, metadata)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}"
        )
    data = _read_data(path, header)
    _verify(path, header, data, "weights")
    tensors = _tensors(path, data, "the weights cannot be read")
    model = GPT(config)
    hint = "this model cannot produce text; pass --allow-nonfinite to load it anyway for a post-mortem"
    load_weights(model, tensors, path, allow_nonfinite=allow_nonfinite, hint=hint)
    meta = {
        k: _json_or_str(v)
        for k, v in metadata.items()
        if k not in ("model_config", "tokenizer", "train_config", "format")
    }
    return Checkpoint(path, model.to(device).eval(), tokenizer, parsed["train_config"], meta)


def load_weights(
    model,
    tensors: dict[str, torch.Tensor],
    path: Path,
    *,
    allow_nonfinite: bool = False,
    hint: str = "training cannot continue from it: start a new run (a lower train.lr) or from an earlier checkpoint",
) -> None:
    """`tensors` into `model` after checking their names and shapes, and that they are finite: every way into a
    model (--resume, --init, sample, chat, eval) refuses NaN or Inf weights here, unless `allow_nonfinite`."""
    expected = model.state_dict()
    if model.cfg.tie_embeddings:
        expected.pop("head.weight", None)
    _compare(path, {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(t.shape) for k, t in tensors.items()})
    if not allow_nonfinite:
        bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
        if bad:
            more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
            raise CheckpointError(f"{path}: the weights hold NaN or Inf (in {bad[0]}{more}); {hint}")
    model.load_state_dict(tensors, strict=False)


def weights_finite(model) -> bool:
    """Whether every parameter of `model` is finite (one device sync per tensor: for checkpoints, not steps)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


# -- training state -------------------------------------------------------------------------------------------


def save_train_state(
    path: Path, optimizer, extra: dict[str, Any], rng: dict[str, torch.Tensor], averaged: dict | None = None
) -> None:
    """Optimizer tensors, RNG states and train.ema's averaged weights (`averaged`, by parameter name) as tensors;
    everything else (counters, scalars) as JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    for name, value in rng.items():
        tensors[f"rng.{name}"] = value.to("cpu").contiguous()
    for name, value in (averaged or {}).items():
        tensors[f"ema.{name}"] = value.detach().to("cpu").contiguous()
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(VERSION),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "state": json.dumps(extra),
    }
    write_with_checksum(Path(path), tensors, metadata)


def _finite_number(v: Any) -> bool:
    return _number_or_none(v) and v is not None and math.isfinite(v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number_or_none(x) and x is not None for x in v)


def _health(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    return (
        _number_or_none(v.get("grad_ema"))
        and _number_or_none(v.get("loss_ema"))
        and _count(v.get("seen", 0))
        and isinstance(v.get("evals", []), list)
        and all(_numbers(e) for e in v.get("evals", []))
    )


# What the trainer reads back from the `state` metadata of train_state.safetensors.
STATE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step": (_count, "a whole number >= 0"),
    "tokens": (_count, "a whole number >= 0"),
    "epoch": (_count, "a whole number >= 0"),
    "batch_in_epoch": (_count, "a whole number >= 0"),
    "elapsed": (lambda v: _finite_number(v) and v >= 0, "a number of seconds >= 0"),
    "best_val_loss": (_number_or_none, "a number or null"),
    "best_val_bpc": (_number_or_none, "a number or null"),
    "evals_since_best": (_count, "a whole number >= 0"),
    "train_losses": (_numbers, "a list of numbers"),
}
OPTIONAL_STATE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scaler": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
    "health": (_health, "the health monitor's state"),
    "decay_start": (lambda v: v is None or (_finite_number(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
    "best_weights": (lambda v: v in (None, "model", "ema"), "model or ema"),
    "target_hit": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
}


def load_train_state(path: Path, optimizer, average=None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimizer (and `average`, train.ema's WeightAverage) in place; return (the extra state dict,
    the RNG tensors).

    Every value is checked before the optimizer sees it: state tensors against their parameters' shapes, the
    param groups against the optimizer's own, the RNG state against this torch's, the counters by type.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: the training state is corrupt ({why})")

    def damaged(_path: Path, why: str) -> CheckpointError:
        return corrupt(why)

    header = read_header(path, corrupt)
    metadata = header.metadata
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a tuilm training-state file")
    _check_version(path, metadata, damaged)
    for key in ("param_groups", "optim_scalars", "state"):
        if key not in metadata:
            raise corrupt(f"no {key}")
    groups = _parse(path, metadata, "param_groups", damaged)
    scalars = _parse(path, metadata, "optim_scalars", damaged)
    extra = _parse(path, metadata, "state", damaged)
    if not isinstance(extra, dict):
        raise corrupt("state must be a JSON object")
    for key, (ok, kind) in STATE_TYPES.items():
        if key not in extra or not ok(extra[key]):
            raise corrupt(f"state {key} must be {kind}, got {_short(extra.get(key))}")
    for key, (ok, kind) in OPTIONAL_STATE_TYPES.items():
        if not ok(extra.get(key)):
            raise corrupt(f"state {key} must be {kind}, got {_short(extra.get(key))}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    _check_groups(groups, optimizer.param_groups, corrupt)
    averaged_shapes = {k: tuple(v.shape) for k, v in average.tensors().items()} if average is not None else {}
    missing = [k for k in averaged_shapes if f"ema.{k}" not in header.tensors]
    if missing:
        raise corrupt(f"train.ema is on but the averaged weights are missing (ema.{missing[0]})")
    if not isinstance(scalars, dict):
        raise corrupt("optim_scalars must be a JSON object")
    state: dict[int, dict[str, Any]] = {}
    for index, entries in scalars.items():
        if not re.fullmatch(r"\d{1,9}", index) or int(index) >= len(params) or not isinstance(entries, dict):
            raise corrupt(f"optimizer scalars for {_short(index)} fit no parameter")
        if not all(v is None or isinstance(v, int | float | bool) for v in entries.values()):
            raise corrupt(f"optimizer scalars for parameter {index} are not numbers")
        state.setdefault(int(index), {}).update(entries)
    names = {}
    for key, info in header.tensors.items():
        m = re.fullmatch(r"optim\.(\d{1,9})\.(\w{1,64})", key)
        if m:
            index = int(m.group(1))
            if index >= len(params) or not _fits(info.shape, tuple(params[index].shape)):
                raise corrupt(f"{_short(key)} {info.shape} fits no parameter of this model")
            if info.dtype not in ("F32", "F64", "F16", "BF16"):
                raise corrupt(f"{_short(key)} has dtype {info.dtype}")
            names[key] = ("optim", index, m.group(2))
        elif re.fullmatch(r"rng\.(torch|cuda)", key):
            names[key] = ("rng", 0, key[4:])
        elif key.startswith("ema.") and average is None:
            continue  # averaged weights this resume does not keep
        elif key[4:] in averaged_shapes and key.startswith("ema."):
            if info.shape != averaged_shapes[key[4:]] or info.dtype not in ("F32", "F64", "F16", "BF16"):
                raise corrupt(f"{_short(key)} {info.shape} fits no parameter of this model")
            names[key] = ("ema", 0, key[4:])
        else:
            raise corrupt(f"unexpected tensor {_short(key)}")
    rng_info = header.tensors.get("rng.torch")
    if rng_info is None or rng_info.dtype != "U8" or rng_info.shape != tuple(torch.get_rng_state().shape):
        raise corrupt("the random generator's state is missing or not this torch's")
    cuda = header.tensors.get("rng.cuda")
    if cuda is not None and (cuda.dtype != "U8" or len(cuda.shape) != 1):
        raise corrupt("the CUDA random generator's state is malformed")
    data = _read_data(path, header)
    _verify(path, header, data, "training state")
    tensors = _tensors(path, data, "the training state is corrupt")
    rng, averaged = {}, {}
    for key, value in tensors.items():
        if key not in names:
            continue
        kind, index, name = names[key]
        if kind == "optim":
            state.setdefault(index, {})[name] = value
        else:
            (averaged if kind == "ema" else rng)[name] = value
    group_of = [g for g, group in enumerate(optimizer.param_groups) for _ in group["params"]]
    _check_consistent(state, params, group_of, corrupt)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model/optimizer ({_clip(e)})") from None
    if average is not None:
        average.load(averaged)
    return extra, rng


def _fits(saved: tuple[int, ...], param: tuple[int, ...]) -> bool:
    """An optimizer state tensor is a scalar (a step count), or shaped like its parameter, a factored moment
    (Adafactor) keeping 1 in the dimensions it averages over."""
    if saved == ():
        return True
    return len(saved) == len(param) and all(s in (p, 1) for s, p in zip(saved, param, strict=True))


def _check_consistent(state: dict[int, dict[str, Any]], params: list, group_of: list[int], corrupt: Callable) -> None:
    """Every parameter of a kind (matrix or vector) in a param group carries the same state, each entry shaped
    alike: one moment dropped or reshaped would otherwise only fail at the first optimizer step, mid-run. (Groups
    differ: muon's Muon group keeps a momentum buffer where its AdamW groups keep two moments.)"""
    keys: dict[tuple[int, bool], tuple[int, set[str]]] = {}
    shapes: dict[tuple[int, str], tuple[int, tuple]] = {}
    for index, entries in sorted(state.items()):
        if not entries:
            continue  # a parameter that never had a gradient has no state yet: the optimizer starts it afresh
        p = params[index]
        first = keys.setdefault((group_of[index], p.dim() >= 2), (index, set(entries)))
        if first[1] != set(entries):
            raise corrupt(f"parameter {index} has state {sorted(entries)} but parameter {first[0]} {sorted(first[1])}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim():
                pattern = tuple(d == 1 or s == d for s, d in zip(value.shape, p.shape, strict=True))
                seen = shapes.setdefault((p.dim(), name), (index, pattern))
                if seen[1] != pattern:
                    raise corrupt(f"optim.{index}.{name} {tuple(value.shape)} is shaped unlike the others")


def _check_groups(groups: Any, live: list[dict], corrupt: Callable[[str], CheckpointError]) -> None:
    """Saved param groups must be the optimizer's own: same count, same keys, values of the same kind."""
    if not isinstance(groups, list) or len(groups) != len(live):
        raise corrupt(f"{len(live)} parameter groups expected, found {_short(groups)}")
    for i, (saved, own) in enumerate(zip(groups, live, strict=True)):
        if not isinstance(saved, dict):
            raise corrupt(f"parameter group {i} is not a JSON object")
        params = saved.get("params")
        if not isinstance(params, list) or len(params) != len(own["params"]) or not all(map(_is_int, params)):
            raise corrupt(f"parameter group {i} lists other parameters than this model's")
        for key, value in own.items():
            if key == "params":
                continue
            if key not in saved:
                if key == "initial_lr":  # stamped again from the config on resume (optim.stamp_peaks); older
                    continue  # checkpoints kept a ratio, lr_scale, instead
                raise corrupt(f"parameter group {i} has no {key}")
            if not _same_kind(saved[key], value):
                raise corrupt(f"parameter group {i}: {key} = {_short(saved[key])} where {_short(value)} belongs")


def _same_kind(saved: Any, own: Any) -> bool:
    if isinstance(own, bool) or own is None or isinstance(own, str):
        return type(saved) is type(own) or (own is None and saved is None)
    if isinstance(own, int | float):
        return _finite_number(saved)
    if isinstance(own, list | tuple):
        return isinstance(saved, list) and len(saved) == len(own) and all(map(_same_kind, saved, own))
    if isinstance(own, torch.Tensor):
        return _finite_number(saved)
    return saved == own
