"""How one setting's value is bounded, read and written: the numbers a setting allows (Range), the settings written
as text with a meaning (a duration: train.time, a sweep's budget; a target: train.target, overfit --target; a
device name), and values written back as TOML (a run's config.toml). Shared by the run config, the sweep spec,
the device and the commands; it imports nothing of tuilm but errors and formatting."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tuilm.errors import ConfigError
from tuilm.formatting import short


@dataclass(frozen=True)
class Range:
    """The numbers a setting allows: lo..hi, either end open or absent; always finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def __contains__(self, v: float) -> bool:
        try:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return False
        except OverflowError:  # an integer too large for a float is too large for every setting
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def text(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo!r}, {self.hi!r}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo!r}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi!r}"
        return what


def check_number(name: str, value: Any, allowed: Range) -> None:
    """ConfigError naming the setting (or option), the value and the range, unless `value` is in `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{name} must be {allowed.text()}, got {short(value)}")


DURATION_TEXT = "a duration > 0, e.g. 90s, 10m or 1h30m"


TARGET_UNITS = {"bpc": "val bits/char", "loss": "val loss (nats/token)", "bpb": "val bits/byte"}


def parse_target(text: str) -> tuple[str, float]:
    """(unit, value) of a target: "2.2" is val bits/char; "loss=1.5", "bpc=2.2" and "bpb=2.2" name the unit.
    Reached at the first evaluation scoring at or below it (the same meaning as overfit's --target: a value to
    pass under)."""
    unit, _, number = str(text).strip().rpartition("=")
    unit = unit.strip().lower() or "bpc"
    hint = "write e.g. --target 2.2 (val bits/char) or --target loss=1.5"
    if unit not in TARGET_UNITS:
        raise ConfigError(f"target '{text}': unknown unit '{unit}' (bpc, loss or bpb); {hint}")
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"target '{text}' is not a number; {hint}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"target '{text}' must be a number > 0; {hint}")
    return unit, value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1h30m", "1.5h"."""
    text = str(text).strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or _DURATION.sub("", text).strip():
            raise ConfigError(f"time '{text}' is not a duration; write e.g. 90s, 10m or 1h30m") from None
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not (math.isfinite(seconds) and 0 < seconds < 1e12):
        raise ConfigError(f"time '{text}' must be {DURATION_TEXT}")
    return seconds


DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d{1,4})?", re.IGNORECASE)  # no index on a cpu or mps: one of each


def check_device_name(name: str, what: str = "device") -> None:
    """One line for a device name no machine has (cpu:1, an empty one); whether this one has it is device.py's."""
    if not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"{what} '{short(name)[1:-1]}' is not a device; use auto, cpu, cuda, cuda:N or mps")


def dump_toml(data: dict[str, Any]) -> str:
    """TOML for a flat config dict of tables (the standard library reads TOML but cannot write it)."""
    lines = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).lstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)
