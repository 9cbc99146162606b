"""Hugging Face datasets as a data source: `hf:<name>[:<config>][@<split>]` (the optional extra tuilm[hf]).

`<name>` is a dataset on the hub (e.g. `hf:wikitext:wikitext-2-raw-v1`), a local folder written by
`save_to_disk`, or a local folder of data files (json, csv, parquet, text: `datasets`' file builders). The text
is the column `data.text_field` (default `text`); each row is a document (a blank line inside a row ends a
document too, as in text files; empty rows are skipped).

Rows are read as a stream (hub datasets with `streaming=True`, local ones from their memory-mapped Arrow files)
and written once to a text file in ~/.cache/tuilm/hf, so the dataset is never held whole in memory. With its own
splits (no `@split` given, and a validation/valid/test split beside train) the corpus keeps them, like the named
corpora; with `@split`, or a dataset with only a train split, the text is one file that data.split divides.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tuilm.errors import DataError

PREFIX = "hf:"
VAL_SPLITS = ("validation", "valid", "val", "test")
FORMAT = "tuilm-hf-1"
_SPEC = re.compile(r"^hf:(?P<name>[^:@]+)(?::(?P<config>[^@]+))?(?:@(?P<split>.+))?$")


def is_hf(source: str) -> bool:
    return str(source).startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None, str | None]:
    m = _SPEC.match(spec)
    if not m:
        raise DataError(f"{spec}: a Hugging Face source looks like hf:<name>[:<config>][@<split>]")
    return m["name"], m["config"], m["split"]


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the datasets library: pip install 'tuilm[hf]'") from None
    return datasets


def _open(spec: str):
    """{split: iterable dataset or Dataset} for the spec (no data is read yet for streaming ones)."""
    datasets = _datasets()
    name, config, split = parse(spec)
    local = Path(name).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file()):
            loaded = datasets.load_from_disk(str(local))
            ident = getattr(loaded, "_fingerprint", None) or _dir_ident(local)
        else:
            loaded = datasets.load_dataset(name, config, split=split, streaming=True)
            ident = _dir_ident(local) if local.is_dir() else f"{name}|{config}"
    except (ConnectionError, TimeoutError) as e:
        raise DataError(f"{spec}: the Hugging Face hub cannot be reached ({_first_line(e)})") from None
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, FileNotFoundError, ValueError, ...)
        if type(e).__name__ in ("ImportError", "ModuleNotFoundError"):
            raise
        raise DataError(f"{spec}: could not load the dataset ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(loaded, dict) or hasattr(loaded, "keys"):
        splits = dict(loaded) if split is None else {split: _pick(loaded, split, spec)}
    else:
        splits = {split or "train": loaded}
    return splits, str(ident)


def _pick(loaded, split: str, spec: str):
    if split not in loaded:
        raise DataError(f"{spec}: no split {split!r}; the dataset has {', '.join(loaded)}")
    return loaded[split]


def _dir_ident(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _write_split(ds, field: str, dest: Path, spec: str) -> None:
    names = getattr(ds, "column_names", None)
    if names is not None and field not in names:
        raise DataError(f"{spec}: no column {field!r} (columns: {', '.join(names)}); set data.text_field")
    tmp = dest.with_suffix(".tmp")
    rows = 0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for row in ds:
                value = row.get(field) if isinstance(row, dict) else None
                if value is None and isinstance(row, dict) and field not in row:
                    raise DataError(f"{spec}: no column {field!r} (columns: {', '.join(row)}); set data.text_field")
                if not isinstance(value, str):
                    raise DataError(f"{spec}: column {field!r} holds {type(value).__name__}, not text")
                if value.strip():
                    out.write(value.strip("\r\n"))
                    out.write("\n\n")
                    rows += 1
        if not rows:
            raise DataError(f"{spec}: the column {field!r} holds no text")
        tmp.replace(dest)
    except (ConnectionError, TimeoutError, OSError) as e:
        raise DataError(f"{spec}: reading the dataset failed ({_first_line(e)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def materialize(spec: str, text_field: str = "text"):
    """A local text path (one split) or a SplitCorpus (the dataset's own train/val split) for the spec."""
    from tuilm.data.corpora import SplitCorpus, TextSlice, cache_dir

    splits, ident = _open(spec)
    key = hashlib.sha256(f"{FORMAT}|{spec}|{text_field}|{ident}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", spec[len(PREFIX) :])[-40:]
    folder = cache_dir() / "hf"
    folder.mkdir(parents=True, exist_ok=True)
    val_name = next((s for s in VAL_SPLITS if s in splits), None)
    chosen = {"train": "train", "val": val_name} if "train" in splits and val_name else None
    if chosen is None:  # one split: tuilm's data.split divides it
        name = next(iter(splits)) if "train" not in splits else "train"
        path = folder / f"{stem}-{name}-{key}.txt"
        if not path.is_file():
            _write_split(splits[name], text_field, path, spec)
        return str(path)
    paths = {}
    for ours, theirs in chosen.items():
        path = folder / f"{stem}-{theirs}-{key}.txt"
        if not path.is_file():
            _write_split(splits[theirs], text_field, path, spec)
        paths[ours] = TextSlice(path)
    return SplitCorpus(spec, paths["train"].path, paths, hashlib.sha256(f"{key}|splits".encode()).hexdigest())
