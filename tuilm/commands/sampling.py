"""What `tuilm sample` and `tuilm chat` share: their sampling options made one checked setting, then the model."""

from __future__ import annotations

from pathlib import Path


def sampling_settings(
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    min_p: float,
    repetition_penalty: float,
    stop: list[str] | None,
):
    """The settings from command-line options, stop strings read with their escapes (\\n for a newline)."""
    from tuilm.sampling_settings import SamplingSettings
    from tuilm.stop_strings import parse_stop

    stops = tuple(parse_stop(s) for s in stop or ())
    return SamplingSettings(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty, stops)


def load_for_sampling(model_path: Path, settings, device: str, allow_nonfinite: bool = False):
    """The checkpoint to sample from, after the settings are checked: a bad value fails before any loading."""
    from tuilm.checkpoint.model import open_model
    from tuilm.device import pick_device

    settings.validate()
    return open_model(model_path, pick_device(device), allow_nonfinite=allow_nonfinite)
