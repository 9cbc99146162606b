"""The shape of a model: every knob a recipe can turn, checked before any tensor is allocated."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from tuilm.errors import ConfigError
from tuilm.formatting import short

POS_CHOICES = ("learned", "sinusoidal", "rope", "alibi")
ACT_CHOICES = ("gelu", "relu", "swiglu", "relu2", "gelu_tanh")  # gelu_tanh: GPT-2's approximation
NORM_CHOICES = ("layernorm", "rmsnorm")
# Upper bounds far beyond any small model, there so that a typo or a forged checkpoint is refused with a reason
# instead of allocating terabytes (or looping for minutes) first.
LIMITS = {
    "vocab_size": 1_000_000,
    "seq_len": 1 << 20,
    "d_model": 1 << 16,
    "n_layers": 1 << 10,
    "n_heads": 1 << 12,
    "d_ff": 1 << 20,
}
MODEL_LEAST = {"vocab_size": 2, "seq_len": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "d_ff": 1}  # d_ff: or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True would otherwise pass as 1


def _divisors(d: int) -> list[int]:
    small = [n for n in range(1, int(d**0.5) + 1) if d % n == 0]
    return sorted({*small, *(d // n for n in small)})


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 10000
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None  # hidden width of a plain two-matrix MLP; None means 4 * d_model
    dropout: float = 0.0
    pos: str = "learned"
    act: str = "gelu"
    norm: str = "layernorm"
    tie_embeddings: bool = True
    bias: bool = False
    qk_norm: bool = False  # normalise queries and keys per head (RMSNorm) before their dot product
    checkpoint_activations: bool = False  # recompute each block's activations in the backward pass (less memory)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError with a one-line, actionable reason if this config cannot be built."""
        for name, least in MODEL_LEAST.items():
            if name == "d_ff":
                continue
            v = getattr(self, name)
            if not _is_int(v) or v < least:
                raise ConfigError(f"{name} must be a whole number >= {least}, got {short(v)}")
            if v > LIMITS[name]:
                raise ConfigError(f"{name} {v} is absurd for this model: at most {LIMITS[name]:,}")
        if self.d_ff is not None and (not _is_int(self.d_ff) or not 1 <= self.d_ff <= LIMITS["d_ff"]):
            raise ConfigError(
                f"d_ff must be a whole number from 1 to {LIMITS['d_ff']:,} (or unset for 4 * d_model), "
                f"got {short(self.d_ff)}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {short(self.dropout)}")
        for name, choices in (("pos", POS_CHOICES), ("act", ACT_CHOICES), ("norm", NORM_CHOICES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {short(getattr(self, name))}; choose one of {', '.join(choices)}")
        for name in ("tie_embeddings", "bias", "qk_norm", "checkpoint_activations"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {short(getattr(self, name))}")
        d, h = self.d_model, self.n_heads
        divisors = _divisors(d)
        if d % h:
            raise ConfigError(
                f"d_model {d} is not divisible by n_heads {h} (head size must be a whole number); "
                f"choose n_heads among {', '.join(map(str, divisors))}"
            )
        if self.pos == "rope" and (d // h) % 2:
            even = [n for n in divisors if (d // n) % 2 == 0]
            hint = f"choose n_heads among {', '.join(map(str, even))}" if even else "choose an even d_model"
            raise ConfigError(
                f"pos 'rope' rotates pairs of dimensions, so the head size must be even, "
                f"but d_model {d} / n_heads {h} = {d // h}; {hint}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_hidden(self) -> int:
        hidden = self.d_ff if self.d_ff is not None else 4 * self.d_model
        if self.act == "swiglu":
            # Three matrices instead of two: 2/3 of the width keeps the parameter count of the plain MLP, so
            # switching act compares like with like. Multiples of 8 keep matmuls on friendly shapes.
            hidden = -(-max(1, 2 * hidden // 3) // 8) * 8
        return hidden

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"model settings must be a table of name = value, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        problems = []
        for key in d:
            if key in names:
                continue
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid settings are {', '.join(names)}"
            problems.append(f"unknown model setting {str(key)!r}; {hint}")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**d)
