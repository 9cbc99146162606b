"""What a sweep is: a base recipe, a grid, a budget and seeds, and the runs they expand to. Torch-free.

Every problem with the command itself (an unknown key, a value of the wrong type, an unreadable budget) is a
ConfigError before anything trains; a combination that cannot be built (n_heads not dividing d_model) is only
known per run, and becomes a run of status `invalid` instead.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuilm.config import RunConfig, apply_overrides, resolve_key
from tuilm.config import parse_value as parse_setting
from tuilm.errors import ConfigError
from tuilm.values import parse_duration

SPEC_FILE = "sweep.json"
STOP_KEYS = ("train.epochs", "train.max_steps", "train.max_tokens", "train.time")
# A budget replaces every criterion that could end a run first, early stopping included, so it alone decides.
CLEARED_BY_BUDGET = (*STOP_KEYS, "train.patience")
IGNORED_IN_MATCH = ("train.device", "train.threads", "description")  # change where a run trains, not what
SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Axis:
    key: str  # dotted, e.g. train.lr
    label: str  # what tables, plots and run names call it: the short name when it is unambiguous
    raws: tuple[str, ...]  # as typed
    values: tuple[Any, ...]  # parsed as --set parses them


@dataclass(frozen=True)
class Budget:
    kind: str  # steps | tokens | time
    amount: int | str

    def overrides(self) -> list[tuple[str, Any]]:
        cleared = [(k, "" if k == "train.time" else 0) for k in CLEARED_BY_BUDGET]
        setting = {"steps": "train.max_steps", "tokens": "train.max_tokens", "time": "train.time"}[self.kind]
        return [*cleared, (setting, self.amount)]

    def describe(self) -> str:
        return f"{self.amount:,} {self.kind}" if self.kind != "time" else f"{self.amount} of training time"


@dataclass(frozen=True)
class PlannedRun:
    name: str  # its folder in the sweep directory
    values: dict[str, Any]  # dotted key -> parsed value, the swept keys only
    raws: dict[str, str]
    seed: int
    seed_index: int
    seed_swept: bool = False  # train.seed is a grid key, so --seeds does not touch it

    def overrides(self) -> list[tuple[str, Any]]:
        # The values as the grid parsed them: typed pairs, not strings to parse again.
        extra = [] if self.seed_swept else [("train.seed", self.seed)]
        return [*self.values.items(), *extra]


@dataclass(frozen=True)
class SweepSpec:
    recipe: str
    axes: tuple[Axis, ...]
    overrides: tuple[str, ...] = ()
    budget: str | None = None
    seeds: int = 1
    device: str | None = None
    parsed_budget: Budget | None = field(default=None, compare=False)

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    @property
    def labels(self) -> dict[str, str]:
        return {a.key: a.label for a in self.axes}

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "grid": {a.key: list(a.raws) for a in self.axes},
            "labels": self.labels,
            "overrides": list(self.overrides),
            "budget": self.budget,
            "seeds": self.seeds,
            "device": self.device,
        }


# Runs in one sweep: each is a training run of its own, so more would not end in any useful time; a larger study is
# several sweeps (each folder resumes where it stopped).
MAX_RUNS = 10_000


def make_spec(
    recipe: str, grid: list[str], overrides: list[str], budget: str | None, seeds: int, device: str | None
) -> SweepSpec:
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    axes = parse_grid(grid)
    planned = math.prod(len(a.values) for a in axes) * seeds  # counted before any run is planned
    if planned > MAX_RUNS:
        raise ConfigError(
            f"--grid and --seeds make {planned:,} runs; a sweep plans at most {MAX_RUNS:,}: give fewer values or seeds"
        )
    parsed = parse_budget(budget) if budget else None
    keys = [a.key for a in axes]
    if parsed is not None:
        clash = [k for k in keys if k in STOP_KEYS]
        if clash:
            raise ConfigError(f"--grid {clash[0]} and --budget both decide when runs stop; drop one of them")
    if "train.seed" in keys and seeds > 1:
        raise ConfigError("--grid train.seed and --seeds both set the seed; use one of them")
    return SweepSpec(recipe, tuple(axes), tuple(overrides), budget, seeds, device, parsed)


def parse_grid(items: list[str]) -> list[Axis]:
    axes: list[Axis] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid '{item}' must look like key=v1,v2,..., e.g. --grid lr=1e-3,3e-3")
        key, raw = (s.strip() for s in item.split("=", 1))
        dotted = resolve_key(key)
        if dotted in [a.key for a in axes]:
            raise ConfigError(f"--grid names {dotted} twice; list all its values in one --grid {key}=...")
        raws = tuple(r.strip() for r in raw.split(","))
        if not raw or not all(raws):
            raise ConfigError(f"--grid {key}: empty value in '{raw}'; write e.g. --grid {key}=v1,v2")
        values = tuple(parse_value(dotted, r) for r in raws)
        seen = [json.dumps(v) for v in values]
        if len(set(seen)) < len(seen):
            same = [r for r, s in zip(raws, seen, strict=True) if seen.count(s) > 1]
            what = f"{same[0]} twice" if len(set(same)) == 1 else f"{' and '.join(same)}, the same value"
            raise ConfigError(f"--grid {key} lists {what}")
        short = dotted.split(".")[1]
        label = short if _resolves(short, dotted) else dotted
        axes.append(Axis(dotted, label, raws, values))
    return axes


def parse_value(dotted: str, raw: str) -> Any:
    # The same parsing as --set (config.apply_overrides), value by value: a value of the wrong type is a mistake
    # in the command, while whether a combination makes sense is only known once the others are applied.
    try:
        return parse_setting(dotted, raw)
    except ConfigError as e:
        raise ConfigError(f"--grid: {e}") from None


def _resolves(short: str, dotted: str) -> bool:
    try:
        return resolve_key(short) == dotted
    except ConfigError:
        return False


_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgb]?)\s*(steps?|tokens?|toks?)?$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


def parse_budget(text: str) -> Budget:
    """`500` or `500 steps`: steps; `2M tokens`, `500k tokens`: tokens; `60s`, `10m`, `1h30m`: training time."""
    text = str(text).strip()
    hint = "write e.g. 500, 500 steps, 2M tokens, 500k tokens, 60s or 10m"
    match = _AMOUNT.match(text)
    if match:
        number, scale, unit = match.groups()
        if unit or not scale:
            amount = float(number) * _SCALE[scale.lower()]
            if not amount.is_integer() or amount < 1:
                raise ConfigError(f"budget '{text}' must be a whole number of steps or tokens, at least 1")
            kind = "tokens" if unit and unit.lower().startswith("tok") else "steps"
            return Budget(kind, int(amount))
        if scale != "m":
            # 2M alone could be tokens or steps; only lower-case m (minutes) is a duration.
            raise ConfigError(f"budget '{text}' is ambiguous; {hint}")
    try:
        seconds = parse_duration(text)
    except ConfigError:
        raise ConfigError(f"budget '{text}' is not a number of steps, tokens or a duration; {hint}") from None
    if seconds <= 0:
        raise ConfigError(f"budget '{text}' must be longer than zero")
    return Budget("time", text)


def base_config(spec: SweepSpec) -> RunConfig:
    """The recipe with the budget, then the fixed --set overrides and --device, applied: what every run shares."""
    from tuilm.run_setup import resolve_config

    config = resolve_config(spec.recipe)
    if spec.parsed_budget is not None:
        config = apply_overrides(config, spec.parsed_budget.overrides())
    extra = [*spec.overrides, *([("train.device", spec.device)] if spec.device is not None else [])]
    config = apply_overrides(config, extra)
    if not has_stop(config) and not any(k in STOP_KEYS for k in spec.keys):
        raise ConfigError(
            "the runs would never stop: give --budget (e.g. --budget 500 or --budget 10m), or set a stopping "
            "criterion such as train.max_steps"
        )
    return config


def has_stop(config: RunConfig) -> bool:
    t = config.train
    return bool(t.epochs or t.max_steps or t.max_tokens or t.time)


def default_name(spec: SweepSpec, base: RunConfig) -> str:
    stem = base.recipe if base.recipe != "custom" else Path(base.data.source).stem or "data"
    parts = [a.label for a in spec.axes] or (["seeds"] if spec.seeds > 1 else [])
    return _safe("-".join([stem, "sweep", *parts]))


def plan_runs(spec: SweepSpec, base: RunConfig) -> list[PlannedRun]:
    """Every combination times every seed, in grid order (the first --grid varies slowest)."""
    seed_swept = "train.seed" in spec.keys
    seeds = [base.train.seed + i for i in range(spec.seeds)]
    runs = []
    for combo in itertools.product(*[list(zip(a.raws, a.values, strict=True)) for a in spec.axes]):
        values = {a.key: value for a, (_, value) in zip(spec.axes, combo, strict=True)}
        raws = {a.key: raw for a, (raw, _) in zip(spec.axes, combo, strict=True)}
        parts = [f"{a.label}={_name_part(raw, value)}" for a, (raw, value) in zip(spec.axes, combo, strict=True)]
        for i, seed in enumerate(seeds):
            if seed_swept:
                runs.append(PlannedRun("_".join(parts), values, raws, values["train.seed"], i, True))
            else:
                runs.append(PlannedRun("_".join([*parts, f"seed={seed}"]), values, raws, seed, i))
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two runs of the grid would share the folder name '{twice}'; spell the values apart")
    return runs


def run_config(base: RunConfig, run: PlannedRun) -> RunConfig:
    """The run's full config; ConfigError when this combination cannot be built."""
    config = apply_overrides(base, run.overrides())
    if not has_stop(config):
        raise ConfigError("no stopping criterion is left (epochs, max_steps, max_tokens and time are all 0)")
    return config


def _name_part(raw: str, value: Any) -> str:
    return _safe(value if isinstance(value, str) else raw)


def _safe(text: str) -> str:
    return SAFE.sub("-", str(text)).strip("-") or "_"


def load_spec_file(sweep_dir: Path) -> dict[str, Any] | None:
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # rewritten from the current command; the runs themselves are checked one by one
    return data if isinstance(data, dict) else None


def save_spec_file(sweep_dir: Path, data: dict[str, Any]) -> None:
    from tuilm.atomic import atomic_write_text

    atomic_write_text(Path(sweep_dir) / SPEC_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def same_sweep(saved: dict[str, Any] | None, spec: SweepSpec) -> bool:
    if not saved:
        return False
    ours = spec.to_json()
    return all(saved.get(k) == ours[k] for k in ours if k != "device")
