"""A model's weights as files hold them, and the one way into a model: every tensor's name and shape checked
against the model, and NaN or Inf refused (--resume, --init, sample, chat, eval all come through `load_weights`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tuilm.errors import CheckpointError
from tuilm.formatting import short


def saved_state(model) -> dict[str, torch.Tensor]:
    """The state dict a file holds: the tied head left out (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)
    return state


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Weights to save: fp32, contiguous, on the CPU."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in saved_state(model).items()}


def mismatch(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: the weights do not match the model config: {why}")


def compare_shapes(path: Path, expected: dict[str, tuple], saved: dict[str, tuple]) -> None:
    """One line naming the missing, unexpected and misshapen tensors of `saved`, if there are any."""
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    wrong = [f"{k} {tuple(saved[k])} vs {tuple(v)}" for k, v in expected.items() if k in saved and saved[k] != v]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(short(e) for e in extra[:3])}{' …' if len(extra) > 3 else ''}")
        if wrong:
            parts.append(f"shape {wrong[0]} (saved vs config)")
        raise mismatch(path, "; ".join(parts))


def load_weights(
    model,
    tensors: dict[str, torch.Tensor],
    path: Path,
    *,
    allow_nonfinite: bool = False,
    hint: str = "training cannot continue from it: start a new run (a lower train.lr) or from an earlier checkpoint",
) -> None:
    """`tensors` into `model` after checking their names and shapes, and that they are finite, unless
    `allow_nonfinite` (a post-mortem of a diverged run)."""
    expected = {k: tuple(v.shape) for k, v in saved_state(model).items()}
    compare_shapes(path, expected, {k: tuple(t.shape) for k, t in tensors.items()})
    if not allow_nonfinite:
        bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
        if bad:
            more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
            raise CheckpointError(f"{path}: the weights hold NaN or Inf (in {bad[0]}{more}); {hint}")
    model.load_state_dict(tensors, strict=False)


def weights_finite(model) -> bool:
    """Whether every parameter of `model` is finite (one device sync per tensor: for checkpoints, not steps)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
