"""`--json`: one JSON document on stdout for scripts, in place of the human tables. The schemas are in the
docs/scripting.md; NaN and infinities, which JSON lacks, are written as null."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from tuilm.formatting import valid_text

_C1 = re.compile("[\x7f-\x9f]")

SCHEMA_VERSION = 1


def plain(value: Any) -> Any:
    """A value as JSON types: dataclasses as objects, paths as strings, numpy scalars and arrays as numbers and
    lists, non-finite floats as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(kind: str, document: dict) -> None:
    """Write `{"kind": kind, "schema": 1, ...document}` to stdout, one line, then a newline."""
    body = plain({"kind": kind, "schema": SCHEMA_VERSION, **document})
    text = json.dumps(body, ensure_ascii=False, allow_nan=False)  # control characters come out escaped ...
    text = _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)  # ... and so do DEL and C1 (CSI is 0x9b)
    sys.stdout.write(valid_text(text)[0] + "\n")  # a folder name that is not UTF-8 (U+FFFD): still UTF-8 JSON
    sys.stdout.flush()
