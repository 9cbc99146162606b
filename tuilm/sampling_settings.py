"""How to sample: temperature, top-k, top-p, min-p, repetition penalty, length and stop strings, with their defaults
in one place.

Torch-free, so that the CLI can show these defaults in --help without loading torch; tuilm.sampling uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuilm.errors import ConfigError
from tuilm.stop_strings import check_stops


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8
    top_k: int = 0  # 0: no limit
    top_p: float = 0.95  # 1.0: no limit
    max_new_tokens: int = 200
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest; 0: off
    repetition_penalty: float = 1.0  # divide the logits of tokens already in the context (CTRL); 1: off
    stop: tuple[str, ...] = ()  # text that ends a generation at its first occurrence (tuilm.stop_strings)

    def validate(self) -> None:
        if not 0 <= self.temperature <= 100:
            raise ConfigError(f"temperature must be between 0 (greedy) and 100, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min-p must be in [0, 1), got {self.min_p}")
        if not 1 <= self.repetition_penalty <= 10:
            raise ConfigError(f"repetition penalty must be between 1 (off) and 10, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        check_stops(self.stop)


DEFAULTS = SamplingSettings()  # what `tuilm sample`, `tuilm chat` and the chat after training start with
