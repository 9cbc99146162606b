"""Run configuration: frozen dataclasses, loaded from TOML recipes, overridden with `--set key=value`.

A recipe is a TOML file with up to four tables, [data], [model], [train] and [health], plus an optional top-level
`description`. Every field has a default, so `tuilm train data.txt` needs no recipe at all.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tuilm.data.config import POLICIES, SPLITS, VAL_CONTEXTS, DataConfig
from tuilm.errors import ConfigError
from tuilm.formatting import short
from tuilm.model.config import LIMITS, MODEL_LEAST, ModelConfig
from tuilm.values import DURATION_TEXT, Range, check_device_name, dump_toml, parse_duration, parse_target


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # rows per optimizer step
    batch_tokens: int = 0  # if set, rows per step = batch_tokens // seq_len (compare block sizes at equal batch)
    # rows per forward pass; 0 means batch_size (no accumulation); "auto": on CUDA and MPS the largest that fits,
    # found before training (tuilm/train/accel.py), on the CPU batch_size
    micro_batch_size: int | str = "auto"
    optimizer: str = "adamw"  # adamw | adam | sgd | adafactor | muon (Muon for the blocks' matrices, AdamW rest)
    lr: float = 1e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"  # cosine | linear | constant | wsd (after warmup, towards min_lr)
    decay_fraction: float = 0.2  # wsd: the share of the run spent decaying to min_lr, at its end
    decay_shape: str = "linear"  # wsd: linear | sqrt (1 - sqrt, Hägele et al. 2024)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated beside them; 0: off
    target: str = ""  # time to target: val bits/char (2.2), or loss=1.5 / bpc=2.2 / bpb=2.2; "" for none
    stop_at_target: bool = False  # end the run at the evaluation that reaches train.target
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.9  # sgd
    muon_lr: float = 0.02  # muon: peak lr of the Muon groups (the AdamW groups use lr); same schedule
    muon_momentum: float = 0.95  # muon: Nesterov momentum
    grad_clip: float = 1.0  # 0 turns clipping off
    z_loss: float = 0.0  # coefficient of the mean squared log Z of the output logits added to the loss (PaLM: 1e-4)
    epochs: float = 0.0  # stopping criteria: 0 means unset; training stops at the first one reached
    max_steps: int = 0
    max_tokens: int = 0
    time: str = ""  # wall-clock training budget, e.g. "90s", "10m", "1h30m"
    patience: int = 0  # stop after this many evaluations without a new best val loss; 0 means never
    eval_interval: int = 200  # steps
    checkpoint_interval: int = 500  # steps
    keep_checkpoints: int = 0  # keep the N newest step-<STEP>.safetensors, one per checkpoint_interval; 0: none
    log_interval: int = 1  # steps per Step event; > 1 keeps loss and grad norm on the device in between (issue 12)
    sample_prompt: str = "\n"  # text sampled from at each evaluation
    sample_tokens: int = 80
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool | str = "auto"  # auto (on for CUDA, off elsewhere) | true | false
    threads: int = 0  # CPU threads; 0: auto (tuilm/train/workers.py)
    parallel: str = "auto"  # CPU: auto | ops (torch's intra-op threads) | batch (the step's rows split over threads)
    init: str = ""  # corpora (issue 15): start from pre-trained weights: gpt2, gpt2-medium/-large/-xl or a HF dir

    @property
    def time_budget(self) -> float:
        """train.time in seconds, 0 for none: the one place it is parsed (validate() checks it through here)."""
        return parse_duration(self.time) if self.time else 0.0


@dataclass(frozen=True)
class HealthConfig:
    interval: int = 25  # steps between per-layer measurements (see benchmarks/health_overhead.py)
    nonfinite: str = "skip"  # skip | stop: what a NaN/Inf loss or gradient does
    on_spike: str = "none"  # none | skip | stop | rewind: what a loss spike does (see tuilm/train/rewind.py)
    rewind_interval: int = 50  # on_spike = rewind: steps between in-memory copies of the last good state
    explode_factor: float = 10.0  # global grad norm above this multiple of its running average
    explode_limit: float = 1e4  # ... or above this absolute value
    vanish_floor: float = 1e-8  # a layer's grad norm below this
    vanish_ratio: float = 1e-4  # ... or below this fraction of the median layer's
    update_low: float = -5.0  # log10 update/weight ratio band; healthy is near -3
    update_high: float = -1.0
    spike_factor: float = 1.5  # loss above this multiple of its running average
    dead_limit: float = 0.5  # fraction of an MLP's ReLU units that never fire on a batch
    overfit_evals: int = 3  # val loss rising this many evaluations in a row while train loss falls
    init_tolerance: float = 0.5  # step 1's loss this fraction of ln(vocab) away from ln(vocab): init or data wrong
    eps_ratio: float = 10.0  # a layer's gradient RMS below this multiple of the optimizer's eps
    attn_logit_limit: float = 100.0  # largest pre-softmax attention logit (Wortsman et al. 2023: it grows unbounded)
    entropy_floor: float = 0.05  # a layer's mean attention entropy (nats) below this: collapsed
    logz_drift: float = 20.0  # output log Z this far from its first measurement

    @classmethod
    def of_run(cls, config: dict) -> HealthConfig:
        """The thresholds of a run's config dict (a RunStarted event's), defaults for what it lacks."""
        h = config.get("health", {})
        return cls(**{f.name: h[f.name] for f in fields(cls) if f.name in h})


@dataclass(frozen=True)
class RunConfig:
    recipe: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def rows_per_step(self) -> int:
        return rows_per_step(self.train.batch_size, self.train.batch_tokens, self.model.seq_len)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"].pop("vocab_size", None)  # follows the tokenizer, set by data.vocab_size
        return out

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def rows_per_step(batch_size: int, batch_tokens: int, seq_len: int) -> int:
    """Rows per optimizer step: train.batch_tokens // seq_len when set (equal tokens across block sizes), else
    train.batch_size; for a config object and for a run's config tables alike."""
    return max(1, batch_tokens // seq_len) if batch_tokens else batch_size


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "health": HealthConfig}
CHOICES = {
    "data.policy": POLICIES,
    "data.split": SPLITS,
    "data.val_context": VAL_CONTEXTS,
    "train.optimizer": ("adamw", "adam", "sgd", "adafactor", "muon"),
    "train.schedule": ("cosine", "linear", "constant", "wsd"),
    "train.decay_shape": ("linear", "sqrt"),
    "train.dtype": ("auto", "fp32", "bf16", "fp16"),
    "train.parallel": ("auto", "ops", "batch"),
    "health.nonfinite": ("skip", "stop"),
    "health.on_spike": ("none", "skip", "stop", "rewind"),
}
_HIDDEN = {"model.vocab_size"}

