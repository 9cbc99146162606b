"""train.ema: an exponential moving average of the weights, evaluated beside them at every evaluation.

The average is a GPT of its own (a copy of the model), so it is evaluated, sampled from and saved exactly like the
model. Each optimizer step moves it towards the weights with torch's fused `_foreach_lerp_`, at a Python-number
weight: nothing is read back from the device, so lean steps (train/lean.py) stay lean.

The decay ramps up as in TensorFlow's ExponentialMovingAverage(num_updates): min(ema, (1 + n) / (10 + n)) after n
updates, so a short run's average is not dominated by its random initial weights (at 0.999 those would still
weigh 0.999^600 = 55% after 600 steps). n is the step count, which the training state holds: a resume is exact.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()  # shares nothing with the model (tied weights stay tied inside)
        self.module.requires_grad_(False)
        self._averaged = list(self.module.parameters())
        self._live = list(model.parameters())

    def weight(self, step: int) -> float:
        """How far the average moves towards the weights after optimizer step `step` (1, 2, ...)."""
        return 1.0 - min(self.decay, step / (9 + step))  # (1 + n) / (10 + n) with n = step - 1 updates before

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self._averaged, [p.detach() for p in self._live], self.weight(step))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name, for the training state."""
        return {name: p.detach() for name, p in self.module.named_parameters()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in self.module.named_parameters():
            p.copy_(tensors[name])


def build(model: torch.nn.Module, decay: float) -> WeightAverage | None:
    return WeightAverage(model, decay) if decay > 0 else None
