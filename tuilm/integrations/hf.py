"""tuilm's gradient health in a Hugging Face Trainer, in one line:

    from tuilm.integrations.hf import TuilmCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TuilmCallback("runs/hf")])

The callback opens a Monitor on the trainer's model and optimizer when training begins. The Trainer hands its
callbacks no per-step loss, so a forward hook on the model keeps the `loss` of each forward pass (micro-batches
of a step are averaged) and the tokens it scored (labels other than -100). Gradients are read just before the
optimizer step, after the Trainer's clipping (`max_grad_norm`); evaluations come through as Eval events.
"""

from __future__ import annotations

from pathlib import Path

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the extra is missing
    from tuilm.errors import ConfigError

    raise ConfigError("tuilm.integrations.hf needs transformers: pip install transformers") from e

from tuilm.monitor import Monitor


class TuilmCallback(TrainerCallback):
    def __init__(self, run_dir: str | Path = "runs/hf", config=None, **monitor_options):
        self.run_dir, self.config, self.options = Path(run_dir), config, monitor_options
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._tokens = 0
        self._handles: list = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.monitor is not None:
            return
        # A model loaded from_pretrained starts below ln(vocab): the init-loss check is for models from scratch.
        pretrained = bool(getattr(getattr(model, "config", None), "_name_or_path", ""))
        options = {
            "max_steps": state.max_steps or None,
            "grad_clip": args.max_grad_norm or 0.0,
            **({"vocab_size": 0} if pretrained else {}),
            **self.options,
        }
        train = {"lr": args.learning_rate, "batch_size": args.per_device_train_batch_size}
        self.monitor = Monitor(model, optimizer, self.run_dir, self.config, run_config={"train": train}, **options)
        self._handles = [
            model.register_forward_pre_hook(self._count_tokens, with_kwargs=True),
            model.register_forward_hook(self._keep_loss),
        ]

    def _count_tokens(self, module, args, kwargs):
        if module.training:
            labels = kwargs.get("labels")
            if isinstance(labels, torch.Tensor):
                self._tokens += int((labels != -100).sum())

    def _keep_loss(self, module, args, output):
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        loss = torch.stack(self._losses).float().mean() if self._losses else torch.tensor(float("nan"))
        self.monitor.step(loss, tokens=self._tokens)
        self._losses, self._tokens = [], 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is not None and metrics and "eval_loss" in metrics:
            self.monitor.eval(metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.monitor is not None:
            self.monitor.close()
