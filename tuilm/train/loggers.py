"""Experiment trackers a run can also log to: TensorBoard event files and Weights & Biases, both fed the same
scalars by `scalars()`. Each imports its package only when asked for."""

from __future__ import annotations

import threading
from pathlib import Path

from tuilm.train import events as ev


def scalars(event: ev.Event) -> tuple[int, dict[str, float | None]] | None:
    """(step, {name: value}) of what an event logs as scalars, under the names the wandb and TensorBoard sinks both
    use (`train/loss`, `val/bpc`, `health/grad_norm/block0.attn`, `alerts/exploding`, ...); None for the rest."""
    if isinstance(event, ev.Step):
        return event.step, {
            "train/loss": event.loss,
            "train/lr": event.lr,
            "train/tokens_per_s": event.tokens_per_s,
            "train/grad_norm": event.grad_norm,
            "train/tokens": event.tokens,
            **({"train/mfu": event.mfu} if event.mfu is not None else {}),
        }
    if isinstance(event, ev.Eval):
        per_byte = {"val/bpb": event.val_bpb} if event.val_bpb is not None else {}
        return event.step, {"val/loss": event.val_loss, "val/ppl": event.val_ppl, "val/bpc": event.val_bpc, **per_byte}
    if isinstance(event, ev.Health):
        data: dict[str, float | None] = {}
        for i, layer in enumerate(event.layers):
            data[f"health/grad_norm/{layer}"] = event.grad_norm[i]
            data[f"health/update_ratio/{layer}"] = event.update_ratio[i]
        for i, block in enumerate(event.blocks):
            data[f"health/act_std/{block}"] = event.act_std[i]
            data[f"health/attn_entropy/{block}"] = event.attn_entropy[i] if i < len(event.attn_entropy) else None
        return event.step, data
    if isinstance(event, ev.Alert):
        return event.step, {f"alerts/{event.code}": 1}
    return None


TENSORBOARD_MISSING = "--tensorboard needs the tensorboard package: pip install 'tuilm[tensorboard]'"


def require_tensorboard() -> None:
    """ConfigError (one line, exit 2) before training when the optional tensorboard package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        from tuilm.errors import ConfigError

        raise ConfigError(TENSORBOARD_MISSING)


class TensorBoardLogger:
    """TensorBoard event files under `<run>/tensorboard/`: the scalars of `scalars()`, the names wandb gets too.
    A resume purges what the earlier session logged after its checkpoint (the newer steps win there as well)."""

    def __init__(self, run_dir: Path):
        require_tensorboard()
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = None
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            purge = event.resumed_step + 1 if event.resumed_step else None
            with self._lock:
                self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
            return
        if self.writer is None:
            return
        if (logged := scalars(event)) is not None:
            step, data = logged
            with self._lock:
                for name, value in data.items():
                    if value is not None and self.writer is not None:
                        self.writer.add_scalar(name, value, step)
        elif isinstance(event, ev.Finished | ev.Failed):
            self.close()

    def close(self) -> None:
        """Flush and close the event file (at the end of the run, and by the command on any way out)."""
        with self._lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            writer.flush()
            writer.close()


class WandbLogger:
    """Weights & Biases: step and eval metrics, per-layer health as scalars. Imported only when asked for."""

    def __init__(self, project: str, name: str | None, run_dir: Path, console: bool = True):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency, but an optional one at heart
            from tuilm.errors import ConfigError

            raise ConfigError("wandb is not installed; pip install wandb, or train without --wandb") from None
        self.wandb = wandb
        self.project, self.name, self.run_dir = project, name, Path(run_dir)
        # With the dashboard on, wandb must not capture the console: it would write over the screen.
        self.settings = wandb.Settings(console="auto" if console else "off", silent=not console)
        self.run = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.run = self.wandb.init(
                project=self.project,
                name=self.name or event.name,
                config=event.config,
                dir=str(self.run_dir),
                settings=self.settings,
                resume="allow",
            )
        elif self.run is None:
            return
        elif (logged := scalars(event)) is not None:
            self.run.log(logged[1], step=logged[0])
        elif isinstance(event, ev.Finished | ev.Failed):
            if isinstance(event, ev.Finished):
                self.run.summary.update(
                    {"best_val_loss": event.best_val_loss, "best_val_bpc": event.best_val_bpc, "status": event.status}
                )
            self.run.finish(exit_code=0 if isinstance(event, ev.Finished) else 1)
            self.run = None