# -- every setting's type and range, in one place (issue 17) ------------------------------------------------------
# The type is the dataclass field's annotation; the range of every number is here, beside the dataclasses, and
# checked once at load (from_dict, apply_overrides): non-finite numbers are refused everywhere. The model's shape
# limits are model.config.LIMITS, the same table the checkpoint loader uses. Cross-field rules (min_lr <= lr,
# stride <= seq_len, d_model divisible by n_heads) are checked in validate(), after every override is applied.


COUNT_MAX = 10**12  # steps, intervals, evaluations: far beyond any run, and an int64 everywhere
SEED = Range(0, 2**63 - 1, integer=True)  # torch.manual_seed and numpy take these


def _count(lo: int, hi: int = COUNT_MAX) -> Range:
    return Range(lo, hi, integer=True)


UNIT = Range(0.0, 1.0, hi_open=True)  # betas, momenta
POSITIVE = Range(0.0, lo_open=True)
NON_NEGATIVE = Range(0.0)
# a learning rate is multiplied into float32 weights: past float32's largest value it only overflows
LEARNING_RATE = Range(0.0, 3.4e38, lo_open=True)
RANGES: dict[str, Range] = {
    "data.vocab_size": _count(258, LIMITS["vocab_size"]),
    "data.stride": _count(0, LIMITS["seq_len"]),
    "data.overflow_min": _count(1, LIMITS["seq_len"]),
    "data.val_fraction": Range(0.0, 1.0, lo_open=True, hi_open=True),
    "data.split_seed": SEED,
    "data.train_fraction": Range(0.0, 1.0, lo_open=True),
    **{f"model.{k}": _count(least, LIMITS[k]) for k, least in MODEL_LEAST.items()},
    "model.dropout": UNIT,
    "train.batch_size": _count(1, 1 << 24),
    "train.batch_tokens": _count(0, 1 << 40),
    "train.micro_batch_size": _count(0, 1 << 24),
    "train.lr": LEARNING_RATE,
    "train.min_lr": Range(0.0, 3.4e38),
    "train.warmup_steps": _count(0),
    "train.decay_fraction": Range(0.0, 1.0, lo_open=True),
    "train.ema": UNIT,
    "train.weight_decay": NON_NEGATIVE,
    "train.beta1": UNIT,
    "train.beta2": UNIT,
    "train.momentum": UNIT,
    "train.muon_lr": LEARNING_RATE,
    "train.muon_momentum": UNIT,
    "train.grad_clip": NON_NEGATIVE,  # 0 turns clipping off
    "train.z_loss": NON_NEGATIVE,  # 0 turns it off
    "train.epochs": Range(0.0, 1e9),
    "train.max_steps": _count(0),
    "train.max_tokens": _count(0, 10**18),
    "train.patience": _count(0),
    "train.eval_interval": _count(1),
    "train.checkpoint_interval": _count(1),
    "train.log_interval": _count(1),
    "train.keep_checkpoints": _count(0, 10**6),
    "train.sample_tokens": _count(0, 1 << 20),
    "train.seed": SEED,
    "train.threads": _count(0, 4096),
    "health.interval": _count(0),
    "health.rewind_interval": _count(1),
    "health.explode_factor": POSITIVE,
    "health.explode_limit": POSITIVE,
    "health.vanish_floor": NON_NEGATIVE,
    "health.vanish_ratio": NON_NEGATIVE,
    "health.update_low": Range(),
    "health.update_high": Range(),
    "health.spike_factor": POSITIVE,
    "health.dead_limit": Range(0.0, 1.0),
    "health.overfit_evals": _count(1),
    "health.init_tolerance": POSITIVE,
    "health.eps_ratio": POSITIVE,
    "health.attn_logit_limit": POSITIVE,
    "health.entropy_floor": NON_NEGATIVE,
    "health.logz_drift": POSITIVE,
}


