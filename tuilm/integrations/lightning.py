"""tuilm's gradient health in a Lightning Trainer, in one line:

    from tuilm.integrations.lightning import TuilmCallback
    trainer = L.Trainer(max_steps=200, callbacks=[TuilmCallback("runs/pl")])

The callback opens a Monitor on the LightningModule and its first optimizer when fitting starts, reads the
gradients just before each optimizer step (after Lightning's own clipping), takes the loss that `training_step`
returns (a tensor or a dict with "loss") once per optimizer step, and reports `val_loss` (or the metric named by
`val_metric`) from the logged metrics after each validation run.
"""

from __future__ import annotations

from pathlib import Path

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as e:
        from tuilm.errors import ConfigError

        raise ConfigError("tuilm.integrations.lightning needs lightning: pip install lightning") from e

from tuilm.monitor import Monitor


class TuilmCallback(pl.Callback):
    def __init__(self, run_dir: str | Path = "runs/lightning", config=None, val_metric: str = "val_loss", **options):
        super().__init__()
        self.run_dir, self.config, self.val_metric, self.options = Path(run_dir), config, val_metric, options
        self.monitor: Monitor | None = None
        self._stepped = False
        self._losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer, pl_module):
        if self.monitor is not None:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        clip = float(trainer.gradient_clip_val or 0.0)
        options = {"max_steps": max_steps, "grad_clip": clip, **self.options}
        self.monitor = Monitor(pl_module, optimizer, self.run_dir, self.config, **options)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.monitor is not None:
            self.monitor.before_step()
            self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
        if self.monitor is None or not self._stepped:
            return  # accumulating: the optimizer has not stepped yet
        self._stepped = False
        value = torch.stack(self._losses).float().mean() if self._losses else float("nan")
        self._losses = []
        tokens = batch_tokens(batch)
        self.monitor.step(value, tokens=tokens)

    def on_validation_end(self, trainer, pl_module):
        if self.monitor is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.val_metric)
        if value is not None:
            self.monitor.eval(float(value))

    def on_fit_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer, pl_module, exception):
        if self.monitor is not None:
            self.monitor.close(exception)


def batch_tokens(batch) -> int:
    """Elements of the batch's first integer tensor (token ids), 0 when there is none."""
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else [batch]
    for item in items:
        if isinstance(item, torch.Tensor) and not item.is_floating_point():
            return item.numel()
    return 0
