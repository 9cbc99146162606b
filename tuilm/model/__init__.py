"""The language model: a decoder-only pre-norm transformer and its config.

`GPT` and `KVCache` are imported on first use: the config alone must not pull in torch (CLI start-up).
"""

from tuilm.model.config import ModelConfig

__all__ = ["GPT", "KVCache", "ModelConfig"]


def __getattr__(name: str):
    if name in ("GPT", "KVCache"):
        from tuilm.model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'tuilm.model' has no attribute {name!r}")