# set through data.vocab_size; the model takes the tokenizer's real size


def all_keys() -> list[str]:
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]
    return [k for k in keys if k not in _HIDDEN]


def from_dict(data: dict[str, Any], recipe: str = "custom") -> RunConfig:
    data = dict(data)
    description = data.pop("description", "")
    data.pop("recipe", None)
    parts: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = data.pop(section, {}) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of settings")
        kwargs = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted not in all_keys():
                raise unknown_setting(dotted)
            kwargs[key] = checked(dotted, value)
        parts[section] = cls(**kwargs)
    if data:
        key = next(iter(data))
        raise unknown_setting(key, f" (sections are {', '.join(SECTIONS)})")
    config = RunConfig(recipe=recipe, description=str(description), **parts)
    validate(config)
    return config


# A recipe is a few KB. Its text goes into every checkpoint's header, which safetensors caps at 100 MiB.
MAX_RECIPE_BYTES = 1 << 20


def load_toml(path: Path, recipe: str | None = None) -> RunConfig:
    try:
        size = Path(path).stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(
                f"{path}: {size:,} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES:,}); a recipe holds "
                "settings, and its text goes into every checkpoint: shorten it (description, sample_prompt)"
            )
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except (RecursionError, ValueError) as e:  # arrays nested thousands deep; an integer of 5,000 digits
        what = "nested too deeply" if isinstance(e, RecursionError) else "a number too long"
        raise ConfigError(f"{path}: not a usable recipe ({what}); write each setting as one plain value") from None
    try:
        return from_dict(data, recipe or Path(path).stem)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


Override = str | tuple[str, Any]  # `key=value` as typed on the command line, or (key, value) already typed


def apply_overrides(config: RunConfig, overrides: list[Override]) -> RunConfig:
    """Apply `key=value` strings (values in TOML syntax) and (key, value) pairs (values as they are, only
    checked against the setting's type); a key may drop its section when the name is unique (`lr=3e-4`)."""
    changes: dict[str, dict[str, Any]] = {}
    for item in overrides:
        dotted, value = parse_override(item)
        section, name = dotted.split(".")
        changes.setdefault(section, {})[name] = value
    # Each section is rebuilt once with all of its overrides, and cross-field rules run after the last one, so
    # `--set d_model=6 --set n_heads=2` means the same in either order.
    config = replace(config, **{s: replace(getattr(config, s), **c) for s, c in changes.items()})
    validate(config)
    return config


def parse_override(item: Override) -> tuple[str, Any]:
    """(full dotted key, typed value) of one override."""
    if isinstance(item, tuple):
        key, value = item
        dotted = resolve_key(key)
        return dotted, checked(dotted, value)
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=3e-4")
    key, raw = (s.strip() for s in item.split("=", 1))
    dotted = resolve_key(key)
    return dotted, parse_value(dotted, raw)


def resolve_key(key: str) -> str:
    keys = all_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".")[1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"'{key}' is ambiguous; write one of: {', '.join(matches)}")
    raise unknown_setting(key)


def unknown_setting(key: str, note: str = "") -> ConfigError:
    """The one message for a key that is no setting: the closest one, or where the settings are listed."""
    return ConfigError(f"unknown setting '{key}'{_suggest(key)}{note}")


def _suggest(key: str) -> str:
    keys = all_keys()
    pool = keys if "." in key else [k.split(".")[1] for k in keys]
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    if close:
        best = close[0] if "." in key else resolve_key(close[0]) if pool.count(close[0]) == 1 else close[0]
        return f"; did you mean '{best}'?"
    return "; run `tuilm train --help` or see docs/training.md for the settings"


