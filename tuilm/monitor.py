"""tuilm's gradient health for any PyTorch training loop.

    mon = tuilm.Monitor(model, optimizer, run_dir="runs/mine")
    for batch in data:
        loss = model(batch)
        loss.backward()
        mon.before_step()      # optional: per-layer gradients before clipping (else they are read in step())
        optimizer.step()
        mon.step(loss, tokens=n)
        optimizer.zero_grad()
    mon.eval(val_loss, bpc=...)
    mon.close()

It writes the metrics.jsonl tuilm's trainer writes (the same events: RunStarted, Step, Health, Alert, Eval,
Finished), so `tuilm watch RUN` and `tuilm health RUN` work on it. Per-layer groups come from the model's module
tree (see tuilm.train.health.LayerGroups). Every step costs one gradient-norm reduction and one host sync (the
loss and that norm); every `health.interval` steps the per-layer measurement adds a copy of the weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from tuilm.config import HealthConfig
from tuilm.errors import ConfigError
from tuilm.train import events as ev
from tuilm.train.health import HealthMonitor
from tuilm.train.metrics_file import MetricsFile


def health_config(config) -> HealthConfig:
    """A HealthConfig from None, a HealthConfig, or a dict of its keys (a typo is a ConfigError)."""
    if config is None:
        return HealthConfig()
    if isinstance(config, HealthConfig):
        return config
    if isinstance(config, dict):
        known = {f.name for f in fields(HealthConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown health setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return replace(HealthConfig(), **config)
    raise ConfigError(f"config must be a HealthConfig or a dict of health settings, not {type(config).__name__}")


class Monitor:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        run_dir: str | Path = "runs/monitor",
        config: HealthConfig | dict | None = None,
        *,
        name: str | None = None,
        max_steps: int | None = None,
        grad_clip: float = 0.0,
        warmup_steps: int = 0,
        run_config: dict | None = None,
        vocab_size: int | None = None,
    ):
        """`grad_clip`: the clipping threshold your loop applies (only to mark clipped steps); `run_config`: any
        settings to record in the run's config (shown by the dashboard); `vocab_size`: for a language model trained
        from scratch, checks that the first loss is near ln(vocab) (read from `model.config` or `model.cfg` when
        not given; pass 0 for a pre-trained model)."""
        self.model, self.optimizer = model, optimizer
        self.cfg = health_config(config)
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.max_steps, self.grad_clip = max_steps, grad_clip
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl")
        if vocab_size is None:
            model_cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
            vocab_size = getattr(model_cfg, "vocab_size", None)
        no_opt = _NoOptimizer()
        self.health = HealthMonitor(model, optimizer or no_opt, self.cfg, self._emit, warmup_steps, vocab_size or None)
        self.health.keep_hooks()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.last_eval: ev.Eval | None = None
        self._train_losses: list[float] = []
        self._grad_norm: float | None = None  # from before_step, for the step in progress
        self._last_time: float | None = None
        self._closed = False
        self._diverged = False
        self._snapshot_if_due()
        first = next(iter(model.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
        dtype = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
        n = sum(p.numel() for p in model.parameters())
        emb = sum(
            p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
        )
        config_dict = {"health": asdict(self.cfg), "model": {}, "train": {"grad_clip": grad_clip}, "data": {}}
        for key, value in (run_config or {}).items():
            if isinstance(value, dict):
                config_dict.setdefault(key, {}).update(value)
            else:
                config_dict[key] = value
        self._emit(
            ev.RunStarted(
                run_dir=str(self.run_dir),
                name=self.name,
                recipe=type(model).__name__,
                config=config_dict,
                params=n,
                params_no_embeddings=n - emb,
                device=device,
                dtype=dtype,
                data={"source": "your loop"},
                max_steps=max_steps,
                time=time.time(),
            )
        )
        self._emit(ev.Status(0, "running"))

    # -- the loop's calls ------------------------------------------------------------------------------------------

    def before_step(self) -> float:
        """Call after backward, before clipping and optimizer.step(): reads the gradients as they came (global norm,
        and per layer on a measurement step). Returns the global gradient norm. Optional."""
        if self._last_time is None:
            self._last_time = time.perf_counter()
        self._grad_norm = self._global_grad_norm()
        if self.health.due(self.steps + 1):
            self.health.record_grads()
        return self._grad_norm

    @contextlib.contextmanager
    def step_context(self, loss, tokens: int = 0):
        """`with mon.step_context(loss, tokens=n): optimizer.step()`: before_step on entry, step on exit."""
        self.before_step()
        yield self
        self.step(loss, tokens=tokens)

    def step(self, loss, tokens: int = 0, lr: float | None = None, logits=None, attentions=None) -> None:
        """Call once per optimizer step, after it: the step's loss (a tensor or a number) and target tokens.

        For a model that is not tuilm's GPT, pass the step's output `logits` (..., vocab) to watch their log Z
        (the logz_drift alert), and `attentions` (per layer, attention probabilities (batch, heads, query, key):
        a Hugging Face model's `output_attentions=True`) to watch attention entropy (entropy_collapse). Both are
        read only at the health cadence, without gradients."""
        now = time.perf_counter()
        step_time = now - self._last_time if self._last_time is not None else 0.0
        self._last_time = now
        self.steps += 1
        step = self.steps
        loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if self._grad_norm is not None:
            grad_norm = self._grad_norm
        else:  # no before_step: the gradients still there after optimizer.step() (clipped, if the loop clips)
            grad_norm = self._global_grad_norm()
            if self.health.due(step):
                self.health.record_grads()
        self._grad_norm = None
        self.tokens += int(tokens)
        self.elapsed += step_time
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.health.non_finite(step, loss_value, grad_norm, "the monitor only reports it")
        else:
            self._train_losses.append(loss_value)
            if self.health.due(step):
                self.health.measure(step, log_z=output_log_z(logits), attn_entropy=attention_entropy(attentions))
            self.health.check_step(step, loss_value, grad_norm)
        self.health._before = None
        self._snapshot_if_due()
        lr_value = lr if lr is not None else self._lr()
        progress = step / self.max_steps if self.max_steps else math.nan
        event = ev.measured_step(
            step,
            math.nan,
            self.tokens,
            loss_value,
            lr_value,
            tokens,
            step_time,
            grad_norm,
            self.grad_clip,
            self.elapsed,
            progress,
        )
        self._emit(event)

    def eval(self, val_loss, bpc: float | None = None) -> ev.Eval:
        """A validation result at the current step (loss in nats per token; bits per character if you have it)."""
        val = float(val_loss)
        is_best = math.isfinite(val) and (self.best_val is None or val < self.best_val)
        if is_best:
            self.best_val = val
        train_loss = sum(self._train_losses) / len(self._train_losses) if self._train_losses else math.nan
        self._train_losses = []
        event = ev.Eval(
            step=self.steps,
            val_loss=val,
            val_ppl=math.exp(min(val, 700.0)) if math.isfinite(val) else math.nan,
            val_bpc=math.nan if bpc is None else float(bpc),
            best_val_loss=self.best_val if self.best_val is not None else math.nan,
            is_best=is_best,
            train_loss=train_loss,
            seconds=0.0,
        )
        self.last_eval = event
        self._emit(event)
        self.health.on_eval(self.steps, val, train_loss)
        return event

    def log(self, message: str, level: str = "info") -> None:
        self._emit(ev.Log(self.steps, message, level))

    def close(self, error: BaseException | None = None) -> None:
        """Write the run's end (Finished, or Failed with `error`) and close metrics.jsonl. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if error is not None:
            self._emit(ev.Failed(self.steps, f"{type(error).__name__}: {error}"))
        else:
            last = self.last_eval
            self._emit(
                ev.Finished(
                    step=self.steps,
                    reason="max_steps" if self.max_steps and self.steps >= self.max_steps else "stopped",
                    status="diverged" if self._diverged else "completed",
                    elapsed=self.elapsed,
                    tokens=self.tokens,
                    best_val_loss=self.best_val,
                    best_val_bpc=None,
                    last_val_loss=last.val_loss if last else None,
                    last_val_bpc=last.val_bpc if last and math.isfinite(last.val_bpc) else None,
                    tokens_per_s=self.tokens / self.elapsed if self.elapsed > 0 else 0.0,
                    last_checkpoint=None,
                    best_checkpoint=None,
                )
            )
        self.health.remove_hooks()
        self.metrics.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc if exc is not None and not isinstance(exc, KeyboardInterrupt) else None)

    # -- inside ----------------------------------------------------------------------------------------------------

    def _emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Alert) and event.code == "nonfinite":
            self._diverged = True
        self.metrics(event)

    def _global_grad_norm(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.nn.utils.get_total_norm(grads, foreach=True))

    def _snapshot_if_due(self) -> None:
        """The weights before the next step when that step is measured: its update/weight ratios need them."""
        if self.health.due(self.steps + 1):
            self.health.snapshot()
            self.health.arm()

    def _lr(self) -> float:
        if self.optimizer is None or not self.optimizer.param_groups:
            return math.nan
        lr = self.optimizer.param_groups[0].get("lr", math.nan)
        return float(lr) if not isinstance(lr, torch.Tensor) else float(lr.item())


class _NoOptimizer:
    param_groups: list = []
    state: dict = {}


def output_log_z(logits) -> float | None:
    """The mean log-sum-exp of the output logits over every position: the quantity z-loss keeps near 0."""
    if logits is None:
        return None
    with torch.no_grad():
        return float(torch.logsumexp(logits.detach().float(), dim=-1).mean())


def attention_entropy(attentions) -> list[float] | None:
    """Per layer, the mean entropy (nats) of attention probabilities (batch, heads, query, key)."""
    if not attentions:
        return None
    with torch.no_grad():
        return [
            float(-(a.detach().float() * a.detach().float().clamp_min(1e-12).log()).sum(-1).mean()) for a in attentions
        ]
