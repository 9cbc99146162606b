"""Activation statistics of each block's output and MLP hidden layer, from forward hooks: mean, std, max |a|,
and for the ReLU family the fraction of dead units (those that never fire on the batch)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Mish, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.Tanh)


def mlp_activation(block):
    """A block's MLP activation module (for hidden-layer statistics), or None."""
    for name, module in block.named_modules():
        last = name.rsplit(".", 1)[-1]
        named = last in ("act", "act_fn", "activation", "activation_fn")
        if (named or isinstance(module, ACTIVATIONS)) and not any(module.children()):
            return module
    return None


class ActivationHooks:
    def __init__(self, blocks: list, model_cfg=None):
        """`blocks`: the model's repeated blocks (LayerGroups.blocks); `model_cfg`: tuilm's ModelConfig, whose
        `act` says whether the MLP is of the ReLU family (other models: every MLP activation an nn.ReLU)."""
        self.blocks = blocks
        self.modules = [mlp_activation(b) for b in blocks]
        if model_cfg is not None and hasattr(model_cfg, "act"):
            self.relu_family = model_cfg.act in ("relu", "relu2")
        else:
            self.relu_family = bool(self.modules) and all(isinstance(a, nn.ReLU) for a in self.modules)
        self._acts: dict[tuple[str, str], list] = {}
        self._armed = False  # the hooks record only on a measured step's forward pass
        self._kept: list = []  # hooks left in place (keep) for loops the monitor does not run

    def during(self, active: bool):
        """Record from the forward passes run inside (the first pass of each block only)."""
        # Inactive (most steps) it is a plain nullcontext: a generator-based one costs microseconds a step.
        return self._hooked() if active else contextlib.nullcontext()

    @contextlib.contextmanager
    def _hooked(self):
        self._acts = {}
        self._armed = True
        handles = self._register()
        try:
            yield
        finally:
            self._armed = False
            for h in handles:
                h.remove()

    def _register(self) -> list:
        handles = []
        for i, (block, act) in enumerate(zip(self.blocks, self.modules, strict=True)):
            handles.append(block.register_forward_hook(self._hook(f"block{i}", "out")))
            if act is not None:
                handles.append(act.register_forward_hook(self._hook(f"block{i}", "mlp")))
        return handles

    def keep(self) -> None:
        """Leave the hooks in place, recording only after `arm()` (the first forward pass after it): for a loop
        whose forward passes the monitor does not run (tuilm.Monitor)."""
        if not self._kept:
            self._kept = self._register()

    def arm(self) -> None:
        self._acts, self._armed = {}, True

    def remove(self) -> None:
        for h in self._kept:
            h.remove()
        self._kept, self._armed = [], False

    def _hook(self, block: str, kind: str):
        def hook(module, inputs, output):
            key = (block, kind)
            if not self._armed or key in self._acts:
                return
            if isinstance(output, tuple | list):  # Hugging Face blocks return (hidden, ...)
                output = output[0] if output and isinstance(output[0], torch.Tensor) else None
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            with torch.no_grad():
                a = output.detach().float().flatten(0, -2)  # (tokens, features)
                stats = [a.mean(), a.std(), a.abs().max()]
                if kind == "mlp" and self.relu_family:
                    stats.append(1.0 - (a > 0).any(dim=0).float().mean())
                self._acts[key] = stats

        return hook

    def take(self, blocks: list[str]) -> dict[str, list]:
        """What was recorded, as the Health event's per-block fields (nan where a block recorded nothing); the
        next measurement starts afresh."""
        acts = {k: [float(s) for s in v] for k, v in self._acts.items()}
        self._acts, self._armed = {}, False
        return {
            "act_mean": [acts.get((b, "out"), [math.nan])[0] for b in blocks],
            "act_std": [acts.get((b, "out"), [math.nan] * 2)[1] for b in blocks],
            "act_max": [acts.get((b, "out"), [math.nan] * 3)[2] for b in blocks],
            "mlp_std": [acts.get((b, "mlp"), [math.nan] * 2)[1] for b in blocks],
            "dead_fraction": [acts[(b, "mlp")][3] if self.relu_family and (b, "mlp") in acts else None for b in blocks],
        }