def parse_value(dotted: str, raw: str) -> Any:
    """A value as typed on the command line, parsed and checked against the setting's type and range."""
    value = _parse_value(raw)
    kind = _field_type(dotted)
    if kind is str and not isinstance(value, str):
        value = raw  # --set sample_prompt=5 means the text "5"
    elif kind in (int, float) and isinstance(value, str):
        value = _number(raw)  # what TOML refuses but a shell user means: .5, 1., 007 (a recipe must write numbers)
    return checked(dotted, value)


def _number(raw: str) -> Any:
    for parse in (int, float):
        try:
            return parse(raw.replace("_", ""))
        except ValueError:
            pass
    return raw


def _parse_value(raw: str) -> Any:
    """TOML's syntax for one value (numbers, true/false, "strings"), falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):  # nested 3000 deep; 5000 digits
        return raw


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "int | None": int, "int | str": int, "bool | str": bool}
AUTO_KEYS = {"train.micro_batch_size", "train.compile"}  # also take the word "auto"


def _field_type(dotted: str) -> type:
    """The setting's declared type: its dataclass field's annotation (never the type of its default)."""
    section, name = dotted.split(".")
    f = next(f for f in fields(SECTIONS[section]) if f.name == name)
    return _TYPES[f.type] if isinstance(f.type, str) else f.type


def _type_text(dotted: str, kind: type) -> str:
    if dotted in RANGES:
        return f"{kind.__name__} ({RANGES[dotted].text()}){' or auto' if dotted in AUTO_KEYS else ''}"
    if dotted == "train.time":
        return f"str ({DURATION_TEXT})"
    auto = " or auto" if dotted in AUTO_KEYS else ""
    return {bool: f"bool (true or false{auto})", str: "str (a string)"}.get(kind, kind.__name__)


def _coerce(dotted: str, value: Any) -> Any:
    """`value` as the setting's type, in its range; ConfigError naming the key, the value and what is allowed."""
    kind = _field_type(dotted)
    if dotted == "model.d_ff" and value in (None, 0, "auto", "none") and not isinstance(value, bool):
        return None
    if dotted in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, bool | int) and value in (0, 1):
                return bool(value)
            raise ValueError
        # Numbers are numbers: a recipe's "1" is text, refused (the command line's text is parsed by parse_value).
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                typed = int(value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            else:
                typed = value
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError
            typed = float(value)
        else:
            if (
                dotted in ("train.time", "train.target")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                value = str(value)  # time = 90 in a recipe: seconds; target = 2.2: bits/char
            if not isinstance(value, str):
                raise ValueError
            if dotted == "train.time" and value:
                try:
                    parse_duration(value)
                except ConfigError:
                    raise ConfigError(f"{dotted} must be {DURATION_TEXT}, got {short(value)}") from None
            return value
    except (ValueError, OverflowError):
        raise ConfigError(f"{dotted} must be {_type_text(dotted, kind)}, got {short(value)}") from None
    return typed


def checked(dotted: str, value: Any) -> Any:
    """`value` as the setting's type and in its range (RANGES): the one check of a single setting, made as every
    value is loaded (a recipe, --set, a checkpoint's config, an imported model's config.json)."""
    typed = _coerce(dotted, value)
    if dotted == "train.device":
        check_device_name(typed, dotted)
    unset = typed is None or (dotted in AUTO_KEYS and typed == "auto")
    if dotted in RANGES and not unset and typed not in RANGES[dotted]:
        auto = " or auto" if dotted in AUTO_KEYS else ""
        raise ConfigError(f"{dotted} must be {RANGES[dotted].text()}{auto}, got {short(value)}")
    return typed


def validate(config: RunConfig) -> None:
    """The rules between settings; each setting's own type and range was checked as it was loaded (checked)."""
    for dotted, choices in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{dotted} '{value}' is not one of: {', '.join(choices)}")
    d, t, h = config.data, config.train, config.health
    checks = [
        (d.stride <= config.model.seq_len, f"data.stride must be 0 or 1..seq_len, got {d.stride}"),
        (
            not (d.doc_mask and d.val_context == "stream"),
            "data.doc_mask never lets attention cross a document end, which data.val_context = 'stream' scores: "
            "choose one of them",
        ),
        (t.min_lr <= t.lr, f"train.min_lr must be between 0 and train.lr ({t.lr}), got {t.min_lr}"),
        (
            h.update_low <= h.update_high,
            f"health.update_low ({h.update_low}) must be at most health.update_high ({h.update_high})",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    t.time_budget  # noqa: B018 - raises ConfigError for a time that is not a duration
    if t.target:
        parse_target(t.target)
    if t.stop_at_target and not t.target:
        raise ConfigError("train.stop_at_target needs a target: --target 2.2 (val bits/char) or --target loss=1.5")
